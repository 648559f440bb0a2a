"""Give memory back to the OS after a model is unloaded.

A closed TF session frees its buffers into glibc's heap, where they stay mapped unless the heap is
trimmed; with hot updates every swap would otherwise ratchet the resident size up.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

_collect_lock = threading.Lock()
_last_unload: float | None = None  # monotonic time of the latest note_unload(); None: never
_last_collect_start = float("-inf")


@functools.cache
def _malloc_trim() -> Callable[[int], Any] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    trim: Callable[[int], Any] | None = getattr(libc, "malloc_trim", None)
    return trim


def freeze_startup_objects() -> None:
    """Move every object alive now (TensorFlow's and the app's modules) out of the collector's
    reach, so later full collections scan only what models add.

    Why: a full gc.collect() over TensorFlow's ~270k objects holds the GIL for 120-200 ms; run
    on every unload it stalled all requests once per swap (bench_swap: p99 7.45x steady). After
    this it takes about a millisecond and still frees the unloaded version's cycles.
    """
    gc.collect()
    gc.freeze()
    # The request path allocates many short-lived objects but creates no cycles; with CPython's
    # default (700, 10, 10) it ran 100-270 young collections a second that found nothing
    # (scripts/bench/profile.py). A larger first threshold keeps collection for real garbage.
    gc.set_threshold(50_000, 20, 10)
    logger.info("froze %d start-up objects out of the garbage collector", gc.get_freeze_count())


def note_unload() -> None:
    """Record that a servable just released its resources (called at the end of its unload)."""
    global _last_unload  # noqa: PLW0603  (one process-wide fact, guarded by the GIL)
    _last_unload = time.monotonic()


def release_memory() -> None:
    """Collect garbage, then return free heap pages to the OS (glibc malloc_trim(0)).

    Skipped when a collection began after the latest unload (`note_unload`): it already saw
    that garbage. Why: a full collection holds the GIL for time proportional to every loaded
    model's objects (~370 per small SavedModel: 34 ms at 200 models here), so a config reload
    that unloads k of n models stalled requests k times O(n) (p99 6.8x steady at 200 models);
    a burst of unloads now costs one or two collections.

    A no-op beyond gc.collect() where the C library has no malloc_trim (musl, macOS).
    Blocking but short; safe from any thread.
    """
    global _last_collect_start  # noqa: PLW0603
    with _collect_lock:
        if _last_unload is not None and _last_collect_start > _last_unload:
            logger.debug("release_memory: a collection since the last unload covered it")
            return
        _last_collect_start = time.monotonic()
        _collect_and_trim()


def _collect_and_trim() -> None:
    collected = gc.collect()
    trim = _malloc_trim()
    released = bool(trim(0)) if trim is not None else False
    logger.debug("release_memory: %d objects collected, heap trimmed: %s", collected, released)
