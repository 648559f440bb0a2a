"""Read a TensorFlow V2 checkpoint (a "tensor bundle") without TensorFlow's RestoreV2 op.

Why: RestoreV2 reads a whole tensor in one uninterruptible op (a 1 GiB variable: hundreds of ms
of CPU the loading thread holds while serving waits for the core), and asking it for a slice of
a tensor stored whole still reads the whole tensor each call (measured: 47 ms per 1 MiB slice
of a 64 MiB tensor). app.runtime.restore reads tensors here in small pieces instead.

The format (TF's tensorflow/core/util/tensor_bundle/tensor_bundle.{h,cc}, the table in
tensorflow/core/lib/io/{table,block,format}.cc, which is LevelDB's SSTable):
- `<prefix>.index`: a table. Its last 48 bytes are the footer: the metaindex and index block
  handles (varint offset, varint size each), padding, and the 8-byte little-endian magic
  0xdb4775248b80fb57. The index block maps the last key of each data block to that block's
  handle. A block holds prefix-compressed entries (varints shared, unshared, value length; the
  unshared key bytes; the value), then uint32 restart offsets and their uint32 count; after
  each block come 5 trailer bytes: its compression type (TF writes 0, none) and a masked
  CRC32C of block + type byte. Key "" holds a `BundleHeaderProto`; every other key is a tensor
  name holding a `BundleEntryProto` (dtype, shape, shard_id, offset, size, masked crc32c,
  slices).
- `<prefix>.data-%05d-of-%05d` (shard_id, num_shards): the raw tensor bytes, little-endian for
  numeric dtypes, at `offset`, `size` bytes long.

What is not handled raises `Unsupported` (the caller then restores with TF as before):
block compression, a big-endian or newer-version bundle. A damaged index raises `Unsupported`
too, so that TF reads it and reports its own error. Everything here is plain file I/O: any
thread may call it.

Measured 2026-12-01 (scripts/bench_swap/restore.py: a child process per run, TF already warm
in it, restore only, in the calling thread; medians of 3; 2-core machine, idle), TF's one-op
restore against app.runtime.restore at 128 KiB, whose units read straight into the variables
(the units before that ran an assign op each: in brackets):
- 64 MiB variable: TF 42 ms in one piece; chunked 42 ms (75 ms) wall and CPU, 514 units,
  median 0.06 ms (0.11), longest 7.5 ms (the session's first run: see restore.py).
- 1 GiB variable: TF 0.57 s in one piece (its reads ran in TF's intra-op pool, not the calling
  thread); chunked 0.47 s (0.82 s), all in the calling thread, 8194 units, median 0.05 ms
  (0.09), longest 7.9 ms.
- demo MLP (1.6 MiB, 6 variables): TF 8 ms; chunked 21 ms (34 ms), 27 units, longest 12 ms
  (19 ms: the bank's callable, the session's first run, which costs more than TF's whole
  restore here).
- Peak RSS above the pre-restore level: the same as TF's within 1 MiB (no buffer of its own).
"""

from __future__ import annotations

import contextlib
import errno
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import google_crc32c
from tensorflow.core.protobuf import tensor_bundle_pb2

from app.core.varint import read_varint

_TABLE_MAGIC = 0xDB4775248B80FB57
_FOOTER_SIZE = 48  # two BlockHandles at most 20 bytes each, padded, + 8-byte magic
_BLOCK_TRAILER_SIZE = 5  # compression type byte + masked crc32c
_MASK_DELTA = 0xA282EAD8
# The newest bundle format this reader knows (TF's kTensorBundleVersion; min_consumer).
_BUNDLE_VERSION = 1


class Unsupported(Exception):
    """The checkpoint is not one this reader handles; the message says why."""


def mask_crc(crc: int) -> int:
    """TF's masked CRC32C (tensorflow/core/lib/hash/crc32c.h `Mask`), as stored in entries."""
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + _MASK_DELTA) & 0xFFFFFFFF


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    """A LevelDB varint at `pos` (app.core.varint); returns (value, next position)."""
    try:
        return read_varint(data, pos)
    except ValueError:
        raise Unsupported("bad varint in the checkpoint index") from None


