"""TF Serving's config files: ModelServerConfig, BatchingParameters, MonitoringConfig."""

from __future__ import annotations

import os
from pathlib import Path

import anyio
import pytest

from app import config
from app.config import (
    MonitoringConfig,
    batch_policy_for,
    default_batch_policy,
    initial_models,
    monitoring_config_for,
    parse_batching_parameters,
    parse_model_server_config,
    parse_monitoring_config,
    read_batching_parameters,
    read_model_server_config,
    read_monitoring_config,
    scan_model_repository,
)
from app.core.batcher import Batcher
from app.core.types import BatchPolicy, ModelConfig, VersionPolicy
from app.errors import ConfigError
from app.settings import Settings

MODELS_CONFIG = """
model_config_list {
  config {
    name: "half_plus_two"
    base_path: "/models/half_plus_two"
    model_platform: "tensorflow"
    model_version_policy { latest { num_versions: 2 } }
    version_labels { key: "stable" value: 1 }
    version_labels { key: "canary" value: 2 }
  }
  config {
    name: "every"
    base_path: "/models/every"
    model_platform: "tensorflow"
    model_version_policy { all {} }
  }
  config {
    name: "pinned"
    base_path: "file:///models/pinned"
    model_type: TENSORFLOW
    model_version_policy { specific { versions: 1 versions: 3 } }
  }
  config { name: "plain" base_path: "/models/plain" model_platform: "tensorflow" }
  config {
    name: "zero"
    base_path: "/models/zero"
    model_platform: "tensorflow"
    model_version_policy { latest { num_versions: 0 } }
  }
}
"""


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.upper().startswith("HOTSERVE_") or key.upper() in ("MODEL_NAME", "MODEL_BASE_PATH"):
            monkeypatch.delenv(key)


def _model(name: str, path: str = "/m", **extra: str) -> str:
    fields = "".join(f" {key}: {value}" for key, value in extra.items())
    return f'config {{ name: "{name}" base_path: "{path}"{fields} }}'


def _config(*models: str) -> str:
    return "model_config_list { " + " ".join(models) + " }"


# --- ModelServerConfig ------------------------------------------------------------------------


def test_models_config_with_policies_and_labels() -> None:
    models = {m.name: m for m in parse_model_server_config(MODELS_CONFIG)}
    assert list(models) == ["half_plus_two", "every", "pinned", "plain", "zero"]
    h = models["half_plus_two"]
    assert h == ModelConfig(
        name="half_plus_two",
        base_path="/models/half_plus_two",
        platform="tensorflow",
        version_policy=VersionPolicy(kind="latest", num_versions=2),
        version_labels={"stable": 1, "canary": 2},
    )
    assert models["every"].version_policy == VersionPolicy(kind="all")
    pinned = models["pinned"]
    assert pinned.version_policy == VersionPolicy(kind="specific", versions=frozenset({1, 3}))
    assert pinned.platform == "tensorflow"
    assert pinned.base_path == "/models/pinned"  # file:/// URI -> local path
    assert models["plain"].version_policy == VersionPolicy()
    assert models["zero"].version_policy.num_versions == 1  # 0 is treated as 1


def test_empty_config_has_no_models() -> None:
    assert parse_model_server_config("") == []
    assert parse_model_server_config("model_config_list {}") == []


def test_unparsable_config() -> None:
    with pytest.raises(
        ConfigError, match=r"Error parsing text-format tensorflow\.serving\.ModelServerConfig"
    ):
        parse_model_server_config("model_config_list { config { name: 'x' colour: 1 } }")
    with pytest.raises(ConfigError, match="Error parsing text-format"):
        parse_model_server_config("model_config_list {")


def test_duplicate_model_names() -> None:
    text = _config(
        _model("a", model_platform='"tensorflow"'), _model("a", model_platform='"tensorflow"')
    )
    with pytest.raises(ConfigError, match="Illegal to list model a multiple times in config list"):
        parse_model_server_config(text)


