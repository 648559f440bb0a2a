"""A full automatic rollout on the demo model, narrated (issue 11): `scripts/rollout_demo`.

1. starts `python -m app` on a free 127.0.0.1 port serving `half_plus_two` version 1 (0.5x + 2,
   from models/) with a rollout file whose policy says: a newly published version enters a
   rollout in SHADOW (every request mirrored), then 10 -> 50 -> 100 %, then PROMOTED;
2. drives load itself (closed-loop clients on the default route, each answer's version read
   from its value);
3. publishes version 2 (0.5x + 3, from models/): shadow, canary steps, promotion;
4. switches the policy to straight canary steps and publishes version 3, built to fail every
   request: the controller rolls it back automatically after a few failed requests;
5. prints a timeline (weights, decisions, reasons, answers and errors per version), and stops
   the server on every path (Ctrl-C included). Takes about a minute.

    scripts/rollout_demo            # or: .venv/bin/python scripts/rollout_demo.py
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from app.publish import publish  # noqa: E402

MODEL = "half_plus_two"
XS = [1.0, 2.0, 5.0]
BIAS_TO_VERSION = {2: 1, 3: 2, 4: 3}  # 0.5x + bias: the demo's versions 1 and 2, the bad 3
TEMPLATE = {
    "shadow_percent": 100,
    "steps": [10, 50, 100],
    "step_seconds": 3,
    "window_seconds": 5,
    "thresholds": {
        "min_requests": 30,
        "max_error_rate_increase": 0.01,
        "max_p99_ratio": 5,
        "max_abs_diff": 2.0,  # version 2 answers 1.0 above version 1: expected, accepted
    },
}
BUILD_BAD = """
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from make_demo_models import export_failing_half_plus
export_failing_half_plus(Path(sys.argv[2]), 4.0)
"""
T0 = time.monotonic()


def say(text: str) -> None:
    print(f"[{time.monotonic() - T0:6.1f}s] {text}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Load:
    """Closed-loop clients in threads; answers counted per version (by value), errors kept."""

    def __init__(self, url: str, clients: int = 4) -> None:
        self.url = url
        self.counts: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._client, daemon=True) for _ in range(clients)]

    def _client(self) -> None:
        with httpx.Client(timeout=10) as c:
            while not self.stop.is_set():
                try:
                    r = c.post(self.url, json={"instances": XS})
                except httpx.HTTPError:
                    key = "transport errors"
                else:
                    if r.status_code == 200:
                        bias = round(r.json()["predictions"][0] - 0.5 * XS[0])
                        key = f"v{BIAS_TO_VERSION.get(bias, '?')}"
                    else:
                        key = f"errors ({r.status_code})"
                with self.lock:
                    self.counts[key] += 1

    def take(self) -> Counter[str]:
        with self.lock:
            out, self.counts = self.counts, Counter()
        return out

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(15)


class Server:
    """`python -m app` in its own process group, stopped (SIGTERM, then SIGKILL) on exit."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = log.open("wb")
        cmd = [sys.executable, "-m", "app", f"--rest_api_port={self.port}", "--port=0", *args]
        self.proc = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"the server exited ({self.proc.returncode}); see its log")
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise SystemExit("the server did not become ready")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._log.close()


def metric(text: str, name: str, **labels: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + "{"):
            found = dict(re.findall(r'(\w+)="([^"]*)"', line[: line.index("}") + 1]))
            if found == labels:
                return float(line.rsplit(" ", 1)[1])
    return None


