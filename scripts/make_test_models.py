"""Build the SavedModels the test suite runs against, in TF Serving's repository layout.

Usage: ``python scripts/make_test_models.py --out DIR``

The suite must pass on a clean clone, so it cannot read TF Serving's own test models (they live
outside the repository, in ``../shared/testdata``, and may not be copied in). This script
rebuilds their equivalents from scratch, under the same directory names, so a test can say
``testdata / "saved_model_half_plus_two_cpu/00000123"`` whichever copy it runs against. Each
one mirrors what the tests rely on in TF Serving's model (graph style, variable kinds, signature
names, methods, tensor names, dtypes and shapes, answers), not its bytes:

* ``saved_model_half_plus_two_cpu/00000123``: TF1 graph with ref variables ``a = 0.5``,
  ``b = 2``, ``c = 3`` (``VariableV2``) and TF Serving's 5 signatures: ``serving_default``
  (``x: float32[-1,1] -> y``, where ``x`` is an Identity, not a placeholder, so any shape is
  accepted), ``regress_x_to_y``, ``regress_x_to_y2``, ``classify_x_to_y`` (serialized
  ``tf.Example`` in ``tf_example:0``, unknown rank; features ``x`` required, ``x2`` default 0)
  and ``regress_x2_to_y3`` (the ``x2:0`` float tensor itself). y = 0.5x+2, y2 = 0.5x+3,
  y3 = 0.5x2+3. Its metadata equals TF Serving's ``half_plus_two_model_metadata.json``.
* ``saved_model_half_plus_two_2_versions/{00000123,00000124}``: the same plus
  ``classify_x2_to_y3``.
* ``saved_model_half_plus_two_with_warmup/00000123``: the cpu model plus
  ``assets.extra/tf_serving_warmup_requests`` (a PredictLog ``x = [[1], [2]]`` on
  ``serving_default`` and a RegressLog ``x = 2`` on ``regress_x_to_y``).
* ``saved_model_half_plus_two_mlmd/00000123``: the cpu model with every signature tensor of
  unknown rank, plus ``assets.extra/mlmd_uuid``.
* ``saved_model_half_plus_three/00000123``: TF1, y = 0.5x+3; ``serving_default`` declares
  ``x``/``y`` float without a shape (read as scalars) and ``tensorflow/serving/regress``
  declares its serialized-Example input ``tf_example:0`` as DT_FLOAT, the quirks of TF Serving's
  model that clients (and hotserve) must live with.
* ``saved_model_counter/00000123``: TF1, a ref variable ``counter`` and predict signatures
  ``get_counter``, ``incr_counter``, ``reset_counter`` (no inputs) and ``incr_counter_by``
  (``delta``, unknown rank), each returning ``output: float32_ref[]``; no ``serving_default``.
* ``matrix_half_plus_two/1``: TF1 without variables, ``x: float32[-1,3,3] -> y = 0.5x+2``.
* ``conformance_multi_io/1``: TF1, several inputs and outputs of float32/int64/bool/string
  (``serving_default``), a scalar output (``total``) and independent lengths (``independent``).
* ``saved_model_half_plus_two_tf2_cpu/00000123``: a ``tf.Module`` saved with
  ``tf.saved_model.save`` (resource variables, ``__saved_model_init_op``, every method
  ``tensorflow/serving/predict``, a ``defaults`` entry ``x = [0]`` on ``serving_default``).
* ``half_plus_two_then_three/{1,2}`` (cpu, then half_plus_three) and ``hot_swap/1`` (cpu).

Not rebuilt: ``saved_model_half_plus_two_mkl`` (TF Serving's oneDNN variant); tests of it run
only where ``../shared/testdata`` exists.

Contract: deterministic values; ``--out`` is created and its models replaced. TF1 graphs use
``tf.compat.v1`` through ``make_demo_models``; the TF2 model is saved eagerly in the same
process (each TF1 graph is private, so the two do not mix). Takes a few seconds.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2, regression_pb2

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_demo_models import (
    SignatureMap,
    export_graph,
    signature_def,
    v1,
    variable,
    write_warmup,
)

logger = logging.getLogger(__name__)

CPU = "saved_model_half_plus_two_cpu/00000123"
TWO_VERSIONS = "saved_model_half_plus_two_2_versions"
WARMUP = "saved_model_half_plus_two_with_warmup/00000123"
MLMD = "saved_model_half_plus_two_mlmd/00000123"
THREE = "saved_model_half_plus_three/00000123"
COUNTER = "saved_model_counter/00000123"
MATRIX = "matrix_half_plus_two/1"
MULTI_IO = "conformance_multi_io/1"
TF2 = "saved_model_half_plus_two_tf2_cpu/00000123"
# Copies of the models above under the names tests use (TF Serving's testdata has them too).
COPIES = {
    f"{TWO_VERSIONS}/00000124": f"{TWO_VERSIONS}/00000123",
    "half_plus_two_then_three/1": CPU,
    "half_plus_two_then_three/2": THREE,
    "hot_swap/1": CPU,
    WARMUP: CPU,
}

PREDICT = v1.saved_model.signature_constants.PREDICT_METHOD_NAME
REGRESS = v1.saved_model.signature_constants.REGRESS_METHOD_NAME
CLASSIFY = v1.saved_model.signature_constants.CLASSIFY_METHOD_NAME
Built = tuple[SignatureMap, dict[Any, np.ndarray]]


def _parse_x_x2(serialized: Any, with_x2: bool = True) -> tuple[Any, Any]:
    """TF Serving's half_plus_two feature spec: ``x`` float[1] required, ``x2`` float[1]
    defaulting to 0. Returns the Identity tensors ``x`` and ``x2`` (shape [-1, 1])."""
    # The v1 ParseExample op, as in TF Serving's graphs: its shape function gives [-1, 1] for an
    # input of unknown rank (ParseExampleV2, behind tf.io.parse_example, gives unknown rank, and
    # the signatures would no longer match TF Serving's metadata).
    keys = ["x", "x2"] if with_x2 else ["x"]
    defaults = [tf.constant([], tf.float32), tf.constant([0.0])][: len(keys)]  # [] = required
    with tf.name_scope("ParseExample"):
        parsed = tf.raw_ops.ParseExample(
            serialized=serialized,
            names=tf.constant([], tf.string),
            sparse_keys=[],
            dense_keys=[tf.constant(k) for k in keys],
            dense_defaults=defaults,
            sparse_types=[],
            dense_shapes=[[1]] * len(keys),
        ).dense_values
    x = tf.identity(parsed[0], name="x")
    x2 = tf.identity(parsed[1], name="x2") if with_x2 else None
    return x, x2


def _half_plus_two(classify_x2: bool) -> Built:
    """TF Serving's half_plus_two graph (see the module docstring)."""
    initial: dict[Any, np.ndarray] = {}
    a = variable("a", 0.5, initial, ref=True)
    b = variable("b", 2.0, initial, ref=True)
    c = variable("c", 3.0, initial, ref=True)
    serialized = v1.placeholder(tf.string, shape=None, name="tf_example")
    x, x2 = _parse_x_x2(serialized)
    y = tf.add(a * x, b, name="y")
    y2 = tf.add(a * x, c, name="y2")
    y3 = tf.add(a * x2, c, name="y3")
    signatures = {
        "serving_default": signature_def({"x": x}, {"y": y}, PREDICT),
        "regress_x_to_y": signature_def({"inputs": serialized}, {"outputs": y}, REGRESS),
        "regress_x_to_y2": signature_def({"inputs": serialized}, {"outputs": y2}, REGRESS),
        "regress_x2_to_y3": signature_def({"inputs": x2}, {"outputs": y3}, REGRESS),
        "classify_x_to_y": signature_def({"inputs": serialized}, {"scores": y}, CLASSIFY),
    }
    if classify_x2:
        signatures["classify_x2_to_y3"] = signature_def({"inputs": x2}, {"scores": y3}, CLASSIFY)
    return signatures, initial