def _block(table: bytes, handle: bytes) -> bytes:
    """The contents of the block `handle` points at, its trailer checked."""
    offset, pos = _varint(handle, 0)
    size, _ = _varint(handle, pos)
    end = offset + size
    if end + _BLOCK_TRAILER_SIZE > len(table):
        raise Unsupported("checkpoint index block past the end of the file")
    contents = table[offset:end]
    kind = table[end]
    if kind != 0:
        raise Unsupported(f"checkpoint index block compressed (type {kind})")
    (stored,) = struct.unpack_from("<I", table, end + 1)
    if mask_crc(google_crc32c.value(table[offset : end + 1])) != stored:
        raise Unsupported("checkpoint index block checksum mismatch")
    return contents


def _entries(block: bytes) -> list[tuple[bytes, bytes]]:
    """Every (key, value) of a block, in order."""
    if len(block) < 4:
        raise Unsupported("checkpoint index block too short")
    (restarts,) = struct.unpack_from("<I", block, len(block) - 4)
    limit = len(block) - 4 - 4 * restarts
    if limit < 0:
        raise Unsupported("bad restart count in a checkpoint index block")
    out: list[tuple[bytes, bytes]] = []
    key = b""
    pos = 0
    while pos < limit:
        shared, pos = _varint(block, pos)
        unshared, pos = _varint(block, pos)
        length, pos = _varint(block, pos)
        if shared > len(key) or pos + unshared + length > limit:
            raise Unsupported("bad entry in a checkpoint index block")
        key = key[:shared] + block[pos : pos + unshared]
        pos += unshared
        out.append((key, block[pos : pos + length]))
        pos += length
    return out


@dataclass(frozen=True, slots=True)
class Bundle:
    """A parsed `<prefix>.index`: the tensor entries by name and the data file names."""

    prefix: Path
    num_shards: int
    entries: dict[str, tensor_bundle_pb2.BundleEntryProto]

    def data_file(self, shard_id: int) -> Path:
        """The data file of shard `shard_id` (TF's DataFilename)."""
        name = f"{self.prefix.name}.data-{shard_id:05d}-of-{self.num_shards:05d}"
        return self.prefix.with_name(name)


def read_index(prefix: Path) -> Bundle:
    """Parse `<prefix>.index`. Raises Unsupported (also for a missing or damaged file: TF's
    restore then reports it with its own code and message)."""
    try:
        table = (prefix.parent / f"{prefix.name}.index").read_bytes()
    except OSError as exc:
        raise Unsupported(f"cannot read the checkpoint index: {exc}") from None
    if len(table) < _FOOTER_SIZE:
        raise Unsupported("checkpoint index shorter than its footer")
    footer = table[-_FOOTER_SIZE:]
    (magic,) = struct.unpack_from("<Q", footer, _FOOTER_SIZE - 8)
    if magic != _TABLE_MAGIC:
        raise Unsupported("not a V2 checkpoint index (bad table magic)")
    _, pos = _varint(footer, 0)  # metaindex offset
    _, pos = _varint(footer, pos)  # metaindex size
    entries: dict[str, tensor_bundle_pb2.BundleEntryProto] = {}
    header: tensor_bundle_pb2.BundleHeaderProto | None = None
    for _, handle in _entries(_block(table, footer[pos:])):
        for key, value in _entries(_block(table, handle)):
            if key == b"":
                header = tensor_bundle_pb2.BundleHeaderProto.FromString(value)
            else:
                # Slices of partitioned variables have binary keys (TF's OrderedCode).
                name = key.decode("utf-8", "surrogateescape")
                entries[name] = tensor_bundle_pb2.BundleEntryProto.FromString(value)
    if header is None:
        raise Unsupported("checkpoint index has no bundle header")
    if header.endianness != tensor_bundle_pb2.BundleHeaderProto.LITTLE:
        raise Unsupported("big-endian checkpoint")
    if header.version.min_consumer > _BUNDLE_VERSION:
        raise Unsupported(f"checkpoint bundle version {header.version.min_consumer}")
    return Bundle(prefix, header.num_shards, entries)