@pytest.mark.parametrize("path", ["relative/dir", "", "E:/models/x"])
def test_base_path_must_be_absolute(path: str) -> None:
    text = _config(_model("a", path, model_platform='"tensorflow"'))
    with pytest.raises(
        ConfigError,
        match=f"Expected model a to have an absolute path or URI; got base_path\\(\\)={path}$",
    ):
        parse_model_server_config(text)


def test_unsupported_remote_base_path_is_refused() -> None:
    text = _config(_model("a", "hdfs://namenode/a", model_platform='"tensorflow"'))
    with pytest.raises(ConfigError, match="local file system or an object store only"):
        parse_model_server_config(text)


@pytest.mark.parametrize("url", ["s3://bucket/a", "gs://bucket/a/", "az://container/a"])
def test_object_store_base_path_is_kept(url: str) -> None:
    text = _config(_model("a", url, model_platform='"tensorflow"'))
    assert [c.base_path for c in parse_model_server_config(text)] == [url]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({}, "Illegal setting neither ModelServerConfig::model_type"),
        ({"model_platform": '"pytorch"'}, "Model a requests unsupported platform pytorch"),
        (
            {"model_type": "TENSORFLOW", "model_platform": '"tensorflow"'},
            "Illegal setting both ModelServerConfig::model_type",
        ),
        ({"model_type": "OTHER"}, "ModelServerConfig::model_type choice 2 not supported"),
    ],
)
def test_platform_rules(extra: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_model_server_config(_config(_model("a", **extra)))


def test_custom_model_config_is_unsupported() -> None:
    text = 'custom_model_config { type_url: "type.googleapis.com/x.Y" value: "" }'
    with pytest.raises(ConfigError, match="does not yet support custom model config"):
        parse_model_server_config(text)


def test_read_model_server_config(tmp_path: Path) -> None:
    path = tmp_path / "models.config"
    path.write_text(MODELS_CONFIG)
    assert len(read_model_server_config(path)) == 5
    with pytest.raises(ConfigError, match="Failed to read ModelServerConfig file"):
        read_model_server_config(tmp_path / "missing.config")


# --- initial_models ---------------------------------------------------------------------------


def test_initial_models_prefers_the_config_file(tmp_path: Path) -> None:
    path = tmp_path / "models.config"
    path.write_text(MODELS_CONFIG)
    settings = Settings(
        model_config_file=str(path), model_base_path="/ignored", model_repository=tmp_path
    )
    assert initial_models(settings)[0].name == "half_plus_two"


def test_initial_models_single_model_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODEL_NAME", "docker_loses")
    settings = Settings(model_name="hp2", model_base_path="/models/hp2")
    assert initial_models(settings) == [ModelConfig(name="hp2", base_path="/models/hp2")]
    default_name = Settings(model_base_path="/models/hp2")
    assert initial_models(default_name)[0].name == "default"


def test_initial_models_single_model_needs_absolute_path() -> None:
    with pytest.raises(ConfigError, match="Expected model default to have an absolute path"):
        initial_models(Settings(model_base_path="./my_model"))


def test_initial_models_docker_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MODEL_NAME", "resnet")
    monkeypatch.setenv("MODEL_BASE_PATH", "/mnt/models")
    (tmp_path / "repo_model").mkdir()
    models = initial_models(Settings(model_repository=tmp_path))
    assert models == [ModelConfig(name="resnet", base_path="/mnt/models/resnet")]


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"MODEL_NAME": "resnet"}, ModelConfig(name="resnet", base_path="/models/resnet")),
        ({"MODEL_BASE_PATH": "/mnt"}, ModelConfig(name="model", base_path="/mnt/model")),
    ],
)
def test_initial_models_docker_defaults(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], expected: ModelConfig
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert initial_models(Settings()) == [expected]


def test_initial_models_scans_the_repository(tmp_path: Path) -> None:
    for name in ("beta", "alpha", ".hidden"):
        (tmp_path / name / "1").mkdir(parents=True)
    (tmp_path / "README.md").write_text("not a model")
    models = initial_models(Settings(model_repository=tmp_path))
    assert models == [
        ModelConfig(name="alpha", base_path=str(tmp_path.resolve() / "alpha")),
        ModelConfig(name="beta", base_path=str(tmp_path.resolve() / "beta")),
    ]
    assert all(m.version_policy == VersionPolicy() for m in models)


