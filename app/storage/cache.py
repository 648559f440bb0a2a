"""The local cache of downloaded versions: `<root>/<model>-<hash of base URL>/<version>/`.

A version is downloaded file by file (exactly the files of the listing that was judged
complete) into a fresh temporary folder under `<root>/.tmp/`, every size is checked against the
listing, the caller's `verify` runs on the folder, a manifest is written, and only then is the
folder renamed into place (one `rename`: a reader sees no version dir or a whole one). A
version dir without the manifest is debris of an older process and is replaced.

`max_bytes` (> 0) caps the cache: a download that would pass it first evicts versions the
caller says are not in use, and is refused (`CacheFull`) when that is not enough.

Blocking; call from worker threads. One `VersionCache` per process and root: two processes
must not share a root (`--workers` gives each worker a root of its own).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

MANIFEST = ".hotserve-download.json"
_TMP = ".tmp"
_STALE_TMP_SECONDS = 3600.0


Verify = Callable[[Path], None]


class CacheFull(OSError):
    """The download does not fit under the size cap even after evicting unused versions."""


def _check_relative(rel: str) -> None:
    """Raise ValueError unless `rel` names a file inside the download folder.

    Object keys are strings, not paths: `a/../../x` or an empty component (a key `m/1//etc/x`
    lists as `/etc/x` under version 1) would otherwise be joined onto the folder and written
    outside it, anywhere the server may write."""
    if any(part in ("", ".", "..") for part in rel.split("/")):  # "" also: absolute, "a//b"
        raise ValueError(f"unsafe object name {rel!r} in the version")


class VersionCache:
    def __init__(self, root: Path, max_bytes: int = 0) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self._sizes: dict[Path, int] = {}
        # Scans of different models download in parallel threads: the cap check and the bytes
        # it admits must be one step, or two downloads that each fit alone pass it together.
        self._lock = threading.Lock()
        self._reserved = 0  # bytes of downloads in progress

    def model_dir(self, model: str, base_url: str) -> Path:
        digest = hashlib.sha256(base_url.encode()).hexdigest()[:10]
        return self.root / f"{model}-{digest}"

    def cached(self, model_dir: Path, version: int) -> Path | None:
        """The version's folder when a complete download of it is in the cache."""
        path = model_dir / str(version)
        manifest = path / MANIFEST
        if not manifest.is_file():
            return None
        with self._lock:
            known = path in self._sizes
        if not known:
            try:
                size = int(json.loads(manifest.read_text())["bytes"])
            except (OSError, ValueError, KeyError, TypeError):
                return None
            with self._lock:
                self._sizes[path] = size
        return path

    def total_bytes(self) -> int:
        """Bytes of the cached versions (downloads in progress not included)."""
        with self._lock:
            return sum(self._sizes.values())

    def download(
        self,
        fs: Any,
        remote_dir: str,
        files: dict[str, int],
        dest: Path,
        *,
        verify: Callable[[Path], None],
        evictable: Callable[[Path], bool],
    ) -> Path:
        """Copy `files` (relative path -> listed size) of `remote_dir` to `dest` atomically.

        Raises OSError (also `CacheFull`) for I/O problems, ValueError for a name that is not a
        plain relative path, and whatever `verify` raises (a ValueError saying what is wrong);
        nothing is left behind on any failure.
        """
        for rel in files:
            _check_relative(rel)
        needed = sum(files.values())
        with self._lock:
            self._make_room(needed, evictable)
            self._reserved += needed
        try:
            return self._copy(fs, remote_dir, files, dest, verify)
        finally:
            with self._lock:
                self._reserved -= needed

    def _copy(
        self, fs: Any, remote: str, files: dict[str, int], dest: Path, verify: Verify
    ) -> Path:
        """`download`'s copy, once its bytes are reserved under the cap."""
        needed = sum(files.values())
        tmp_root = self.root / _TMP
        tmp_root.mkdir(parents=True, exist_ok=True)
        self._clean_stale(tmp_root)
        tmp = Path(tempfile.mkdtemp(prefix=f"{dest.name}-", dir=tmp_root))
        try:
            for rel, size in sorted(files.items()):
                target = tmp / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                fs.get_file(f"{remote}/{rel}", str(target))
                got = target.stat().st_size
                if got != size:  # the object changed (or was cut) after the listing
                    raise OSError(f"{rel}: downloaded {got} bytes, listing said {size}")
            verify(tmp)
            manifest = {"bytes": needed, "files": files, "source": remote, "at": time.time()}
            (tmp / MANIFEST).write_text(json.dumps(manifest))
            dest.parent.mkdir(parents=True, exist_ok=True)
            if dest.exists():  # debris without a manifest (cached() said no)
                shutil.rmtree(dest)
            os.rename(tmp, dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        with self._lock:
            self._sizes[dest] = needed
        return dest

    def evict(self, path: Path) -> None:
        """Delete one cached version (its folder; the manifest first, so a crash mid-way
        leaves debris, never a version that looks complete)."""
        with self._lock:
            self._sizes.pop(path, None)
        self._remove(path)

    @staticmethod
    def _remove(path: Path) -> None:
        try:
            (path / MANIFEST).unlink(missing_ok=True)
        except OSError as exc:
            logger.warning("cache: cannot evict %s: %s", path, exc)
            return
        shutil.rmtree(path, ignore_errors=True)
        logger.info("cache: evicted %s", path)

    def _make_room(self, needed: int, evictable: Callable[[Path], bool]) -> None:
        """Evict until `needed` more bytes fit beside the cached and in-flight ones (the lock
        is held)."""

        def used() -> int:
            return sum(self._sizes.values()) + self._reserved

        if self.max_bytes <= 0 or used() + needed <= self.max_bytes:
            return
        for path in sorted(self._sizes, key=lambda p: self._sizes[p], reverse=True):
            if evictable(path):
                self._sizes.pop(path, None)
                self._remove(path)
                if used() + needed <= self.max_bytes:
                    return
        raise CacheFull(
            f"cache {self.root} holds {used()} bytes in use or on their way; {needed} more would"
            f" pass the cap of {self.max_bytes}"
        )

    @staticmethod
    def _clean_stale(tmp_root: Path) -> None:
        """Remove temporary folders a killed process left (old enough not to be in progress)."""
        now = time.time()
        for entry in tmp_root.iterdir():
            try:
                if now - entry.stat().st_mtime > _STALE_TMP_SECONDS:
                    shutil.rmtree(entry, ignore_errors=True)
            except OSError:
                continue
