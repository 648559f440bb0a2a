"""SavedModelLoader / SavedModelServable on real SavedModels.

The models come from scripts/make_test_models.py (the `testdata` fixture), which rebuilds TF
Serving's test models under the same names. Where TF Serving's own copies exist
(../shared/testdata, `tf_serving_testdata`), extra tests load those and check that the generated
ones declare the same signatures and give the same metadata as TF Serving's fixtures.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import config_pb2

from app import errors
from app.core.types import TensorSpec
from app.runtime.memory import release_memory
from app.runtime.saved_model import SavedModelLoader, SavedModelServable, session_config
from tests.harness import REPO

MODELS = [
    "saved_model_half_plus_two_cpu/00000123",
    "saved_model_half_plus_two_2_versions/00000123",
    "saved_model_half_plus_two_2_versions/00000124",
    "saved_model_half_plus_two_mlmd/00000123",
    "saved_model_half_plus_two_with_warmup/00000123",
    "saved_model_half_plus_two_tf2_cpu/00000123",
    "saved_model_half_plus_three/00000123",
    "saved_model_counter/00000123",
    "matrix_half_plus_two/1",
    "conformance_multi_io/1",
    "hot_swap/1",
    "half_plus_two_then_three/1",
    "half_plus_two_then_three/2",
]
# Only in TF Serving's testdata (oneDNN variant with extra Conv2D terms; not rebuilt).
TF_SERVING_ONLY = ["saved_model_half_plus_two_mkl/00000123"]
CPU = "saved_model_half_plus_two_cpu/00000123"
TWO_123 = "saved_model_half_plus_two_2_versions/00000123"

Get = Callable[[str], SavedModelServable]


@pytest.fixture(scope="session")
def model(testdata: Path) -> Iterator[Get]:
    """Load each test model at most once per session; unload them all at the end."""
    cache: dict[str, SavedModelServable] = {}
    loader = SavedModelLoader()

    def get(rel: str) -> SavedModelServable:
        if rel not in cache:
            cache[rel] = loader.load(testdata / rel)
        return cache[rel]

    yield get
    for servable in cache.values():
        servable.unload()


def f32(value: object) -> np.ndarray:
    return np.asarray(value, dtype=np.float32)


def x_example(x: float) -> dict[str, tuple[str, list[object]]]:
    return {"x": ("float", [x])}


@pytest.mark.parametrize("rel", MODELS)
def test_every_model_loads_and_converts_signatures(model: Get, rel: str) -> None:
    servable = model(rel)
    assert servable.signatures
    for key, signature in servable.signatures.items():
        assert signature.name == key
        assert all(spec.tensor_name for spec in signature.outputs.values())


@pytest.mark.parametrize(
    "rel",
    [
        CPU,
        "saved_model_half_plus_two_2_versions/00000124",
        "saved_model_half_plus_two_mlmd/00000123",
        "saved_model_half_plus_two_with_warmup/00000123",
        "hot_swap/1",
        "half_plus_two_then_three/1",
    ],
)
def test_half_plus_two_predict(model: Get, rel: str) -> None:
    out = model(rel).run("serving_default", {"x": f32([[2.0]])})
    np.testing.assert_allclose(out["y"], [[3.0]])


def test_declared_shape_is_not_enforced(model: Get) -> None:
    servable = model(CPU)
    np.testing.assert_allclose(
        servable.run("serving_default", {"x": f32([2.0, 3.0, 4.0])})["y"], [3.0, 3.5, 4.0]
    )
    scalar = servable.run("serving_default", {"x": f32(1.0)})["y"]
    assert isinstance(scalar, np.ndarray)
    assert scalar.shape == ()
    assert float(scalar) == 2.5
    np.testing.assert_allclose(
        servable.run("serving_default", {"x": f32([[1.0], [2.0]])})["y"], [[2.5], [3.0]]
    )


def test_inputs_are_cast_to_the_signature_dtype(model: Get) -> None:
    out = model(CPU).run("serving_default", {"x": np.array([[2.0]], dtype=np.float64)})
    assert out["y"].dtype == np.float32
    np.testing.assert_allclose(out["y"], [[3.0]])


def test_signatures_are_converted(model: Get) -> None:
    signatures = model(CPU).signatures
    assert set(signatures) == {
        "serving_default",
        "regress_x_to_y",
        "regress_x_to_y2",
        "regress_x2_to_y3",
        "classify_x_to_y",
    }
    default = signatures["serving_default"]
    assert default.method_name == "tensorflow/serving/predict"
    assert default.inputs == {"x": TensorSpec("x", "DT_FLOAT", (-1, 1), "x:0")}
    assert default.outputs["y"] == TensorSpec("y", "DT_FLOAT", (-1, 1), "y:0")
    regress = signatures["regress_x_to_y"].inputs["inputs"]
    assert (regress.dtype, regress.shape) == ("DT_STRING", None)
    counter = model("saved_model_counter/00000123").signatures["incr_counter_by"]
    assert counter.outputs["output"].dtype == "DT_FLOAT_REF"
    assert counter.outputs["output"].shape == ()
    init = model("saved_model_half_plus_two_tf2_cpu/00000123").signatures["__saved_model_init_op"]
    assert init.inputs == {}
    assert init.outputs["__saved_model_init_op"].dtype == "DT_INVALID"


def _dim(*sizes: int) -> dict[str, object]:
    """TF Serving's JSON for a known-rank TensorShapeProto."""
    return {"dim": [{"size": str(n), "name": ""} for n in sizes], "unknown_rank": False}