def test_missing_repository_has_no_models(tmp_path: Path) -> None:
    assert scan_model_repository(tmp_path / "nowhere") == []


# --- BatchingParameters -----------------------------------------------------------------------

BATCHING = """
max_batch_size { value: 32 }
batch_timeout_micros { value: 5000 }
max_enqueued_batches { value: 100 }
num_batch_threads { value: 4 }
thread_pool_name { value: "my_pool" }
allowed_batch_sizes: 8
allowed_batch_sizes: 16
allowed_batch_sizes: 32
pad_variable_length_inputs: true
"""


def test_batching_parameters() -> None:
    assert parse_batching_parameters(BATCHING) == BatchPolicy(
        max_batch_size=32,
        batch_timeout_micros=5000,
        max_enqueued_batches=100,
        num_batch_threads=4,
        allowed_batch_sizes=(8, 16, 32),
        pad_variable_length_inputs=True,
        enable_large_batch_splitting=False,
        max_execution_batch_size=None,
        thread_pool_name="my_pool",
    )


def test_batching_parameters_unset_fields_take_defaults() -> None:
    assert parse_batching_parameters("") == BatchPolicy()
    assert parse_batching_parameters("batch_timeout_micros { value: 7 }") == BatchPolicy(
        batch_timeout_micros=7
    )


def test_batching_large_batch_splitting() -> None:
    policy = parse_batching_parameters(
        "max_batch_size { value: 64 } enable_large_batch_splitting { value: true }"
        " max_execution_batch_size { value: 16 } allowed_batch_sizes: 8 allowed_batch_sizes: 16"
    )
    assert policy.enable_large_batch_splitting
    assert policy.max_execution_batch_size == 16
    assert policy.allowed_batch_sizes == (8, 16)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "max_batch_size { value: 32 } allowed_batch_sizes: 8 allowed_batch_sizes: 16",
            "Last entry in allowed_batch_sizes must match max_batch_size; last entry was 16;"
            " expected 32",
        ),
        (
            "max_batch_size { value: 8 } allowed_batch_sizes: 8 allowed_batch_sizes: 8",
            "allowed_batch_sizes entries must be monotonically increasing",
        ),
        ("max_batch_size { value: 0 }", "max_batch_size must be positive; was 0"),
        ("num_batch_threads { value: 0 }", "num_batch_threads must be positive"),
        ("max_enqueued_batches { value: -1 }", "max_enqueued_batches must be positive"),
        ("batch_timeout_micros { value: -5 }", "batch_timeout_micros must be non-negative"),
        (
            "max_batch_size { value: 8 } allowed_batch_sizes: -2 allowed_batch_sizes: 8",
            "allowed_batch_sizes entries must be positive",
        ),
        (
            "max_batch_size { value: 8 } enable_large_batch_splitting { value: true }"
            " max_execution_batch_size { value: 16 }",
            "max_execution_batch_size must be positive and at most max_batch_size",
        ),
        (
            "max_batch_size { value: 64 } enable_large_batch_splitting { value: true }"
            " max_execution_batch_size { value: 16 } allowed_batch_sizes: 8",
            "Last entry in allowed_batch_sizes must be equal to max_execution_batch_size",
        ),
        (
            "max_batch_size { value: 8 } batch_size: 4",
            r"Error parsing text-format tensorflow\.serving\.BatchingParameters: .*"
            'no field named "batch_size"',
        ),
        (
            "max_batch_size: 8",
            "Error parsing text-format tensorflow.serving.BatchingParameters",
        ),
    ],
)
def test_invalid_batching_parameters(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_batching_parameters(text)


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        (BatchPolicy(max_batch_size=0), "max_batch_size must be positive; was 0"),
        (
            BatchPolicy(max_batch_size=8, allowed_batch_sizes=(2, 4)),
            "Last entry in allowed_batch_sizes must match max_batch_size",
        ),
        (
            BatchPolicy(
                max_batch_size=64,
                enable_large_batch_splitting=True,
                max_execution_batch_size=16,
                allowed_batch_sizes=(8,),
            ),
            "Last entry in allowed_batch_sizes must be equal to max_execution_batch_size",
        ),
    ],
)
def test_batcher_refuses_what_the_parser_refuses(policy: BatchPolicy, message: str) -> None:
    """One rule book (app.core.batch_policy): a policy built in code meets the same checks and
    messages as one read from a BatchingParameters file."""
    with pytest.raises(ConfigError, match=message):
        Batcher(lambda signature, inputs: {}, policy, anyio.CapacityLimiter(1))


