"""The lifespan's idle-step ticker (app.lifespan `idle_ticker`, app.core.ticker): running while
a server that loads TensorFlow models paced serves, gone when it stops."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from app.core.ticker import TICKER
from app.lifespan import ticker_cpu
from app.settings import Settings
from tests.harness import REPO, gone, running_app

pytestmark = pytest.mark.skipif(
    not hasattr(os, "SCHED_IDLE") or not Path("/proc/self/status").exists(),
    reason="Linux scheduling and /proc",
)


@pytest.mark.parametrize(
    ("tick", "share", "expected"), [(4000, 0.025, True), (0, 0.025, False), (4000, 1.0, False)]
)
async def test_a_server_loading_tensorflow_runs_the_ticker_while_it_serves(
    tick: int, share: float, expected: bool
) -> None:
    settings = Settings(
        model_name="half_plus_two",
        model_base_path=str(REPO / "models" / "half_plus_two"),
        load_idle_tick_micros=tick,
        load_busy_cpu_share=share,
    )
    async with running_app(settings):
        assert TICKER.running is expected
        assert TICKER.cpu == (ticker_cpu() if expected else None)
        pid = TICKER.pid
    assert not TICKER.running
    if pid is not None:
        assert gone(pid)


def test_a_tick_under_a_millisecond_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1000"):
        Settings(load_idle_tick_micros=10)


@pytest.mark.parametrize("index", ["0", "1", "5"])
def test_workers_put_their_tickers_on_different_cpus(
    index: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    cpus = sorted(os.sched_getaffinity(0))
    monkeypatch.setenv("HOTSERVE_WORKER_INDEX", index)
    assert ticker_cpu() == cpus[-1 - int(index) % len(cpus)]
