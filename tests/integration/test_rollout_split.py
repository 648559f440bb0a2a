"""A weighted, sticky rollout on a real server (`python -m app`, REST and gRPC over sockets), with
versions that answer distinguishably (y = 0.5x + version, `bias_versions`). Issue 11.

One server for the module, `latest` policy, versions 1 and 2 on disk, and a rollout file that
splits `hs` stable 1 / canary 2 from startup. Each test sets the weight it needs (admin API or
file) first, so the tests do not depend on their order.

Statistical bounds (stated once, used below): a keyless request goes to the canary with
probability w, independently, so the canary count of n requests is binomial(n, w) with standard
deviation sqrt(w(1-w)/n) of the share; we assert the observed share within 4 sd of w (a false
failure about once in 16,000 runs). n = 2000 at w = 0.2: sd 0.89%, bound +-3.6%. Sticky keys:
the fraction of 1000 keys that move from 5% to 25% is binomial(1000, 0.2) / 1000 over the key
hashes: sd 1.26%, bound +-5.1%; and each key's arm is also checked exactly against its hash.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from app.publish import publish
from app.rollout.split import point
from tests.grpc.conftest import GrpcServer, start, stop
from tests.integration.conftest import bias_versions, version_of
from tests.integration.test_hot_swap import ENV

__all__ = ["bias_versions"]  # the session fixture that builds the versions, re-used here

TOKEN = "rollout-test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
XS = [1.0, 2.0]
KEYS = [f"user-{i}" for i in range(1000)]


def within(share: float, weight: float, n: int, sds: float = 4.0) -> bool:
    return abs(share - weight) <= sds * math.sqrt(weight * (1 - weight) / n)


class Clients:
    """Sequential REST (keep-alive) and gRPC clients of one server; every answer -> its version."""

    def __init__(self, server: GrpcServer) -> None:
        self.server = server
        self.http = httpx.Client(base_url=server.url, timeout=30)
        self.stub = prediction_service_pb2_grpc.PredictionServiceStub(server.channel)

    def rest(self, key: str | None = None, path: str = "/v1/models/hs:predict") -> int:
        headers = {"X-Route-Key": key} if key is not None else {}
        r = self.http.post(path, json={"instances": XS}, headers=headers)
        assert r.status_code == 200, r.text
        return version_of(r.json()["predictions"], XS)

    def grpc(self, key: str | None = None, version: int | None = None, label: str = "") -> int:
        req = predict_pb2.PredictRequest()
        req.model_spec.name = "hs"
        if version is not None:
            req.model_spec.version.value = version
        if label:
            req.model_spec.version_label = label
        x: tensor_pb2.TensorProto = req.inputs["x"]
        x.dtype = types_pb2.DT_FLOAT
        x.tensor_shape.dim.add().size = len(XS)
        x.float_val.extend(XS)
        metadata = (("x-route-key", key),) if key is not None else None
        resp: Any = self.stub.Predict(req, timeout=30, metadata=metadata)
        answered = version_of(np.asarray(resp.outputs["y"].float_val).tolist(), XS)
        assert resp.model_spec.version.value == answered
        return answered

    def admin(self, method: str, path: str, body: object = None) -> dict[str, Any]:
        r = self.http.request(method, f"/admin/v1{path}", json=body, headers=AUTH)
        assert r.status_code == 200, r.text
        out: dict[str, Any] = r.json()
        return out

    def weight(self, percent: float) -> None:
        body = {"stable": 1, "canary": 2, "canary_percent": percent, "automatic": False}
        self.admin("PUT", "/models/hs/rollout", body)

    def states(self) -> dict[int, str]:
        r = self.http.get("/v1/models/hs")
        return {int(s["version"]): s["state"] for s in r.json()["model_version_status"]}


@contextlib.contextmanager
def rollout_server(tmp: Path, versions: Path, canary_percent: int) -> Iterator[Clients]:
    """A server of `hs` (versions 1 and 2 on disk, `latest` policy) with a rollout file that splits
    it stable 1 / canary 2 at `canary_percent` from startup; both versions AVAILABLE on entry.
    The base path is `tmp / "hs"`, the file `tmp / "rollouts.json"` (polled every 0.2 s)."""
    base = tmp / "hs"
    for v in (1, 2):
        publish(versions / str(v), base, v)
    rollouts = tmp / "rollouts.json"
    entry = {"stable": 1, "canary": 2, "canary_percent": canary_percent, "automatic": False}
    rollouts.write_bytes(orjson.dumps({"models": {"hs": {"rollout": entry}}}))
    args = [
        "--model_name=hs",
        f"--model_base_path={base}",
        f"--rollout_config_file={rollouts}",
        "--rollout_config_poll_wait_seconds=0.2",
    ]
    server = start(args, tmp / "server.log", env={**ENV, "HOTSERVE_ADMIN_TOKEN": TOKEN})
    clients = Clients(server)
    try:
        until(lambda: clients.states() == {2: "AVAILABLE", 1: "AVAILABLE"})
        yield clients
    finally:
        clients.http.close()
        stop(server)


@pytest.fixture(scope="module")
def split_server(
    tmp_path_factory: pytest.TempPathFactory, bias_versions: Path
) -> Iterator[tuple[Clients, Path]]:
    tmp = tmp_path_factory.mktemp("rollout_split")
    with rollout_server(tmp, bias_versions, 20) as clients:
        yield clients, tmp / "rollouts.json"


def until(check: Callable[[], bool], timeout: float = 60) -> None:
    """Poll `check` every 50 ms until it holds; TimeoutError after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        time.sleep(0.05)


