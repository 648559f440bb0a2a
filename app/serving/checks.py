"""TF Serving's request and result checks, as pure functions over `Signature`s and numpy arrays.

Codes and messages follow TF Serving: predict_util.cc (VerifySignature, VerifyRequestInputsSize,
the output filter), tensorflow/cc/saved_model/util.cc (GetInputValues), classifier.cc and
regressor.cc (Pre/PostProcess*). No I/O, no state: any thread may call these.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from app.core.types import Signature, TensorSpec
from app.errors import FailedPrecondition, Internal, InvalidArgument
from app.serving.types import Classification

Array = np.ndarray[Any, Any]

PREDICT = "tensorflow/serving/predict"
CLASSIFY = "tensorflow/serving/classify"
REGRESS = "tensorflow/serving/regress"

_TF_NAMES = {
    np.dtype(np.float16): "DT_HALF",
    np.dtype(np.float32): "DT_FLOAT",
    np.dtype(np.float64): "DT_DOUBLE",
    np.dtype(np.int8): "DT_INT8",
    np.dtype(np.int16): "DT_INT16",
    np.dtype(np.int32): "DT_INT32",
    np.dtype(np.int64): "DT_INT64",
    np.dtype(np.uint8): "DT_UINT8",
    np.dtype(np.uint16): "DT_UINT16",
    np.dtype(np.uint32): "DT_UINT32",
    np.dtype(np.uint64): "DT_UINT64",
    np.dtype(np.bool_): "DT_BOOL",
    np.dtype(np.complex64): "DT_COMPLEX64",
    np.dtype(np.complex128): "DT_COMPLEX128",
    np.dtype(object): "DT_STRING",
}


def tf_name(dtype: np.dtype[Any]) -> str:
    """TF's DataType name of a numpy dtype (bytes/str arrays count as DT_STRING)."""
    if dtype.kind in "SU":
        return "DT_STRING"
    return _TF_NAMES.get(dtype, f"DT_{dtype.name.upper()}")


def shape_text(shape: Sequence[int]) -> str:
    """TF's TensorShape::DebugString: "[2,3]"."""
    return "[" + ",".join(str(d) for d in shape) + "]"


def failed_precondition(message: str) -> FailedPrecondition:
    return FailedPrecondition(message)


def method_name(sig: Signature, api: str) -> None:
    """--enable_signature_method_name_check: predict accepts any of the three methods (INTERNAL
    otherwise, predict_util.cc VerifySignature); classify and regress want their own."""
    if api == "predict":
        if sig.method_name not in (PREDICT, CLASSIFY, REGRESS):
            raise Internal(
                "Expected prediction signature method_name to be one of "
                f"{{{PREDICT}, {CLASSIFY}, {REGRESS}}}. Was: {sig.method_name}"
            )
        return
    want, what = (CLASSIFY, "classification") if api == "classify" else (REGRESS, "regression")
    if sig.method_name != want:
        raise InvalidArgument(
            f"Expected {what} signature method_name to be {want}. Was: {sig.method_name}"
        )


def predict_inputs(sig: Signature, inputs: Mapping[str, Any]) -> None:
    """The request's input aliases against the signature's (no SignatureDef defaults in
    hotserve, so every input is required)."""
    sent, wanted = set(inputs), set(sig.inputs)
    if sent == wanted:
        return
    if len(sent) != len(wanted):
        raise InvalidArgument(
            f"input size does not match signature: {len(sent)}!={len(wanted)} "
            f"len({{{','.join(sorted(sent))}}}) != len({{{','.join(sorted(wanted))}}}). "
            f"Sent extra: {{{','.join(sorted(sent - wanted))}}}. "
            f"Missing but required: {{{','.join(sorted(wanted - sent))}}}."
        )
    for alias in sorted(wanted - sent):
        spec = sig.inputs[alias]
        raise InvalidArgument(
            f"Signature input alias: {alias}(feed name: {spec.tensor_name}) not found in request "
            f"and no default value provided. Inputs expected to be in the request "
            f"{{{','.join(sorted(sent))}}}, or default input alias set: "
        )


def fed_dtypes(sig: Signature, inputs: Mapping[str, Array]) -> None:
    """Typed inputs (gRPC TensorProtos) against the signature's dtypes, as TensorFlow's call frame
    checks a feed (FunctionCallFrame::SetArgs): INVALID_ARGUMENT "Expects arg[i] to be float but
    double is provided", i counting the signature's inputs in alias order. Not for REST, whose
    JSON numbers carry no dtype (they are cast). Strings are left to the model: a signature may
    declare a dtype its string placeholder does not have (half_plus_three's regress input)."""
    for i, alias in enumerate(sorted(sig.inputs)):
        arr = inputs.get(alias)
        declared = sig.inputs[alias].dtype
        if arr is None or arr.dtype.kind in "OSU" or declared == "DT_STRING":
            continue
        sent = tf_name(arr.dtype)
        if sent != declared:
            raise InvalidArgument(
                f"Expects arg[{i}] to be {declared[3:].lower()} but {sent[3:].lower()} is provided"
            )