def _unknown_rank(signatures: SignatureMap) -> SignatureMap:
    """The same signatures with every tensor's shape cleared to unknown rank (TF Serving's
    mlmd variant declares its tensors that way)."""
    for sig in signatures.values():
        for info in [*sig.inputs.values(), *sig.outputs.values()]:
            info.tensor_shape.Clear()
            info.tensor_shape.unknown_rank = True
    return signatures


def _declared(tensor: Any, dtype: Any) -> Any:
    """A TensorInfo naming ``tensor`` with ``dtype`` and no shape at all (what the 2017
    exporter of TF Serving's half_plus_three wrote; readers take a missing shape as scalar)."""
    return meta_graph_pb2.TensorInfo(name=tensor.name, dtype=dtype.as_datatype_enum)


def _half_plus_three() -> Built:
    initial: dict[Any, np.ndarray] = {}
    a = variable("a", 0.5, initial, ref=True)
    b = variable("b", 3.0, initial, ref=True)
    serialized = v1.placeholder(tf.string, shape=None, name="tf_example")
    x, _ = _parse_x_x2(serialized, with_x2=False)
    y = tf.add(a * x, b, name="y")
    regressed = tf.identity(y, name="Identity")

    def sig(inputs: dict[str, Any], outputs: dict[str, Any], method: str) -> Any:
        return meta_graph_pb2.SignatureDef(inputs=inputs, outputs=outputs, method_name=method)

    signatures = {
        "serving_default": sig(
            {"x": _declared(x, tf.float32)}, {"y": _declared(y, tf.float32)}, PREDICT
        ),
        # The input really is the string placeholder, declared float by the original exporter.
        "tensorflow/serving/regress": sig(
            {"inputs": _declared(serialized, tf.float32)},
            {"outputs": _declared(regressed, tf.float32)},
            REGRESS,
        ),
    }
    return signatures, initial


