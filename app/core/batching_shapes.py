"""Shape rules of the micro-batcher: admitting a request, merging a batch, splitting the answers.

Pure functions on numpy arrays, no asyncio: `request_rows` and `batch_key` run on the event loop
for every request (so they are kept short); `merge_inputs`, `split_outputs` and
`assemble_parts` run in the worker thread that calls the model (or, for the rare split request,
on the loop when its last part arrives).

The rules and messages follow TF Serving's batching session (`batching_session.cc`,
`batching_util.cc`):
- every input of a request has a 0-th dimension and all agree on its size;
- a batch is padded up to the next `allowed_batch_sizes` entry with copies of a valid row (the
  first row of the last non-empty request), and the padding rows are dropped from the answers;
- with `pad_variable_length_inputs`, inputs whose non-batch dimensions differ are padded at the
  end of each dimension with the first element of that request's tensor (TF's choice: a value
  known to be valid), `b""`/zero for an empty tensor;
- every output of a batch must have a 0-th dimension equal to the (padded) batch size
  (FAILED_PRECONDITION otherwise, as in TF Serving).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np

from app.errors import FailedPrecondition, InvalidArgument

# One request's slice of a batch: (its inputs, first row, end row).
Part = tuple[Mapping[str, np.ndarray], int, int]


def request_rows(inputs: Mapping[str, np.ndarray]) -> int:
    """The request's batch size (0-th dimension), or InvalidArgument (TF's messages)."""
    if not inputs:
        raise InvalidArgument("Batching Run() must have at least one input tensor")
    rows = -1
    for array in inputs.values():
        shape = array.shape
        if not shape:
            raise InvalidArgument("Batching Run() input tensors must have at least one dimension")
        if rows < 0:
            rows = shape[0]
        elif shape[0] != rows:
            raise InvalidArgument("Batching Run() input tensors must have equal 0th-dimension size")
    return rows


def batch_key(signature: str, inputs: Mapping[str, np.ndarray], pad_variable: bool) -> Hashable:
    """Requests share a batch only when their keys are equal: same signature, same input names
    in the same order, same dtypes and, unless `pad_variable`, the same non-batch shape (with
    it, the same rank)."""
    if pad_variable:
        return (signature, tuple((k, v.dtype, v.ndim) for k, v in inputs.items()))
    return (signature, tuple((k, v.dtype, v.shape[1:]) for k, v in inputs.items()))


def padded_size(rows: int, allowed: Sequence[int]) -> int:
    """The smallest allowed batch size >= rows (rows itself when none is, or rows == 0)."""
    if not allowed or rows == 0:
        return rows
    i = bisect_left(allowed, rows)
    return allowed[i] if i < len(allowed) else rows


def merge_inputs(
    parts: Sequence[Part], padded_rows: int, pad_variable: bool
) -> Mapping[str, np.ndarray]:
    """Concatenate the parts along axis 0 into one batch of `padded_rows` rows.

    A single whole request that needs no padding is passed through untouched (no copy), so a
    lone request reaches the model exactly as it would without batching.
    """
    first, start, stop = parts[0]
    rows = sum(p[2] - p[1] for p in parts)
    if len(parts) == 1 and padded_rows == rows:
        whole = next(iter(first.values())).shape[0] == stop - start
        return first if whole else {k: v[start:stop] for k, v in first.items()}
    merged: dict[str, np.ndarray] = {}
    for name in first:
        arrays = [inputs[name][begin:end] for inputs, begin, end in parts]
        if pad_variable:
            arrays = pad_to_common_shape(arrays)
        if padded_rows > rows:  # then rows > 0: some part has a row to copy
            row = next(a[:1] for a in reversed(arrays) if len(a))
            arrays.append(np.repeat(row, padded_rows - rows, axis=0))
        merged[name] = np.concatenate(arrays) if len(arrays) > 1 else arrays[0]
    return merged


def pad_to_common_shape(arrays: list[np.ndarray]) -> list[np.ndarray]:
    """Pad each array at the end of every non-batch dimension up to the largest in the batch."""
    target = tuple(max(dims) for dims in zip(*(a.shape[1:] for a in arrays), strict=True))
    out: list[np.ndarray] = []
    for array in arrays:
        if array.shape[1:] == target:
            out.append(array)
            continue
        if array.size:
            fill: Any = array.flat[0]
        else:
            fill = b"" if array.dtype == object else 0
        padded = np.full((array.shape[0], *target), fill, dtype=array.dtype)
        padded[tuple(slice(0, n) for n in array.shape)] = array
        out.append(padded)
    return out


def split_outputs(
    outputs: dict[str, np.ndarray], sizes: Sequence[int], padded_rows: int
) -> list[dict[str, np.ndarray]]:
    """Check every output has `padded_rows` rows, then cut it into one dict per part.

    Raises FailedPrecondition when an output has no batch dimension or the wrong number of rows:
    the model cannot be batched and the whole batch fails. TF Serving's SplitOutputTensors
    (batching_session.cc) uses that code (HTTP 400): the request is fine and the model works
    without batching; it is the model/flag combination that cannot serve it, not a fault.
    A single whole part gets `outputs` itself; otherwise the answers are row slices (views) of
    the batch's outputs, which the model made for this call alone, so later
    batches cannot overwrite them.
    """
    for name, value in outputs.items():
        shape = getattr(value, "shape", ())
        if not shape:
            raise FailedPrecondition(
                f"Batched output tensor has 0 dimensions: output '{name}' has no batch "
                "dimension, so it cannot be split between batched requests"
            )
        if shape[0] != padded_rows:
            raise FailedPrecondition(
                "Batched output tensor's 0th dimension does not equal the sum of the 0th "
                f"dimension sizes of the input tensors: output '{name}' has {shape[0]} rows, "
                f"the batch has {padded_rows} ({sum(sizes)} from requests, "
                f"{padded_rows - sum(sizes)} padding)"
            )
    if len(sizes) == 1 and sizes[0] == padded_rows:
        return [outputs]
    answers: list[dict[str, np.ndarray]] = []
    offset = 0
    for size in sizes:
        end = offset + size
        answers.append({name: value[offset:end] for name, value in outputs.items()})
        offset = end
    return answers


def assemble_parts(
    parts: list[tuple[int, dict[str, np.ndarray]]], pad_variable: bool
) -> dict[str, np.ndarray]:
    """Join the answers of a request that was split across batches, in row order. With
    `pad_variable`, its parts went through batches padded to different widths: their outputs are
    padded to a common shape the same way before they are joined."""
    parts.sort(key=lambda part: part[0])
    joined: dict[str, np.ndarray] = {}
    for name in parts[0][1]:
        arrays = [answer[name] for _, answer in parts]
        if pad_variable:
            arrays = pad_to_common_shape(arrays)
        joined[name] = np.concatenate(arrays)
    return joined
