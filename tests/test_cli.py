"""The `hotserve` command line: tensorflow_model_server's flag syntax and exit codes."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from app import __version__
from app.cli import NO_EFFECT_NOTE, UsageError, main, parse_args, parse_flags
from app.settings import COMPAT_ONLY_FLAGS, HOTSERVE_FLAGS, TF_SERVING_FLAGS, Settings
from tests.test_logs import bare_root

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.upper().startswith("HOTSERVE_") or key.upper() in ("MODEL_NAME", "MODEL_BASE_PATH"):
            monkeypatch.delenv(key)


class FakeServe:
    """Stands in for the uvicorn run: records the settings main() would serve."""

    def __init__(self) -> None:
        self.settings: Settings | None = None

    def __call__(self, settings: Settings) -> int:
        self.settings = settings
        return 0


def test_value_syntaxes() -> None:
    s = parse_args(["--rest_api_port=9000", "--model_name", "hp2", "--model_base_path=/m/hp2"])
    assert (s.rest_api_port, s.model_name, s.model_base_path) == (9000, "hp2", "/m/hp2")


def test_negative_value_with_space() -> None:
    assert parse_args(["--file_system_poll_wait_seconds", "-1"]).file_system_poll_wait_seconds == -1


@pytest.mark.parametrize(
    ("arg", "expected"),
    [
        ("--enable_batching", True),
        ("--enable_batching=true", True),
        ("--enable_batching=TRUE", True),
        ("--enable_batching=1", True),
        ("--enable_batching=false", False),
        ("--enable_batching=0", False),
    ],
)
def test_bool_forms(arg: str, expected: bool) -> None:
    assert parse_args([arg]).enable_batching is expected


def test_bool_flag_does_not_take_the_next_argument() -> None:
    flags = parse_flags(["--enable_model_warmup", "false"])
    assert flags.overrides == {"enable_model_warmup": True}
    assert flags.positionals == ("false",)


def test_explicit_false_overrides_true_default() -> None:
    assert parse_args(["--enable_model_warmup=false"]).enable_model_warmup is False


@pytest.mark.parametrize(
    "argv",
    [
        ["--bogus=1"],
        ["--bogus"],
        ["-x"],
        ["--enable_batching=yes"],
        ["--model_name"],
        ["--model_name", "--port=1"],
    ],
)
def test_malformed_command_lines(argv: list[str]) -> None:
    with pytest.raises(UsageError):
        parse_flags(argv)


def test_invalid_value_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="port"):
        parse_args(["--port=abc"])


def _sample_value(name: str) -> str:
    annotation = Settings.model_fields[name].annotation
    samples: dict[object, str] = {int: "7", float: "0.5", bool: "true"}
    return samples.get(annotation, "/tmp/x")


@pytest.mark.parametrize("name", TF_SERVING_FLAGS)
def test_every_table_flag_is_accepted(name: str) -> None:
    extra = ["--enable_batching"] if name == "batching_parameters_file" else []
    settings = parse_args([f"--{name}={_sample_value(name)}", *extra])
    expected = Settings.model_fields[name].annotation
    assert isinstance(getattr(settings, name), expected)  # type: ignore[arg-type]


def test_compat_flags_log_a_note(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="app.cli"):
        parse_args(["--port=8500", "--grpc_max_threads=2", "--enable_batching"])
    notes = [r.getMessage() for r in caplog.records if "has no effect" in r.getMessage()]
    assert notes == ["--grpc_max_threads is accepted for compatibility, has no effect"]


def test_docker_entrypoint_command_line() -> None:
    s = parse_args(
        ["--port=8500", "--rest_api_port=8501", "--model_name=m", "--model_base_path=/models/m"]
    )
    assert (s.rest_api_port, s.model_name, s.model_base_path) == (8501, "m", "/models/m")


def test_main_unknown_flag_exits_255(capsys: pytest.CaptureFixture[str]) -> None:
    serve = FakeServe()
    assert main(["--bogus=1"], serve=serve) == 255
    err = capsys.readouterr().err
    assert "unknown flag: --bogus" in err
    assert "usage: hotserve" in err
    assert serve.settings is None


@pytest.mark.parametrize("argv", [["--port=abc"], ["--enable_batching=maybe"], ["--model_name"]])
def test_main_bad_values_exit_255(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv, serve=FakeServe()) == 255
    assert "usage: hotserve" in capsys.readouterr().err


def test_main_refused_configuration_exits_255(capsys: pytest.CaptureFixture[str]) -> None:
    serve = FakeServe()
    assert main(["--batching_parameters_file=/b.pbtxt"], serve=serve) == 255
    err = capsys.readouterr().err
    assert err.startswith("Failed to start server. Error: INVALID_ARGUMENT: ")
    assert serve.settings is None


def test_main_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"], serve=FakeServe()) == 0
    out = capsys.readouterr().out
    tf_section = out.index("TensorFlow Serving flags")
    own_section = out.index("hotserve flags")
    assert tf_section < own_section
    for name in TF_SERVING_FLAGS:
        assert tf_section < out.index(f"--{name}=") < own_section, name
    for name in HOTSERVE_FLAGS:
        assert out.index(f"--{name}=") > own_section, name
    for name in TF_SERVING_FLAGS + HOTSERVE_FLAGS:
        assert str(Settings.model_fields[name].description) in out
    assert "--rest_api_timeout_in_ms=30000" in out
    assert "--enable_model_warmup=true" in out
    assert all(f"--{name}" in out for name in COMPAT_ONLY_FLAGS)
    for name in TF_SERVING_FLAGS:
        described = out[out.index(f"--{name}=") :].split("\n", 2)[1]
        assert (NO_EFFECT_NOTE in described) == (name in COMPAT_ONLY_FLAGS), described


def test_main_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"], serve=FakeServe()) == 0
    assert (
        capsys.readouterr().out == f"hotserve {__version__} (TensorFlow Serving REST compatible)\n"
    )


def test_main_positional_prints_usage_and_continues(capsys: pytest.CaptureFixture[str]) -> None:
    serve = FakeServe()
    assert main(["stray", "--rest_api_port=9001"], serve=serve) == 0
    err = capsys.readouterr().err
    assert "unknown argument: stray" in err
    assert "usage: hotserve" in err
    assert serve.settings is not None
    assert serve.settings.rest_api_port == 9001


def test_main_env_fills_what_flags_leave_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOTSERVE_MODEL_NAME", "from_env")
    monkeypatch.setenv("HOTSERVE_REST_API_PORT", "9100")
    serve = FakeServe()
    with bare_root() as root:
        assert main(["--rest_api_port=9200", "--log_level=debug"], serve=serve) == 0
        assert root.level == logging.DEBUG
        assert len(root.handlers) == 1  # the provisional handler, reused
    assert serve.settings is not None
    assert serve.settings.model_name == "from_env"
    assert serve.settings.rest_api_port == 9200


def test_python_m_app_help() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "app", "--help"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "--rest_api_port=8501" in result.stdout
    assert "hotserve flags" in result.stdout


def test_publish_subcommand_is_dispatched(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["publish", "--help"], serve=FakeServe())
    assert exited.value.code == 0
    assert "publish_version" in capsys.readouterr().out
