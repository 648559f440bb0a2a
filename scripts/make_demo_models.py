"""Build hotserve's demo model repository (TF1-style SavedModels, TF Serving layout).

Usage: ``python scripts/make_demo_models.py [--out models]``

Writes ``<out>/<model>/<version>/{saved_model.pb, variables/, assets.extra/}``:

* ``half_plus_two/1``: ``y = 0.5 * x + 2``; ``half_plus_two/2``: ``y = 0.5 * x + 3``.
  Signatures ``serving_default`` (predict), ``regress_x_to_y`` (regress) and
  ``classify_x_to_y`` (classify); the latter two take serialized ``tf.Example`` protos.
* ``mlp/1``: 784 -> 512 (relu) -> 512 (relu) -> 10 (softmax), weights drawn from a fixed
  numpy seed, plus a one-request ``assets.extra/tf_serving_warmup_requests``.

Contract: deterministic. Running it twice yields identical variable values (the bytes of
``saved_model.pb`` may differ). Each version is built in a staging directory under ``<out>``
and moved into place with a rename, so a watching server never sees a half-written version.
Weights are fed into the variable initializers rather than baked in as graph constants, which
keeps ``saved_model.pb`` small.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

logger = logging.getLogger(__name__)

SEED = 0
MLP_SIZES = (784, 512, 512, 10)
HALF_PLUS_TWO_BIAS = {1: 2.0, 2: 3.0}

v1 = tf.compat.v1
SignatureMap = dict[str, Any]
# Builds the graph inside the current default graph; returns the signature map and the
# initial value of every variable (fed into its initializer).
GraphBuilder = Callable[[], tuple[SignatureMap, dict[Any, np.ndarray]]]


def variable(name: str, value: Any, initial: dict[Any, np.ndarray], *, ref: bool = False) -> Any:
    """A float32 variable whose value is recorded in ``initial`` to be fed at init time.

    Feeding keeps the weights out of the GraphDef (no multi-MB constants in saved_model.pb).
    ``ref=True`` makes a TF1 reference variable (``VariableV2``, read through ``float32_ref``
    tensors) like the ones in TF Serving's own test models; the default is a resource variable.
    """
    array = np.asarray(value, dtype=np.float32)
    var = v1.Variable(
        tf.zeros(array.shape, tf.float32),
        name=name,
        dtype=tf.float32,
        use_resource=False if ref else None,
    )
    initial[var] = array
    return var


def tensor_info(tensor: Any) -> Any:
    return v1.saved_model.utils.build_tensor_info(tensor)


def signature_def(inputs: dict[str, Any], outputs: dict[str, Any], method: str) -> Any:
    return v1.saved_model.signature_def_utils.build_signature_def(
        inputs={k: tensor_info(t) for k, t in inputs.items()},
        outputs={k: tensor_info(t) for k, t in outputs.items()},
        method_name=method,
    )


def _half_plus_two_graph(bias: float) -> GraphBuilder:
    def build() -> tuple[SignatureMap, dict[Any, np.ndarray]]:
        initial: dict[Any, np.ndarray] = {}
        a = variable("a", 0.5, initial)
        b = variable("b", bias, initial)
        x = v1.placeholder(tf.float32, shape=[None], name="x")
        y = tf.add(a * x, b, name="y")

        serialized = v1.placeholder(tf.string, shape=[None], name="tf_example")
        features = tf.io.parse_example(serialized, {"x": tf.io.FixedLenFeature([1], tf.float32)})
        y_example = tf.add(a * features["x"], b, name="y_from_example")  # [-1, 1]

        signatures = {
            "serving_default": signature_def(
                {"x": x}, {"y": y}, v1.saved_model.signature_constants.PREDICT_METHOD_NAME
            ),
            "regress_x_to_y": signature_def(
                {"inputs": serialized},
                {"outputs": y_example},
                v1.saved_model.signature_constants.REGRESS_METHOD_NAME,
            ),
            "classify_x_to_y": signature_def(
                {"inputs": serialized},
                {"scores": y_example},
                v1.saved_model.signature_constants.CLASSIFY_METHOD_NAME,
            ),
        }
        return signatures, initial

    return build


def mlp_weights(seed: int = SEED) -> list[tuple[np.ndarray, np.ndarray]]:
    """Glorot-uniform kernels and small biases for each layer, from a fixed numpy seed."""
    rng = np.random.default_rng(seed)
    layers = []
    for fan_in, fan_out in itertools.pairwise(MLP_SIZES):
        limit = np.sqrt(6.0 / (fan_in + fan_out))
        kernel = rng.uniform(-limit, limit, size=(fan_in, fan_out)).astype(np.float32)
        bias = rng.uniform(-0.01, 0.01, size=(fan_out,)).astype(np.float32)
        layers.append((kernel, bias))
    return layers


def _mlp_graph() -> tuple[SignatureMap, dict[Any, np.ndarray]]:
    images = v1.placeholder(tf.float32, shape=[None, MLP_SIZES[0]], name="images")
    initial: dict[Any, np.ndarray] = {}
    hidden = images
    layers = mlp_weights()
    for i, (kernel_val, bias_val) in enumerate(layers, start=1):
        with v1.variable_scope(f"dense{i}"):
            kernel = variable("kernel", kernel_val, initial)
            bias = variable("bias", bias_val, initial)
        hidden = tf.matmul(hidden, kernel) + bias
        if i < len(layers):
            hidden = tf.nn.relu(hidden)
    probabilities = tf.nn.softmax(hidden, name="probabilities")
    signatures = {
        "serving_default": signature_def(
            {"images": images},
            {"probabilities": probabilities},
            v1.saved_model.signature_constants.PREDICT_METHOD_NAME,
        )
    }
    return signatures, initial


def export_graph(build: GraphBuilder, export_dir: Path) -> None:
    """Build a fresh graph, initialize its variables from numpy and save it (TF1 builder)."""
    graph = tf.Graph()
    with graph.as_default(), v1.Session(graph=graph) as sess:
        signatures, initial = build()
        for var, value in initial.items():
            sess.run(var.initializer, feed_dict={var.initial_value: value})
        builder = v1.saved_model.builder.SavedModelBuilder(str(export_dir))
        builder.add_meta_graph_and_variables(
            sess, [v1.saved_model.tag_constants.SERVING], signature_def_map=signatures
        )
        builder.save()


def _write_mlp_warmup(version_dir: Path) -> None:
    """One PredictionLog: images = zeros[1, 784] on serving_default."""
    request = predict_pb2.PredictRequest(
        model_spec=model_pb2.ModelSpec(name="mlp", signature_name="serving_default")
    )
    request.inputs["images"].CopyFrom(tf.make_tensor_proto(np.zeros((1, MLP_SIZES[0]), np.float32)))
    log = prediction_log_pb2.PredictionLog(
        predict_log=prediction_log_pb2.PredictLog(request=request)
    )
    write_warmup(version_dir, [log])


def write_warmup(version_dir: Path, logs: list[Any]) -> None:
    """Write ``PredictionLog`` protos as TF Serving's warmup file, a TFRecord in
    ``<version>/assets.extra/tf_serving_warmup_requests``."""
    extra = version_dir / "assets.extra"
    extra.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(extra / "tf_serving_warmup_requests")) as writer:
        for log in logs:
            writer.write(log.SerializeToString())


def _publish(
    out: Path, model: str, version: int, build: GraphBuilder, warmup: bool = False
) -> None:
    final = out / model / str(version)
    final.parent.mkdir(parents=True, exist_ok=True)
    # A dot-prefixed, non-integer staging dir is ignored by TF-Serving-style version scans.
    staging_root = Path(tempfile.mkdtemp(prefix=".staging-", dir=out))
    try:
        staged = staging_root / str(version)
        export_graph(build, staged)
        if warmup:
            _write_mlp_warmup(staged)
        if final.exists():
            shutil.rmtree(final)
        os.replace(staged, final)
    finally:
        shutil.rmtree(staging_root, ignore_errors=True)
    logger.info("wrote %s version %d to %s", model, version, final)


def export_half_plus(export_dir: Path, bias: float) -> None:
    """A half_plus_two-style SavedModel computing 0.5*x + bias (hot-swap tests and benchmarks
    use a distinct bias per version to tell which version answered)."""
    export_graph(_half_plus_two_graph(bias), export_dir)


def _failing_half_plus_graph(bias: float) -> GraphBuilder:
    """half_plus_two's `serving_default` (x -> y) whose every call fails at run time: an Assert
    that fires for any non-empty x (TF raises InvalidArgumentError inside the session run), so
    the version loads, validates and warms up like a good one and breaks only when it serves."""

    def build() -> tuple[SignatureMap, dict[Any, np.ndarray]]:
        initial: dict[Any, np.ndarray] = {}
        a = variable("a", 0.5, initial)
        b = variable("b", bias, initial)
        x = v1.placeholder(tf.float32, shape=[None], name="x")
        never = tf.reduce_all(tf.less(x, x))  # False for any non-empty x
        check = v1.Assert(never, ["this version is broken on purpose"], name="broken")
        with tf.control_dependencies([check]):
            y = tf.add(a * x, b, name="y")
        signatures = {
            "serving_default": signature_def(
                {"x": x}, {"y": y}, v1.saved_model.signature_constants.PREDICT_METHOD_NAME
            )
        }
        return signatures, initial

    return build


def export_failing_half_plus(export_dir: Path, bias: float) -> None:
    """A half_plus_two-shaped SavedModel that loads fine and fails every request (rollout
    tests and the rollout demo's bad version)."""
    export_graph(_failing_half_plus_graph(bias), export_dir)


def export_mlp(export_dir: Path) -> None:
    """The demo MLP with its warmup record (the swap benchmark republishes it as new versions)."""
    export_graph(_mlp_graph, export_dir)
    _write_mlp_warmup(export_dir)


def build_all(out: Path) -> None:
    """Write every demo model under ``out`` (created if missing); existing versions replaced."""
    out.mkdir(parents=True, exist_ok=True)
    for version, bias in HALF_PLUS_TWO_BIAS.items():
        _publish(out, "half_plus_two", version, _half_plus_two_graph(bias))
    _publish(out, "mlp", 1, _mlp_graph, warmup=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=Path("models"), help="model repository")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    # TF logs its own INFO and v1-deprecation lines twice once the root handler exists.
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    build_all(args.out)


if __name__ == "__main__":
    main()
