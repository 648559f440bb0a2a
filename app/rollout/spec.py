"""What a rollout is: the contract between its parts (issue 11).

A rollout moves one model's *default route* (requests that name neither a version nor a label)
from a `stable` version to a `canary` version. Requests that name a version or a label are never
re-routed. The parts, one owner each:

- `app.rollout.split`: which arm one default-route request goes to (weights; sticky keys by
  consistent hashing; random without a key);
- `app.rollout.table`: the live `Rollout` of every model, replaced whole (immutable values), read
  by `app.core.routing` on the loop thread without locks;
- `app.rollout.config`: the hotserve-specific rollout file beside models.config (which stays
  TF Serving's), reloaded live, and the admin API's JSON, both parsed into `Rollout`/`Policy`;
- `app.rollout.shadow`: mirroring a share of default-route requests to the canary, answers never
  returned, within a budget, dropped first under overload; divergence from the primary answer;
- `app.rollout.analysis` / `app.rollout.controller`: sliding-window comparison of canary against
  stable, step-by-step promotion while healthy, rollback at once when a threshold is crossed,
  and a newly published version entering a rollout automatically (opt-in per model).

Weights are fractions in [0, 1] here; files and the admin API take percents (0-100), as
Kubernetes/Istio/Knative traffic splits do.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class Phase(StrEnum):
    """Where a rollout is. SHADOW: canary gets mirrored copies only (weight 0); CANARY: canary
    answers `weight` of the default route; PROMOTED: canary took 100% and became the model's
    default (the rollout is over); ROLLED_BACK: canary removed from the default route (over);
    PAUSED: weights frozen by an operator, analysis still recorded but not acted on."""

    SHADOW = "shadow"
    CANARY = "canary"
    PAUSED = "paused"
    PROMOTED = "promoted"
    ROLLED_BACK = "rolled_back"

    @property
    def over(self) -> bool:
        return self in (Phase.PROMOTED, Phase.ROLLED_BACK)


@dataclass(frozen=True, slots=True)
class Thresholds:
    """When the canary counts as unhealthy against stable over the analysis window.

    - `max_error_rate_increase`: canary error rate minus stable error rate (fraction of
      requests, server-side faults and model errors, not the client's 4xx) above this fails;
    - `max_p99_ratio`: canary p99 / stable p99 above this fails (both measured over the same
      window, on the model's share of the request: queueing + model call);
    - `max_abs_diff`: shadow/canary divergence, the largest |canary - primary| over every
      float output element, above this fails (None: not checked);
    - `min_argmax_agreement`: for classifier-shaped outputs ([batch, classes] floats) the
      fraction of rows whose argmax agrees, below this fails (None: not checked);
    - `min_requests`: fewer canary samples than this in the window: no verdict yet (neither
      promote nor roll back on errors; a single error already over the rate when the window
      holds at least this many).
    """

    max_error_rate_increase: float = 0.01
    max_p99_ratio: float = 1.5
    max_abs_diff: float | None = None
    min_argmax_agreement: float | None = None
    min_requests: int = 50


@dataclass(frozen=True, slots=True)
class Rollout:
    """One model's rollout, as configured and as it stands. Immutable: every change (a step, a
    rollback, an operator's edit) makes a new value that replaces the old one in the table.

    `stable`/`canary` are version numbers (a label given in a file or the admin API is resolved
    to its version when the rollout is set). `weight` is the canary's share of the default
    route now; `shadow` the share of default-route requests *also* run on the canary with their
    answers discarded (independent of `weight`). `steps` are the weights automatic promotion
    walks through (the last must be 1.0); `step_seconds` the least time spent at each step, and
    `window_seconds` the sliding analysis window. `automatic`: analysis drives the steps and the
    rollback; when False the operator moves the weight (admin API / file), analysis is still
    recorded and shown. `reason`: why the rollout is in its phase (shown, logged, in events).
    """

    model: str
    stable: int
    canary: int
    weight: float = 0.0
    shadow: float = 0.0
    phase: Phase = Phase.CANARY
    steps: tuple[float, ...] = (0.05, 0.25, 0.5, 1.0)
    step_seconds: float = 60.0
    window_seconds: float = 60.0
    automatic: bool = True
    thresholds: Thresholds = field(default_factory=Thresholds)
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Policy:
    """A model's standing rollout policy (file / admin API): what happens when a newer version is
    published. `on_publish="immediate"` is TF Serving's behaviour and the default: the new version
    takes the whole default route once AVAILABLE. `"rollout"` (opt-in): the current default stays
    stable and the new version enters a rollout built from `template` (its stable/canary fields
    are filled in then); `"shadow"`: same, but it starts in Phase.SHADOW at weight 0."""

    model: str
    on_publish: str = "immediate"  # "immediate" | "rollout" | "shadow"
    template: Rollout | None = None
