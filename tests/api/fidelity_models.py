"""Small SavedModels the fidelity tests build for themselves (no ../shared needed).

Each builder writes `<base>/<version>/` with TF2's `tf.saved_model.save` and returns `base`.
TensorFlow is imported inside the builders, so importing this module stays cheap.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def blob(base: Path) -> Path:
    """One DT_STRING input `image_bytes` [None]; outputs `length` (int32 byte length of each
    element) and `echo_bytes` (the bytes back; the `_bytes` suffix makes TF Serving answer
    {"b64": ...}). The field case of tensorflow/serving#1141."""
    import tensorflow as tf

    class Blob(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
        def serve(self, image_bytes: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"length": tf.strings.length(image_bytes), "echo_bytes": image_bytes}

    m = Blob()
    tf.saved_model.save(m, str(base / "1"), signatures={"serving_default": m.serve})
    return base


def half_plus_two(base: Path, versions: tuple[int, ...] = (123, 124)) -> Path:
    """y = 0.5 x + 2 on a DT_FLOAT input `x` [None], one folder per version."""
    import tensorflow as tf

    class HalfPlusTwo(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
        def serve(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"y": 0.5 * x + 2.0}

    m = HalfPlusTwo()
    for version in versions:
        tf.saved_model.save(m, str(base / str(version)), signatures={"serving_default": m.serve})
    return base


def detector(base: Path) -> Path:
    """Outputs `scores` (one per image, batch-major) and `anchors` (a constant [3, 4] table with
    no batch dimension): works unbatched, cannot be split by a batcher (tensorflow/serving#2043,
    #276)."""
    import tensorflow as tf

    class Detector(tf.Module):
        @tf.function(
            input_signature=[tf.TensorSpec([None, 2, 2, 3], tf.uint8, name="input_tensor")]
        )
        def serve(self, input_tensor: tf.Tensor) -> dict[str, tf.Tensor]:
            scores = tf.reduce_mean(tf.cast(input_tensor, tf.float32), axis=[1, 2, 3]) / 255.0
            anchors = tf.constant(
                [[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]]
            )
            return {"scores": scores, "anchors": anchors}

    m = Detector()
    tf.saved_model.save(m, str(base / "1"), signatures={"serving_default": m.serve})
    return base


def bytes_examples(base: Path) -> Path:
    """Classify/regress over serialized tf.Examples holding one bytes feature `b`:
    `regress_len` answers `outputs` = len(b); `classify_len` answers `scores` = [[len(b)]]."""
    import tensorflow as tf

    spec = {"b": tf.io.FixedLenFeature([], tf.string)}

    class Examples(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
        def regress(self, inputs: tf.Tensor) -> dict[str, tf.Tensor]:
            parsed = tf.io.parse_example(inputs, spec)
            return {"outputs": tf.cast(tf.strings.length(parsed["b"]), tf.float32)}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
        def classify(self, inputs: tf.Tensor) -> dict[str, tf.Tensor]:
            parsed = tf.io.parse_example(inputs, spec)
            length = tf.cast(tf.strings.length(parsed["b"]), tf.float32)
            return {"scores": tf.expand_dims(length, 1)}

    m = Examples()
    signatures = {"regress_len": m.regress, "classify_len": m.classify}
    tf.saved_model.save(m, str(base / "1"), signatures=signatures)
    return base
