"""Transparent huge pages for malloc'ed memory: opt-in (`--malloc_huge_pages`), off by default.

What they buy: with `TF_ONEDNN_USE_SYSTEM_ALLOCATOR=1` (app.runtime.memory) a model's weights
come from malloc, which serves each large tensor from its own mmap and gives it back with one
munmap when the version unloads. Tearing down 1 GiB of 4 KiB pages took 80-150 ms here in one
probe (a thread calling mmap every 0.5 ms was stopped that long by one `session.close()`, since
the kernel holds the process's memory-map lock), and huge pages made it 3 ms. With glibc's
`glibc.malloc.hugetlb=1` tunable, malloc asks for transparent huge pages (madvise) on its
mappings.

Why off by default: a load writes the new version's weights into fresh memory, and with huge
pages every first touch of a 2 MiB page (~1.3 ms of CPU in the page fault here) left all
requests without an answer for ~5 ms, 32 times per 64 MiB loaded. Traced in bench_swap (every
restore piece against every request's answer time): the piece runs that took 5 ms for 1.3 ms of
CPU were the spans without an answer. Without the tunable, p99 in the swap window against
steady went from 1.13x to 1.07x (64 MiB, per-swap median of 4) and from 1.67x to 1.43x (1 GiB),
and the unload, now run at SCHED_IDLE after the switch, left no span longer than 9 ms at 1 GiB.

glibc reads tunables once, when the process starts, so `reexec_argv_env` gives the command to
re-run the current process with the tunable added (the `hotserve` / `python -m app` entry point
does that once, before anything is loaded, when the flag asks). Only on Linux with glibc >= 2.35
and THP not disabled; a GLIBC_TUNABLES that already names `glibc.malloc.hugetlb` is left alone.
Under `uvicorn --factory app.main:create_app` or an embedding program, set
`GLIBC_TUNABLES=glibc.malloc.hugetlb=1` in the environment yourself instead.
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Mapping
from pathlib import Path

TUNABLE = "glibc.malloc.hugetlb"
VALUE = "1"
THP_ENABLED = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def _glibc_supports_it() -> bool:
    name, version = platform.libc_ver()
    if name != "glibc":
        return False
    try:
        major, minor = (int(x) for x in version.split(".")[:2])
    except ValueError:
        return False
    return (major, minor) >= (2, 35)


def _thp_available(path: Path = THP_ENABLED) -> bool:
    try:
        return "[never]" not in path.read_text()
    except OSError:
        return False


def with_tunable(environ: Mapping[str, str]) -> dict[str, str] | None:
    """`environ` plus the tunable, or None when it names the tunable already."""
    current = environ.get("GLIBC_TUNABLES", "")
    if TUNABLE in current:
        return None
    entry = f"{TUNABLE}={VALUE}"
    return {**environ, "GLIBC_TUNABLES": f"{current}:{entry}" if current else entry}


def reexec_argv_env() -> tuple[list[str], dict[str, str]] | None:
    """(argv, environment) to re-run this process with huge pages for malloc, or None when it
    has them already, cannot have them, or the environment decided otherwise."""
    if sys.platform != "linux" or not _glibc_supports_it() or not _thp_available():
        return None
    env = with_tunable(os.environ)
    if env is None:
        return None
    return [sys.executable, *sys.orig_argv[1:]], env


def reexec_with_hugepages() -> None:
    """Replace this process with itself plus the tunable (see the module doc); returns only
    when nothing is to be done. Call before threads or files that should not be inherited."""
    plan = reexec_argv_env()
    if plan is None:
        return
    argv, env = plan
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(argv[0], argv, env)
