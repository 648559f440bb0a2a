"""LoadPriority: the first load at normal priority, later ones on a lower-priority thread."""

from __future__ import annotations

import os
import threading

import pytest

from app.core.priority import LoadPriority


def where() -> tuple[int, int]:
    tid = threading.get_native_id()
    return tid, os.getpriority(os.PRIO_PROCESS, tid)


def test_first_call_normal_then_niced_threads() -> None:
    me, mine = where()
    p = LoadPriority(5)
    assert p.call(where) == (me, mine)  # TensorFlow's pools are created by the first load
    tid, nice = p.call(where)
    assert tid != me
    assert nice == min(mine + 5, 19)
    assert where() == (me, mine)  # the caller's own priority is untouched


def test_zero_increment_runs_inline() -> None:
    p = LoadPriority(0)
    p.call(where)
    assert p.call(where) == where()


def test_errors_propagate_from_the_load_thread() -> None:
    p = LoadPriority(5)
    p.call(where)

    def boom(x: int) -> None:
        raise ValueError(f"bad {x}")

    with pytest.raises(ValueError, match="bad 3"):
        p.call(boom, 3)


def test_a_lowered_priority_call_runs_with_a_short_switch_interval() -> None:
    """While a niced load runs, a thread waiting for the GIL gets it within 1 ms of asking
    (sys.setswitchinterval); the interval is put back when the load returns."""
    import sys

    from app.core.priority import LOAD_SWITCH_INTERVAL

    before = sys.getswitchinterval()
    p = LoadPriority(5)
    assert p.call(sys.getswitchinterval) == before  # the first load: normal priority, as is
    assert p.call(sys.getswitchinterval) == pytest.approx(min(before, LOAD_SWITCH_INTERVAL))
    assert sys.getswitchinterval() == before


def test_overlapping_loads_restore_the_interval_only_when_the_last_returns() -> None:
    import sys

    from app.core.priority import LOAD_SWITCH_INTERVAL

    before = sys.getswitchinterval()
    p = LoadPriority(5)
    p.call(where)
    first_in = threading.Event()
    release = threading.Event()
    seen: list[float] = []

    def long_load() -> None:
        first_in.set()
        release.wait(10)

    t = threading.Thread(target=p.call, args=(long_load,))
    t.start()
    assert first_in.wait(10)
    seen.append(p.call(sys.getswitchinterval))  # a second load starts and ends meanwhile
    seen.append(sys.getswitchinterval())  # the first one still runs
    release.set()
    t.join(10)
    assert seen == pytest.approx([min(before, LOAD_SWITCH_INTERVAL)] * 2)
    assert sys.getswitchinterval() == before
