"""Warmup replay (assets.extra/tf_serving_warmup_requests) and synthetic warmup."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

from app import errors
from app.core import pacing
from app.core.types import Signature, TensorSpec
from app.runtime import warmup
from app.runtime.saved_model import SavedModelLoader, SavedModelServable

CPU = "saved_model_half_plus_two_cpu/00000123"


@pytest.fixture(scope="module")
def cpu(testdata: Path) -> Iterator[SavedModelServable]:
    servable = SavedModelLoader().load(testdata / CPU)
    yield servable
    servable.unload()


class Spy:
    """Wraps a servable and records (signature, inputs) of every run."""

    def __init__(self, inner: SavedModelServable) -> None:
        self.inner = inner
        self.calls: list[tuple[str, dict[str, np.ndarray]]] = []

    @property
    def signatures(self) -> Mapping[str, Signature]:
        return self.inner.signatures

    def run(self, signature: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.calls.append((signature, dict(inputs)))
        return self.inner.run(signature, inputs)


def predict_log(x: list[float], signature: str = "") -> prediction_log_pb2.PredictionLog:
    log = prediction_log_pb2.PredictionLog()
    request = log.predict_log.request
    request.model_spec.signature_name = signature
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.asarray(x, dtype=np.float32)))
    return log


def example(x: float) -> tf.train.Example:
    ex = tf.train.Example()
    ex.features.feature["x"].float_list.value.append(x)
    return ex


def write_logs(version_dir: Path, records: list[bytes]) -> Path:
    path = version_dir / warmup.WARMUP_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for record in records:
            writer.write(record)
    return path


def test_warmup_file_of_the_test_model(testdata: Path) -> None:
    servable = SavedModelLoader().load(testdata / "saved_model_half_plus_two_with_warmup/00000123")
    try:
        assert servable.warmup(1) == 2
        assert servable.warmup(3) == 2
    finally:
        servable.unload()


def test_each_record_runs_iterations_times(testdata: Path, cpu: SavedModelServable) -> None:
    spy = Spy(cpu)
    version = testdata / "saved_model_half_plus_two_with_warmup/00000123"
    assert warmup.replay(spy, version, 3) == 2
    assert [s for s, _ in spy.calls] == ["serving_default"] * 3 + ["regress_x_to_y"] * 3
    np.testing.assert_allclose(spy.calls[0][1]["x"], [[1.0], [2.0]])
    assert spy.calls[3][1]["inputs"].dtype == object


def test_no_warmup_file_returns_zero(cpu: SavedModelServable) -> None:
    assert cpu.warmup(1) == 0


def test_classify_with_context_and_multi_inference(tmp_path: Path, cpu: SavedModelServable) -> None:
    classify = prediction_log_pb2.PredictionLog()
    request = classify.classify_log.request
    request.model_spec.signature_name = "classify_x_to_y"
    request.input.example_list_with_context.context.CopyFrom(example(10.0))
    request.input.example_list_with_context.examples.add()
    multi = prediction_log_pb2.PredictionLog()
    multi.multi_inference_log.request.input.example_list.examples.append(example(2.0))
    for name in ("regress_x_to_y", "regress_x_to_y2"):
        multi.multi_inference_log.request.tasks.add().model_spec.signature_name = name
    write_logs(tmp_path, [classify.SerializeToString(), multi.SerializeToString()])
    spy = Spy(cpu)
    assert warmup.replay(spy, tmp_path, 1) == 2
    assert [s for s, _ in spy.calls] == ["classify_x_to_y", "regress_x_to_y", "regress_x_to_y2"]
    classified = cpu.run("classify_x_to_y", spy.calls[0][1])
    np.testing.assert_allclose(classified["scores"], [[7.0]])


def test_default_signature_is_serving_default(tmp_path: Path, cpu: SavedModelServable) -> None:
    write_logs(tmp_path, [predict_log([1.0]).SerializeToString()])
    spy = Spy(cpu)
    assert warmup.replay(spy, tmp_path, 1) == 1
    assert spy.calls[0][0] == "serving_default"


def test_1000_records_are_allowed(tmp_path: Path, cpu: SavedModelServable) -> None:
    write_logs(tmp_path, [predict_log([1.0]).SerializeToString()] * 1000)
    assert warmup.replay(cpu, tmp_path, 1) == 1000


def test_more_than_1000_records_fail(tmp_path: Path, cpu: SavedModelServable) -> None:
    path = write_logs(tmp_path, [predict_log([1.0]).SerializeToString()] * 1001)
    spy = Spy(cpu)
    with pytest.raises(errors.LoadError) as info:
        warmup.replay(spy, tmp_path, 1)
    assert info.value.message == (f"Number of warmup records exceeds the maximum (1000) at {path}")
    assert spy.calls == []


@pytest.mark.parametrize("kind", ["session_run_log", "predict_streamed_log"])
def test_unsupported_log_types_are_unimplemented(
    tmp_path: Path, cpu: SavedModelServable, kind: str
) -> None:
    log = prediction_log_pb2.PredictionLog()
    getattr(log, kind).SetInParent()
    write_logs(tmp_path, [log.SerializeToString()])
    with pytest.raises(errors.LoadError) as info:
        warmup.replay(cpu, tmp_path, 1)
    assert info.value.code == "UNIMPLEMENTED"


def test_unparsable_record_fails(tmp_path: Path, cpu: SavedModelServable) -> None:
    write_logs(tmp_path, [b"\xff\xff\xff\xff not a proto"])
    with pytest.raises(errors.LoadError) as info:
        warmup.replay(cpu, tmp_path, 1)
    assert info.value.code == "DATA_LOSS"


def test_corrupt_tfrecord_fails(tmp_path: Path, cpu: SavedModelServable) -> None:
    path = write_logs(tmp_path, [predict_log([1.0]).SerializeToString()])
    path.write_bytes(path.read_bytes()[:-6])
    with pytest.raises(errors.LoadError) as info:
        warmup.replay(cpu, tmp_path, 1)
    assert info.value.code == "DATA_LOSS"


def test_failing_request_fails(tmp_path: Path, cpu: SavedModelServable) -> None:
    write_logs(tmp_path, [predict_log([1.0], signature="nope").SerializeToString()])
    with pytest.raises(errors.LoadError) as info:
        warmup.replay(cpu, tmp_path, 1)
    assert info.value.code == "INVALID_ARGUMENT"
    assert "nope" in info.value.message


def test_empty_record_fails(tmp_path: Path, cpu: SavedModelServable) -> None:
    write_logs(tmp_path, [b""])
    with pytest.raises(errors.LoadError):
        warmup.replay(cpu, tmp_path, 1)


def test_synthetic_warmup(testdata: Path, cpu: SavedModelServable) -> None:
    # serving_default only: the other signatures take an input named "inputs".
    assert cpu.synthetic_warmup() == 1
    loader = SavedModelLoader()
    for rel, expected in [("conformance_multi_io/1", 3), ("saved_model_counter/00000123", 0)]:
        servable = loader.load(testdata / rel)
        try:
            assert servable.synthetic_warmup() == expected
        finally:
            servable.unload()


def test_synthetic_inputs_shapes() -> None:
    signature = Signature(
        name="s",
        method_name="tensorflow/serving/predict",
        inputs={
            "a": TensorSpec("a", "DT_FLOAT", (-1, 3)),
            "b": TensorSpec("b", "DT_INT64", None),
            "c": TensorSpec("c", "DT_STRING", ()),
        },
        outputs={"y": TensorSpec("y", "DT_FLOAT", (-1,))},
    )
    inputs = warmup.synthetic_inputs(signature)
    assert inputs is not None
    assert inputs["a"].shape == (1, 3)
    assert inputs["a"].dtype == np.float32
    assert inputs["b"].shape == (1,)
    assert inputs["b"].dtype == np.int64
    assert inputs["c"].shape == ()
    assert inputs["c"].item() == b""


def test_tile_rows_repeats_rows_in_order() -> None:
    tiled = warmup.tile_rows({"x": np.array([[1.0], [2.0]]), "k": np.array([b"a", b"b"])}, 5)
    assert tiled is not None
    np.testing.assert_array_equal(tiled["x"].ravel(), [1, 2, 1, 2, 1])
    assert list(tiled["k"]) == [b"a", b"b", b"a", b"b", b"a"]
    assert warmup.tile_rows({"x": np.array(1.0)}, 3) is None  # no batch dimension
    assert warmup.tile_rows({"x": np.zeros(2), "y": np.zeros(3)}, 3) is None  # none in common


def test_every_warmed_signature_runs_at_every_batch_size(testdata: Path) -> None:
    """What the warmup ran (both records of the test model: predict and regress) runs again
    at each batch size the batcher will use, its rows repeated."""
    servable = SavedModelLoader().load(testdata / "saved_model_half_plus_two_with_warmup/00000123")
    try:
        seen: list[tuple[str, dict[str, np.ndarray]]] = []
        spy = Spy(servable)
        version = testdata / "saved_model_half_plus_two_with_warmup/00000123"
        warmup.replay(spy, version, 1, lambda s, i: seen.append((s, i)))
        assert [s for s, _ in seen] == ["serving_default", "regress_x_to_y"]
        spy.calls.clear()
        assert warmup.run_batch_sizes(spy, seen, (1, 2, 3, 4)) == 4
        own = {s: len(next(iter(i.values()))) for s, i in seen}
        ran = sorted((s, len(next(iter(i.values())))) for s, i in spy.calls)
        assert ran == sorted((s, n) for s in own for n in (1, 2, 3, 4) if n != own[s])
        # the servable remembers what its own warmup ran
        servable.warmup(1)
        assert servable.warm_batch_sizes(tuple(range(1, 9))) == 8
    finally:
        servable.unload()


def test_a_size_the_model_refuses_is_skipped_not_fatal(cpu: SavedModelServable) -> None:
    class Refuses(Spy):
        def run(self, signature: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
            if len(inputs["x"]) > 2:
                raise errors.InvalidArgument("too many rows")
            return super().run(signature, inputs)

    spy = Refuses(cpu)
    samples = [("serving_default", {"x": np.array([[1.0]], np.float32)})]
    assert warmup.run_batch_sizes(spy, samples, (1, 2, 3, 4)) == 2


def test_prepare_makes_every_callable_before_the_first_request(testdata: Path) -> None:
    servable = SavedModelLoader().load(testdata / "saved_model_half_plus_two_with_warmup/00000123")
    try:
        with_inputs = [n for n, s in servable.signatures.items() if s.inputs]
        # the loader prepared them already: preparing again finds every callable made
        assert servable.prepare() == len(with_inputs) > 1
        out = servable.run("serving_default", {"x": np.array([[1.0]], np.float32)})
        np.testing.assert_allclose(out["y"], [[2.5]])
    finally:
        servable.unload()


def test_sizes_while_idle_run_only_while_no_request_is_in_flight() -> None:
    """The sizes above the model's largest recent batch (app.core.batch_usage) are warmed
    only while the paced load sees no request in flight."""
    demo = Path(__file__).resolve().parents[2] / "models" / "half_plus_two" / "1"
    servable = SavedModelLoader().load(demo)
    try:
        _check_sizes_while_idle(Spy(servable))
    finally:
        servable.unload()


def _check_sizes_while_idle(spy: Spy) -> None:
    (alias,) = spy.signatures["serving_default"].inputs
    samples = [("serving_default", {alias: np.array([1.0], np.float32)})]
    assert warmup.run_batch_sizes(spy, samples, (1, 2), (3, 4)) == 4  # not a paced load
    busy = [False]
    spy.calls.clear()
    with pacing.paced(pacing.Pacer(0.5, lambda: busy[0])):
        assert warmup.run_batch_sizes(spy, samples, (1, 2), (3, 4)) == 4  # idle: all
        busy[0] = True
        spy.calls.clear()
        assert warmup.run_batch_sizes(spy, samples, (1, 2), (3, 4)) == 2
    assert [len(i[alias]) for _, i in spy.calls] == [2]  # 1 is the sample's own size
