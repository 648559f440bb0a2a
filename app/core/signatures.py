"""The signature policy: may a new version replace the serving one for its existing clients?

TF Serving swaps to a new version whatever its signatures (tensorflow/serving#197: nothing in
core/aspired_versions_manager.cc or the loader compares versions). hotserve adds one guard, chosen
with `--signature_check` (`SignatureCheck`):

- `used` (default): only signatures that received requests on the serving version (tracked in
  `ModelVersion.used`, see app.core.lifecycle) must stay compatible. A model nobody has called
  yet, or a signature no client uses, swaps exactly as in TF Serving.
- `all`: every signature with inputs must stay compatible (hotserve's former default).
- `off`: TF Serving's behaviour, no check.

Compatible means: the signature still exists, keeps every input alias with the same dtype,
requires no new input, and keeps every output alias with the same dtype. Shapes are not compared
(TF Serving does not enforce declared shapes either). A refusal is deterministic, so it is never
retried: the version ends with FAILED_PRECONDITION and the reason (`IncompatibleVersion`).

Pure functions; no I/O, safe from any thread.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Literal

from app.core.types import Signature, TensorSpec
from app.errors import LoadError

SignatureCheck = Literal["used", "all", "off"]


class IncompatibleVersion(LoadError):
    """A version refused by the signature policy. Deterministic: never retried."""

    def __init__(self, message: str) -> None:
        super().__init__(message, "FAILED_PRECONDITION")


def _changed(
    kind: str, old: Signature, theirs: Mapping[str, TensorSpec], ours: Mapping[str, TensorSpec]
) -> str | None:
    for alias, spec in theirs.items():
        got = ours.get(alias)
        if got is None:
            return f"signature {old.name!r} lost {kind} {alias!r}"
        if got.dtype != spec.dtype:
            return (
                f"signature {old.name!r} {kind} {alias!r} changed dtype {spec.dtype} -> {got.dtype}"
            )
    return None


def incompatibility(old: Signature, new: Signature | None) -> str | None:
    """Why `new` cannot replace `old` for existing clients, or None when it can."""
    if new is None:
        return f"signature {old.name!r} is missing"
    why = _changed("input", old, old.inputs, new.inputs)
    if why is not None:
        return why
    added = sorted(set(new.inputs) - set(old.inputs))
    if added:
        return f"signature {old.name!r} requires new inputs {added}"
    return _changed("output", old, old.outputs, new.outputs)


def refusal(
    mode: SignatureCheck,
    serving_version: int,
    serving: Mapping[str, Signature],
    used: Iterable[str],
    new: Mapping[str, Signature],
) -> str | None:
    """Why the policy refuses `new` in place of the serving version, or None when it may swap.

    `serving`/`used` are the serving version's signatures and the names clients called on it.
    Signatures without inputs (e.g. a bare init signature) are never protected.
    """
    if mode == "off":
        return None
    names = sorted(serving) if mode == "all" else sorted(set(used) & set(serving))
    for name in names:
        old = serving[name]
        if not old.inputs:
            continue
        why = incompatibility(old, new.get(name))
        if why is not None:
            called = (
                f", which clients called on version {serving_version}" if mode == "used" else ""
            )
            return (
                f"incompatible with serving version {serving_version}: {why}{called} "
                f"(--signature_check={mode}; --signature_check=off swaps anyway, as TF Serving "
                "does)"
            )
    return None
