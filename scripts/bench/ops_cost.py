"""What issue 9's request-path additions cost, in-process (no sockets), as ratios:

1. the whole `:predict` request of `half_plus_two` through the ASGI app, with the request-ID /
   traceparent wrapper (app.tracing) on and off, access log off (the default): paired rounds
   (every variant back to back, order rotating), the median of the per-round ratios;
2. the same with the access log on (records go to a handler that drops them);
3. `ObservedRunner` (app.control.traffic: req/s and p99 per version) around a runner that
   answers at once, against that runner alone: the absolute cost per request in µs.

    taskset -c 0 .venv/bin/python scripts/bench/ops_cost.py
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from app.control.traffic import ObservedRunner, Window  # noqa: E402
from app.main import create_app  # noqa: E402
from app.settings import Settings  # noqa: E402
from app.tracing import Tracing  # noqa: E402

BODY = b'{"instances": [1.0, 2.0, 5.0]}'
N = 300  # requests per cell
ROUNDS = 31  # paired rounds: each times every variant back to back, the order rotating


async def one_request(app: Any) -> None:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/models/half_plus_two:predict",
        "raw_path": b"/v1/models/half_plus_two:predict",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"127.0.0.1"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(BODY)).encode()),
            (b"user-agent", b"bench"),
        ],
        "client": ("127.0.0.1", 1234),
        "server": ("127.0.0.1", 8501),
    }
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": BODY, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        return None

    await app(scope, receive, send)


async def per_request_us(app: Any) -> float:
    started = time.perf_counter()
    for _ in range(N):
        await one_request(app)
    return (time.perf_counter() - started) / N * 1e6


class Instant:
    enforces_deadlines = True
    in_flight = 0

    async def submit(self, signature: str, inputs: Any, deadline: float | None = None) -> Any:
        return inputs

    async def close(self, timeout: float) -> None:
        return None


async def runner_us(runner: Any) -> float:
    inputs = {"x": np.zeros(1, np.float32)}
    started = time.perf_counter()
    for _ in range(N * 10):
        await runner.submit("serving_default", inputs)
    return (time.perf_counter() - started) / (N * 10) * 1e6


async def main() -> None:
    logging.getLogger("hotserve.access").addHandler(logging.NullHandler())
    logging.getLogger("hotserve.access").propagate = False
    settings = Settings(
        model_name="half_plus_two",
        model_base_path=str(REPO / "models" / "half_plus_two"),
        version_settle_seconds=0,
    )
    app: Any = create_app(settings)
    async with app.router.lifespan_context(app):
        while not app.state.registry.is_ready():  # noqa: ASYNC110 (polling a plain flag)
            await asyncio.sleep(0.05)
        tracing_on = app.tracing
        access_on = Tracing(app.dispatch_request, access=True)
        variants = [("off", None), ("ids", tracing_on), ("ids+access", access_on)]
        results: dict[str, list[float]] = {name: [] for name, _ in variants}
        for r in range(ROUNDS):
            for name, wrapper in variants[r % 3 :] + variants[: r % 3]:
                app.tracing = wrapper
                results[name].append(await per_request_us(app))
        app.tracing = tracing_on
    for name, times in results.items():
        ratios = [t / off for t, off in zip(times, results["off"], strict=True)]
        print(
            f"{name:>11}: median {statistics.median(times):8.1f} µs/request, "
            f"paired ratio to off: median {statistics.median(ratios):.3f} "
            f"(quartiles {statistics.quantiles(ratios, n=4)[0]:.3f}-"
            f"{statistics.quantiles(ratios, n=4)[2]:.3f})"
        )

    async def nothing(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    alone = statistics.median([await per_request_us(nothing) for _ in range(ROUNDS)])
    ids = Tracing(nothing, access=False)
    wrapped_ids = statistics.median([await per_request_us(ids) for _ in range(ROUNDS)])
    extra = wrapped_ids - alone
    print(f"Tracing alone: +{extra:.2f} µs/request ({alone:.2f} -> {wrapped_ids:.2f})")
    plain = Instant()
    observed = ObservedRunner(plain, Window())  # type: ignore[arg-type]
    bare = statistics.median([await runner_us(plain) for _ in range(ROUNDS)])
    wrapped = statistics.median([await runner_us(observed) for _ in range(ROUNDS)])
    print(f"ObservedRunner: +{wrapped - bare:.2f} µs/request ({bare:.2f} -> {wrapped:.2f})")


if __name__ == "__main__":
    asyncio.run(main())