def test_the_file_rollout_keeps_both_versions_loaded_under_latest(
    split_server: tuple[Clients, Path],
) -> None:
    c, _ = split_server
    doc = c.admin("GET", "/models/hs/rollout")["rollout"]
    assert (doc["stable"], doc["canary"], doc["canary_percent"]) == (1, 2, 20)
    assert c.states() == {2: "AVAILABLE", 1: "AVAILABLE"}  # `latest` alone would unload 1


@pytest.mark.parametrize("edge", ["rest", "grpc"])
def test_the_observed_split_matches_the_weight(
    split_server: tuple[Clients, Path], edge: str
) -> None:
    c, _ = split_server
    c.weight(20)
    n = 2000
    send = c.rest if edge == "rest" else c.grpc
    got = Counter(send() for _ in range(n))
    assert set(got) == {1, 2}
    assert within(got[2] / n, 0.2, n), got  # 4 sd = 3.6% (module docstring)
    assert c.states() == {2: "AVAILABLE", 1: "AVAILABLE"}


def test_sticky_keys_never_move_within_a_split_and_move_minimally_between_splits(
    split_server: tuple[Clients, Path],
) -> None:
    c, _ = split_server
    c.weight(5)
    at5 = {k: c.rest(k) for k in KEYS}
    assert {k: c.rest(k) for k in KEYS} == at5  # again: nobody moved
    assert {k: c.grpc(k) for k in KEYS} == at5  # gRPC metadata: the same arm as the header
    assert at5 == {k: 2 if point("hs", k) < 0.05 else 1 for k in KEYS}
    c.weight(25)  # live, through the admin API
    at25 = {k: c.grpc(k) for k in KEYS}
    assert {k: c.rest(k) for k in KEYS} == at25
    assert all(at25[k] == 2 for k in KEYS if at5[k] == 2)  # no canary key goes back
    moved = sum(at5[k] != at25[k] for k in KEYS) / len(KEYS)
    assert within(moved, 0.20, len(KEYS)), moved  # 4 sd = 5.1% (module docstring)
    assert at25 == {k: 2 if point("hs", k) < 0.25 else 1 for k in KEYS}


def test_named_versions_and_labels_are_never_rerouted(split_server: tuple[Clients, Path]) -> None:
    c, _ = split_server
    c.weight(100)
    assert {c.rest() for _ in range(30)} == {2}
    c.admin("PUT", "/models/hs/labels/old", {"version": 1})
    for key in (None, "user-1", "user-2"):
        assert {c.rest(key, "/v1/models/hs/versions/1:predict") for _ in range(10)} == {1}
        assert {c.rest(key, "/v1/models/hs/labels/old:predict") for _ in range(10)} == {1}
        assert {c.grpc(key, version=1) for _ in range(10)} == {1}
        assert {c.grpc(key, label="old") for _ in range(10)} == {1}
    c.weight(0)
    assert {c.rest(path="/v1/models/hs/versions/2:predict") for _ in range(10)} == {2}


def test_metadata_of_the_default_route_follows_the_routing_key(
    split_server: tuple[Clients, Path],
) -> None:
    """A sticky client reads the signatures of the version its requests land on (a canary may
    change them): REST /metadata and gRPC GetModelMetadata without a version follow the key
    like :predict does, not a fresh random draw."""
    c, _ = split_server
    c.weight(50)
    for key in KEYS[:40]:
        served = c.rest(key)
        for _ in range(3):
            r = c.http.get("/v1/models/hs/metadata", headers={"X-Route-Key": key})
            assert r.status_code == 200, r.text
            assert int(r.json()["model_spec"]["version"]) == served, key
            req = get_model_metadata_pb2.GetModelMetadataRequest()
            req.model_spec.name = "hs"
            req.metadata_field.append("signature_def")
            resp: Any = c.stub.GetModelMetadata(req, timeout=30, metadata=(("x-route-key", key),))
            assert resp.model_spec.version.value == served, key