class DataLoss(Exception):
    """A tensor's bytes are missing, short or fail their checksum. `code` is the status
    RestoreV2 gives for the same damage (TF's tensor_bundle.cc): DATA_LOSS for a checksum
    mismatch, OUT_OF_RANGE for a short data file ("Read less bytes than requested"), the
    errno's code for a data file it cannot open (NOT_FOUND for a missing one)."""

    def __init__(self, message: str, code: str = "DATA_LOSS") -> None:
        super().__init__(message)
        self.code = code


# Errno -> TF code for a data file that cannot be opened (TF's ErrnoToCode, the common ones).
_OPEN_CODES = {
    errno.ENOENT: "NOT_FOUND",
    errno.ENOTDIR: "FAILED_PRECONDITION",
    errno.EACCES: "PERMISSION_DENIED",
    errno.EPERM: "PERMISSION_DENIED",
    errno.EISDIR: "FAILED_PRECONDITION",
}


class DataFiles:
    """The open data files of a bundle, read with `os.preadv` at absolute offsets.

    Used by one thread at a time (the restore's steps may run on several threads in turn:
    app.core.pacing.Piggyback); `close()` (or `with`) closes them. A missing file or a short
    read raises DataLoss naming the tensor and the file.
    """

    def __init__(self, bundle: Bundle) -> None:
        self._bundle = bundle
        self._fds: dict[int, int] = {}

    def __enter__(self) -> DataFiles:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        fds, self._fds = self._fds, {}
        for fd in fds.values():
            os.close(fd)

    def prefetch(self, key: str, entry: tensor_bundle_pb2.BundleEntryProto) -> None:
        """Open the tensor's data file now and ask the kernel to read it ahead
        (`POSIX_FADV_WILLNEED`, where there is one), so that the reads of later steps, which
        may run on serving threads, find the bytes in the page cache rather than wait for the
        disk. Raises DataLoss as `read` does. Blocks briefly; call from the loading thread."""
        fresh = entry.shard_id not in self._fds
        fd = self._fd(key, entry)
        if fresh and hasattr(os, "posix_fadvise"):
            with contextlib.suppress(OSError):  # advice only
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)

    def _fd(self, key: str, entry: tensor_bundle_pb2.BundleEntryProto) -> int:
        fd = self._fds.get(entry.shard_id)
        if fd is None:
            path = self._bundle.data_file(entry.shard_id)
            try:
                fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            except OSError as exc:
                code = _OPEN_CODES.get(exc.errno or 0, "UNKNOWN")
                message = f"Cannot open {path} to restore tensor {key}: {exc}"
                raise DataLoss(message, code) from None
            self._fds[entry.shard_id] = fd
        return fd

    def read(
        self, key: str, entry: tensor_bundle_pb2.BundleEntryProto, start: int, out: memoryview
    ) -> None:
        """Fill `out` with the tensor's bytes [start, start + len(out))."""
        fd = self._fd(key, entry)
        done = 0
        while done < len(out):
            got = os.preadv(fd, [out[done:]], entry.offset + start + done)
            if got <= 0:
                path = self._bundle.data_file(entry.shard_id)  # for the message only
                raise DataLoss(
                    f"Read {start + done} of {entry.size} bytes of tensor {key} from {path}: "
                    "the file is truncated",
                    "OUT_OF_RANGE",
                )
            done += got

    def check_crc(self, key: str, entry: tensor_bundle_pb2.BundleEntryProto, crc: int) -> None:
        """Raise DataLoss unless `crc` (CRC32C of all the tensor's bytes) is the entry's."""
        if mask_crc(crc) != entry.crc32c:
            raise DataLoss(
                f"Checksum does not match: stored {entry.crc32c} vs. calculated on the "
                f"restored bytes {mask_crc(crc)} (tensor {key} in "
                f"{self._bundle.data_file(entry.shard_id)})"
            )
