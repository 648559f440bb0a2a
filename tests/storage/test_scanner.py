"""RemoteScanner against a real S3 API (moto server on loopback) and real SavedModels."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from app.core.scanner import ScanResult
from app.core.types import ModelConfig, VersionPolicy
from app.storage.cache import MANIFEST, VersionCache
from app.storage.scanner import RemoteScanner
from tests.storage.conftest import S3

_names = itertools.count()


def _bucket(s3: S3) -> str:
    return s3.new_bucket(f"scan-{next(_names)}")


def _scanner(tmp_path: Path, **kw: object) -> RemoteScanner:
    cache = VersionCache(tmp_path / "cache", int(kw.pop("max_bytes", 0)))  # type: ignore[call-overload]
    return RemoteScanner(cache, **kw)  # type: ignore[arg-type]


def _config(bucket: str, policy: VersionPolicy | None = None) -> ModelConfig:
    return ModelConfig(
        name="m", base_path=f"s3://{bucket}/m", version_policy=policy or VersionPolicy()
    )


def _scan_until(
    scanner: RemoteScanner, config: ModelConfig, want: set[int], polls: int = 5
) -> ScanResult:
    """Poll until the aspired set is `want` (a few polls: versions settle over two)."""
    for _ in range(polls):
        result = scanner.scan(config)
        if result.aspired == want:
            return result
    raise AssertionError(f"aspired {sorted(result.aspired)} after {polls} polls: {result}")


def test_complete_version_is_found_on_the_second_poll_and_cached_atomically(
    s3: S3, bias_models: Path, tmp_path: Path
) -> None:
    bucket = _bucket(s3)
    s3.upload(bias_models / "1", bucket, "m/1")
    scanner, config = _scanner(tmp_path), _config(bucket)

    first = scanner.scan(config)
    assert first.error is not None and first.aspired == frozenset()
    assert "settling" in first.pending[1]

    second = scanner.scan(config)
    assert second.error is None and second.aspired == {1}
    local = second.found[1]
    assert (local / "saved_model.pb").is_file() and (local / MANIFEST).is_file()
    assert (local / "variables" / "variables.index").is_file()
    assert not any((tmp_path / "cache" / ".tmp").iterdir())  # nothing half-copied left behind


def test_slow_upload_is_pending_until_its_listing_stops_changing(
    s3: S3, bias_models: Path, tmp_path: Path
) -> None:
    bucket = _bucket(s3)
    files = sorted(
        p.relative_to(bias_models / "1").as_posix()
        for p in (bias_models / "1").rglob("*")
        if p.is_file()
    )
    scanner, config = _scanner(tmp_path), _config(bucket)
    for name in files:  # one object per poll, as a slow copy would
        s3.upload(bias_models / "1", bucket, "m/1", only={name})
        assert scanner.scan(config).error is not None
    # Complete now, but the listing changed since the last poll: one more poll settles it.
    assert scanner.scan(config).aspired == {1}


def test_missing_variables_shard_is_never_loaded(s3: S3, bias_models: Path, tmp_path: Path) -> None:
    bucket = _bucket(s3)
    s3.upload(
        bias_models / "1", bucket, "m/1", only={"saved_model.pb", "variables/variables.index"}
    )
    scanner, config = _scanner(tmp_path), _config(bucket)
    results = [scanner.scan(config) for _ in range(3)]
    assert all(r.error is not None and not r.found for r in results)
    assert "missing 1 of 1 variables shards" in results[-1].pending[1]
    s3.upload(bias_models / "1", bucket, "m/1")  # the interrupted upload is resumed
    _scan_until(scanner, config, {1})


def test_graph_without_its_variables_is_rejected_after_download(
    s3: S3, bias_models: Path, tmp_path: Path
) -> None:
    """Half an upload: only the graph arrived. Its listing is stable and holds saved_model.pb,
    but the graph has variable ops: the downloaded copy fails verification and is discarded."""
    bucket = _bucket(s3)
    s3.upload(bias_models / "1", bucket, "m/1", only={"saved_model.pb"})
    scanner, config = _scanner(tmp_path), _config(bucket)
    results = [scanner.scan(config) for _ in range(4)]
    assert all(r.error is not None and not r.found for r in results)
    assert "rejected" in results[-1].pending[1]
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").glob("m-*/1"))
    s3.upload(bias_models / "1", bucket, "m/1")
    _scan_until(scanner, config, {1})


def test_failing_or_empty_listing_reports_an_error_and_aspires_nothing(
    s3: S3, bias_models: Path, tmp_path: Path
) -> None:
    scanner = _scanner(tmp_path)
    missing_bucket = scanner.scan(_config("no-such-bucket"))
    assert missing_bucket.error is not None and missing_bucket.aspired == frozenset()
    empty = scanner.scan(_config(_bucket(s3)))
    assert empty.error is not None and "no versions found" in empty.error


def test_unused_versions_are_evicted_and_versions_in_use_are_kept(
    s3: S3, bias_models: Path, tmp_path: Path
) -> None:
    bucket = _bucket(s3)
    in_use: set[int] = set()
    scanner, config = _scanner(tmp_path, in_use=lambda _m: set(in_use)), _config(bucket)
    s3.upload(bias_models / "1", bucket, "m/1")
    v1 = _scan_until(scanner, config, {1}).found[1]
    in_use.add(1)  # the registry still serves version 1 while 2 loads
    s3.upload(bias_models / "2", bucket, "m/2")
    _scan_until(scanner, config, {2})
    scanner.scan(config)
    assert v1.is_dir()
    in_use.clear()  # version 1 unloaded
    assert scanner.scan(config).aspired == {2}
    assert not v1.exists()


def test_rollback_downloads_the_previous_version_again(
    s3: S3, bias_models: Path, tmp_path: Path
) -> None:
    bucket = _bucket(s3)
    scanner, config = _scanner(tmp_path), _config(bucket)
    s3.upload(bias_models / "1", bucket, "m/1")
    s3.upload(bias_models / "2", bucket, "m/2")
    _scan_until(scanner, config, {2})
    s3.delete(bucket, "m/2")
    rolled_back = scanner.scan(config)
    assert rolled_back.aspired == {1} and (rolled_back.found[1] / MANIFEST).is_file()


def test_size_cap_refuses_a_download_that_does_not_fit(
    s3: S3, bias_models: Path, tmp_path: Path
) -> None:
    bucket = _bucket(s3)
    s3.upload(bias_models / "1", bucket, "m/1")
    scanner, config = _scanner(tmp_path, max_bytes=10), _config(bucket)
    results = [scanner.scan(config) for _ in range(3)]
    assert all(r.error is not None for r in results)
    assert "download failed" in results[-1].pending[1]


def test_done_marker_is_required_when_configured(s3: S3, bias_models: Path, tmp_path: Path) -> None:
    bucket = _bucket(s3)
    s3.upload(bias_models / "1", bucket, "m/1")
    scanner, config = _scanner(tmp_path, done_marker="DONE"), _config(bucket)
    assert all(scanner.scan(config).error is not None for _ in range(3))
    s3.client.put_object(Bucket=bucket, Key="m/1/DONE", Body=b"")
    _scan_until(scanner, config, {1})


@pytest.mark.parametrize("policy", [VersionPolicy(kind="all")])
def test_version_policy_selects_what_is_downloaded(
    s3: S3, bias_models: Path, tmp_path: Path, policy: VersionPolicy
) -> None:
    bucket = _bucket(s3)
    for v in (1, 2):
        s3.upload(bias_models / str(v), bucket, f"m/{v}")
    result = _scan_until(_scanner(tmp_path), _config(bucket, policy), {1, 2})
    assert set(result.found) == {1, 2}


def test_object_names_never_write_outside_the_download_folder(
    s3: S3, bias_models: Path, tmp_path: Path
) -> None:
    """Object keys are not paths: `..` components or an empty one (an absolute name after the
    version prefix) must not place a file anywhere but inside the version's download folder.
    Such a version is rejected, not loaded, and is taken once the listing is clean."""
    bucket = _bucket(s3)
    s3.upload(bias_models / "1", bucket, "m/1")
    outside = tmp_path / "abs-escape"
    bad = ["m/1/../../../dots-escape", "m/1/variables/../../../../x-escape", f"m/1/{outside}"]
    for key in bad:
        s3.client.put_object(Bucket=bucket, Key=key, Body=b"not yours")
    scanner, config = _scanner(tmp_path / "a" / "b"), _config(bucket)
    results = [scanner.scan(config) for _ in range(3)]
    assert all(not r.found for r in results)
    assert "unsafe object name" in results[-1].pending[1]
    assert sorted(p.name for p in tmp_path.rglob("*-escape")) == []
    for key in bad:
        s3.client.delete_object(Bucket=bucket, Key=key)
    _scan_until(scanner, config, {1})


def test_state_of_a_deleted_version_is_dropped(s3: S3, bias_models: Path, tmp_path: Path) -> None:
    """A long-lived server sees versions come and go for months: what the scanner remembers
    per version (listing, shard count, logged reasons) must go with the version."""
    bucket = _bucket(s3)
    s3.upload(bias_models / "1", bucket, "m/1")
    scanner, config = _scanner(tmp_path), _config(bucket)
    _scan_until(scanner, config, {1})
    for version in range(2, 6):  # publish, then delete, one version after another
        s3.upload(bias_models / "2", bucket, f"m/{version}")
        _scan_until(scanner, config, {version})
        s3.delete(bucket, f"m/{version}")
        _scan_until(scanner, config, {1})
    state = scanner._states[("m", config.base_path)]
    assert set(state.seen) == {1}
    assert {v for v, _tag in state.shards} == {1}
    assert {key.split(":")[0] for key in state.logged} <= {"1"}
