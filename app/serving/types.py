"""The plain values the serving layer takes and returns (no wire formats)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

Array = np.ndarray[Any, Any]


@dataclass(frozen=True, slots=True)
class ModelRef:
    """The model a request names: at most one of `version` and `label`. `key`: the routing key
    the edge read (REST header / gRPC metadata, `--route_key_header`), None without one; it only
    matters for the default route during a rollout (sticky split)."""

    name: str
    version: int | None = None
    label: str | None = None
    key: str | None = None


@dataclass(frozen=True, slots=True)
class Classification:
    """`classes` DT_STRING [batch, k] (object array of bytes) and/or `scores` float32 [batch, k],
    checked as TF's PostProcessClassificationResult does."""

    classes: Array | None
    scores: Array | None


@dataclass(frozen=True, slots=True)
class Task:
    """One MultiInference task: a signature and TF Serving's method name for it."""

    signature_name: str
    method_name: str
