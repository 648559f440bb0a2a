"""TensorFlow's environment defaults (app.runtime.memory): set before TF, never over the user's.

Whether the memory is really given back is tests/integration/test_memory.py's job.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from app.runtime.memory import TF_ENV_DEFAULTS, release_memory, set_tf_env_defaults
from tests.harness import REPO

VAR = "TF_ONEDNN_USE_SYSTEM_ALLOCATOR"

# Records the variable's value at the moment `import tensorflow` starts, then exits at once (so
# the test does not pay for TensorFlow's import). Reached through the lifespan's loader factory,
# the path of every entry point (hotserve, python -m app, uvicorn --factory app.main:create_app).
PROBE = f"""
import os, sys

class Probe:
    def find_spec(self, name, path=None, target=None):
        if name == "tensorflow":
            print("AT_IMPORT", os.environ.get("{VAR}", "<unset>"), flush=True)
            os._exit(0)
        return None

sys.meta_path.insert(0, Probe())
from app.lifespan import default_loader
from app.settings import Settings
default_loader(Settings())
print("tensorflow was never imported", flush=True)
"""


def probe(env: dict[str, str]) -> str:
    out = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return out.stdout.strip().splitlines()[-1]


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in TF_ENV_DEFAULTS}


def test_default_is_in_the_environment_before_tensorflow_is_imported() -> None:
    assert probe(clean_env()) == f"AT_IMPORT {TF_ENV_DEFAULTS[VAR]}"


def test_the_users_value_wins() -> None:
    assert probe({**clean_env(), VAR: "0"}) == "AT_IMPORT 0"


def test_set_tf_env_defaults_fills_only_what_is_missing() -> None:
    env = {VAR: "false", "OTHER": "x"}
    assert set_tf_env_defaults(env) == {}
    assert env == {VAR: "false", "OTHER": "x"}
    empty: dict[str, str] = {}
    assert set_tf_env_defaults(empty) == TF_ENV_DEFAULTS
    assert empty == TF_ENV_DEFAULTS


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc_trim")
def test_release_memory_runs() -> None:
    release_memory()  # gc + malloc_trim(0); must not raise from any thread
