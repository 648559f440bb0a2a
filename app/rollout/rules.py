"""The checks and look-ups `app.rollout.table` applies to a rollout against the registry: value
ranges, versions and labels resolved, and the version the default route would take without a
rollout. Loop thread (they read the routing snapshot), no side effects.
"""

from __future__ import annotations

from app.core.overrides import Overrides
from app.core.registry import Registry
from app.errors import FailedPrecondition, InvalidArgument, NotFound
from app.rollout.spec import Rollout


def check_values(r: Rollout) -> None:
    if r.stable == r.canary:
        raise InvalidArgument(f"stable and canary are both version {r.stable}")
    for what, value in (("weight", r.weight), ("shadow", r.shadow)):
        if not 0.0 <= value <= 1.0:
            raise InvalidArgument(f"{what} must be within [0, 100] percent, got {value * 100:g}")
    if any(not 0.0 < s <= 1.0 for s in r.steps) or list(r.steps) != sorted(r.steps):
        raise InvalidArgument("steps must be increasing percents within (0, 100]")
    if r.steps and r.steps[-1] != 1.0:
        raise InvalidArgument("the last step must be 100 percent")
    if r.step_seconds < 0 or r.window_seconds <= 0:
        raise InvalidArgument("step_seconds must be >= 0 and window_seconds > 0")


def resolve(reg: Registry, name: str, ref: int | str | None, active: Rollout | None) -> int:
    """A version or label of model `name` -> its version; None -> the active rollout's stable,
    else the version serving the default route now."""
    route = reg.snapshot.models.get(name)
    if isinstance(ref, int):
        return ref
    if isinstance(ref, str):
        version = route.labels.get(ref) if route is not None else None
        if version is None:
            reg.on_disk(name)  # NotFound for an unknown model first
            raise InvalidArgument(f"Unrecognized servable version label: {ref}")
        return version
    if active is not None:
        return active.stable
    if route is None or route.latest is None:
        reg.on_disk(name)
        raise FailedPrecondition(f"Model {name} has no version serving; give stable explicitly")
    return route.latest.id.version


def require_version(reg: Registry, name: str, version: int) -> None:
    """NotFound unless model `name` is configured and `version` is loaded or on disk."""
    route = reg.snapshot.models.get(name)
    if route is not None and version in route.versions:
        return
    if version not in reg.on_disk(name):  # NotFound for an unknown model too
        raise NotFound(f"Could not find version {version} of model {name}")


def policy_default(reg: Registry, name: str, withdrawn: frozenset[int], now: Overrides) -> int:
    """The version the default route would take unpinned with no rollout: the highest version
    the version policy and the holds aspire (withdrawn ones taken out), -1 if none."""
    policy = reg.version_policy(name)
    picked = policy.select(set(reg.on_disk(name)) - withdrawn)
    wanted = (set(picked) | now.hold) - now.exclude
    return max(wanted, default=-1)