UNKNOWN_RANK = {"dim": [], "unknown_rank": True}


def _tensor(name: str, dtype: str, shape: dict[str, object]) -> dict[str, object]:
    return {"dtype": dtype, "tensor_shape": shape, "name": name}


def _sig(method: str, inputs: dict[str, object], outputs: dict[str, object]) -> dict[str, object]:
    return {
        "inputs": inputs,
        "outputs": outputs,
        "method_name": f"tensorflow/serving/{method}",
        "defaults": {},
    }


def half_plus_two_metadata(classify_x2: bool) -> dict[str, object]:
    """What the generated half_plus_two models must declare, written out field by field (the same
    as TF Serving's expected JSON, which is only compared where ../shared exists)."""
    examples = {"inputs": _tensor("tf_example:0", "DT_STRING", UNKNOWN_RANK)}
    x2 = {"inputs": _tensor("x2:0", "DT_FLOAT", _dim(-1, 1))}

    def out(key: str, tensor: str) -> dict[str, object]:
        return {key: _tensor(tensor, "DT_FLOAT", _dim(-1, 1))}

    signatures = {
        "serving_default": _sig(
            "predict", {"x": _tensor("x:0", "DT_FLOAT", _dim(-1, 1))}, out("y", "y:0")
        ),
        "regress_x_to_y": _sig("regress", examples, out("outputs", "y:0")),
        "regress_x_to_y2": _sig("regress", examples, out("outputs", "y2:0")),
        "regress_x2_to_y3": _sig("regress", x2, out("outputs", "y3:0")),
        "classify_x_to_y": _sig("classify", examples, out("scores", "y:0")),
    }
    if classify_x2:
        signatures["classify_x2_to_y3"] = _sig("classify", x2, out("scores", "y3:0"))
    return {"signature_def": {"signature_def": signatures}}


@pytest.mark.parametrize(("rel", "classify_x2"), [(CPU, False), (TWO_123, True)])
def test_metadata_of_the_half_plus_two_models(model: Get, rel: str, classify_x2: bool) -> None:
    assert json.loads(json.dumps(model(rel).metadata())) == half_plus_two_metadata(classify_x2)


FIXTURES = [
    (CPU, "half_plus_two_model_metadata.json"),
    (TWO_123, TWO_123.split("/", maxsplit=1)[0] + "_metadata.json"),
]


@pytest.mark.parametrize(("rel", "fixture"), FIXTURES)
def test_metadata_matches_tf_serving_fixture(
    model: Get, tf_serving_testdata: Path, rel: str, fixture: str
) -> None:
    """TF Serving's expected metadata, for its own model and for the generated one alike."""
    expected = json.loads((tf_serving_testdata / "expected" / fixture).read_text())["metadata"]
    own = SavedModelLoader().load(tf_serving_testdata / rel)
    try:
        assert json.loads(json.dumps(own.metadata())) == expected
    finally:
        own.unload()
    assert json.loads(json.dumps(model(rel).metadata())) == expected


