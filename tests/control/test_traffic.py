"""Per-version traffic windows (app.control.traffic) and the event log's durations."""

from __future__ import annotations

from pathlib import Path

from app.control.events import EventLog
from app.control.traffic import Traffic, Window
from app.core.types import ServableId, VersionState, VersionStatus


def test_window_rates_and_quantiles_over_whole_seconds() -> None:
    w = Window()
    for second in range(100, 109):  # 9 complete seconds, 10 requests each
        for i in range(10):
            w.record(0.001 if i < 9 else 0.100, ok=i != 0, now=second + i / 20)
    w.record(5.0, ok=True, now=109.5)  # the current second does not count yet
    s = w.summary(now=109.9)
    assert s["requests_per_second"] == 10.0 and s["errors_per_second"] == 1.0
    assert s["p50_ms"] is not None and 1.0 <= s["p50_ms"] < 1.4
    assert s["p99_ms"] is not None and 100 <= s["p99_ms"] < 135
    assert Window().summary(now=5.0) == {
        "requests_per_second": 0.0,
        "errors_per_second": 0.0,
        "p50_ms": None,
        "p99_ms": None,
    }
    assert w.summary(now=200.0)["requests_per_second"] == 0.0  # old seconds fall out


def test_traffic_forgets_ended_versions_only() -> None:
    t = Traffic()
    t.windows[("m", 1)] = Window()
    t.forget("m", VersionStatus(1, VersionState.UNLOADING))
    assert ("m", 1) in t.windows
    t.forget("m", VersionStatus(1, VersionState.END))
    assert ("m", 1) not in t.windows


def test_event_log_durations_and_reasons() -> None:
    log = EventLog(max_events=5)
    log.observe("m", VersionStatus(1, VersionState.LOADING))
    log.version_ready(ServableId("m", 1), Path("/nowhere"))  # no load was timed: no durations
    log.observe("m", VersionStatus(1, VersionState.AVAILABLE))
    log.observe("m", VersionStatus(2, VersionState.LOADING))
    log.observe("m", VersionStatus(2, VersionState.END, "NOT_FOUND", "no such file"))
    log.observe("m", VersionStatus(1, VersionState.UNLOADING))
    log.observe("m", VersionStatus(1, VersionState.END))
    events = log.recent("m")
    assert len(events) == 5 and events[0]["state"] == "END" and "unload_seconds" in events[0]
    failed = next(e for e in events if e["version"] == 2 and e["state"] == "END")
    assert failed["reason"] == "no such file" and failed["error_code"] == "NOT_FOUND"
    assert log.changes == 6 and log.recent("other") == []
