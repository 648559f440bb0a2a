"""When is a version directory complete? Pure functions over a listing (relative path -> size)
and the bytes of small files; no I/O, safe from any thread.

A SavedModel's variables are a tensor bundle: `variables/variables.index` (a TF table whose first
entry, under the empty key, is a `BundleHeaderProto` naming `num_shards`) and the shards
`variables/variables.data-<i>-of-<N>` (TensorFlow's `tensor_bundle.cc`, `DataFilename`). An
upload that stopped part-way leaves the index without some shard, shards without the index, or
no variables at all beside a graph that needs them; each is caught here.
"""

from __future__ import annotations

import re

from app.core.layout import SAVED_MODEL_FILES
from app.core.varint import read_varint

INDEX = "variables/variables.index"
_SHARD = re.compile(r"variables/variables\.data-(\d{5})-of-(\d{5})")
# Op names a graph with variables holds: it cannot be served without its variables bundle.
_VARIABLE_OPS = (b"VarHandleOp", b"VariableV2", b"RestoreV2")


def index_shard_count(index_head: bytes) -> int:
    """`num_shards` of a `variables.index`, from its first bytes (64 are plenty).

    The bundle writer stores the table uncompressed, and its first entry has the empty key:
    varints shared=0, unshared=0, value length, then the `BundleHeaderProto` whose field 1
    (varint) is `num_shards` (default 1 when absent). Raises ValueError on anything else.
    """
    shared, pos = read_varint(index_head, 0)
    unshared, pos = read_varint(index_head, pos)
    length, pos = read_varint(index_head, pos)
    if shared or unshared:
        raise ValueError("variables.index does not start with the bundle header")
    header, end = index_head[pos : pos + length], pos + length
    if end > len(index_head):
        raise ValueError("variables.index header is truncated")
    shards, at = 1, 0
    while at < len(header):
        key, at = read_varint(header, at)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, at = read_varint(header, at)
            if field == 1:
                shards = value
        elif wire == 2:
            size, at = read_varint(header, at)
            at += size
        else:
            raise ValueError(f"unexpected wire type {wire} in the bundle header")
    if shards < 1:
        raise ValueError(f"variables.index names {shards} shards")
    return shards


def missing_parts(files: dict[str, int], done_marker: str, shard_count: int | None) -> str | None:
    """Why the listing `files` (path relative to the version dir -> size) is not yet a complete
    version, or None when it is. `shard_count` is `index_shard_count` of its index (None when it
    has none or it could not be read yet)."""
    if not any(name in files for name in SAVED_MODEL_FILES):
        return "no saved_model.pb"
    if done_marker and done_marker not in files:
        return f"waiting for marker {done_marker}"
    shards = {m.groups() for name in files if (m := _SHARD.fullmatch(name))}
    has_variables = any(name.startswith("variables/") for name in files)
    if not has_variables:
        return None
    if INDEX not in files:
        return "variables/ without variables.index"
    if shard_count is None:
        return "variables.index not read yet"
    expected = {(f"{i:05d}", f"{shard_count:05d}") for i in range(shard_count)}
    missing = sorted(expected - shards)
    if missing:
        names = ", ".join(f"data-{i}-of-{n}" for i, n in missing[:3])
        return f"missing {len(missing)} of {shard_count} variables shards ({names})"
    return None


def graph_needs_variables(saved_model_pb: bytes) -> bool:
    """True when a serialized SavedModel holds variable ops (so a bundle must come with it)."""
    return any(op in saved_model_pb for op in _VARIABLE_OPS)
