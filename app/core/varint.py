"""Base-128 varints, as protobuf and LevelDB tables (TF's checkpoint index) encode integers.

One decoder for the two readers of raw bytes that need it: app.storage.complete (saved_model.pb
scanned for variable ops) and app.runtime.checkpoint (the tensor bundle's index table). Pure
function; any thread.
"""

from __future__ import annotations


def read_varint(data: bytes, pos: int) -> tuple[int, int]:
    """Decode one varint at `pos`; return (value, next position). Raises ValueError when the
    bytes end first or the value runs past 64 bits."""
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated varint")
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos += 1
        if not byte & 0x80:
            return value, pos
        shift += 7
