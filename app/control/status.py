"""The status document: every model, its versions and what they are doing, as plain JSON.

Built on the event-loop thread from the routing snapshot (what serves), the registry's statuses
(every version ever tracked), the operator's overrides (pins, labels), the rollout table
(stable, canary, weights, phase, reason), the event log (durations, swap history) and the
traffic windows (requests/s, p99). Shared by the admin API's listings and the status page.
Base paths are not included: the document names models and versions only.
"""

from __future__ import annotations

import time
from typing import Any

from app.control.events import EventLog
from app.control.rollouts import rollout_document
from app.control.traffic import Traffic
from app.core.registry import Registry
from app.errors import NotFound
from app.rollout.table import RolloutTable


def model_document(
    registry: Registry,
    events: EventLog,
    traffic: Traffic,
    name: str,
    event_limit: int = 20,
    *,
    rollouts: RolloutTable | None = None,
) -> dict[str, Any]:
    """One model (NotFound when it is not configured). `rollout`: its rollout, policy and
    rollout events (app.control.rollouts), when a rollout table is given."""
    overrides = registry.overrides(name)
    route = registry.snapshot.models.get(name)
    serving = route.versions if route is not None else {}
    default = route.latest.id.version if route is not None and route.latest else None
    labels = dict(route.labels) if route is not None else {}
    try:
        statuses = registry.status(name)
    except NotFound:
        statuses = []
    versions = []
    for st in statuses:
        mv = serving.get(st.version)
        entry: dict[str, Any] = {
            "version": st.version,
            "state": st.state.value,
            "serving": mv is not None,
            "default": st.version == default,
            "pinned": st.version == overrides.pin,
            "labels": sorted(k for k, v in labels.items() if v == st.version),
            "in_flight": mv.refcount if mv is not None else 0,
            **events.durations(name, st.version),
        }
        if st.error_code != "OK":
            entry["error_code"] = st.error_code
            entry["error"] = st.error_message
        if mv is not None:
            entry.update(traffic.summary(name, st.version))
        versions.append(entry)
    return {
        "name": name,
        "default_version": default,
        "pinned_version": overrides.pin,
        "labels": labels,
        "overrides": overrides.describe(),
        "versions": versions,
        "events": events.recent(name, event_limit),
        "rollout": rollout_document(rollouts, name, 10) if rollouts is not None else None,
    }


def status_document(
    registry: Registry | None,
    events: EventLog,
    traffic: Traffic,
    shutting_down: bool,
    rollouts: RolloutTable | None = None,
) -> dict[str, Any]:
    """Every configured model; `changes` counts version events (pollers may compare it)."""
    models = []
    if registry is not None:
        for name in registry.readiness():  # configured (active) models, sorted
            models.append(model_document(registry, events, traffic, name, rollouts=rollouts))
    return {
        "time": time.time(),
        "ready": bool(registry is not None and registry.is_ready() and not shutting_down),
        "shutting_down": shutting_down,
        "changes": events.changes,
        "models": models,
    }
