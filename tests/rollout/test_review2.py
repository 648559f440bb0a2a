"""Review of issue 11's analysis and shadow traffic: attacks over a real server (one per module,
tests/rollout/conftest.py) and the pure parts in-process."""

from __future__ import annotations

import httpx

from tests.rollout.conftest import Load, RolloutServer, phase, sample, wait_phase

BAD_REGRESS = {"signature_name": "regress_x_to_y", "examples": [{"z": 1.0}]}  # no feature x


async def test_client_bad_input_on_the_canary_is_not_a_canary_error(
    rollout_server: RolloutServer,
) -> None:
    """A request the model rejects because of its input (a tf.Example without the feature the
    model parses: 400 on any version) must not count against a healthy canary: 20 such requests
    at 50% leave version 2's rollout running, its window with no canary error."""
    srv = rollout_server
    srv.set_rollout(
        "healthy",
        {"stable": 1, "canary": 2, "canary_percent": 50, "steps": [50, 100],
         "step_seconds": 3600, "window_seconds": 30,
         "thresholds": {"min_requests": 20, "max_error_rate_increase": 0.01,
                        "max_p99_ratio": 50}},
    )  # fmt: skip
    await wait_phase(srv, "healthy", "canary")
    async with httpx.AsyncClient(timeout=30) as c:
        for _ in range(20):
            r = await c.post(f"{srv.url}/v1/models/healthy:regress", json=BAD_REGRESS)
            assert r.status_code == 400, r.text
    load = Load(f"{srv.url}/v1/models/healthy:predict")
    await load.run_for(1.5)  # good traffic: several controller evaluations (every 0.2 s)
    assert not load.failures, load.failures[:3]
    assert phase(srv, "healthy") == "canary", srv.proc.log()[-600:]
    text = srv.metrics()
    assert (sample(text, "hotserve_rollout_window_requests", model="healthy", arm="canary")
            or 0) > 0  # fmt: skip
    assert sample(text, "hotserve_rollout_window_errors", model="healthy", arm="canary") == 0