def test_no_default_route_request_fails_while_the_split_changes_under_load(
    split_server: tuple[Clients, Path],
) -> None:
    """Concurrent REST and gRPC default-route traffic (with and without keys) over real sockets
    while the weight moves 0 -> 100 and back, and the rollout pauses and resumes: every
    request answers 200 / OK from one of the two arms."""
    c, _ = split_server
    stop = threading.Event()
    failures: list[str] = []
    seen: Counter[int] = Counter()

    def drive(i: int) -> None:
        own = Clients(c.server)
        try:
            n = 0
            while not stop.is_set():
                key = f"load-{i}-{n % 50}" if i % 2 else None
                try:
                    seen[own.rest(key) if n % 2 else own.grpc(key)] += 1
                except Exception as exc:  # any failure is the finding
                    failures.append(repr(exc)[:300])
                n += 1
        finally:
            own.http.close()

    def some_traffic() -> None:  # at least 20 more answers (or failures) at this setting
        start = sum(seen.values()) + len(failures)
        until(lambda: sum(seen.values()) + len(failures) >= start + 20)

    threads = [threading.Thread(target=drive, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    try:
        for percent in (0, 5, 25, 50, 100, 60, 0, 20):
            c.weight(percent)
            some_traffic()
        c.admin("POST", "/models/hs/rollout/pause")
        c.weight(80)
        c.admin("POST", "/models/hs/rollout/resume")
        some_traffic()
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert failures == []
    assert set(seen) == {1, 2} and sum(seen.values()) > 50, seen


def test_an_unavailable_canary_sends_everything_to_stable(
    split_server: tuple[Clients, Path],
) -> None:
    c, _ = split_server
    c.weight(50)
    c.admin("POST", "/models/hs/versions/2/unload")
    until(lambda: c.states().get(2) == "END")
    assert {c.rest(k) for k in [None, *KEYS[:100]]} == {1}
    assert {c.grpc(k) for k in [None, *KEYS[:100]]} == {1}
    c.admin("POST", "/models/hs/versions/2/load")  # back: the split resumes
    got = Counter(c.rest() for _ in range(400))
    assert within(got[2] / 400, 0.5, 400), got


def test_a_file_change_applies_live(split_server: tuple[Clients, Path]) -> None:
    c, rollouts = split_server
    entry = {"stable": 1, "canary": 2, "canary_percent": 70, "automatic": False}
    rollouts.write_bytes(orjson.dumps({"models": {"hs": {"rollout": entry}}}))

    def applied() -> bool:
        return bool(c.admin("GET", "/models/hs/rollout")["rollout"]["canary_percent"] == 70)

    until(applied)
    got = Counter(c.grpc() for _ in range(400))
    assert within(got[2] / 400, 0.7, 400), got
    rollouts.write_text("{not json")  # a bad file keeps the rollout
    until(lambda: "keeping the previous rollouts" in c.server.proc.log())
    assert c.admin("GET", "/models/hs/rollout")["rollout"]["canary_percent"] == 70


def test_rollback_under_latest_keeps_stable_and_the_next_scans_do_not_bring_the_canary_back(
    tmp_path: Path, bias_versions: Path
) -> None:
    """Its own server: a rollback ends the module's shared rollout. `latest` policy, 1 s scans;
    the file still names the rollout (unchanged entries are not applied again)."""
    with rollout_server(tmp_path, bias_versions, 50) as c:
        assert set(Counter(c.rest() for _ in range(100))) == {1, 2}
        c.admin("POST", "/models/hs/rollout/rollback", {"reason": "test"})
        assert {c.grpc() for _ in range(50)} == {1}  # at once
        until(lambda: c.states() == {2: "END", 1: "AVAILABLE"})
        assert {c.rest(k) for k in [None, *KEYS[:50]]} == {1}
        assert c.admin("GET", "/models/hs/rollout")["rollout"]["phase"] == "rolled_back"
        # The next scans (the one that finds 3 among them) never load 2 again, and a newer
        # version is served as usual.
        publish(bias_versions / "3", tmp_path / "hs", 3)
        seen_2: set[str] = set()

        def settled() -> bool:
            states = c.states()
            seen_2.add(states[2])
            return states == {3: "AVAILABLE", 2: "END", 1: "END"}

        until(settled)
        assert seen_2 == {"END"}
        assert {c.rest() for _ in range(20)} == {3}