def _counter() -> Built:
    initial: dict[Any, np.ndarray] = {}
    counter = variable("counter", 0.0, initial, ref=True)
    with tf.name_scope("incr_counter_op"):
        incr = v1.assign_add(counter, 1.0)
    delta = v1.placeholder(tf.float32, shape=None, name="delta")
    with tf.name_scope("incr_counter_by_op"):
        incr_by = v1.assign_add(counter, delta)
    with tf.name_scope("reset_counter_op"):
        reset = v1.assign(counter, 0.0)
    # The variable's own output is the float32_ref tensor ("counter:0"), as in TF Serving's.
    value = counter.op.outputs[0]
    signatures = {
        "get_counter": signature_def({}, {"output": value}, PREDICT),
        "incr_counter": signature_def({}, {"output": incr}, PREDICT),
        "incr_counter_by": signature_def({"delta": delta}, {"output": incr_by}, PREDICT),
        "reset_counter": signature_def({}, {"output": reset}, PREDICT),
    }
    return signatures, initial


def _matrix() -> Built:
    x = v1.placeholder(tf.float32, shape=[None, 3, 3], name="x")
    y = tf.add(tf.constant(0.5) * x, tf.constant(2.0), name="y")
    return {"serving_default": signature_def({"x": x}, {"y": y}, PREDICT)}, {}


def _multi_io() -> Built:
    def vector(dtype: Any, name: str) -> Any:
        return v1.placeholder(dtype, shape=[None], name=name)

    x, n = vector(tf.float32, "x"), vector(tf.int64, "n")
    flag, text = vector(tf.bool, "flag"), vector(tf.string, "text")
    total_x = vector(tf.float32, "total_x")
    a, b = vector(tf.float32, "a"), vector(tf.float32, "b")
    outputs = {
        "x_plus_one": x + 1.0,
        "n_doubled": n * 2,
        "flag_negated": tf.logical_not(flag),
        "text_echo": tf.identity(text),
        "text_bytes": tf.identity(text),  # the `_bytes` suffix makes REST render it as b64
        "text_length": tf.strings.length(text),  # int32 byte length
    }
    signatures = {
        "serving_default": signature_def(
            {"x": x, "n": n, "flag": flag, "text": text}, outputs, PREDICT
        ),
        "total": signature_def({"x": total_x}, {"total": tf.reduce_sum(total_x)}, PREDICT),
        "independent": signature_def(
            {"a": a, "b": b}, {"a_doubled": a * 2.0, "b_tripled": b * 3.0}, PREDICT
        ),
    }
    return signatures, {}


