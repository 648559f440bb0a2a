"""Give memory back to the OS after a model is unloaded.

Two things keep an unloaded version's memory in the process (tensorflow/serving#1664):

1. TensorFlow's CPU allocator. With oneDNN on (TF's default on x86), TF allocates tensors through
   its oneDNN CPU allocator, which serves large buffers from a BFC pool that never returns a
   region to the OS. Closing a session frees the variables into that pool: after a swap the old
   version's weights stay resident (measured: a model with a 1 GiB variable, 1.7 GiB RSS with one
   version loaded, 2.7 GiB after every swap). `TF_ONEDNN_USE_SYSTEM_ALLOCATOR=1` makes that
   allocator call malloc/free instead; hotserve sets it by default (`TF_ENV_DEFAULTS`, applied by
   `set_tf_env_defaults` when `app.runtime` is first imported, before anything imports
   TensorFlow). A user's own value always wins.
2. glibc's heap. Freed buffers below malloc's mmap threshold stay mapped in its arenas unless
   the heap is trimmed: `release_memory` collects garbage, then calls malloc_trim(0).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, MutableMapping
from typing import Any

logger = logging.getLogger(__name__)

_collect_lock = threading.Lock()
_last_unload: float | None = None  # monotonic time of the latest note_unload(); None: never
_last_collect_start = float("-inf")

# TensorFlow environment variables hotserve sets unless the user has set them. They must be in
# the environment before TensorFlow makes its CPU allocator (at its first allocation; measured:
# set after `import tensorflow` but before any session, the allocator variable still works).
TF_ENV_DEFAULTS: dict[str, str] = {
    # Give an unloaded version's tensors back to malloc (and so to the OS) instead of keeping
    # them in oneDNN's BFC pool; README "Memory after a swap" has the measurements.
    "TF_ONEDNN_USE_SYSTEM_ALLOCATOR": "1",
}


def set_tf_env_defaults(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Put every `TF_ENV_DEFAULTS` entry the environment lacks into it; return those set.

    Called once by `app/runtime/__init__.py`, so every entry point (`hotserve`, `python -m app`,
    `uvicorn --factory app.main:create_app`, tests) gets it before the first `import tensorflow`.
    If TensorFlow was imported already (by an embedding program), a warning says the defaults
    may come too late (they do if TF has allocated tensors already).
    """
    env = os.environ if environ is None else environ
    applied = {k: v for k, v in TF_ENV_DEFAULTS.items() if k not in env}
    env.update(applied)
    if applied and environ is None and "tensorflow" in sys.modules:
        logger.warning(
            "TensorFlow was imported before app.runtime: %s takes effect only if TensorFlow has "
            "not allocated tensors yet; set it in the environment before starting the process",
            ", ".join(f"{k}={v}" for k, v in applied.items()),
        )
    return applied


def tf_env() -> dict[str, str]:
    """The current value of each variable in `TF_ENV_DEFAULTS` (for the start-up log)."""
    return {k: os.environ.get(k, "") for k in TF_ENV_DEFAULTS}


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
    on every unload it stalled all requests once per swap (bench_swap: p99 7.45x steady). Call
    it last in start-up, once every module the server uses is imported and before any model
    loads: frozen at the loader's creation, the gRPC stack imported after it left 12.4k objects
    for every collection (2.1 ms at each unload, quiet machine, MLP demo); frozen last, 3.5k
    (0.3 ms). Called from the event loop at start-up (it collects once: 120-200 ms).
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


def release_memory(run_steps: Callable[[Iterator[int]], None] | None = None) -> None:
    """Collect garbage, then return free heap pages to the OS (glibc malloc_trim(0)).

    The two are two steps of one iterator (each yield ends one and announces 0 bytes for the
    next) handed to `run_steps`, by default run here, one after the other. A server passes
    app.core.priority `LoadPriority.serve_steps`, which has serving threads run them, each
    right after a model call, while requests are in flight. Why: the collection holds the GIL
    and the trim each malloc arena's lock for 1-3 ms of CPU; on a thread of its own beside a
    saturated core the kernel could also let it run a whole tick (4 ms here) while no serving
    thread ran, and a swap window's longest no-answer span began 4-17 ms before the old
    version's END in 4 of 30 swaps, 3 of 13 at 1 GiB (bench_swap, README). Right after a model
    call each step delays one batch by its own length and nothing else.

    Skipped when a collection began after the latest unload (`note_unload`): it already saw
    that garbage. Why: a full collection holds the GIL for time proportional to every loaded
    model's objects (~370 per small SavedModel: 34 ms at 200 models here), so a config reload
    that unloads k of n models stalled requests k times O(n) (p99 6.8x steady at 200 models);
    a burst of unloads now costs one or two collections.

    A no-op beyond gc.collect() where the C library has no malloc_trim (musl, macOS).
    Blocks until both steps ran; safe from any thread but the event loop.
    """
    global _last_collect_start  # noqa: PLW0603
    with _collect_lock:
        if _last_unload is not None and _last_collect_start > _last_unload:
            logger.debug("release_memory: a collection since the last unload covered it")
            return
        _last_collect_start = time.monotonic()
        steps = _collect_and_trim()
        if run_steps is None:
            for _ in steps:
                pass
        else:
            run_steps(steps)


def _collect_and_trim() -> Iterator[int]:
    # Each step's CPU time on its own thread: the two may run on different threads.
    began = time.thread_time()
    collected = gc.collect()
    collect_ms = (time.thread_time() - began) * 1e3
    yield 0
    began = time.thread_time()
    trim = _malloc_trim()
    released = bool(trim(0)) if trim is not None else False
    logger.debug(
        "release_memory: %d objects collected in %.1f ms, heap trimmed (%s) in %.1f ms of CPU",
        collected,
        collect_ms,
        released,
        (time.thread_time() - began) * 1e3,
    )