def _declared(servable: SavedModelServable) -> dict[str, object]:
    """Each signature's method and, per tensor, dtype and shape (not the tensor names: TF2 and
    the generated TF1 conformance model name theirs differently)."""
    return {
        key: (
            sig.method_name,
            {k: (t.dtype, t.shape) for k, t in sig.inputs.items()},
            {k: (t.dtype, t.shape) for k, t in sig.outputs.items()},
        )
        for key, sig in servable.signatures.items()
        if not key.startswith("__")  # TF2's init-op pseudo-signature
    }


@pytest.mark.parametrize("rel", MODELS)
def test_generated_models_declare_what_tf_serving_s_do(
    model: Get, tf_serving_testdata: Path, rel: str
) -> None:
    """Every generated model stands in for TF Serving's model of the same name: same signature
    names, methods, dtypes and shapes, and the same answer on the default signature."""
    own = SavedModelLoader().load(tf_serving_testdata / rel)
    try:
        assert _declared(model(rel)) == _declared(own)
        default = own.signatures.get("serving_default")
        if default is not None and set(default.inputs) == {"x"}:
            x = f32(np.arange(1, 10).reshape(1, 3, 3) if "matrix" in rel else [[2.0]])
            theirs = own.run("serving_default", {"x": x})
            np.testing.assert_allclose(
                model(rel).run("serving_default", {"x": x})["y"], theirs["y"]
            )
    finally:
        own.unload()


@pytest.mark.parametrize("rel", TF_SERVING_ONLY)
def test_tf_serving_only_models(tf_serving_testdata: Path, rel: str) -> None:
    servable = SavedModelLoader().load(tf_serving_testdata / rel)
    try:
        assert servable.signatures
        out = servable.run("serving_default", {"x": f32([[2.0]])})
        np.testing.assert_allclose(out["y"], [[3.0]])
    finally:
        servable.unload()


def test_regress_and_classify_with_examples(model: Get) -> None:
    servable = model(CPU)
    examples = servable.serialize_examples(None, [x_example(80.0)])
    assert examples.dtype == object
    assert examples.shape == (1,)
    np.testing.assert_allclose(
        servable.run("regress_x_to_y", {"inputs": examples})["outputs"], [[42.0]]
    )
    twenty = servable.serialize_examples(None, [x_example(20.0)])
    np.testing.assert_allclose(
        servable.run("classify_x_to_y", {"inputs": twenty})["scores"], [[12.0]]
    )
    two = servable.serialize_examples(None, [x_example(2.0)])
    np.testing.assert_allclose(servable.run("regress_x_to_y2", {"inputs": two})["outputs"], [[4.0]])
    np.testing.assert_allclose(
        servable.run("regress_x2_to_y3", {"inputs": f32([[4.0]])})["outputs"], [[5.0]]
    )


def test_serialize_examples_merges_context_example_wins(model: Get) -> None:
    servable = model(CPU)
    batch = servable.serialize_examples(
        {"x": ("float", [10.0]), "tag": ("bytes", [b"ctx"])},
        [{}, x_example(20.0), {"n": ("int64", [2**62])}],
    )
    parsed = [tf.train.Example.FromString(raw) for raw in batch]
    assert [p.features.feature["x"].float_list.value[0] for p in parsed] == [10.0, 20.0, 10.0]
    assert parsed[0].features.feature["tag"].bytes_list.value[0] == b"ctx"
    assert parsed[2].features.feature["n"].int64_list.value[0] == 2**62
    np.testing.assert_allclose(
        servable.run("regress_x_to_y", {"inputs": batch[:2]})["outputs"], [[7.0], [12.0]]
    )


def test_serialize_examples_rejects_bad_features(model: Get) -> None:
    servable = model(CPU)
    with pytest.raises(errors.InvalidArgument):
        servable.serialize_examples(None, [{"x": ("complex", [1.0])}])
    with pytest.raises(errors.InvalidArgument):
        servable.serialize_examples(None, [{"x": ("int64", [2**64])}])


def test_int64_feature_for_float_parser_is_invalid_argument(model: Get) -> None:
    servable = model(CPU)
    examples = servable.serialize_examples(None, [{"x": ("int64", [2])}])
    with pytest.raises(errors.InvalidArgument) as info:
        servable.run("regress_x_to_y", {"inputs": examples})
    assert "[[" not in info.value.message