class Narrator:
    """Polls the admin API (rollout + its events) and /metrics; prints each new decision with
    the analysis window it was taken on and the answers per version since the last line."""

    def __init__(self, server: Server, token: str, load: Load) -> None:
        self.server = server
        self.headers = {"Authorization": f"Bearer {token}"}
        self.load = load
        self.seen: set[tuple[object, ...]] = set()
        self.last: dict[str, Any] | None = None

    def rollout(self) -> dict[str, Any]:
        r = httpx.get(
            f"{self.server.url}/admin/v1/models/{MODEL}/rollout", headers=self.headers, timeout=5
        )
        r.raise_for_status()
        doc: dict[str, Any] = r.json()
        return doc

    def poll(self) -> dict[str, Any] | None:
        doc = self.rollout()
        for event in reversed(doc.get("events") or []):  # oldest first
            key = (event["time"], event["action"], event["canary"], event["weight"])
            if key not in self.seen:
                self.seen.add(key)
                self._print_event(event)
        self.last = doc.get("rollout")
        return self.last

    def _print_event(self, e: dict[str, Any]) -> None:
        text = httpx.get(f"{self.server.url}/metrics", timeout=5).text
        window = []
        for arm in ("stable", "canary", "shadow"):
            n = metric(text, "hotserve_rollout_window_requests", model=MODEL, arm=arm)
            err = metric(text, "hotserve_rollout_window_errors", model=MODEL, arm=arm)
            if n:
                window.append(f"{arm} {n:.0f} req/{err or 0:.0f} err")
        diff = metric(text, "hotserve_shadow_divergence_max", model=MODEL)
        if diff is not None:
            window.append(f"shadow max|diff| {diff:g}")
        answers = ", ".join(f"{k} {v}" for k, v in sorted(self.load.take().items())) or "none"
        say(
            f"{e['action']:8s} stable v{e['stable']} / canary v{e['canary']}  "
            f"weight {e['weight'] * 100:3.0f}%  phase {e['phase']:11s} by {e['source']}"
        )
        if e.get("reason"):
            say(f"         reason: {e['reason']}")
        if window:
            say(f"         window: {'; '.join(window)}")
        say(f"         answers since the last line: {answers}")

    def until(self, canary: int, phases: set[str], timeout: float) -> dict[str, Any]:
        """Narrate until the rollout of `canary` reaches one of `phases`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r = self.poll()
            if r is not None and r.get("canary") == canary and r.get("phase") in phases:
                return r
            time.sleep(0.25)
        raise SystemExit(f"no {phases} within {timeout}s")


def write_policy(path: Path, on_publish: str) -> None:
    tmp = path.with_suffix(".tmp")
    policy = {"on_publish": on_publish, "template": TEMPLATE}
    tmp.write_text(json.dumps({"models": {MODEL: {"policy": policy}}}))
    tmp.replace(path)


def build_bad(lib: Path) -> Path:
    out = lib / "bad"
    done = subprocess.run(
        [sys.executable, "-c", BUILD_BAD, str(REPO / "scripts"), str(out)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"building the bad version failed:\n{done.stderr}")
    return out


def main() -> None:
    demo = REPO / "models" / MODEL
    if not (demo / "1").is_dir() or not (demo / "2").is_dir():
        raise SystemExit("models/half_plus_two/{1,2} are missing: run scripts/make_demo_models.py")
    tmp = Path(tempfile.mkdtemp(prefix="hotserve-rollout-demo-"))
    server: Server | None = None
    try:
        base = tmp / MODEL
        base.mkdir()
        publish(demo / "1", base, 1)
        rollout_file = tmp / "rollouts.json"
        write_policy(rollout_file, "shadow")
        token = secrets.token_urlsafe(16)
        env = {**os.environ, "HOTSERVE_HOST": "127.0.0.1", "HOTSERVE_ADMIN_TOKEN": token,
               "HOTSERVE_VERSION_SETTLE_SECONDS": "0.2",
               "HOTSERVE_FILE_SYSTEM_POLL_WAIT_SECONDS": "1"}  # fmt: skip
        server = Server(
            [f"--model_name={MODEL}", f"--model_base_path={base}",
             f"--rollout_config_file={rollout_file}", "--rollout_config_poll_wait_seconds=0.5",
             "--rollout_interval_seconds=0.5"],
            env, tmp / "server.log",
        )  # fmt: skip
        say(f"building the bad version (fails every request) while the server starts ({tmp})")
        bad = build_bad(tmp / "lib")
        server.wait_ready()
        say(f"server up at {server.url}: {MODEL} v1 (0.5x + 2); policy on_publish=shadow")
        with Load(f"{server.url}/v1/models/{MODEL}:predict") as load:
            narrator = Narrator(server, token, load)
            time.sleep(2)
            say(f"answers so far: {dict(load.take())}")
            say("publishing v2 (0.5x + 3): it enters a rollout instead of taking all traffic")
            publish(demo / "2", base, 2)
            narrator.until(2, {"promoted", "rolled_back"}, timeout=120)
            time.sleep(2)
            say(f"answers after the promotion: {dict(load.take())}")
            write_policy(rollout_file, "rollout")
            time.sleep(1.5)
            say("policy now on_publish=rollout (canary 10% at once); publishing v3, broken")
            publish(bad, base, 3)
            narrator.until(3, {"rolled_back", "promoted"}, timeout=120)
            time.sleep(2)
            say(f"answers after the rollback: {dict(load.take())}")
        log = (tmp / "server.log").read_text(errors="replace")
        decisions = [
            ln.split(" ", 3)[3] for ln in log.splitlines() if "app.rollout.controller" in ln
        ]
        print("\nthe controller's log lines:")
        for line in decisions:
            print("  " + line[:200])
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