def test_batching_descriptor_matches_tf_serving_numbers() -> None:
    batching_class, monitoring_class = config._compat_messages()
    fields = {f.name: f.number for f in batching_class.DESCRIPTOR.fields}
    assert fields == {
        "max_batch_size": 1,
        "batch_timeout_micros": 2,
        "max_enqueued_batches": 3,
        "num_batch_threads": 4,
        "thread_pool_name": 5,
        "allowed_batch_sizes": 6,
        "pad_variable_length_inputs": 7,
        "enable_large_batch_splitting": 8,
        "max_execution_batch_size": 9,
    }
    assert batching_class.DESCRIPTOR.full_name == "tensorflow.serving.BatchingParameters"
    assert monitoring_class.DESCRIPTOR.full_name == "tensorflow.serving.MonitoringConfig"


def test_read_batching_parameters(tmp_path: Path) -> None:
    path = tmp_path / "batching.pbtxt"
    path.write_text(BATCHING)
    assert read_batching_parameters(path).max_batch_size == 32
    with pytest.raises(ConfigError, match="Failed to read BatchingParameters file"):
        read_batching_parameters(tmp_path / "missing.pbtxt")


def test_default_batch_policy() -> None:
    policy = default_batch_policy()
    assert policy.max_batch_size == 128
    assert policy.batch_timeout_micros == 0
    assert policy.max_enqueued_batches == 1000000
    assert 1 <= policy.num_batch_threads <= 8
    assert policy.num_batch_threads <= (os.cpu_count() or 1)
    assert policy.thread_pool_name == "model_server_batch_threads"


def test_batch_policy_for_settings(tmp_path: Path) -> None:
    assert batch_policy_for(Settings()) is None
    assert batch_policy_for(Settings(enable_batching=True)) == default_batch_policy()
    path = tmp_path / "batching.pbtxt"
    path.write_text(BATCHING)
    from_file = batch_policy_for(Settings(enable_batching=True, batching_parameters_file=str(path)))
    assert from_file is not None
    assert from_file.thread_pool_name == "my_pool"


# --- MonitoringConfig -------------------------------------------------------------------------


def test_monitoring_config() -> None:
    text = 'prometheus_config { enable: true path: "/metrics" }'
    assert parse_monitoring_config(text) == MonitoringConfig(enable=True, path="/metrics")


def test_monitoring_config_default_path() -> None:
    parsed = parse_monitoring_config("prometheus_config { enable: true }")
    assert parsed == MonitoringConfig(enable=True, path="/monitoring/prometheus/metrics")
    assert parse_monitoring_config("") == MonitoringConfig(enable=False)


def test_invalid_monitoring_config() -> None:
    with pytest.raises(
        ConfigError, match=r"Error parsing text-format tensorflow\.serving\.MonitoringConfig"
    ):
        parse_monitoring_config("prometheus_config { enabled: true }")


def test_monitoring_config_for_settings(tmp_path: Path) -> None:
    assert monitoring_config_for(Settings()) == MonitoringConfig(enable=False)
    path = tmp_path / "monitoring.config"
    path.write_text("prometheus_config { enable: true }")
    assert read_monitoring_config(path).enable
    assert monitoring_config_for(Settings(monitoring_config_file=str(path))).enable
