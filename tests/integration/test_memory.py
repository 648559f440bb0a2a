"""An unloaded version's memory is given back (issue 7, tensorflow/serving#1664).

The baseline is the process with ONE version loaded, warmed and serving; after each completed
swap (new version AVAILABLE, old one END) the resident size must be back within 10% of it. With
TensorFlow's default oneDNN allocator a swap left a whole extra copy of the weights resident.
Models are generated (scripts/bench_swap/models.py: one float32 variable of MODEL_MIB MiB).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from app.publish import publish
from tests.harness import REPO, ServerProcess

MODEL_MIB = 256
TOLERANCE = 0.10
SWAPS = 3
ENV = {"HOTSERVE_VERSION_SETTLE_SECONDS": "0.3", "HOTSERVE_FILE_SYSTEM_POLL_WAIT_SECONDS": "1"}


@pytest.fixture(scope="module")
def big_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SavedModel holding one MODEL_MIB MiB variable; `y = x + 1`."""
    out = tmp_path_factory.mktemp("big") / "model"
    script = REPO / "scripts" / "bench_swap" / "models.py"
    subprocess.run(
        [sys.executable, str(script), str(out), str(MODEL_MIB)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return out


def rss_kib(pid: int) -> int:
    """VmRSS of `pid` in KiB, from /proc/<pid>/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


# Loads, swaps and unloads like the lifecycle does (new version loaded before the old one is
# closed), in one process without HTTP: what the runtime gives back, measured cheaply.
SWAP_IN_PROCESS = """
import json, sys
from pathlib import Path
import numpy as np
from app.runtime.memory import release_memory
from app.runtime.saved_model import SavedModelLoader

def rss():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])

src, swaps = Path(sys.argv[1]), int(sys.argv[2])
loader = SavedModelLoader(intra_op_threads=1, inter_op_threads=1)
x = {"x": np.ones(3, np.float32)}
serving = loader.load(src)
assert serving.run("serving_default", x)["y"].tolist() == [2.0, 2.0, 2.0]
release_memory()
reads = [rss()]
for _ in range(swaps):
    new = loader.load(src)
    new.run("serving_default", x)
    serving.unload()
    serving = new
    release_memory()
    reads.append(rss())
print(json.dumps(reads))
"""


def test_runtime_gives_an_unloaded_version_back(big_model: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TF_ONEDNN")}
    out = subprocess.run(
        [sys.executable, "-c", SWAP_IN_PROCESS, str(big_model), str(SWAPS)],
        cwd=REPO,
        env=env,
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    one, *after = json.loads(out.stdout.strip().splitlines()[-1])
    growth = [a / one - 1 for a in after]
    assert all(g <= TOLERANCE for g in growth), (one, after)


class Traffic:
    """One client thread posting :predict in a loop; counts answers and failures."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.ok = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self._stop.is_set():
                try:
                    r = client.post(self.url, json={"instances": [1.0, 2.0]})
                except httpx.HTTPError as exc:
                    self.failures.append(repr(exc))
                    continue
                if r.status_code == 200:
                    self.ok += 1
                else:
                    self.failures.append(f"{r.status_code} {r.text}")

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def wait_answers(self, n: int, timeout: float = 60.0) -> None:
        target = self.ok + n
        deadline = time.monotonic() + timeout
        while self.ok < target:
            assert time.monotonic() < deadline, f"only {self.ok} answers: {self.failures[-3:]}"
            time.sleep(0.05)


def state(client: httpx.Client, version: int) -> str | None:
    r = client.get(f"/v1/models/big/versions/{version}")
    if r.status_code != 200:
        return None
    s: str = r.json()["model_version_status"][0]["state"]
    return s


def wait_state(client: httpx.Client, version: int, want: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while (seen := state(client, version)) != want:
        assert time.monotonic() < deadline, f"version {version} is {seen}, not {want}"
        time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["availability_preserving", "resource_preserving"])
def test_swaps_under_load_give_memory_back(policy: str, big_model: Path, tmp_path: Path) -> None:
    base = tmp_path / "big"
    publish(big_model, base, 1)
    flags = [
        "--model_name=big",
        f"--model_base_path={base}",
        f"--load_policy={policy}",
        "--enable_batching",
        "--tensorflow_intra_op_parallelism=1",
        "--tensorflow_inter_op_parallelism=1",
    ]
    proc = ServerProcess(flags, env=ENV)
    try:
        proc.start(tmp_path / "server.log")
        assert proc.proc is not None
        pid = proc.proc.pid
        with (
            httpx.Client(base_url=proc.url, timeout=30) as client,
            Traffic(f"{proc.url}/v1/models/big:predict") as traffic,
        ):
            traffic.wait_answers(50)
            one_version = rss_kib(pid)
            after = []
            for version in range(2, SWAPS + 2):
                publish(big_model, base, version)
                wait_state(client, version, "AVAILABLE")
                wait_state(client, version - 1, "END")
                traffic.wait_answers(20)
                after.append(rss_kib(pid))
    finally:
        if proc.proc is not None:
            proc.stop()
    growth = [a / one_version - 1 for a in after]
    assert all(g <= TOLERANCE for g in growth), (one_version, after, proc.log()[-2000:])
    assert traffic.ok > 0
    if policy == "availability_preserving":
        assert traffic.failures == []
    # resource_preserving unloads first, as in TF Serving: requests in the gap get a 404.
