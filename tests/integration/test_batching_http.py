"""Batching over real HTTP: same answers on and off, back-pressure, deadlines, isolation."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import numpy as np
import pytest

from app.main import create_app
from app.settings import Settings
from tests.fakes import POISON, SlowLoader
from tests.harness import REPO, ServerProcess, models_config, threaded_server

BATCHING = """
max_batch_size { value: 16 }
batch_timeout_micros { value: 1000 }
max_enqueued_batches { value: 1000 }
num_batch_threads { value: 2 }
"""


def requests(n: int) -> list[tuple[str, dict[str, Any]]]:
    """A seeded mix of requests for multi-input/multi-output, MLP and elementwise models."""
    rng = random.Random(7)
    nprng = np.random.default_rng(7)
    out: list[tuple[str, dict[str, Any]]] = []
    for i in range(n):
        rows = 1 + i % 3
        kind = i % 3
        if kind == 0:
            inst = [
                {
                    "x": rng.uniform(-5, 5),
                    "n": rng.randint(-(2**40), 2**40),
                    "flag": rng.random() < 0.5,
                    "text": f"row-{i}-{j}",
                }
                for j in range(rows)
            ]
            out.append(("multi", {"instances": inst}))
        elif kind == 1:
            out.append(("mlp", {"instances": nprng.random((rows, 784), dtype=np.float32).tolist()}))
        else:
            out.append(("hp2", {"instances": [rng.uniform(-100, 100) for _ in range(rows)]}))
    return out


@pytest.fixture(scope="module")
def servers(
    tmp_path_factory: pytest.TempPathFactory, testdata: Path
) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    tmp = tmp_path_factory.mktemp("batching")
    cfg = tmp / "models.config"
    cfg.write_text(
        models_config(
            {
                "multi": str(testdata / "conformance_multi_io"),
                "mlp": str(REPO / "models" / "mlp"),
                "hp2": str(testdata / "saved_model_half_plus_two_cpu"),
            }
        )
    )
    params = tmp / "batching.pbtxt"
    params.write_text(BATCHING)
    off = ServerProcess([f"--model_config_file={cfg}"])
    on = ServerProcess(
        [f"--model_config_file={cfg}", "--enable_batching", f"--batching_parameters_file={params}"]
    )
    off.start(tmp / "off.log")
    try:
        on.start(tmp / "on.log")
        try:
            yield off, on
        finally:
            on.stop()
    finally:
        off.stop()


async def fire(url: str, reqs: list[tuple[str, dict[str, Any]]], concurrency: int) -> list[Any]:
    answers: list[Any] = [None] * len(reqs)
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=60) as c:
        sem = anyio.Semaphore(concurrency)

        async def one(i: int) -> None:
            model, body = reqs[i]
            async with sem:
                r = await c.post(f"{url}/v1/models/{model}:predict", json=body)
            answers[i] = (r.status_code, r.json())

        async with anyio.create_task_group() as tg:
            for i in range(len(reqs)):
                tg.start_soon(one, i)
    return answers


async def test_answers_identical_with_batching_on_and_off(
    servers: tuple[ServerProcess, ServerProcess],
) -> None:
    off, on = servers
    reqs = requests(240)
    want = await fire(off.url, reqs, 1)
    got = await fire(on.url, reqs, 32)
    for (model, _), (s1, a), (s2, b) in zip(reqs, want, got, strict=True):
        assert s1 == s2 == 200, (a, b)
        if model == "mlp":
            # A batched matmul may take another kernel path: equal to float32 rounding.
            np.testing.assert_allclose(a["predictions"], b["predictions"], rtol=1e-5, atol=1e-7)
        else:
            assert a == b
    coalesced = [line for line in on.log().splitlines() if "batching" in line]
    assert coalesced, "batching was not enabled on the second server"


async def test_batches_really_form_under_concurrency(
    servers: tuple[ServerProcess, ServerProcess],
) -> None:
    _, on = servers
    reqs = [("hp2", {"instances": [float(i)]}) for i in range(300)]
    answers = await fire(on.url, reqs, 64)
    assert all(status == 200 for status, _ in answers)
    metrics = httpx.get(f"{on.url}/metrics").text
    sizes = [
        line
        for line in metrics.splitlines()
        if line.startswith("hotserve_batch_size_rows_bucket") and 'model="hp2"' in line
    ]
    le1 = next(float(x.rsplit(" ", 1)[1]) for x in sizes if 'le="1"' in x)
    total = next(float(x.rsplit(" ", 1)[1]) for x in sizes if 'le="+Inf"' in x)
    assert total > le1, "no batch held more than one row"


# ---- a slow, injectable model on a real uvicorn -------------------------------------------


def slow_app(tmp_path: Path, delay: float, params: str) -> tuple[Any, SlowLoader]:
    base = tmp_path / "slow"
    (base / "1").mkdir(parents=True)
    (base / "1" / "saved_model.pb").write_bytes(b"fake")
    batching = tmp_path / "batching.pbtxt"
    batching.write_text(params)
    loader = SlowLoader(delay)
    settings = Settings(
        model_name="slow",
        model_base_path=str(base),
        enable_batching=True,
        batching_parameters_file=str(batching),
    )
    return create_app(settings, loader=loader), loader


ONE_AT_A_TIME = """
max_batch_size { value: 1 }
max_enqueued_batches { value: 1 }
num_batch_threads { value: 1 }
"""


ONE_RUNNING = """
max_batch_size { value: 1 }
max_enqueued_batches { value: 4 }
num_batch_threads { value: 1 }
"""


async def test_full_queue_answers_503_with_retry_after(tmp_path: Path) -> None:
    app, _ = slow_app(tmp_path, 0.3, ONE_AT_A_TIME)
    with threaded_server(app) as url:
        reqs = [("slow", {"instances": [float(i)]}) for i in range(8)]
        async with httpx.AsyncClient(timeout=30) as c:
            results: list[httpx.Response] = []

            async def one(body: dict[str, Any]) -> None:
                results.append(await c.post(f"{url}/v1/models/slow:predict", json=body))

            async with anyio.create_task_group() as tg:
                for _, body in reqs:
                    tg.start_soon(one, body)
    codes = sorted(r.status_code for r in results)
    assert 200 in codes and 503 in codes, codes
    rejected = [r for r in results if r.status_code == 503]
    assert all(r.headers["retry-after"] == "1" for r in rejected)
    assert "queue to which this task was submitted is full" in rejected[0].json()["error"]


async def test_expired_requests_never_reach_the_model(tmp_path: Path) -> None:
    app, loader = slow_app(tmp_path, 0.5, ONE_RUNNING)
    with threaded_server(app) as url:
        async with httpx.AsyncClient(timeout=30) as c, anyio.create_task_group() as tg:
            busy: list[httpx.Response] = []

            async def occupy() -> None:
                busy.append(
                    await c.post(f"{url}/v1/models/slow:predict", json={"instances": [1.0]})
                )

            tg.start_soon(occupy)
            with anyio.fail_after(10):  # the model is now busy for up to ~0.5 s more
                while loader.servables[0].calls < 1:
                    await anyio.sleep(0.005)
            r = await c.post(
                f"{url}/v1/models/slow:predict",
                json={"instances": [42.0]},
                headers={"X-Request-Timeout": "0.1"},
            )
            assert r.status_code == 504
            assert list(r.json()) == ["error"]
        assert busy[0].status_code == 200
        await anyio.sleep(0.6)  # an absence: give a wrongly queued request time to run
        assert 42.0 not in loader.servables[0].seen


async def test_bad_requests_and_model_errors_stay_isolated(tmp_path: Path) -> None:
    params = (
        "max_batch_size { value: 8 }\n"
        "batch_timeout_micros { value: 20000 }\n"
        "num_batch_threads { value: 1 }\n"
    )
    app, _ = slow_app(tmp_path, 0.1, params)
    with threaded_server(app) as url:
        async with httpx.AsyncClient(timeout=30) as c:
            r = await c.post(f"{url}/v1/models/slow:predict", json={"instances": [POISON]})
            assert r.status_code == 500 and list(r.json()) == ["error"]
            results: dict[str, httpx.Response] = {}

            async def one(key: str, body: dict[str, Any]) -> None:
                results[key] = await c.post(f"{url}/v1/models/slow:predict", json=body)

            async with anyio.create_task_group() as tg:
                for i in range(10):
                    tg.start_soon(one, f"good{i}", {"instances": [float(i)]})
                tg.start_soon(one, "bad", {"instances": ["not a number"]})
            assert results.pop("bad").status_code == 400
            for key, resp in results.items():
                assert resp.status_code == 200, (key, resp.text)
                assert resp.json()["predictions"] == [2 * float(key[4:])]
            # the server and the model survive a poisoned batch
            r = await c.post(f"{url}/v1/models/slow:predict", json={"instances": [3.0]})
            assert r.json() == {"predictions": [6.0]}


async def test_oversized_request_split_or_rejected(tmp_path: Path) -> None:
    split = (
        "max_batch_size { value: 16 }\n"
        "max_execution_batch_size { value: 4 }\n"
        "enable_large_batch_splitting { value: true }\n"
    )
    app, loader = slow_app(tmp_path, 0.0, split)
    with threaded_server(app) as url:
        xs = [float(i) for i in range(10)]
        r = httpx.post(f"{url}/v1/models/slow:predict", json={"instances": xs})
        assert r.json() == {"predictions": [2 * x for x in xs]}
        assert loader.servables[0].calls >= 3  # 4 + 4 + 2
    app, _ = slow_app(tmp_path / "b", 0.0, "max_batch_size { value: 4 }\n")
    with threaded_server(app) as url:
        r = httpx.post(f"{url}/v1/models/slow:predict", json={"instances": [1.0] * 10})
        assert r.status_code == 400
        assert r.json()["error"] == "Task size 10 is larger than maximum input batch size 4"


async def test_padding_to_allowed_sizes_is_stripped(tmp_path: Path) -> None:
    params = "max_batch_size { value: 4 }\nallowed_batch_sizes: 2\nallowed_batch_sizes: 4\n"
    app, loader = slow_app(tmp_path, 0.0, params)
    with threaded_server(app) as url:
        r = httpx.post(f"{url}/v1/models/slow:predict", json={"instances": [1.0, 2.0, 3.0]})
        assert r.json() == {"predictions": [2.0, 4.0, 6.0]}
        assert len(loader.servables[0].seen) == 4  # the model ran a padded batch of 4


async def test_per_model_batching_parameters_from_the_version_folder(tmp_path: Path) -> None:
    base = tmp_path / "slow"
    (base / "1").mkdir(parents=True)
    (base / "1" / "saved_model.pb").write_bytes(b"fake")
    (base / "1" / "batching_params.pbtxt").write_text("max_batch_size { value: 2 }\n")
    settings = Settings(
        model_name="slow",
        model_base_path=str(base),
        enable_batching=True,
        enable_per_model_batching_parameters=True,
    )
    with threaded_server(create_app(settings, loader=SlowLoader(0.0))) as url:
        r = httpx.post(f"{url}/v1/models/slow:predict", json={"instances": [1.0, 2.0, 3.0]})
        assert r.status_code == 400
        assert r.json()["error"] == "Task size 3 is larger than maximum input batch size 2"
        r = httpx.post(f"{url}/v1/models/slow:predict", json={"instances": [1.0, 2.0]})
        assert r.json() == {"predictions": [2.0, 4.0]}