def test_half_plus_three(model: Get) -> None:
    servable = model("saved_model_half_plus_three/00000123")
    out = servable.run("serving_default", {"x": f32([1.0, 2.0, 5.0])})
    np.testing.assert_allclose(out["y"], [3.5, 4.0, 5.5])
    examples = servable.serialize_examples(None, [x_example(1.0), x_example(2.0)])
    out = servable.run("tensorflow/serving/regress", {"inputs": examples})
    np.testing.assert_allclose(np.ravel(out["outputs"]), [3.5, 4.0])


def test_versions_of_then_three_differ(model: Get) -> None:
    one = model("half_plus_two_then_three/1").run("serving_default", {"x": f32([2.0])})
    two = model("half_plus_two_then_three/2").run("serving_default", {"x": f32([2.0])})
    np.testing.assert_allclose(one["y"], [3.0])
    np.testing.assert_allclose(two["y"], [4.0])


def test_2_versions_classify_x2_to_y3(model: Get) -> None:
    out = model("saved_model_half_plus_two_2_versions/00000124").run(
        "classify_x2_to_y3", {"inputs": f32([[4.0]])}
    )
    np.testing.assert_allclose(out["scores"], [[5.0]])


def test_tf2_model(model: Get) -> None:
    servable = model("saved_model_half_plus_two_tf2_cpu/00000123")
    np.testing.assert_allclose(servable.run("serving_default", {"x": f32([2.0])})["y"], [3.0])
    np.testing.assert_allclose(
        servable.run("serving_default", {"x": f32([2.0, 4.0])})["y"], [3.0, 4.0]
    )
    # x has a default (0) in the SignatureDef, so it may be left out.
    np.testing.assert_allclose(servable.run("serving_default", {})["y"], [2.0])
    examples = servable.serialize_examples(None, [x_example(80.0)])
    out = servable.run("regress_x_to_y", {"inputs": examples})
    np.testing.assert_allclose(out["outputs"], [[42.0]])


def test_counter_ref_typed_outputs(model: Get) -> None:
    servable = model("saved_model_counter/00000123")
    first = servable.run("incr_counter_by", {"delta": f32(5.0)})["output"]
    second = servable.run("incr_counter_by", {"delta": f32(5.0)})["output"]
    assert second.dtype == np.float32
    assert float(second) == float(first) + 5.0
    with pytest.raises(errors.InvalidArgument, match="Failed to get input map for signature"):
        servable.run("get_counter", {})


def test_matrix_model(model: Get) -> None:
    x = np.arange(1, 10, dtype=np.float32).reshape(1, 3, 3)
    out = model("matrix_half_plus_two/1").run("serving_default", {"x": x})
    np.testing.assert_allclose(out["y"], 0.5 * x + 2)


def test_conformance_multi_io_dtypes(model: Get) -> None:
    text = np.array([b"hello", b"a\x00\xff", "h\u00e9".encode()], dtype=object)
    out = model("conformance_multi_io/1").run(
        "serving_default",
        {
            "x": f32([1.5, -1.0, 0.0]),
            "n": np.array([2**53 + 1, -3, 0], dtype=np.int64),
            "flag": np.array([True, False, True]),
            "text": text,
        },
    )
    np.testing.assert_allclose(out["x_plus_one"], [2.5, 0.0, 1.0])
    assert out["n_doubled"].dtype == np.int64
    assert out["n_doubled"].tolist() == [2 * (2**53 + 1), -6, 0]
    assert out["flag_negated"].tolist() == [False, True, False]
    assert out["text_echo"].dtype == object
    assert out["text_echo"].tolist() == text.tolist()
    assert out["text_bytes"].tolist() == text.tolist()
    assert out["text_length"].tolist() == [5, 3, 3]


def test_conformance_scalar_output_and_independent_lengths(model: Get) -> None:
    servable = model("conformance_multi_io/1")
    total = servable.run("total", {"x": f32([1.0, 2.0, 3.5])})["total"]
    assert total.shape == ()
    assert float(total) == 6.5
    out = servable.run("independent", {"a": f32([1.0]), "b": f32([1.0, 2.0])})
    np.testing.assert_allclose(out["a_doubled"], [2.0])
    np.testing.assert_allclose(out["b_tripled"], [3.0, 6.0])


