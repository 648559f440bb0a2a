"""models.config reloads and start-up behaviour, over real HTTP against a real uvicorn process."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import pytest

from app.publish import publish
from tests.harness import ServerProcess, models_config
from tests.integration.conftest import version_of

XS = [1.0, 2.0]
ENV = {"HOTSERVE_VERSION_SETTLE_SECONDS": "0.2", "HOTSERVE_MAX_NUM_LOAD_RETRIES": "0"}


def predict(s: ServerProcess, path: str) -> httpx.Response:
    return httpx.post(f"{s.url}/v1/models/{path}:predict", json={"instances": XS}, timeout=10)


async def eventually(check: object, timeout: float = 20.0) -> None:
    """Poll `check()` (returns truthy) until it holds."""
    assert callable(check)
    with anyio.fail_after(timeout):
        while not check():
            await anyio.sleep(0.1)


@pytest.fixture
def bases(tmp_path: Path, bias_versions: Path) -> dict[str, Path]:
    out = {}
    for name, first in (("a", 1), ("b", 2)):
        base = tmp_path / name
        base.mkdir()
        publish(bias_versions / str(first), base, first)
        out[name] = base
    return out


@pytest.fixture
def reloading(tmp_path: Path, bases: dict[str, Path]) -> Iterator[tuple[ServerProcess, Path]]:
    cfg = tmp_path / "models.config"
    cfg.write_text(models_config({"a": str(bases["a"])}))
    s = ServerProcess(
        [f"--model_config_file={cfg}", "--model_config_file_poll_wait_seconds=1"], env=ENV
    )
    s.start(tmp_path / "server.log")
    yield s, cfg
    s.stop()


async def test_reload_adds_removes_and_relabels_while_serving(
    reloading: tuple[ServerProcess, Path], bases: dict[str, Path], bias_versions: Path
) -> None:
    s, cfg = reloading
    assert version_of(predict(s, "a").json()["predictions"], XS) == 1
    # add b with a label on a version that does not exist yet; remove a
    labels = 'model_version_policy { all {} } version_labels { key: "stable" value: 3 }'
    cfg.write_text(models_config({"b": str(bases["b"])}, {"b": labels}))
    await eventually(lambda: predict(s, "b").status_code == 200)
    await eventually(lambda: predict(s, "a").status_code == 404)
    status_a = httpx.get(f"{s.url}/v1/models/a").json()["model_version_status"]
    assert [e["state"] for e in status_a] == ["END"]  # removed models keep their END entries
    assert predict(s, "b/labels/stable").status_code == 404  # label target not loaded yet
    publish(bias_versions / "3", bases["b"], 3)
    await eventually(lambda: predict(s, "b/labels/stable").status_code == 200)
    assert version_of(predict(s, "b/labels/stable").json()["predictions"], XS) == 3
    # move the label to a version that is not available: it keeps answering from 3
    cfg.write_text(
        models_config(
            {"b": str(bases["b"])},
            {"b": 'model_version_policy { all {} } version_labels { key: "stable" value: 4 }'},
        )
    )
    await eventually(lambda: s.log().count("config reload:") == 2)  # the relabel is applied
    assert version_of(predict(s, "b/labels/stable").json()["predictions"], XS) == 3
    publish(bias_versions / "4", bases["b"], 4)

    def moved() -> bool:
        r = predict(s, "b/labels/stable")
        return r.status_code == 200 and version_of(r.json()["predictions"], XS) == 4

    await eventually(moved)


async def test_bad_config_keeps_the_old_one(reloading: tuple[ServerProcess, Path]) -> None:
    s, cfg = reloading
    cfg.write_text("model_config_list { this is not a text proto")
    await eventually(lambda: "keeping the previous config" in s.log())
    assert predict(s, "a").status_code == 200


async def test_http_up_before_models_and_labels_never_block_startup(
    tmp_path: Path, bias_versions: Path
) -> None:
    base = tmp_path / "late"
    base.mkdir()
    cfg = tmp_path / "models.config"
    cfg.write_text(
        models_config({"late": str(base)}, {"late": 'version_labels { key: "canary" value: 9 }'})
    )
    s = ServerProcess([f"--model_config_file={cfg}"], env=ENV)
    s.start(tmp_path / "server.log", wait_ready=False)
    try:
        assert httpx.get(f"{s.url}/healthz").status_code == 200
        assert httpx.get(f"{s.url}/readyz").status_code == 503
        assert predict(s, "late").status_code == 404
        publish(bias_versions / "1", base, 1)
        await eventually(lambda: httpx.get(f"{s.url}/readyz").status_code == 200)
        assert version_of(predict(s, "late").json()["predictions"], XS) == 1
        assert predict(s, "late/labels/canary").status_code == 404
    finally:
        s.stop()


async def test_resource_preserving_policy_swaps(tmp_path: Path, bias_versions: Path) -> None:
    base = tmp_path / "rp"
    base.mkdir()
    publish(bias_versions / "1", base, 1)
    env = {**ENV, "HOTSERVE_LOAD_POLICY": "resource_preserving"}
    s = ServerProcess(["--model_name=rp", f"--model_base_path={base}"], env=env)
    s.start(tmp_path / "server.log")
    try:
        publish(bias_versions / "2", base, 2)

        def swapped() -> bool:
            r = predict(s, "rp")
            return r.status_code == 200 and version_of(r.json()["predictions"], XS) == 2

        await eventually(swapped)
        states = {
            e["version"]: e["state"]
            for e in httpx.get(f"{s.url}/v1/models/rp").json()["model_version_status"]
        }
        assert states == {"2": "AVAILABLE", "1": "END"}
    finally:
        s.stop()
