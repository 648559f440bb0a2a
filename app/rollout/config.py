"""The rollout file (`--rollout_config_file`) and the admin API's rollout body, parsed (issue 11).

models.config stays TF Serving's, untouched; rollouts live in their own file beside it. JSON, or
TOML when the name ends in `.toml` (stdlib tomllib); both read into the same document:

    {"models": {
       "half_plus_two": {
         "rollout": {"stable": 1, "canary": 2, "canary_percent": 5, "shadow_percent": 0,
                     "steps": [5, 25, 50, 100], "step_seconds": 60, "window_seconds": 60,
                     "automatic": false, "phase": "canary",
                     "thresholds": {"max_error_rate_increase": 0.01, "max_p99_ratio": 1.5,
                                    "max_abs_diff": null, "min_argmax_agreement": null,
                                    "min_requests": 50}},
         "policy": {"on_publish": "rollout", "template": {"canary_percent": 5}}}}}

- `stable` / `canary`: a version number (integer) or a label (string) of the model, resolved
  to its version when the rollout is set; `stable` left out: the version serving the default
  route now (or the active rollout's stable);
- percents are 0-100 here and in the admin API (fractions in `app.rollout.spec`);
- `phase`: "canary" (default; "shadow" when canary_percent is 0), "shadow", "paused", or
  "promoted" / "rolled_back" to end the rollout from the file;
- `policy.on_publish`: "immediate" (TF Serving's behaviour, the default), "rollout" or "shadow"
  (read by the controller); `template`: the rollout fields (no stable/canary) to start with.
Unknown fields are errors (a typo must not silently do nothing). The admin API's PUT body is one
model's `rollout` object. Parsing only: no registry here, so it runs in any thread.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError

from app.errors import ConfigError, InvalidArgument
from app.rollout.spec import Phase, Policy, Rollout, Thresholds

Percent = Annotated[float, Field(ge=0, le=100)]
Ref = StrictInt | Annotated[StrictStr, Field(min_length=1, max_length=256)]
PhaseName = Literal["canary", "shadow", "paused", "promoted", "rolled_back"]


class ThresholdsBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_error_rate_increase: float = Field(default=0.01, ge=0, le=1)
    max_p99_ratio: float = Field(default=1.5, gt=0)
    max_abs_diff: float | None = Field(default=None, ge=0)
    min_argmax_agreement: float | None = Field(default=None, ge=0, le=1)
    min_requests: int = Field(default=50, ge=1)


class TemplateBody(BaseModel):
    """A rollout's settings without its versions (a policy's template; the base of a body)."""

    model_config = ConfigDict(extra="forbid")

    canary_percent: Percent = 0.0
    shadow_percent: Percent = 0.0
    steps: list[Annotated[float, Field(gt=0, le=100)]] = Field(
        default_factory=lambda: [5.0, 25.0, 50.0, 100.0], min_length=1, max_length=100
    )
    step_seconds: float = Field(default=60.0, ge=0)
    # Bounded: the window keeps per-second buckets that every evaluation sums on the event loop
    # (a day's window took 139 MB and 1.7 s per evaluation).
    window_seconds: float = Field(default=60.0, gt=0, le=3600)
    automatic: bool = True
    thresholds: ThresholdsBody = Field(default_factory=ThresholdsBody)
    phase: PhaseName | None = None
    reason: str = Field(default="", max_length=1000)


class RolloutBody(TemplateBody):
    """One model's rollout (a file entry, or the admin API's PUT body)."""

    stable: Ref | None = None
    canary: Ref


class PolicyBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    on_publish: Literal["immediate", "rollout", "shadow"] = "immediate"
    template: TemplateBody | None = None


class ModelEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rollout: RolloutBody | None = None
    policy: PolicyBody | None = None


class RolloutDocument(BaseModel):
    model_config = ConfigDict(extra="forbid")

    models: dict[Annotated[str, Field(min_length=1, max_length=256)], ModelEntry] = {}


@dataclass(frozen=True, slots=True)
class RolloutFile:
    """A parsed rollout file: per model its rollout body and/or policy."""

    rollouts: dict[str, RolloutBody]
    policies: dict[str, Policy]


def message(exc: ValidationError) -> str:
    """A validation failure as one line: where and what, never the input itself."""
    parts = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
    return "; ".join(parts)


def parse_body(doc: Any) -> RolloutBody:
    """The admin API's body (already decoded JSON) -> RolloutBody; InvalidArgument if bad."""
    try:
        return RolloutBody.model_validate(doc)
    except ValidationError as exc:
        raise InvalidArgument(f"Invalid rollout: {message(exc)}") from None


