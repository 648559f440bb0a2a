"""A hotserve process for the swap benchmark: start it pinned to a core, poll it, read its log.

The server runs as `python -m app` from the repository root (or from `ServerOptions.source`,
another checkout of hotserve, e.g. a worktree of an older commit to measure before/after), with
stdout and stderr going to a log file. Every timestamp here is `time.monotonic()`.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]
MODEL = "mlp"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass(frozen=True)
class ServerOptions:
    base: Path
    log_path: Path
    cpu: int = 0
    poll_seconds: int = 1
    events: bool = True
    tf_threads: int = 1
    model: str = MODEL
    flags: tuple[str, ...] = ()  # more hotserve flags, e.g. --load_policy=resource_preserving
    env: tuple[tuple[str, str], ...] = ()  # more environment, e.g. TF_* variables
    source: Path = REPO  # the hotserve checkout whose `app` package runs


class Server:
    """One running server process; `stop()` it (SIGTERM, then SIGKILL after 30 s)."""

    def __init__(self, options: ServerOptions) -> None:
        self.options = options
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._client = httpx.Client(base_url=self.url, timeout=30)
        flags = [
            f"--model_name={options.model}",
            f"--model_base_path={options.base}",
            f"--rest_api_port={self.port}",
            "--port=0",  # REST only: gRPC's fixed 8500 may be taken on a shared machine
            "--host=127.0.0.1",
            f"--file_system_poll_wait_seconds={options.poll_seconds}",
        ]
        if options.tf_threads > 0:
            flags += [
                f"--tensorflow_intra_op_parallelism={options.tf_threads}",
                f"--tensorflow_inter_op_parallelism={options.tf_threads}",
            ]
        if not options.events:
            flags.append("--watch_file_events=false")  # polling alone, as on NFS
        flags += options.flags
        argv = ["taskset", "-c", str(options.cpu), sys.executable, "-m", "app", *flags]
        env = {
            **os.environ,
            "PYTHONPATH": str(options.source),
            "PYTHONUNBUFFERED": "1",
            **dict(options.env),
        }
        self._log = options.log_path.open("wb")
        self.proc = subprocess.Popen(
            argv, cwd=options.source, env=env, stdout=self._log, stderr=subprocess.STDOUT
        )

    def state(self, version: int) -> str | None:
        """The version's state on the status route, None when the route does not know it."""
        r = self._client.get(f"/v1/models/{self.options.model}/versions/{version}")
        if r.status_code != 200:
            return None
        state: str = r.json()["model_version_status"][0]["state"]
        return state

    def wait_state(self, version: int, state: str, timeout: float, every: float = 0.01) -> float:
        """Poll until `version` shows `state`; return when the answer saying so arrived."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited ({self.proc.returncode}); see its log")
            try:
                seen = self.state(version)
            except httpx.TransportError:
                seen = None  # not listening yet
            now = time.monotonic()
            if seen == state:
                return now
            if now > deadline:
                raise TimeoutError(f"version {version} not {state} after {timeout:.0f}s: {seen}")
            time.sleep(every)

    def memory_kib(self) -> dict[str, int]:
        """VmRSS, VmHWM (peak RSS) and friends from /proc/<pid>/status, in KiB."""
        out: dict[str, int] = {}
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "Threads"):
                out[key] = int(value.split()[0])
        return out

    def log_text(self) -> str:
        self._log.flush()
        return self.options.log_path.read_text(errors="replace")

    def stop(self) -> None:
        self._client.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


class StatusPoller:
    """Polls the model's status route every `every` s in a thread for the whole run (so the
    steady and the swap windows carry the same extra load) and remembers when each
    (version, state) was first seen: the time the answer showing it arrived."""

    def __init__(self, url: str, every: float = 0.01, model: str = MODEL) -> None:
        self._url = f"{url}/v1/models/{model}"
        self._every = every
        self._seen: dict[tuple[int, str], float] = {}
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self.polls = 0
        self._thread = threading.Thread(target=self._run, name="status-poller", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self._stop.is_set():
                try:
                    body = client.get(self._url).json()
                except (httpx.HTTPError, ValueError):
                    body = {}
                now = time.monotonic()
                with self._cond:
                    self.polls += 1
                    for entry in body.get("model_version_status", []):
                        self._seen.setdefault((int(entry["version"]), entry["state"]), now)
                    self._cond.notify_all()
                self._stop.wait(self._every)

    def wait_for(self, version: int, state: str, timeout: float) -> float:
        """When `version` was first seen in `state` (waits for it up to `timeout` s)."""
        key = (version, state)
        with self._cond:
            if not self._cond.wait_for(lambda: key in self._seen, timeout=timeout):
                raise TimeoutError(f"version {version} not {state} after {timeout:.0f}s")
            return self._seen[key]

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


@dataclass
class VersionTimes:
    """What the server logged about one version (durations in s; `*_at` monotonic)."""

    loading_at: float | None = None
    available_at: float | None = None
    load_s: float | None = None
    warmup_s: float | None = None
    ready_s: float | None = None  # "load+warmup": from the load start to AVAILABLE
    unload_s: float | None = None  # "drain+unload" of this version when it was replaced
    unloading_at: float | None = None
    end_at: float | None = None


_STAMP = r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \w+ [\w.]+: "


def _patterns(model: str) -> dict[str, re.Pattern[str]]:
    return {
        "loading": re.compile(_STAMP + rf"model {model} version (\d+): LOADING"),
        "available": re.compile(
            _STAMP + rf"model {model} version (\d+): AVAILABLE \(load\+warmup ([\d.]+)s\)"
        ),
        "load": re.compile(
            _STAMP + r"Loaded SavedModel \S*/(\d+) \(\d+ signatures\) in ([\d.]+) s"
        ),
        "warmup": re.compile(_STAMP + r"Finished warmup of \S*/(\d+): \d+ records in ([\d.]+) s"),
        "unloading": re.compile(_STAMP + rf"model {model} version (\d+): UNLOADING"),
        "end": re.compile(
            _STAMP + rf"model {model} version (\d+): END \(drain\+unload ([\d.]+)s\)"
        ),
    }


def parse_log(text: str, wall_minus_mono: float, model: str = MODEL) -> dict[int, VersionTimes]:
    """Per-version times from a server log. `wall_minus_mono` = time.time() - time.monotonic()
    of this process, to put the log's (local, millisecond) timestamps on the monotonic clock."""
    versions: dict[int, VersionTimes] = {}
    patterns = _patterns(model)
    for line in text.splitlines():
        for kind, pattern in patterns.items():
            m = pattern.match(line)
            if m is None:
                continue
            at = datetime.strptime(m[1], "%Y-%m-%d %H:%M:%S,%f").timestamp() - wall_minus_mono
            vt = versions.setdefault(int(m[2]), VersionTimes())
            value = float(m[3]) if m.lastindex and m.lastindex >= 3 else None
            if kind == "loading":
                vt.loading_at = at
            elif kind == "available":
                vt.available_at, vt.ready_s = at, value
            elif kind == "load":
                vt.load_s = value
            elif kind == "warmup":
                vt.warmup_s = value
            elif kind == "unloading":
                vt.unloading_at = at
            else:
                vt.end_at, vt.unload_s = at, value
            break
    return versions
