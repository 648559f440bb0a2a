"""Which version serves a request: the one home of that decision.

Pure and lock-free: `choose` reads the registry's immutable snapshot (one `ModelRoute` per model)
and returns the `ModelVersion` a request is pinned to; the caller (the registry's `acquire`)
raises its refcount. Both edges reach it through `app.serving`, so REST and gRPC resolve
versions identically. Later traffic management (weighted canary, sticky keys, shadow targets)
adds its inputs to `VersionRequest` and its rules here, nowhere else.

Rules and messages follow TF Serving's ServerCore::GetServableHandle (server_core.cc):
- a label resolves through the model's `version_labels` (unknown label: INVALID_ARGUMENT
  "Unrecognized servable version label: <label>");
- no version: the highest AVAILABLE version (`Latest(name)`), or the pinned one (admin pin);
- no version and no label, during a rollout (issue 11, `Overrides.split`): the stable version,
  or the canary for the `weight` share of requests (`app.rollout.split`: sticky by
  `VersionRequest.key` when given, random otherwise) once both are AVAILABLE; whichever of the
  two is AVAILABLE while the other is not. A request naming a version or a label is never
  re-routed;
- a version that is not being served: NOT_FOUND "Servable not found for request: ...".
Runs on the event-loop thread, no awaits.

Which arm served a request (for per-arm outcomes, app.rollout.analysis): `choose` returns the
`ModelVersion`; compare `mv.id.version` with the model's `Rollout.stable` / `Rollout.canary`
(app.rollout.table). Only default-route requests count as an arm's: a request that named a version
or label was not split (`Serving.run` checks `ModelRef`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from app.core.lifecycle import ModelRoute
from app.core.versions import ModelVersion
from app.errors import InvalidArgument, NotFound


@dataclass(frozen=True, slots=True)
class VersionRequest:
    """What a request asks for: a model, and at most one of a version or a label. `key`: the
    routing key (`--route_key_header`; None: no key) that makes a rollout's split sticky."""

    name: str
    version: int | None = None
    label: str | None = None
    key: str | None = None


def choose(models: Mapping[str, ModelRoute], request: VersionRequest) -> ModelVersion:
    """The version that serves `request`. Raises InvalidArgument (unknown label) or NotFound."""
    name, version = request.name, request.version
    route = models.get(name)
    if request.label is not None:
        target = route.labels.get(request.label) if route is not None else None
        if target is None:
            raise InvalidArgument(f"Unrecognized servable version label: {request.label}")
        version = target
    if version is None:
        if route is None or route.latest is None:
            raise NotFound(f"Servable not found for request: Latest({name})")
        split = route.split
        if split is not None:  # version is None here only when no label was given either
            return split.pick(request.key)
        return route.latest
    found = route.versions.get(version) if route is not None else None
    if found is None:
        raise NotFound(f"Servable not found for request: Specific({name}, {version})")
    return found