def read_file(path: Path) -> RolloutFile:
    """Read and check the whole file (blocking: call it in a worker thread). Raises ConfigError
    with the reason for an unreadable file, bad JSON/TOML or a field that does not check."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"Cannot read rollout file {path}: {exc.strerror or exc}") from None
    try:
        doc = tomllib.loads(raw.decode()) if path.suffix == ".toml" else orjson.loads(raw)
    except (tomllib.TOMLDecodeError, orjson.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"Rollout file {path} does not parse: {exc}") from None
    return parse_document(doc, str(path))


def parse_document(doc: Any, where: str = "rollout file") -> RolloutFile:
    try:
        parsed = RolloutDocument.model_validate(doc)
    except ValidationError as exc:
        raise ConfigError(f"Invalid {where}: {message(exc)}") from None
    rollouts = {name: e.rollout for name, e in parsed.models.items() if e.rollout is not None}
    policies = {
        name: to_policy(name, e.policy) for name, e in parsed.models.items() if e.policy is not None
    }
    return RolloutFile(rollouts, policies)


def to_rollout(model: str, body: TemplateBody, stable: int, canary: int) -> Rollout:
    """A body with its versions resolved -> the spec's Rollout (percents -> fractions)."""
    weight = body.canary_percent / 100
    t = body.thresholds
    return Rollout(
        model=model,
        stable=stable,
        canary=canary,
        weight=weight,
        shadow=body.shadow_percent / 100,
        phase=phase_of(body),
        steps=tuple(s / 100 for s in body.steps),
        step_seconds=body.step_seconds,
        window_seconds=body.window_seconds,
        automatic=body.automatic,
        thresholds=Thresholds(
            max_error_rate_increase=t.max_error_rate_increase,
            max_p99_ratio=t.max_p99_ratio,
            max_abs_diff=t.max_abs_diff,
            min_argmax_agreement=t.min_argmax_agreement,
            min_requests=t.min_requests,
        ),
        reason=body.reason,
    )


def phase_of(body: TemplateBody) -> Phase:
    if body.phase is not None:
        return Phase(body.phase)
    return Phase.SHADOW if body.canary_percent == 0 else Phase.CANARY


def to_policy(model: str, body: PolicyBody) -> Policy:
    """A policy body -> the spec's Policy; its template's versions are placeholders (0, 0),
    filled in by the controller when a version is published."""
    template = to_rollout(model, body.template, 0, 0) if body.template is not None else None
    return Policy(model=model, on_publish=body.on_publish, template=template)


def describe(r: Rollout) -> dict[str, Any]:
    """A Rollout as the admin API and status page show it (percents, like the input)."""
    t = r.thresholds
    return {
        "model": r.model,
        "stable": r.stable,
        "canary": r.canary,
        "canary_percent": round(r.weight * 100, 6),
        "shadow_percent": round(r.shadow * 100, 6),
        "phase": r.phase.value,
        "steps": [round(s * 100, 6) for s in r.steps],
        "step_seconds": r.step_seconds,
        "window_seconds": r.window_seconds,
        "automatic": r.automatic,
        "thresholds": {
            "max_error_rate_increase": t.max_error_rate_increase,
            "max_p99_ratio": t.max_p99_ratio,
            "max_abs_diff": t.max_abs_diff,
            "min_argmax_agreement": t.min_argmax_agreement,
            "min_requests": t.min_requests,
        },
        "reason": r.reason,
    }
