"""scripts/rollout_demo runs end to end: publish, shadow, canary steps, promotion, then a broken
version rolled back automatically; it exits 0 and leaves no server behind."""

from __future__ import annotations

import re
import subprocess

import pytest

from tests.harness import REPO


@pytest.mark.slow  # ~35-60 s: a real server, a TF build of the broken version, ~30 s of load
def test_rollout_demo_walks_through_a_rollout_and_a_rollback() -> None:
    done = subprocess.run(
        [str(REPO / "scripts" / "rollout_demo")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert re.search(r"start +stable v1 / canary v2 +weight +0% +phase shadow", out), out
    weights = re.findall(r"weight +stable v1 / canary v2 +weight +(\d+)%", out)
    assert weights == ["10", "50", "100"], out
    assert re.search(r"promote +stable v1 / canary v2 +weight 100% +phase promoted", out), out
    assert re.search(r"rollback +stable v2 / canary v3 .* phase rolled_back", out), out
    assert re.search(r"automatic: (canary|shadow) errors", out), out
    after = re.search(r"answers after the rollback: (\{.*\})", out)
    assert after is not None and "errors" not in after.group(1) and "'v2'" in after.group(1)
    server = re.search(r"server up at http://127\.0\.0\.1:(\d+)", out)
    assert server is not None
    listening = subprocess.run(["ss", "-ltn"], capture_output=True, text=True, check=False).stdout
    assert f"127.0.0.1:{server.group(1)} " not in listening  # the demo stopped its server
