"""Version discovery: the scanner's rules on fake version trees, and VersionSource with real
filesystem events (watchfiles), polling, config reloads and cancellation."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest

from app.core.scanner import ScanResult, VersionScanner, parse_version
from app.core.source import VersionSource
from app.core.types import ModelConfig, VersionPolicy

NOW = 1_700_000_000.0
OLD = NOW - 3600


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def set_mtime(path: Path, mtime: float) -> None:
    """Set the mtime of every file and directory under `path` (and `path` itself)."""
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            os.utime(os.path.join(dirpath, name), (mtime, mtime))
        os.utime(dirpath, (mtime, mtime))


def make_version(
    base: Path, name: str, *, mtime: float = OLD, pb: str = "saved_model.pb", data: bytes = b"w"
) -> Path:
    path = base / name
    (path / "variables").mkdir(parents=True)
    if pb:
        (path / pb).write_bytes(b"graph")
    (path / "variables" / "variables.data-00000-of-00001").write_bytes(data)
    set_mtime(path, mtime)
    return path


def config(base: Path, name: str = "m", policy: VersionPolicy | None = None) -> ModelConfig:
    return ModelConfig(name=name, base_path=str(base), version_policy=policy or VersionPolicy())


@pytest.fixture
def base(tmp_path: Path) -> Path:
    path = tmp_path / "model"
    path.mkdir()
    return path


# --- parsing and listing rules -------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [("1", 1), ("007", 7), ("00000123", 123), ("0", 0), ("-3", None), ("+3", None),
     ("1.tmp", None), ("tmp", None), (".1", None), ("v2", None), (" 1", None), ("\u0661", None),
     (str(2**63 - 1), 2**63 - 1), (str(2**63), None)],
)  # fmt: skip
def test_parse_version(name: str, expected: int | None) -> None:
    assert parse_version(name) == expected


def test_only_integer_directories_are_versions(base: Path) -> None:
    make_version(base, "1")
    make_version(base, "007")
    for ignored in ("tmp", "1.tmp", ".hidden", "-3", "v2", ".hotserve-tmp-9-abcd"):
        make_version(base, ignored)
    (base / "5").write_bytes(b"a file with a numeric name")
    (base / "README").write_text("hi")

    result = VersionScanner().scan(config(base))

    assert result == ScanResult("m", {1: base / "1", 7: base / "007"}, {}, None, frozenset({7}))


def test_duplicate_numbers_keep_one_and_warn_once(
    base: Path, caplog: pytest.LogCaptureFixture
) -> None:
    make_version(base, "001")
    make_version(base, "1")
    scanner = VersionScanner()

    first = scanner.scan(config(base))
    second = scanner.scan(config(base))

    assert first.found == second.found == {1: base / "1"}
    warnings = [r for r in caplog.records if "all name version 1" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING


@pytest.mark.parametrize(
    ("policy", "aspired"),
    [
        (VersionPolicy(), {3}),
        (VersionPolicy("latest", num_versions=2), {2, 3}),
        (VersionPolicy("latest", num_versions=0), {3}),
        (VersionPolicy("all"), {1, 2, 3}),
        (VersionPolicy("specific", versions=frozenset({1, 3})), {1, 3}),
    ],
)
def test_policy_picks_the_aspired_set(base: Path, policy: VersionPolicy, aspired: set[int]) -> None:
    for name in ("1", "2", "3"):
        make_version(base, name)
    result = VersionScanner().scan(config(base, policy=policy))
    assert set(result.found) == {1, 2, 3}
    assert result.aspired == aspired


def test_missing_specific_versions_are_warned_about(
    base: Path, caplog: pytest.LogCaptureFixture
) -> None:
    make_version(base, "1")
    policy = VersionPolicy("specific", versions=frozenset({1, 4}))
    result = VersionScanner().scan(config(base, policy=policy))
    assert result.aspired == {1}
    assert "specific versions [4] not found" in caplog.text


def test_a_version_that_leaves_disk_leaves_found(base: Path) -> None:
    scanner = VersionScanner()
    make_version(base, "1")
    make_version(base, "2")
    assert scanner.scan(config(base)).aspired == {2}
    os.rename(base / "2", base / "2.old")
    result = scanner.scan(config(base))
    assert set(result.found) == {1} and result.aspired == {1}


# --- completeness -------------------------------------------------------------------------


def test_a_version_without_saved_model_pb_is_pending(base: Path) -> None:
    make_version(base, "1")
    make_version(base, "2", pb="")
    make_version(base, "3", pb="saved_model.pbtxt")
    result = VersionScanner().scan(config(base, policy=VersionPolicy("all")))
    assert set(result.found) == {1, 3}
    assert result.pending == {2: "no saved_model.pb"}
    assert result.error is None and result.aspired == {1, 3}


def test_a_version_being_written_settles_before_it_is_found(base: Path) -> None:
    clock = Clock()
    scanner = VersionScanner(settle_seconds=1.0, clock=clock)
    make_version(base, "1")
    v2 = make_version(base, "2", mtime=NOW - 0.3)

    result = scanner.scan(config(base))
    assert result.pending == {2: "settling (changed 0.3s ago)"}
    assert result.aspired == {1}

    clock.now = NOW + 0.5  # the copy goes on: a file grows
    (v2 / "variables" / "variables.data-00000-of-00001").write_bytes(b"more weights")
    set_mtime(v2, NOW + 0.4)
    assert 2 in scanner.scan(config(base)).pending

    clock.now = NOW + 1.3  # unchanged, but only 0.9s quiet
    assert scanner.scan(config(base)).pending == {2: "settling (changed 0.9s ago)"}

    clock.now = NOW + 1.5
    result = scanner.scan(config(base))
    assert set(result.found) == {1, 2} and result.pending == {} and result.aspired == {2}


def test_settling_by_observation_when_mtimes_are_in_the_future(base: Path) -> None:
    clock = Clock()
    scanner = VersionScanner(settle_seconds=1.0, clock=clock)
    make_version(base, "1", mtime=NOW + 100)  # clock skew on a network filesystem
    assert 1 in scanner.scan(config(base)).pending
    clock.now = NOW + 0.6
    assert 1 in scanner.scan(config(base)).pending
    clock.now = NOW + 1.1
    assert scanner.scan(config(base)).found == {1: base / "1"}


def test_old_versions_are_ready_on_the_first_scan(base: Path) -> None:
    make_version(base, "1", mtime=time.time() - 5)
    result = VersionScanner(settle_seconds=1.0).scan(config(base))
    assert result.aspired == {1} and result.pending == {}


def test_settle_zero_takes_fresh_versions_at_once(base: Path) -> None:
    make_version(base, "1", mtime=NOW)
    result = VersionScanner(settle_seconds=0, clock=Clock()).scan(config(base))
    assert result.aspired == {1}


def test_a_found_version_stays_found_when_touched(base: Path) -> None:
    clock = Clock()
    scanner = VersionScanner(settle_seconds=1.0, clock=clock)
    v1 = make_version(base, "1")
    assert scanner.scan(config(base)).aspired == {1}
    (v1 / "extra").write_text("someone was here")
    set_mtime(v1, NOW)
    (v1 / "saved_model.pb").unlink()
    result = scanner.scan(config(base))
    assert result.found == {1: v1} and result.aspired == {1}  # never unloaded for it
    assert result.pending == {1: "changed in place, no saved_model.pb"}  # so it rescans soon
    assert result.generations == {}


def test_a_version_fixed_in_place_settles_and_gets_a_new_generation(base: Path) -> None:
    clock = Clock()
    scanner = VersionScanner(settle_seconds=1.0, clock=clock)
    v1 = make_version(base, "1")
    assert scanner.scan(config(base)).generations == {}
    assert scanner.scan(config(base)).pending == {}  # unchanged: only a few stats, no news
    (v1 / "saved_model.pb").write_bytes(b"a fixed graph")  # replaced under the same number
    set_mtime(v1, NOW)
    result = scanner.scan(config(base))
    assert result.found == {1: v1} and result.aspired == {1}
    assert result.pending == {1: "changed in place, settling (changed 0.0s ago)"}
    assert result.generations == {}
    clock.now += 1.5
    result = scanner.scan(config(base))
    assert result.pending == {} and result.generations == {1: 1} and result.aspired == {1}
    assert scanner.scan(config(base)).generations == {1: 1}  # settled: stays at 1
    (v1 / "variables" / "variables.index").write_bytes(b"new index")
    set_mtime(v1, OLD)  # timestamps preserved by the copy: quiet by mtime, settles at once
    assert scanner.scan(config(base)).generations == {1: 2}


def test_done_marker_mode(base: Path) -> None:
    scanner = VersionScanner(settle_seconds=1.0, done_marker="DONE", clock=Clock())
    make_version(base, "1")
    v2 = make_version(base, "2")
    (v2 / "DONE").touch()
    set_mtime(v2, OLD)
    result = scanner.scan(config(base))
    assert result.pending == {1: "waiting for marker DONE"}
    assert set(result.found) == {2}

    (base / "1" / "DONE").touch()
    set_mtime(base / "1", OLD)
    assert set(scanner.scan(config(base)).found) == {1, 2}


# --- listing failures ---------------------------------------------------------------------


def test_missing_base_path_is_an_error_with_nothing_aspired(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    scanner = VersionScanner()
    cfg = config(tmp_path / "nope")
    first = scanner.scan(cfg)
    scanner.scan(cfg)
    assert first.error is not None and "cannot list base path" in first.error
    assert first.aspired == frozenset() and first.found == {}
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(loud) == 1  # logged once, not on every poll


def test_a_base_path_that_is_a_file_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    result = VersionScanner().scan(config(tmp_path / "file"))
    assert result.error is not None and result.aspired == frozenset()


def test_empty_base_path_is_an_error(base: Path, caplog: pytest.LogCaptureFixture) -> None:
    (base / "tmp").mkdir()
    result = VersionScanner().scan(config(base))
    assert result.error == f"no versions found under {base}"
    assert result.aspired == frozenset()
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert [r.getMessage() for r in errors] == [
        f"model m: no versions found under {base}; keeping what is loaded"
    ]


def test_only_incomplete_versions_is_an_error(base: Path) -> None:
    """The serving version was replaced while its successor is still being copied."""
    make_version(base, "2", pb="")
    result = VersionScanner().scan(config(base))
    assert result.error is not None and result.aspired == frozenset()
    assert result.pending == {2: "no saved_model.pb"}


def test_recovery_after_an_error_is_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    scanner = VersionScanner()
    base = tmp_path / "later"
    assert scanner.scan(config(base)).error is not None
    make_version(base, "1")
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert scanner.scan(config(base)).aspired == {1}
    assert "versions found again" in caplog.text


# --- symlinks (Kubernetes volumes) ----------------------------------------------------------


def test_symlinked_version_dir_and_base_path(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    make_version(tmp_path / "store", "v7")
    os.symlink(tmp_path / "store" / "v7", real / "7")
    os.symlink(tmp_path / "nowhere", real / "8")  # dangling: ignored
    make_version(tmp_path / "store", "v9", mtime=NOW)  # fresh: settles through the link
    os.symlink(tmp_path / "store" / "v9", real / "9")
    link = tmp_path / "link"
    os.symlink(real, link)
    result = VersionScanner(clock=Clock()).scan(config(link))
    assert result.found == {7: link / "7"} and result.aspired == {7}
    assert result.pending == {9: "settling (changed 0.0s ago)"}


# --- VersionSource ------------------------------------------------------------------------


class Recorder:
    """on_scan that keeps every result; raises once on the `fail_on`-th call if given."""

    def __init__(self, fail_on: int = 0) -> None:
        self.results: list[ScanResult] = []
        self._fail_on = fail_on
        self._changed = anyio.Event()

    async def __call__(self, result: ScanResult) -> None:
        self.results.append(result)
        self._changed.set()
        self._changed = anyio.Event()
        if len(self.results) == self._fail_on:
            raise RuntimeError("registry hiccup")

    async def wait_for(self, predicate: Callable[[ScanResult], bool], within: float = 5) -> None:
        with anyio.fail_after(within):
            while True:
                changed = self._changed
                if any(predicate(r) for r in self.results):
                    return
                await changed.wait()

    def scans_of(self, model: str) -> int:
        return sum(r.model == model for r in self.results)


def make_source(
    models: list[ModelConfig], poll: float, settle: float = 0.1
) -> tuple[VersionSource, Recorder]:
    recorder = Recorder()
    src = VersionSource(VersionScanner(settle_seconds=settle), poll, anyio.CapacityLimiter(2),
                        recorder)  # fmt: skip
    src.set_models(models)
    return src, recorder


def publish_outside(tmp_path: Path, base: Path, name: str) -> None:
    """Build a complete version elsewhere and rename it in: one filesystem event."""
    staging = tmp_path / "staging"
    staging.mkdir(exist_ok=True)
    make_version(staging, name, mtime=time.time() - 10)
    os.rename(staging / name, base / name)


async def test_a_new_version_is_picked_up_by_filesystem_events(tmp_path: Path, base: Path) -> None:
    make_version(base, "1", mtime=time.time() - 10)
    src, rec = make_source([config(base)], poll=-1)  # events only: no polling
    async with anyio.create_task_group() as tg:
        await tg.start(src.run)
        assert rec.results[0].aspired == {1}
        await rec.wait_for(lambda _r: rec.scans_of("m") >= 2)  # the watch is live
        publish_outside(tmp_path, base, "2")
        started = time.monotonic()
        await rec.wait_for(lambda r: r.aspired == {2}, within=3)
        assert time.monotonic() - started < 2
        tg.cancel_scope.cancel()


async def test_a_version_still_settling_is_rescanned_without_new_events(base: Path) -> None:
    make_version(base, "1", mtime=time.time() - 10)
    make_version(base, "2", mtime=time.time())
    src, rec = make_source([config(base)], poll=-1, settle=0.2)
    async with anyio.create_task_group() as tg:
        await tg.start(src.run)
        assert rec.results[0].aspired == {1} and 2 in rec.results[0].pending
        await rec.wait_for(lambda r: r.aspired == {2}, within=3)
        tg.cancel_scope.cancel()


async def test_polling_catches_what_events_miss(tmp_path: Path) -> None:
    """A Kubernetes-style swap of the base path symlink: nothing under the watched (resolved)
    directory changes, so only the poll sees it."""
    a, b = tmp_path / "a", tmp_path / "b"
    make_version(a, "1", mtime=time.time() - 10)
    make_version(b, "5", mtime=time.time() - 10)
    link = tmp_path / "model"
    os.symlink(a, link)
    src, rec = make_source([config(link)], poll=0.2)
    async with anyio.create_task_group() as tg:
        await tg.start(src.run)
        assert rec.results[0].aspired == {1}
        os.symlink(b, tmp_path / "model.new")
        os.replace(tmp_path / "model.new", link)
        await rec.wait_for(lambda r: r.aspired == {5}, within=3)
        tg.cancel_scope.cancel()


async def test_a_missing_base_path_is_watched_until_it_appears(tmp_path: Path) -> None:
    base = tmp_path / "model"
    src, rec = make_source([config(base)], poll=-1)
    async with anyio.create_task_group() as tg:
        await tg.start(src.run)
        assert rec.results[0].error is not None
        await rec.wait_for(lambda _r: rec.scans_of("m") >= 2)
        staging = tmp_path / "staging"
        make_version(staging, "3", mtime=time.time() - 10)
        os.rename(staging, base)
        await rec.wait_for(lambda r: r.aspired == {3}, within=3)
        tg.cancel_scope.cancel()


async def test_set_models_switches_the_watched_set(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    make_version(a, "1", mtime=time.time() - 10)
    make_version(b, "2", mtime=time.time() - 10)
    src, rec = make_source([config(a, "a")], poll=-1)
    async with anyio.create_task_group() as tg:
        await tg.start(src.run)
        assert [r.model for r in rec.results] == ["a"]
        src.set_models([config(b, "b")])
        await rec.wait_for(lambda r: r.model == "b" and r.aspired == {2}, within=3)
        rec.results.clear()
        assert [r.model for r in await src.scan_all()] == ["b"]
        tg.cancel_scope.cancel()
    assert [r.model for r in rec.results] == ["b"] * len(rec.results)


async def test_poll_zero_scans_once_and_on_set_models(tmp_path: Path, base: Path) -> None:
    make_version(base, "1", mtime=time.time() - 10)
    src, rec = make_source([config(base)], poll=0)
    async with anyio.create_task_group() as tg:
        await tg.start(src.run)
        publish_outside(tmp_path, base, "2")
        await anyio.sleep(0.3)  # an absence (no rescan without a trigger): nothing to poll for
        assert [r.aspired for r in rec.results] == [{1}]
        src.set_models([config(base)])
        await rec.wait_for(lambda r: r.aspired == {2}, within=3)
        tg.cancel_scope.cancel()


async def test_cancellation_stops_promptly(base: Path) -> None:
    make_version(base, "1", mtime=time.time() - 10)
    src, rec = make_source([config(base)], poll=0.1)
    async with anyio.create_task_group() as tg:
        await tg.start(src.run)
        await rec.wait_for(lambda _r: rec.scans_of("m") >= 3)
        started = time.monotonic()
        tg.cancel_scope.cancel()
    assert time.monotonic() - started < 1.0


async def test_on_scan_failures_after_startup_do_not_stop_discovery(
    tmp_path: Path, base: Path, caplog: pytest.LogCaptureFixture
) -> None:
    make_version(base, "1", mtime=time.time() - 10)
    rec = Recorder(fail_on=2)
    src = VersionSource(VersionScanner(settle_seconds=0.1), 0.1, anyio.CapacityLimiter(1), rec)
    src.set_models([config(base)])
    async with anyio.create_task_group() as tg:
        await tg.start(src.run)
        publish_outside(tmp_path, base, "2")
        await rec.wait_for(lambda _r: any(r.aspired == {2} for r in rec.results[2:]), within=3)
        tg.cancel_scope.cancel()
    assert "registry hiccup" in caplog.text


async def test_without_file_events_only_the_poll_finds_versions(tmp_path: Path, base: Path) -> None:
    make_version(base, "1", mtime=time.time() - 10)
    recorder = Recorder()
    src = VersionSource(
        VersionScanner(settle_seconds=0.1), 1.0, anyio.CapacityLimiter(2), recorder,
        file_events=False,
    )  # fmt: skip
    src.set_models([config(base)])
    async with anyio.create_task_group() as tg:
        await tg.start(src.run)
        publish_outside(tmp_path, base, "2")
        await anyio.sleep(0.5)  # an event-driven source would have rescanned by now
        assert recorder.results[-1].aspired == {1}
        await recorder.wait_for(lambda r: r.aspired == {2}, within=3)
        tg.cancel_scope.cancel()