class _HalfPlusTwoTF2(tf.Module):
    """TF Serving's TF2 half_plus_two: resource variables, tf.function signatures."""

    def __init__(self) -> None:
        super().__init__()
        self.a = tf.Variable(0.5, name="a")
        self.b = tf.Variable(2.0, name="b")
        self.c = tf.Variable(3.0, name="c")

    def _x(self, serialized: Any) -> Any:
        spec = {"x": tf.io.FixedLenFeature([1], tf.float32)}
        return tf.io.parse_example(serialized, spec)["x"]

    @tf.function(input_signature=[tf.TensorSpec([1], tf.float32)])
    def predict(self, x: Any = tf.constant([0.0])) -> Any:  # noqa: B008  (recorded as default)
        return {"y": self.a * x + self.b}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def regress_xy(self, inputs: Any) -> Any:
        return {"outputs": self.a * self._x(inputs) + self.b}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def regress_xy2(self, inputs: Any) -> Any:
        return {"outputs": self.a * self._x(inputs) + self.c}

    @tf.function(input_signature=[tf.TensorSpec([1], tf.float32)])
    def regress_x2y3(self, inputs: Any) -> Any:
        return {"outputs": self.a * inputs + self.c}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def classify_xy(self, inputs: Any) -> Any:
        return {"scores": self.a * self._x(inputs) + self.b}

    @tf.function(input_signature=[tf.TensorSpec([1], tf.float32)])
    def classify_x2y3(self, inputs: Any) -> Any:
        return {"scores": self.a * inputs + self.c}


def _export_tf2(export_dir: Path) -> None:
    module = _HalfPlusTwoTF2()
    signatures = {
        "serving_default": module.predict,
        "regress_x_to_y": module.regress_xy,
        "regress_x_to_y2": module.regress_xy2,
        "regress_x2_to_y3": module.regress_x2y3,
        "classify_x_to_y": module.classify_xy,
        "classify_x2_to_y3": module.classify_x2y3,
    }
    tf.saved_model.save(module, str(export_dir), signatures=signatures)


def _half_plus_two_warmup_logs() -> list[Any]:
    """TF Serving's warmup pair: predict x = [[1], [2]], then regress an Example x = 2."""
    spec = model_pb2.ModelSpec(name="half_plus_two_warmup", signature_name="serving_default")
    predict = predict_pb2.PredictRequest(model_spec=spec)
    predict.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([[1.0], [2.0]], np.float32)))
    regress = regression_pb2.RegressionRequest(
        model_spec=model_pb2.ModelSpec(name="half_plus_two_warmup", signature_name="regress_x_to_y")
    )
    regress.input.example_list.examples.add().features.feature["x"].float_list.value.append(2.0)
    return [
        prediction_log_pb2.PredictionLog(
            predict_log=prediction_log_pb2.PredictLog(request=predict)
        ),
        prediction_log_pb2.PredictionLog(
            regress_log=prediction_log_pb2.RegressLog(request=regress)
        ),
    ]


def build_all(out: Path) -> None:
    """Write every test model under ``out`` (created if missing); existing models replaced."""
    out.mkdir(parents=True, exist_ok=True)
    graphs = {
        CPU: lambda: _half_plus_two(classify_x2=False),
        f"{TWO_VERSIONS}/00000123": lambda: _half_plus_two(classify_x2=True),
        MLMD: _half_plus_two_unknown_rank,
        THREE: _half_plus_three,
        COUNTER: _counter,
        MATRIX: _matrix,
        MULTI_IO: _multi_io,
    }
    for rel, build in graphs.items():
        target = out / rel
        shutil.rmtree(target, ignore_errors=True)
        export_graph(build, target)
    shutil.rmtree(out / TF2, ignore_errors=True)
    _export_tf2(out / TF2)
    for rel, source in COPIES.items():
        shutil.rmtree(out / rel, ignore_errors=True)
        shutil.copytree(out / source, out / rel)
    write_warmup(out / WARMUP, _half_plus_two_warmup_logs())
    (out / MLMD / "assets.extra").mkdir(exist_ok=True)
    (out / MLMD / "assets.extra" / "mlmd_uuid").write_text("test_mlmd_uuid")
    logger.info("wrote the test models to %s", out)


def _half_plus_two_unknown_rank() -> Built:
    signatures, initial = _half_plus_two(classify_x2=False)
    return _unknown_rank(signatures), initial


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, required=True, help="directory to write into")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    build_all(args.out)


if __name__ == "__main__":
    main()
