"""The live rollouts: one `Rollout` per model, and the verbs that change them (issue 11).

`RolloutTable` is the one owner of rollouts. The admin API, the rollout file and the controller
(app.rollout.controller) change them only through its verbs: `start` (a `Rollout`) / `apply` (a
file entry or admin body), `set_weight`, `pause`, `resume`, `promote`, `rollback`, `clear`, and
`hold_default` (keep a newly published version off the route until a rollout starts). Each
verb checks the request against the registry, replaces the model's `Rollout` (an immutable
value) in a new mapping assigned in one step, hands core its input (`Overrides.split` /
`Overrides.withdrawn`, through `Registry.override`, the same door the admin overrides use), logs
the change at INFO, records an event and calls the listeners.

What core does with it (app.core.overrides, app.core.lifecycle, app.core.routing):
- during a rollout (phase shadow, canary, paused) stable and canary are both aspired, so both stay
  loaded whatever the version policy says (under `latest`, the lifecycle would unload stable);
- the default route goes to stable, and to the canary for `weight` of requests (sticky by routing
  key) once both are AVAILABLE; while the canary is not AVAILABLE (loading, failed, unloaded) all
  of it goes to stable, while stable is not, to the canary;
- `promote`: the canary becomes the default route (pinned only when the version policy would not
  pick it anyway), and stable is released, so the version policy unloads it as usual;
- `rollback`: the canary leaves the default route at once and is withdrawn: taken out of the
  versions the version policy picks from, so under `latest` it is not loaded or retried again at
  the next scan (a newer version published later is); stable stays loaded and serving (pinned only
  when the version policy would not pick it anyway). An admin load/pin of the version or a new
  rollout to it lifts the withdrawal.
A finished rollout (promoted, rolled back) stays in the table with its reason until replaced or
cleared; it routes nothing.

Which arm served a request: `arm(model, version)` ("stable" / "canary" / None), comparing the
version `app.core.routing.choose` returned with the model's rollout (only default-route requests
were split: a request that named a version or label is neither arm's sample). `keyed()`: whether
any rollout splits now (the edges read routing keys only then, `Serving.keyed`).

Threads: every method runs on the event-loop thread; readers (`get`, `rollouts`) take no lock:
the mapping is replaced whole, never changed in place. Listeners are called on the loop thread
after the change, with (model, old, new); they must not block (schedule work instead).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType

from app.core.overrides import RouteSplit
from app.core.registry import Registry
from app.errors import FailedPrecondition, InvalidArgument, NotFound
from app.rollout.config import RolloutBody, phase_of, to_rollout
from app.rollout.rules import check_values, policy_default, require_version, resolve
from app.rollout.spec import Phase, Policy, Rollout

log = logging.getLogger(__name__)

Listener = Callable[[str, "Rollout | None", "Rollout | None"], None]
MAX_EVENTS = 200
_EMPTY: Mapping[str, Rollout] = MappingProxyType({})
_NO_POLICIES: Mapping[str, Policy] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class RolloutEvent:
    """One rollout change. `time`: wall-clock seconds since the epoch; `weight` in [0, 1]."""

    time: float
    model: str
    action: str  # start | change | weight | pause | resume | promote | rollback | clear
    stable: int
    canary: int
    weight: float
    phase: str
    reason: str
    source: str  # "admin" | "file" | "controller" | ...

    def as_dict(self) -> dict[str, object]:
        return {
            "time": self.time,
            "model": self.model,
            "action": self.action,
            "stable": self.stable,
            "canary": self.canary,
            "weight": self.weight,
            "phase": self.phase,
            "reason": self.reason,
            "source": self.source,
        }


class RolloutTable:
    """Every model's rollout and standing policy. `registry` returns the live registry (raises
    Unavailable while the server starts)."""

    def __init__(self, registry: Callable[[], Registry]) -> None:
        self._registry = registry
        self._rollouts: Mapping[str, Rollout] = _EMPTY
        self._policies: Mapping[str, Policy] = _NO_POLICIES
        self._listeners: list[Listener] = []
        self._events: deque[RolloutEvent] = deque(maxlen=MAX_EVENTS)
        # model -> the pin a promote/rollback set (the version policy would have picked
        # another version), lifted when the finished rollout is cleared: back to the policy.
        self._end_pins: dict[str, int] = {}

    def reset(self) -> None:
        """Forget every rollout, policy and event (a new registry: the lifespan's start).
        Listeners stay."""
        old, self._rollouts, self._policies = self._rollouts, _EMPTY, _NO_POLICIES
        self._events.clear()
        self._end_pins.clear()
        for name, r in old.items():
            self._notify(name, r, None)

    # ---- reading (loop thread, lock-free) -------------------------------------------------

    @property
    def rollouts(self) -> Mapping[str, Rollout]:
        """Every model's rollout (finished ones included): an immutable mapping."""
        return self._rollouts

    def get(self, model: str) -> Rollout | None:
        return self._rollouts.get(model)

    def keyed(self) -> bool:
        """Whether some active rollout splits its default route (weight > 0, not in shadow):
        only then does a request's routing key matter."""
        return any(
            not r.phase.over and r.phase is not Phase.SHADOW and r.weight > 0
            for r in self._rollouts.values()
        )

    def active(self, model: str) -> Rollout | None:
        """The model's rollout if it is not over (shadow, canary or paused)."""
        r = self._rollouts.get(model)
        return r if r is not None and not r.phase.over else None

    def arm(self, model: str, version: int) -> str | None:
        """Which arm `version` is in the model's active rollout: "stable", "canary" or None."""
        r = self.active(model)
        if r is None:
            return None
        if version == r.canary:
            return "canary"
        return "stable" if version == r.stable else None

    @property
    def policies(self) -> Mapping[str, Policy]:
        """Every model's standing policy (`Policy.on_publish`), immutable."""
        return self._policies

    def events(self, model: str | None = None, limit: int = 50) -> list[dict[str, object]]:
        """Recent rollout changes, newest first."""
        picked = [e for e in reversed(self._events) if model is None or e.model == model]
        return [e.as_dict() for e in picked[:limit]]

    def add_listener(self, listener: Listener) -> None:
        """Call `listener(model, old, new)` after every change (new None: cleared)."""
        self._listeners.append(listener)

    def set_policy(self, policy: Policy | None, model: str) -> None:
        """Replace (None: remove) the model's standing policy; read by the controller."""
        policies = {k: v for k, v in self._policies.items() if k != model}
        if policy is not None:
            policies[model] = policy
        self._policies = MappingProxyType(policies)

    # ---- verbs ----------------------------------------------------------------------------

    def start(
        self, rollout: Rollout, source: str = "admin", *, stable_loading: bool = False
    ) -> Rollout:
        """Start a rollout, or change the model's active one live (weight, steps, thresholds...).

        Checks: the model is configured and both versions exist (NotFound), they differ and the
        weights are in [0, 1] (InvalidArgument), stable is AVAILABLE (FailedPrecondition: the
        default route goes there) unless `stable_loading` (the rollout file: at startup no
        version is loaded yet; until stable is, the default route goes to the canary). The
        canary only has to be on disk: the rollout loads it, and it takes its share once
        AVAILABLE."""
        check_values(rollout)
        reg = self._registry()
        name = rollout.model
        require_version(reg, name, rollout.stable)
        require_version(reg, name, rollout.canary)
        route = reg.snapshot.models.get(name)
        old = self.active(name)
        changing = old is not None and (old.stable, old.canary) == (rollout.stable, rollout.canary)
        serving = route is not None and rollout.stable in route.versions
        if not (changing or serving or stable_loading):
            raise FailedPrecondition(
                f"Version {rollout.stable} of model {name} is not AVAILABLE; "
                "a rollout's stable version must be serving"
            )
        if rollout.phase.over:
            raise InvalidArgument("A rollout starts in phase shadow, canary or paused")
        return self._apply(rollout, "change" if changing else "start", source)

    def apply(
        self, model: str, body: RolloutBody, source: str = "admin", *, stable_loading: bool = False
    ) -> Rollout:
        """A file entry or admin PUT body: versions/labels resolved, then `start` (or a live
        change of the active rollout with the same arms), or `promote` / `rollback` when its
        phase says so (a no-op when the rollout already ended that way)."""
        reg = self._registry()
        active = self.active(model)
        stable = resolve(reg, model, body.stable, active)
        canary = resolve(reg, model, body.canary, active)
        phase = phase_of(body)
        if phase.over:
            current = self.get(model)
            arms = (stable, canary)
            if current is not None and (current.phase, current.stable, current.canary) == (
                phase,
                *arms,
            ):
                return current
            if active is None and stable_loading:  # the file's record of a finished rollout
                return self._ended(model, body, stable, canary, source)
            if active is None or (active.stable, active.canary) != (stable, canary):
                raise FailedPrecondition(
                    f"Model {model} has no active rollout from version {stable} to {canary} to end"
                )
            if phase is Phase.PROMOTED:
                return self.promote(model, body.reason or f"promoted by {source}", source)
            return self.rollback(model, body.reason or f"rolled back by {source}", source)
        rollout = to_rollout(model, body, stable, canary)
        return self.start(rollout, source, stable_loading=stable_loading)

    def _ended(
        self, model: str, body: RolloutBody, stable: int, canary: int, source: str
    ) -> Rollout:
        """A rollout file entry that says promoted / rolled_back with no such rollout running
        (after a restart, a restarted worker, or the model added back): record it, and for a
        rollback withdraw the canary, so `latest` does not give the bad version the whole
        route. Nothing is pinned: the version policy picks among the rest (a version published
        since the rollout ended is served, not stable)."""
        reg = self._registry()
        require_version(reg, model, stable)
        require_version(reg, model, canary)
        r = to_rollout(model, body, stable, canary)
        check_values(r)
        if r.phase is Phase.PROMOTED:
            r = replace(r, weight=1.0, reason=body.reason or f"promoted by {source}")
            return self._apply(r, "promote", source, pin_kept=False)
        r = replace(r, weight=0.0, reason=body.reason or f"rolled back by {source}")
        return self._apply(r, "rollback", source, pin_kept=False)

    def hold_default(self, model: str) -> int:
        """Pin the version serving model's default route now, so a version published later
        loads beside it without taking the route (for `Policy.on_publish` "rollout"/"shadow":
        the controller then starts a rollout from it). `promote`/`rollback` replace the pin;
        NotFound / FailedPrecondition when the model has no version serving."""
        reg = self._registry()
        route = reg.snapshot.models.get(model)
        if route is None or route.latest is None:
            reg.on_disk(model)  # NotFound for an unknown model
            raise FailedPrecondition(f"Model {model} has no version serving")
        version = route.latest.id.version
        now = reg.overrides(model)
        if now.pin != version:
            reg.override(model, replace(now, pin=version))
            log.info("model %s: default route held on version %d (rollout policy)", model, version)
        return version

    def set_weight(self, model: str, weight: float, reason: str = "", source: str = "") -> Rollout:
        """Move the canary's share of the default route (a step); phase becomes CANARY (from
        SHADOW when weight > 0), a paused rollout stays paused."""
        r = self._require_active(model)
        if not 0.0 <= weight <= 1.0:
            raise InvalidArgument(f"weight must be within [0, 1], got {weight}")
        phase = r.phase
        if phase is Phase.SHADOW and weight > 0:
            phase = Phase.CANARY
        new = replace(r, weight=weight, phase=phase, reason=reason or r.reason)
        return self._apply(new, "weight", source or "controller")

    def pause(
        self, model: str, reason: str = "paused by operator", source: str = "admin"
    ) -> Rollout:
        """Freeze the weights: analysis goes on being recorded but is not acted on."""
        r = self._require_active(model)
        return self._apply(replace(r, phase=Phase.PAUSED, reason=reason), "pause", source)

    def resume(self, model: str, reason: str = "resumed", source: str = "admin") -> Rollout:
        """Out of PAUSED: SHADOW at weight 0, else CANARY at the weight it had."""
        r = self._require_active(model)
        phase = Phase.SHADOW if r.weight == 0.0 else Phase.CANARY
        return self._apply(replace(r, phase=phase, reason=reason), "resume", source)

    def promote(self, model: str, reason: str = "promoted", source: str = "admin") -> Rollout:
        """The canary takes the whole default route and the rollout ends; stable is released
        (the version policy unloads it as usual). FailedPrecondition if the canary is not
        AVAILABLE (promoting it would leave the route where it is)."""
        r = self._require_active(model)
        reg = self._registry()
        route = reg.snapshot.models.get(model)
        if route is None or r.canary not in route.versions:
            raise FailedPrecondition(
                f"Version {r.canary} of model {model} is not AVAILABLE; it cannot be promoted"
            )
        new = replace(r, weight=1.0, phase=Phase.PROMOTED, reason=reason)
        return self._apply(new, "promote", source)

    def rollback(self, model: str, reason: str, source: str = "admin") -> Rollout:
        """The canary leaves the default route now and is withdrawn (not loaded again by the
        version policy); stable keeps serving. Always allowed: it is the safety action."""
        r = self._require_active(model)
        new = replace(r, weight=0.0, phase=Phase.ROLLED_BACK, reason=reason)
        return self._apply(new, "rollback", source)

    def clear(self, model: str, source: str = "admin") -> Rollout | None:
        """Forget the model's rollout (active or finished) without promoting or rolling back:
        the default route returns to the version policy (under `latest`: the highest version,
        which may be the canary; use `rollback` to keep stable). Returns what was there."""
        old = self._rollouts.get(model)
        if old is None:
            raise NotFound(f"Model {model} has no rollout")
        if not old.phase.over:
            self._to_core(model, None, withdraw=None, keep=None)
        else:
            self._lift_end_pin(model)
        self._replace(model, None)
        self._record("clear", old, source)
        log.info("rollout of model %s cleared (%s)", model, source)
        self._notify(model, old, None)
        return old

    def model_removed(self, model: str) -> None:
        """Model `model` left the configuration (Registry retire listener, loop thread): core
        dropped its overrides (split, withdrawn, pin) with its state, so its rollout ends
        here too instead of being reported as a split that routes nothing."""
        old = self._rollouts.get(model)
        if old is None:
            return
        self._end_pins.pop(model, None)
        self._replace(model, None)
        self._record("clear", replace(old, reason="model removed from the configuration"), "config")
        log.info("rollout of model %s cleared: model removed from the configuration", model)
        self._notify(model, old, None)

    # ---- helpers --------------------------------------------------------------------------

    def _require_active(self, model: str) -> Rollout:
        r = self.active(model)
        if r is None:
            raise NotFound(f"Model {model} has no active rollout")
        return r

    def _apply(self, new: Rollout, action: str, source: str, *, pin_kept: bool = True) -> Rollout:
        """Hand core the rollout and record it; `pin_kept` False: an end state sets no pin."""
        name = new.model
        old = self._rollouts.get(name)
        if new.phase is Phase.PROMOTED:
            self._to_core(name, None, withdraw=None, keep=new.canary if pin_kept else None)
        elif new.phase is Phase.ROLLED_BACK:
            keep = new.stable if pin_kept else None
            self._to_core(name, None, withdraw=new.canary, keep=keep)
        else:
            weight = new.weight if new.phase is not Phase.SHADOW else 0.0
            self._to_core(name, RouteSplit(new.stable, new.canary, weight), None, None)
        self._replace(name, new)
        self._record(action, new, source)
        log.info(
            "rollout of model %s: %s (stable %d, canary %d, weight %.1f%%, phase %s%s) by %s",
            name,
            action,
            new.stable,
            new.canary,
            new.weight * 100,
            new.phase.value,
            f": {new.reason}" if new.reason else "",
            source,
        )
        self._notify(name, old, new)
        return new

    def _to_core(
        self, name: str, split: RouteSplit | None, withdraw: int | None, keep: int | None
    ) -> None:
        """Hand core the split (None: no rollout), withdraw a rolled-back version, and make
        `keep` the default route once the rollout is gone (pinned only if the version policy
        would not pick it: the highest aspired version serves unpinned)."""
        reg = self._registry()
        now = reg.overrides(name)
        withdrawn = now.withdrawn
        if split is not None:
            withdrawn = withdrawn - {split.canary, split.stable}
        if withdraw is not None:
            withdrawn = withdrawn | {withdraw}
        pin = now.pin
        self._end_pins.pop(name, None)
        if keep is not None:
            pin = None if keep == policy_default(reg, name, withdrawn, now) else keep
            if pin is not None and pin != now.pin:
                self._end_pins[name] = pin
        reg.override(name, replace(now, split=split, withdrawn=withdrawn, pin=pin))

    def _lift_end_pin(self, name: str) -> None:
        """Clearing a finished rollout: unpin the version its promote/rollback pinned (if it
        is still the pin), so the default route follows the version policy again, as the
        README promises, and a version published later is served (under --workers the rollout
        file is the only way to lift it: the admin API refuses changes there)."""
        pin = self._end_pins.pop(name, None)
        if pin is None:
            return
        reg = self._registry()
        now = reg.overrides(name)
        if now.pin == pin:
            reg.override(name, replace(now, pin=None))
            log.info("model %s: pin on version %d (set by its rollout's end) lifted", name, pin)

    def _replace(self, name: str, value: Rollout | None) -> None:
        rollouts = {k: v for k, v in self._rollouts.items() if k != name}
        if value is not None:
            rollouts[name] = value
        self._rollouts = MappingProxyType(rollouts)

    def _record(self, action: str, r: Rollout, source: str) -> None:
        self._events.append(
            RolloutEvent(
                time.time(), r.model, action, r.stable, r.canary, r.weight, r.phase.value,
                r.reason, source,
            )
        )  # fmt: skip

    def _notify(self, name: str, old: Rollout | None, new: Rollout | None) -> None:
        for listener in list(self._listeners):
            try:
                listener(name, old, new)
            except Exception:  # a listener's bug must not undo or block the change
                log.exception("rollout listener failed for model %s", name)
