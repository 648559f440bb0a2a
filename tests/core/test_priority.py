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


def test_a_loads_python_heavy_steps_run_with_a_short_switch_interval() -> None:
    """Inside a paced load, `gil_heavy` steps (the graph import, building the restore's ops) run
    with a 0.1 ms switch interval, so a serving thread waiting for the GIL gets it soon; the rest
    of the load, and anything outside a load, keeps the interpreter's interval."""
    import sys

    from app.core.pacing import LOAD_SWITCH_INTERVAL, gil_heavy

    def heavy() -> float:
        with gil_heavy():
            return sys.getswitchinterval()

    before = sys.getswitchinterval()
    p = LoadPriority(5)
    assert p.call(heavy) == before  # the first load: normal priority, as is
    assert p.call(heavy) == pytest.approx(min(before, LOAD_SWITCH_INTERVAL))
    assert p.call(sys.getswitchinterval) == before  # outside the heavy steps
    assert heavy() == before  # not a load
    assert sys.getswitchinterval() == before


def test_overlapping_heavy_steps_restore_the_interval_only_when_the_last_ends() -> None:
    import sys

    from app.core.pacing import LOAD_SWITCH_INTERVAL, gil_heavy

    before = sys.getswitchinterval()
    p = LoadPriority(5)
    p.call(where)
    first_in = threading.Event()
    release = threading.Event()
    seen: list[float] = []

    def long_load() -> None:
        with gil_heavy():
            first_in.set()
            release.wait(10)

    def short_load() -> float:
        with gil_heavy():
            return sys.getswitchinterval()

    t = threading.Thread(target=p.call, args=(long_load,))
    t.start()
    assert first_in.wait(10)
    seen.append(p.call(short_load))  # a second load starts and ends meanwhile
    seen.append(sys.getswitchinterval())  # the first one still runs
    release.set()
    t.join(10)
    assert seen == pytest.approx([min(before, LOAD_SWITCH_INTERVAL)] * 2)
    assert sys.getswitchinterval() == before