def test_bad_requests_are_invalid_argument(model: Get) -> None:
    servable = model(CPU)
    with pytest.raises(errors.InvalidArgument, match="not found in signature def"):
        servable.run("nope", {"x": f32([1.0])})
    with pytest.raises(errors.InvalidArgument):
        servable.run("serving_default", {"x": np.array([b"abc"], dtype=object)})
    with pytest.raises(errors.InvalidArgument, match=re.escape("extra: {y}")):
        servable.run("serving_default", {"x": f32([1.0]), "y": f32([1.0])})
    multi = model("conformance_multi_io/1")
    with pytest.raises(
        errors.InvalidArgument, match=re.escape("Missing but required: {flag,n,text}")
    ):
        multi.run("serving_default", {"x": f32([1.0])})
    with pytest.raises(errors.InvalidArgument):
        multi.run("total", {"x": np.array(["a"])})
    with pytest.raises(errors.InvalidArgument, match="Unsupported object type int"):
        multi.run(
            "serving_default",
            {
                "x": f32([1.0]),
                "n": np.array([1]),
                "flag": np.array([True]),
                "text": np.array([b"a", 1], dtype=object),
            },
        )
    with pytest.raises(errors.InvalidArgument, match="cannot be converted to int64"):
        multi.run(
            "serving_default",
            {
                "x": f32([1.0]),
                "n": np.array([1.5]),
                "flag": np.array([True]),
                "text": np.array([b""], dtype=object),
            },
        )


def test_object_arrays_of_numbers_are_cast(model: Get) -> None:
    out = model("conformance_multi_io/1").run(
        "independent", {"a": [1, 2.5], "b": np.array([True, 2], dtype=object)}
    )
    np.testing.assert_allclose(out["a_doubled"], [2.0, 5.0])
    np.testing.assert_allclose(out["b_tripled"], [3.0, 6.0])


def test_bad_shape_from_the_model_is_invalid_argument(model: Get) -> None:
    servable = model("saved_model_counter/00000123")
    with pytest.raises(errors.InvalidArgument) as info:
        servable.run("incr_counter_by", {"delta": f32([1.0, 2.0])})
    assert "must be the same size" in info.value.message
    assert "[[" not in info.value.message
    assert "\n" not in info.value.message


def test_concurrent_runs(model: Get) -> None:
    servable = model(CPU)
    failures: list[str] = []

    def worker(seed: int) -> None:
        for i in range(100):
            x = float(seed * 1000 + i)
            y = servable.run("serving_default", {"x": f32([[x]])})["y"]
            if float(y[0, 0]) != 0.5 * x + 2:
                failures.append(f"{x} -> {y}")

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []


def test_load_logs_duration_and_unload_is_idempotent(
    testdata: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="app.runtime.saved_model")
    loader = SavedModelLoader(intra_op_threads=1, inter_op_threads=1)
    servable = loader.load(testdata / CPU)
    assert any("Loaded SavedModel" in r.getMessage() for r in caplog.records)
    np.testing.assert_allclose(servable.run("serving_default", {"x": f32([2.0])})["y"], [3.0])
    servable.unload()
    servable.unload()
    with pytest.raises(errors.Unavailable):
        servable.run("serving_default", {"x": f32([2.0])})
    release_memory()


def _copy_cpu(testdata: Path, tmp_path: Path) -> Path:
    target = tmp_path / "1"
    shutil.copytree(testdata / CPU, target)
    return target


def test_load_missing_path_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(errors.LoadError) as info:
        SavedModelLoader().load(tmp_path / "missing")
    assert info.value.code == "NOT_FOUND"
    with pytest.raises(errors.LoadError) as info:
        SavedModelLoader().load(tmp_path)
    assert info.value.code == "NOT_FOUND"


@pytest.mark.parametrize("keep", [0.5, 0.0])
def test_load_truncated_saved_model_pb(testdata: Path, tmp_path: Path, keep: float) -> None:
    version = _copy_cpu(testdata, tmp_path)
    pb = version / "saved_model.pb"
    data = pb.read_bytes()
    pb.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(errors.LoadError) as info:
        SavedModelLoader().load(version)
    assert info.value.code == "DATA_LOSS"
    assert str(version) in info.value.message


