"""Settings: TF Serving's flag names and defaults, env prefix, docker env, startup rules."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from pydantic import ValidationError

import app
from app.cli import format_markdown
from app.errors import ConfigError
from app.settings import COMPAT_ONLY_FLAGS, HOTSERVE_FLAGS, TF_SERVING_FLAGS, Settings

# Spec table 1.2, in order (`--version` is a command, not a setting).
SPEC_TABLE_FLAGS = (  # noqa: SIM905 (a word list reads better as text)
    "port grpc_socket_path rest_api_port rest_api_num_threads rest_api_timeout_in_ms"
    " rest_api_enable_cors_support model_name model_base_path model_config_file"
    " model_config_file_poll_wait_seconds file_system_poll_wait_seconds max_num_load_retries"
    " load_retry_interval_micros num_load_threads num_unload_threads enable_batching"
    " batching_parameters_file enable_per_model_batching_parameters"
    " allow_version_labels_for_unavailable_models enable_model_warmup"
    " num_request_iterations_for_warmup monitoring_config_file saved_model_tags"
    " flush_filesystem_caches tensorflow_session_parallelism tensorflow_intra_op_parallelism"
    " tensorflow_inter_op_parallelism tensorflow_session_config_file platform_config_file"
    " per_process_gpu_memory_fraction enable_signature_method_name_check prefer_tflite_model"
    " grpc_channel_arguments grpc_max_threads ssl_config_file use_alts_credentials"
    " enable_profiler enable_grpc_healthcheck_service"
).split()


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.upper().startswith("HOTSERVE_") or key.upper() in ("MODEL_NAME", "MODEL_BASE_PATH"):
            monkeypatch.delenv(key)


def test_every_spec_flag_is_a_setting_in_table_order() -> None:
    assert list(TF_SERVING_FLAGS) == SPEC_TABLE_FLAGS
    assert set(SPEC_TABLE_FLAGS) <= set(Settings.model_fields)


def test_every_field_is_grouped_and_described() -> None:
    grouped = (
        set(TF_SERVING_FLAGS)
        | set(HOTSERVE_FLAGS)
        | {
            "docker_model_name",
            "docker_model_base_path",
            "admin_token",  # HOTSERVE_ADMIN_TOKEN only: never a flag (`ps` shows flags)
        }
    )
    assert grouped == set(Settings.model_fields)
    assert set(TF_SERVING_FLAGS) >= COMPAT_ONLY_FLAGS
    for name, info in Settings.model_fields.items():
        assert info.description, name


def test_tf_serving_defaults() -> None:
    s = Settings()
    assert s.port == 8500
    assert s.grpc_socket_path == ""
    assert s.rest_api_port == 8501  # TF's 0 would disable REST
    assert s.rest_api_num_threads >= 4
    assert s.rest_api_timeout_in_ms == 30000
    assert s.rest_api_enable_cors_support is False
    assert s.model_name == "default"
    assert s.model_base_path == ""
    assert s.model_config_file == ""
    assert s.model_config_file_poll_wait_seconds == 0
    assert s.file_system_poll_wait_seconds == 1
    assert s.max_num_load_retries == 5
    assert s.load_retry_interval_micros == 60_000_000
    assert (s.num_load_threads, s.num_unload_threads) == (0, 0)
    assert s.enable_batching is False
    assert s.batching_parameters_file == ""
    assert s.enable_model_warmup is True
    assert s.num_request_iterations_for_warmup == 0
    assert s.saved_model_tags == "serve"
    assert s.flush_filesystem_caches is True
    assert s.enable_profiler is True
    assert s.per_process_gpu_memory_fraction == 0.0


def test_hotserve_defaults() -> None:
    s = Settings()
    assert s.host == "0.0.0.0"
    assert s.model_repository == Path(app.__file__).resolve().parents[1] / "models"
    assert s.max_request_bytes == 64 * 1024 * 1024
    assert s.version_settle_seconds == 1.0
    assert s.version_done_marker == ""
    assert s.load_policy == "availability_preserving"
    assert s.drain_timeout_seconds == 30
    assert s.synthetic_warmup is False
    assert s.allow_incompatible_signatures is False
    assert s.log_level == "info"
    assert s.access_log is False
    assert s.docker_model_name is None
    assert s.docker_model_base_path is None


def test_settings_are_frozen() -> None:
    s = Settings()
    with pytest.raises(ValidationError):
        s.port = 1


def test_env_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOTSERVE_REST_API_PORT", "9000")
    monkeypatch.setenv("HOTSERVE_ENABLE_BATCHING", "true")
    monkeypatch.setenv("HOTSERVE_MODEL_REPOSITORY", "/srv/models")
    monkeypatch.setenv("REST_API_PORT", "1234")  # unprefixed: not ours
    s = Settings()
    assert s.rest_api_port == 9000
    assert s.enable_batching is True
    assert s.model_repository == Path("/srv/models")


def test_explicit_values_beat_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOTSERVE_REST_API_PORT", "9000")
    assert Settings(rest_api_port=9100).rest_api_port == 9100


def test_docker_env_is_read_unprefixed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODEL_NAME", "resnet")
    monkeypatch.setenv("MODEL_BASE_PATH", "/mnt/models")
    s = Settings()
    assert s.docker_model_name == "resnet"
    assert s.docker_model_base_path == "/mnt/models"
    assert s.model_name == "default"  # --model_name is HOTSERVE_MODEL_NAME, not MODEL_NAME


def test_docker_fields_accept_field_names() -> None:
    s = Settings(docker_model_name="m", docker_model_base_path="/x")
    assert (s.docker_model_name, s.docker_model_base_path) == ("m", "/x")


def test_rest_port_zero_means_default_with_note(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="app.settings"):
        s = Settings(rest_api_port=0)
    assert s.rest_api_port == 8501
    assert "always serves REST" in caplog.text


def test_all_three_parallelism_flags_is_an_error() -> None:
    with pytest.raises(ConfigError, match="You cannot configure all"):
        Settings(
            tensorflow_session_parallelism=2,
            tensorflow_intra_op_parallelism=2,
            tensorflow_inter_op_parallelism=2,
        )
    two = Settings(tensorflow_intra_op_parallelism=2, tensorflow_inter_op_parallelism=3)
    assert two.tensorflow_inter_op_parallelism == 3


def test_batching_file_requires_enable_batching() -> None:
    with pytest.raises(ConfigError, match="batching_parameters_file is set without setting"):
        Settings(batching_parameters_file="/etc/batching.pbtxt")
    ok = Settings(batching_parameters_file="/etc/batching.pbtxt", enable_batching=True)
    assert ok.enable_batching


def test_bad_values_are_validation_errors() -> None:
    with pytest.raises(ValidationError):
        Settings(port="abc")  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        Settings(load_policy="greedy")  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        Settings(no_such_flag=1)  # type: ignore[call-arg]


README = Path(__file__).resolve().parents[1] / "README.md"
FLAGS_BEGIN = "<!-- flags:begin (generated by scripts/update_readme_flags) -->\n"
FLAGS_END = "<!-- flags:end -->"


def test_readme_flag_tables_match_the_settings() -> None:
    """The README's flag tables are derived from Settings; edit the field, then run
    scripts/update_readme_flags."""
    text = README.read_text(encoding="utf-8")
    block = text[text.index(FLAGS_BEGIN) + len(FLAGS_BEGIN) : text.index(FLAGS_END)]
    assert block == format_markdown(), (
        "README flag tables are stale: run scripts/update_readme_flags"
    )
    for name in TF_SERVING_FLAGS + HOTSERVE_FLAGS:
        row = next(line for line in block.splitlines() if line.startswith(f"| `--{name}` |"))
        assert ("no effect" in row) == (name in COMPAT_ONLY_FLAGS), row


def test_flag_groups_and_no_effect_marker_come_from_the_fields() -> None:
    extras = {name: info.json_schema_extra for name, info in Settings.model_fields.items()}
    marked = {n for n, e in extras.items() if isinstance(e, dict) and e.get("no_effect") is True}
    assert marked == COMPAT_ONLY_FLAGS
    # Declaration order is the order of TF Serving's table, --help and the README.
    assert list(Settings.model_fields).index("port") < list(Settings.model_fields).index("host")


def test_a_shutdown_grace_must_leave_time_inside_the_budget() -> None:
    with pytest.raises(ConfigError, match="must be shorter than --shutdown_timeout_seconds"):
        Settings(shutdown_grace_seconds=10, shutdown_timeout_seconds=4)
    with pytest.raises(ConfigError, match="must be shorter"):
        Settings(shutdown_grace_seconds=25)  # the default budget is 25 s
    assert Settings(shutdown_grace_seconds=5).shutdown_grace_seconds == 5
