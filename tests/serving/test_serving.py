"""The serving layer with plain values: pinning, signature lookup per API and edge, the method
check, output filters, deadlines on the direct path, and TF Serving's result checks."""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import numpy as np
import pytest

from app.core.types import Signature, TensorSpec
from app.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
)
from app.main import create_app
from app.serving import checks
from app.serving.service import Serving
from app.serving.types import ModelRef
from app.settings import Settings
from tests.fakes import SlowLoader

F = "DT_FLOAT"


def sig(method: str, inputs: tuple[str, ...], outputs: tuple[str, ...]) -> Signature:
    return Signature(
        "s",
        method,
        {a: TensorSpec(a, F, (-1,), f"{a}:0") for a in inputs},
        {a: TensorSpec(a, F, (-1,), f"{a}:0") for a in outputs},
    )


def test_method_name_check_follows_tf_serving() -> None:
    classify = sig(checks.CLASSIFY, ("inputs",), ("scores",))
    checks.method_name(classify, "predict")  # predict accepts any of the three
    with pytest.raises(Internal, match="Expected prediction signature method_name"):
        checks.method_name(sig("custom", ("x",), ("y",)), "predict")
    with pytest.raises(InvalidArgument, match=r"^Expected regression signature method_name to be"):
        checks.method_name(classify, "regress")


def test_output_filter_keeps_request_order() -> None:
    s = sig(checks.PREDICT, ("x",), ("a", "b", "c"))
    assert checks.output_filter(s, ["c", "a"]) == ["c", "a"]
    assert checks.output_filter(s, []) == []


def test_classification_and_regression_results_are_checked() -> None:
    scores = np.ones((2, 3), np.float32)
    with pytest.raises(InvalidArgument, match=r"Expected scores output batch size of 3\. Got: 2"):
        checks.classification(None, scores, 3)
    with pytest.raises(InvalidArgument, match=r"of DT_FLOAT\. Got: DT_DOUBLE"):
        checks.classification(None, scores.astype(np.float64), 2)
    assert checks.regression(np.ones((2, 1), np.float32), 2).shape == (2,)
    with pytest.raises(InvalidArgument, match=r"DT_FLOAT.  Got: DT_INT32"):
        checks.regression(np.ones(2, np.int32), 2)
    with pytest.raises(FailedPrecondition, match="No regression inputs found in SignatureDef"):
        checks.regress_io(sig(checks.REGRESS, ("x",), ("outputs",)))


def fake_settings(tmp_path: Path) -> Settings:
    base = tmp_path / "slow"
    (base / "1").mkdir(parents=True)
    (base / "1" / "saved_model.pb").write_bytes(b"fake")
    return Settings(model_name="slow", model_base_path=str(base))


async def test_pin_predict_and_deadline_on_the_direct_path(tmp_path: Path) -> None:
    app = create_app(fake_settings(tmp_path), loader=SlowLoader(0.3))
    async with app.router.lifespan_context(app):
        while not app.state.registry.is_ready():
            await anyio.sleep(0.02)
        serving: Serving = app.state.serving
        x = np.array([1.0, 2.0], np.float32)
        with serving.pin(ModelRef("slow")) as mv:
            s = serving.signature(mv, "", "predict")
            assert mv.used == {"serving_default"}  # --signature_check=used, whichever edge
            out = await serving.predict(mv, s, {"x": x}, None)
        assert out["y"].tolist() == [2.0, 4.0]
        with serving.pin(ModelRef("slow", version=1)) as mv:
            assert mv.refcount >= 1  # pinned while the block runs
            # An expired request never reaches the model (a running call is not interrupted,
            # as in TF Serving: the deadline bounds the wait for it).
            seen = len(mv.servable.seen)  # type: ignore[attr-defined]
            with pytest.raises(DeadlineExceeded):
                await serving.predict(mv, s, {"x": x}, time.monotonic() - 0.001)
            assert len(mv.servable.seen) == seen  # type: ignore[attr-defined]
        with pytest.raises(NotFound), serving.pin(ModelRef("slow", version=9)):
            pass
        with serving.pin(ModelRef("slow")) as mv:
            with pytest.raises(FailedPrecondition, match=r'Serving signature key "n" not found\.'):
                serving.signature(mv, "n", "predict")
            with pytest.raises(InvalidArgument, match='name: "n" not found in signature def'):
                serving.signature(mv, "n", "predict", edge="REST")
            with pytest.raises(InvalidArgument, match="No signature was found with the name: n"):
                serving.signature(mv, "n", "classify")