def test_load_missing_variables(testdata: Path, tmp_path: Path) -> None:
    version = _copy_cpu(testdata, tmp_path)
    shutil.rmtree(version / "variables")
    with pytest.raises(errors.LoadError) as info:
        SavedModelLoader().load(version)
    assert info.value.code == "DATA_LOSS"


def test_load_corrupt_variables(testdata: Path, tmp_path: Path) -> None:
    version = _copy_cpu(testdata, tmp_path)
    data = next((version / "variables").glob("variables.data-*"))
    data.write_bytes(data.read_bytes()[:3])
    with pytest.raises(errors.LoadError) as info:
        SavedModelLoader().load(version)
    assert info.value.code != "OK"
    assert "[[" not in info.value.message


def test_load_wrong_tags(testdata: Path) -> None:
    with pytest.raises(errors.LoadError) as info:
        SavedModelLoader(tags=("gpu",)).load(testdata / CPU)
    assert info.value.code == "NOT_FOUND"
    assert "gpu" in info.value.message


def test_load_time_session_runs_execute_in_the_calling_thread() -> None:
    """The restore and init ops of a load run with inter_op_thread_pool=-1 (the loading
    thread), never in TensorFlow's process-wide inter-op pool that serving calls queue on;
    any options the loader passes are kept."""
    from tensorflow.core.protobuf import config_pb2

    from app.runtime.saved_model import InlineRuns

    class Recorder:
        graph = "the graph"

        def __init__(self) -> None:
            self.calls: list[tuple[object, object, config_pb2.RunOptions, object]] = []

        def run(self, fetches: object, feed: object, options: object, meta: object) -> str:
            assert isinstance(options, config_pb2.RunOptions)
            self.calls.append((fetches, feed, options, meta))
            return "ran"

    session = Recorder()
    inline = InlineRuns(session)
    assert inline.graph == "the graph"
    assert inline.run("restore", {"f": 1}) == "ran"
    inline.run(["init"], feed_dict=None, options=config_pb2.RunOptions(timeout_in_ms=5))
    (f1, d1, o1, _), (f2, _, o2, _) = session.calls
    assert (f1, d1, o1.inter_op_thread_pool) == ("restore", {"f": 1}, -1)
    assert (f2, o2.inter_op_thread_pool, o2.timeout_in_ms) == (["init"], -1, 5)


_POOL_BLOCKED_LOAD = r"""
import sys, threading
import numpy as np
from pathlib import Path
from app.runtime.saved_model import SavedModelLoader
import tensorflow as tf

v1 = tf.compat.v1
entered, release = threading.Event(), threading.Event()

def block(x):
    entered.set()
    release.wait(120)
    return x

# The first session of the process sizes TensorFlow's shared inter-op pool: one thread.
config = v1.ConfigProto(inter_op_parallelism_threads=1, intra_op_parallelism_threads=1)
graph = tf.Graph()
with graph.as_default():
    out = v1.py_func(block, [tf.constant(1.0)], tf.float32)
blocker = v1.Session(graph=graph, config=config)
t = threading.Thread(target=blocker.run, args=(out,), daemon=True)
t.start()
if not entered.wait(120):
    sys.exit("the blocking op never started")
loaded = []
loader = SavedModelLoader(intra_op_threads=1, inter_op_threads=1)
worker = threading.Thread(target=lambda: loaded.append(loader.load(Path(sys.argv[1]))))
worker.start()
worker.join(60)  # a failure bound, not a speed check: the load must not need the pool
done = not worker.is_alive()
release.set()
worker.join(120)
t.join(120)
y = loaded[0].run("serving_default", {"x": np.array([[2.0]], np.float32)})["y"]
print("LOADED_WHILE_POOL_BLOCKED" if done else "LOAD_WAITED_FOR_THE_POOL", float(y.ravel()[0]))
"""


