"""VersionCache on its own: the size cap holds while downloads run concurrently (scans of
different models download in parallel threads)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from app.storage.cache import CacheFull, VersionCache


class GatedStore:
    """An fsspec stand-in whose `get_file` writes `size` bytes; the first call of a remote dir
    named in `hold` waits until `release` is set (a slow download still in progress)."""

    def __init__(self, sizes: dict[str, int], hold: str) -> None:
        self.sizes = sizes
        self.hold = hold
        self.entered = threading.Event()
        self.release = threading.Event()

    def get_file(self, remote: str, local: str) -> None:
        if remote.startswith(self.hold + "/"):
            self.entered.set()
            assert self.release.wait(60)
        Path(local).write_bytes(b"x" * self.sizes[remote])


def test_concurrent_downloads_never_pass_the_cap(tmp_path: Path) -> None:
    cache = VersionCache(tmp_path / "cache", max_bytes=100)
    store = GatedStore({"a/1/f": 60, "b/1/f": 60}, hold="a/1")
    errors: list[BaseException] = []

    def first() -> None:
        try:
            cache.download(
                store, "a/1", {"f": 60}, tmp_path / "cache/a/1",
                verify=lambda _p: None, evictable=lambda _p: True,
            )  # fmt: skip
        except BaseException as exc:
            errors.append(exc)

    slow = threading.Thread(target=first)
    slow.start()
    try:
        assert store.entered.wait(60)
        # 60 bytes are on their way: 60 more would pass the cap, and nothing can be evicted.
        with pytest.raises(CacheFull):
            cache.download(
                store, "b/1", {"f": 60}, tmp_path / "cache/b/1",
                verify=lambda _p: None, evictable=lambda _p: True,
            )  # fmt: skip
    finally:
        store.release.set()
        slow.join(60)
    assert errors == []
    assert cache.total_bytes() == 60 and (tmp_path / "cache/a/1/f").is_file()
    assert not (tmp_path / "cache/b/1").exists()