def output_filter(sig: Signature, aliases: Sequence[str]) -> list[str]:
    """The filtered output aliases, in request order (empty: every output)."""
    seen: list[str] = []
    for alias in aliases:
        if alias not in sig.outputs:
            raise InvalidArgument(
                f"output tensor alias not found in signature: {alias} Outputs expected to be in "
                f"the set {{{','.join(sorted(sig.outputs))}}}."
            )
        if alias in seen:
            raise InvalidArgument(f"duplicate output tensor alias: {alias}")
        seen.append(alias)
    return seen


def classify_io(sig: Signature) -> tuple[str, str | None, str | None]:
    """(input alias "inputs", classes alias or None, scores alias or None):
    classifier.cc PreProcessClassification."""
    if len(sig.inputs) != 1:
        raise InvalidArgument("Expected one input Tensor.")
    if len(sig.outputs) not in (1, 2):
        raise InvalidArgument(f"Expected one or two output Tensors, found {len(sig.outputs)}")
    if "inputs" not in sig.inputs:
        raise FailedPrecondition(
            f"No classification inputs found in SignatureDef: {debug_string(sig)}"
        )
    classes = "classes" if "classes" in sig.outputs else None
    scores = "scores" if "scores" in sig.outputs else None
    if classes is None and scores is None:
        raise FailedPrecondition(
            'Expected classification signature outputs to contain at least one of "classes" '
            f'or "scores". Signature was: {debug_string(sig)}'
        )
    return "inputs", classes, scores


def regress_io(sig: Signature) -> tuple[str, str]:
    """(input alias "inputs", output alias "outputs"): regressor.cc PreProcessRegression."""
    if len(sig.inputs) != 1:
        raise InvalidArgument("Expected one input Tensor.")
    if len(sig.outputs) != 1:
        raise InvalidArgument("Expected one output Tensor.")
    if "inputs" not in sig.inputs:
        raise FailedPrecondition(f"No regression inputs found in SignatureDef: {debug_string(sig)}")
    if "outputs" not in sig.outputs:
        raise FailedPrecondition(
            f"No regression outputs found in SignatureDef: {debug_string(sig)}"
        )
    return "inputs", "outputs"


def classification(classes: Array | None, scores: Array | None, examples: int) -> Classification:
    """classifier.cc PostProcessClassificationResult's checks."""
    if classes is not None:
        _classify_output(classes, "classes", "DT_STRING", examples)
    if scores is not None:
        _classify_output(scores, "scores", "DT_FLOAT", examples)
    if classes is not None and scores is not None and classes.shape[1] != scores.shape[1]:
        raise InvalidArgument(
            "Tensors class and score should match in dim_size(1). "
            f"Got {classes.shape[1]} vs. {scores.shape[1]}"
        )
    return Classification(classes, scores)


def _classify_output(arr: Array, what: str, dtype: str, examples: int) -> None:
    if arr.ndim != 2:
        raise InvalidArgument(
            f"Expected Tensor shape: [batch_size num_classes] but got {shape_text(arr.shape)}"
        )
    if tf_name(arr.dtype) != dtype:
        raise InvalidArgument(f"Expected {what} Tensor of {dtype}. Got: {tf_name(arr.dtype)}")
    if arr.shape[0] != examples:
        raise InvalidArgument(
            f"Expected {what} output batch size of {examples}. Got: {arr.shape[0]}"
        )


def regression(values: Array, examples: int) -> Array:
    """regressor.cc PostProcessRegressionResult: float32 [batch] or [batch, 1] -> [batch]."""
    if not (values.ndim == 1 or (values.ndim == 2 and values.shape[1] == 1)):
        raise InvalidArgument(
            "Expected output Tensor shape to be either [batch_size] or [batch_size, 1] "
            f"but got {shape_text(values.shape)}"
        )
    if values.shape[0] != examples:
        raise InvalidArgument(
            f"Input batch size did not match output batch size: {examples} vs. {values.shape[0]}"
        )
    if values.dtype != np.float32:
        # Two spaces after the period, as in TF's regressor.cc.
        raise InvalidArgument(f"Expected output Tensor of DT_FLOAT.  Got: {tf_name(values.dtype)}")
    return values.reshape(-1)


def debug_string(sig: Signature) -> str:
    """The SignatureDef in protobuf text format (TF's `signature.DebugString()`), maps sorted."""
    lines: list[str] = []
    for field, specs in (("inputs", sig.inputs), ("outputs", sig.outputs)):
        for key in sorted(specs):
            lines += [f"{field} {{", f"  key: {_quote(key)}", "  value {"]
            lines += ["    " + line for line in _tensor_info_lines(specs[key])]
            lines += ["  }", "}"]
    lines.append(f"method_name: {_quote(sig.method_name)}")
    return "\n".join(lines) + "\n"


def _tensor_info_lines(spec: TensorSpec) -> list[str]:
    lines = [f"name: {_quote(spec.tensor_name)}"] if spec.tensor_name else []
    lines += [f"dtype: {spec.dtype}", "tensor_shape {"]
    if spec.shape is None:
        lines.append("  unknown_rank: true")
    for dim in spec.shape or ():
        lines += ["  dim {", f"    size: {dim}", "  }"]
    return [*lines, "}"]


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