def test_a_load_never_waits_for_tensorflows_shared_pool(testdata: Path) -> None:
    """With TensorFlow's process-wide inter-op pool fully taken (its one thread blocked in an
    op), a model still loads: its restore and init ops run in the loading thread (InlineRuns).
    Before, the restore queued on that pool, behind serving calls and ahead of them."""
    import subprocess
    import sys

    from tests.harness import REPO

    out = subprocess.run(
        [
            sys.executable,
            "-c",
            _POOL_BLOCKED_LOAD,
            str(testdata / "saved_model_half_plus_two_cpu/00000123"),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=600,
        check=False,
    )
    assert "LOADED_WHILE_POOL_BLOCKED 3.0" in out.stdout, out.stdout + out.stderr[-3000:]


def _executed_graph(
    path: Path, signature: str, config: Any
) -> tuple[list[tuple[str, str]], list[np.ndarray]]:
    """`signature` run once on ones: the executed partition graphs' nodes (name, op) and the
    outputs."""
    graph = tf.Graph()
    with tf.compat.v1.Session(graph=graph, config=config) as session:
        meta = tf.compat.v1.saved_model.loader.load(session, ["serve"], str(path))
        sig = meta.signature_def[signature]
        feeds = {}
        for info in sig.inputs.values():
            # The graph's shape, not the signature's: TF1 signatures may leave the rank unknown.
            known = graph.get_tensor_by_name(info.name).shape
            dims = known.as_list() if known.rank is not None else []
            shape = [d if d is not None else 2 for d in dims]
            feeds[info.name] = np.ones(shape, tf.dtypes.as_dtype(info.dtype).as_numpy_dtype)
        metadata = config_pb2.RunMetadata()
        outputs = session.run(
            [info.name for info in sig.outputs.values()],
            feeds,
            options=config_pb2.RunOptions(output_partition_graphs=True),
            run_metadata=metadata,
        )
    nodes = sorted((n.name, n.op) for g in metadata.partition_graphs for n in g.node)
    return nodes, outputs


class _Conv(tf.Module):
    """Conv2D + BiasAdd + Relu + FusedBatchNorm + MatMul: what grappler's remapper fuses."""

    def __init__(self) -> None:
        super().__init__()
        self.kernel = tf.Variable(tf.random.normal([3, 3, 3, 8], seed=1))
        self.bias = tf.Variable(tf.random.normal([8], seed=2))
        self.scale = tf.Variable(tf.ones([8]))
        self.offset = tf.Variable(tf.zeros([8]))
        self.dense = tf.Variable(tf.random.normal([8 * 8 * 8, 10], seed=3))

    @tf.function(input_signature=[tf.TensorSpec([None, 8, 8, 3], tf.float32)])
    def __call__(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
        y = tf.nn.relu(tf.nn.bias_add(tf.nn.conv2d(x, self.kernel, 1, "SAME"), self.bias))
        y, _, _ = tf.compat.v1.nn.fused_batch_norm(
            y, self.scale, self.offset, mean=tf.zeros([8]), variance=tf.ones([8]),
            is_training=False,
        )  # fmt: skip
        return {"out": tf.nn.softmax(tf.matmul(tf.reshape(y, [-1, 512]), self.dense))}


@pytest.mark.parametrize(
    ("name", "signature"),
    [
        ("mlp/1", "serving_default"),
        ("half_plus_two/2", "serving_default"),
        ("saved_model_counter/00000123", "incr_counter_by"),  # a TF1 ref variable
        ("saved_model_half_plus_three/00000123", "serving_default"),
        ("conv", "serving_default"),
    ],
)
def test_the_session_config_leaves_the_executed_graph_as_tfs_default(
    name: str, signature: str, testdata: Path, tmp_path: Path
) -> None:
    # The pass session_config turns off must not change what a model computes, or how.
    if name == "conv":
        module = _Conv()
        path = tmp_path / "conv"
        tf.saved_model.save(module, str(path), signatures={"serving_default": module.__call__})
    elif name.startswith("saved_model_"):
        path = testdata / name
    else:
        path = REPO / "models" / name
    ours, our_outputs = _executed_graph(path, signature, session_config(0, 0))
    default, default_outputs = _executed_graph(path, signature, config_pb2.ConfigProto())
    assert ours and ours == default
    if name == "conv":  # grappler's remapper still fused the convolution
        assert any("FusedConv2D" in op for _, op in ours), ours
    for a, b in zip(our_outputs, default_outputs, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)
