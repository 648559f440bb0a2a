"""release_memory: one collection covers every unload before it began (a burst of unloads on
a config reload costs one full collection, not one per model)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from app.runtime import memory


def test_a_burst_of_unloads_is_collected_once(monkeypatch: pytest.MonkeyPatch) -> None:
    collections: list[int] = []

    def steps() -> Iterator[int]:
        collections.append(1)
        yield 0

    monkeypatch.setattr(memory, "_collect_and_trim", steps)
    monkeypatch.setattr(memory, "_last_unload", None)
    monkeypatch.setattr(memory, "_last_collect_start", float("-inf"))

    memory.release_memory()  # no unload noted yet: always collects
    assert len(collections) == 1
    for _ in range(10):  # ten versions unloaded, then their ten releases
        memory.note_unload()
    for _ in range(10):
        memory.release_memory()
    assert len(collections) == 2
    memory.note_unload()  # a later unload is collected again
    memory.release_memory()
    assert len(collections) == 3
