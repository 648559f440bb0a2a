"""TF Serving's configuration files, parsed into hotserve's plain value types.

* `ModelServerConfig` (`--model_config_file`, spec 8.2) -> `list[ModelConfig]`, parsed with the
  real `tensorflow_serving.config.model_server_config_pb2` message.
* `BatchingParameters` (`--batching_parameters_file`, spec 10) -> `BatchPolicy`.
* `MonitoringConfig` (`--monitoring_config_file`, spec 12) -> `MonitoringConfig`.

tensorflow-serving-api ships no Python module for the last two, so their descriptors are built
at first use, in a private descriptor pool, with TF Serving's field names and numbers. All files
are protobuf text format. Every problem raises `ConfigError` with TF Serving's message where TF
Serving has one. Pure functions except the `read_*` ones, which read one file; no state.
"""

from __future__ import annotations

import functools
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf import (
    descriptor_pb2,
    descriptor_pool,
    message_factory,
    text_format,
    wrappers_pb2,
)
from google.protobuf.message import Message
from tensorflow_serving.config import model_server_config_pb2

from app.core.batch_policy import validate_batch_policy
from app.core.types import BatchPolicy, ModelConfig, VersionPolicy
from app.errors import ConfigError
from app.settings import Settings, schedulable_cpus
from app.storage.remote import is_remote

logger = logging.getLogger(__name__)

TENSORFLOW_PLATFORM = "tensorflow"
DEFAULT_PROMETHEUS_PATH = "/monitoring/prometheus/metrics"
# TF Serving's io::ParseURI: a scheme is a letter followed by letters, digits or dots.
_URI = re.compile(r"^([A-Za-z][A-Za-z0-9.]*)://(.*)$")


@dataclass(frozen=True, slots=True)
class MonitoringConfig:
    """TF Serving's MonitoringConfig.prometheus_config: serve metrics at `path` if `enable`."""

    enable: bool = False
    path: str = DEFAULT_PROMETHEUS_PATH


# --- ModelServerConfig ------------------------------------------------------------------------


def parse_model_server_config(text: str) -> list[ModelConfig]:
    """Parse a text-format `tensorflow.serving.ModelServerConfig` and validate it as TF Serving's
    `ServerCore` does: unique names, absolute base paths, a (tensorflow) platform.

    An empty file is a valid config with no models.
    """
    proto: Any = _parse_text(text, model_server_config_pb2.ModelServerConfig())
    choice = proto.WhichOneof("config")
    if choice == "custom_model_config":
        raise ConfigError("ModelServer does not yet support custom model config.")
    if choice is None:
        return []
    entries = list(proto.model_config_list.config)
    seen: set[str] = set()
    for entry in entries:
        if entry.name in seen:
            raise ConfigError(f"Illegal to list model {entry.name} multiple times in config list")
        seen.add(entry.name)
    base_paths = [_local_base_path(entry.name, entry.base_path) for entry in entries]
    return [_model_config(entry, path) for entry, path in zip(entries, base_paths, strict=True)]


def read_model_server_config(path: str | os.PathLike[str]) -> list[ModelConfig]:
    """`parse_model_server_config` of the file at `path`."""
    return parse_model_server_config(_read_text(path, "ModelServerConfig"))


def _model_config(entry: Any, base_path: str) -> ModelConfig:
    platform = _platform(entry)
    if entry.HasField("logging_config"):
        logger.warning("Model %s: logging_config (request logging) is not supported", entry.name)
    return ModelConfig(
        name=entry.name,
        base_path=base_path,
        platform=platform,
        version_policy=_version_policy(entry),
        version_labels={str(k): int(v) for k, v in entry.version_labels.items()},
    )


def _platform(entry: Any) -> str:
    """TF Serving's GetPlatform, plus the check that the platform is one we serve."""
    model_type = entry.model_type
    if model_type != model_server_config_pb2.MODEL_TYPE_UNSPECIFIED:
        logger.warning(
            "Deprecated ModelServerConfig::model_type field used."
            " Prefer ModelServerConfig::model_platform."
        )
        if entry.model_platform:
            raise ConfigError(
                "Illegal setting both ModelServerConfig::model_type (deprecated)"
                " and ModelServerConfig::model_platform."
            )
        if model_type != model_server_config_pb2.TENSORFLOW:
            raise ConfigError(f"ModelServerConfig::model_type choice {model_type} not supported.")
        platform = TENSORFLOW_PLATFORM
    else:
        platform = entry.model_platform
    if not platform:
        raise ConfigError(
            "Illegal setting neither ModelServerConfig::model_type (deprecated)"
            " nor ModelServerConfig::model_platform."
        )
    if platform != TENSORFLOW_PLATFORM:
        raise ConfigError(f"Model {entry.name} requests unsupported platform {platform}")
    return str(platform)


def _version_policy(entry: Any) -> VersionPolicy:
    policy = entry.model_version_policy
    choice = policy.WhichOneof("policy_choice") if entry.HasField("model_version_policy") else None
    if choice == "all":
        return VersionPolicy(kind="all")
    if choice == "specific":
        return VersionPolicy(kind="specific", versions=frozenset(policy.specific.versions))
    if choice == "latest":
        # TF Serving treats num_versions 0 as 1.
        return VersionPolicy(kind="latest", num_versions=max(1, policy.latest.num_versions))
    return VersionPolicy()


def _local_base_path(name: str, base_path: str) -> str:
    """The local directory of `base_path`, which must be absolute (or a `file://` URI).

    Object-store URLs (`s3://`, `gs://`, `az://`, see `app.storage`) are kept as they are:
    their versions are downloaded into a local cache. Other remote file systems TF Serving
    reads (hdfs://, ...) are refused here instead of failing every poll later.
    """
    if is_remote(base_path):
        return base_path
    uri = _URI.match(base_path)
    if uri is not None:
        scheme, rest = uri.groups()
        if scheme == "file" and rest.startswith("/"):
            return rest
        raise ConfigError(
            f"Model {name} has base_path {base_path}: hotserve serves models from the local"
            " file system or an object store only (an absolute path, a file:/// URI, s3://,"
            " gs:// or az://)"
        )
    if not os.path.isabs(base_path):
        raise ConfigError(
            f"Expected model {name} to have an absolute path or URI; got base_path()={base_path}"
        )
    return base_path


# --- where the initial models come from -------------------------------------------------------


def initial_models(settings: Settings) -> list[ModelConfig]:
    """The models to serve at startup, from the first source that is configured:

    1. `--model_config_file`;
    2. `--model_base_path` (one model named `--model_name`, latest version);
    3. the docker image's `MODEL_NAME` / `MODEL_BASE_PATH` environment (either one set): one
       model `$MODEL_NAME` (default `model`) at `$MODEL_BASE_PATH/$MODEL_NAME` (default
       `/models`);
    4. `model_repository`: every subdirectory is a model named after it (latest version).
    """
    if settings.model_config_file:
        return read_model_server_config(settings.model_config_file)
    if settings.model_base_path:
        return [single_model_config(settings.model_name, settings.model_base_path)]
    if settings.docker_model_name is not None or settings.docker_model_base_path is not None:
        name = settings.docker_model_name or "model"
        base = settings.docker_model_base_path or "/models"
        return [single_model_config(name, os.path.join(base, name))]
    return scan_model_repository(settings.model_repository)


def single_model_config(name: str, base_path: str) -> ModelConfig:
    """The config TF Serving builds for `--model_name` / `--model_base_path` (spec 8.1)."""
    return ModelConfig(name=name, base_path=_local_base_path(name, base_path))


def scan_model_repository(root: Path) -> list[ModelConfig]:
    """One model per subdirectory of `root` (hidden ones skipped), sorted by name.

    A missing repository yields no models (logged).
    """
    if not root.is_dir():
        logger.warning("Model repository %s is not a directory; no models to serve", root)
        return []
    root = root.resolve()
    return [
        ModelConfig(name=child.name, base_path=str(child))
        for child in sorted(root.iterdir())
        if child.is_dir() and not child.name.startswith(".")
    ]


# --- BatchingParameters -----------------------------------------------------------------------


def parse_batching_parameters(text: str) -> BatchPolicy:
    """Parse a text-format `tensorflow.serving.BatchingParameters` and validate it as TF Serving's
    batching session does. Unset fields take `BatchPolicy`'s defaults.
    """
    batching_class, _ = _compat_messages()
    proto: Any = _parse_text(text, batching_class())
    defaults = BatchPolicy()

    def wrapped(field: str, default: Any) -> Any:
        return getattr(proto, field).value if proto.HasField(field) else default

    policy = BatchPolicy(
        max_batch_size=wrapped("max_batch_size", defaults.max_batch_size),
        batch_timeout_micros=wrapped("batch_timeout_micros", defaults.batch_timeout_micros),
        max_enqueued_batches=wrapped("max_enqueued_batches", defaults.max_enqueued_batches),
        num_batch_threads=wrapped("num_batch_threads", defaults.num_batch_threads),
        allowed_batch_sizes=tuple(proto.allowed_batch_sizes),
        pad_variable_length_inputs=proto.pad_variable_length_inputs,
        enable_large_batch_splitting=wrapped("enable_large_batch_splitting", False),
        max_execution_batch_size=wrapped("max_execution_batch_size", None),
        thread_pool_name=wrapped("thread_pool_name", defaults.thread_pool_name),
    )
    validate_batch_policy(policy)
    return policy


def read_batching_parameters(path: str | os.PathLike[str]) -> BatchPolicy:
    """`parse_batching_parameters` of the file at `path`."""
    return parse_batching_parameters(_read_text(path, "BatchingParameters"))


def default_batch_policy() -> BatchPolicy:
    """TF Serving's batching when `--enable_batching` has no parameters file (spec 10), with
    `num_batch_threads` capped to the CPUs this process may use."""
    return BatchPolicy(
        max_batch_size=128,
        batch_timeout_micros=0,
        max_enqueued_batches=1000000,
        num_batch_threads=min(8, schedulable_cpus()),
        thread_pool_name="model_server_batch_threads",
    )


def batch_policy_for(settings: Settings) -> BatchPolicy | None:
    """The global batching policy (the one place it is built), or None when batching is off.

    Raises `ConfigError` for an unreadable or invalid `--batching_parameters_file`."""
    if not settings.enable_batching:
        return None
    if settings.batching_parameters_file:
        return read_batching_parameters(settings.batching_parameters_file)
    return default_batch_policy()


# --- MonitoringConfig -------------------------------------------------------------------------


def parse_monitoring_config(text: str) -> MonitoringConfig:
    """Parse a text-format `tensorflow.serving.MonitoringConfig`; an empty path means the default
    `/monitoring/prometheus/metrics`."""
    _, monitoring_class = _compat_messages()
    proto: Any = _parse_text(text, monitoring_class())
    prometheus = proto.prometheus_config
    return MonitoringConfig(
        enable=bool(prometheus.enable), path=prometheus.path or DEFAULT_PROMETHEUS_PATH
    )


def read_monitoring_config(path: str | os.PathLike[str]) -> MonitoringConfig:
    """`parse_monitoring_config` of the file at `path`."""
    return parse_monitoring_config(_read_text(path, "MonitoringConfig"))


def monitoring_config_for(settings: Settings) -> MonitoringConfig:
    """The monitoring config of `--monitoring_config_file`, or disabled when it is unset."""
    if not settings.monitoring_config_file:
        return MonitoringConfig()
    return read_monitoring_config(settings.monitoring_config_file)


# --- protobuf plumbing ------------------------------------------------------------------------


def _parse_text(text: str, message: Message) -> Message:
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as exc:
        raise ConfigError(
            f"Error parsing text-format {message.DESCRIPTOR.full_name}: {exc}"
        ) from exc
    return message


def _read_text(path: str | os.PathLike[str], what: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"Failed to read {what} file {os.fspath(path)}: {exc}") from exc


_INT64 = descriptor_pb2.FieldDescriptorProto.TYPE_INT64
_BOOL = descriptor_pb2.FieldDescriptorProto.TYPE_BOOL
_STRING = descriptor_pb2.FieldDescriptorProto.TYPE_STRING
_MESSAGE = descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE
_OPTIONAL = descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL
_REPEATED = descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED

# (name, number, type, message type, label) as in TF Serving's session_bundle_config.proto.
_BATCHING_FIELDS = (
    ("max_batch_size", 1, _MESSAGE, ".google.protobuf.Int64Value", _OPTIONAL),
    ("batch_timeout_micros", 2, _MESSAGE, ".google.protobuf.Int64Value", _OPTIONAL),
    ("max_enqueued_batches", 3, _MESSAGE, ".google.protobuf.Int64Value", _OPTIONAL),
    ("num_batch_threads", 4, _MESSAGE, ".google.protobuf.Int64Value", _OPTIONAL),
    ("thread_pool_name", 5, _MESSAGE, ".google.protobuf.StringValue", _OPTIONAL),
    ("allowed_batch_sizes", 6, _INT64, "", _REPEATED),
    ("pad_variable_length_inputs", 7, _BOOL, "", _OPTIONAL),
    ("enable_large_batch_splitting", 8, _MESSAGE, ".google.protobuf.BoolValue", _OPTIONAL),
    ("max_execution_batch_size", 9, _MESSAGE, ".google.protobuf.Int64Value", _OPTIONAL),
)
# As in TF Serving's config/monitoring_config.proto.
_PROMETHEUS_FIELDS = (
    ("enable", 1, _BOOL, "", _OPTIONAL),
    ("path", 2, _STRING, "", _OPTIONAL),
)
_MONITORING_FIELDS = (
    ("prometheus_config", 1, _MESSAGE, ".tensorflow.serving.PrometheusConfig", _OPTIONAL),
)


@functools.cache
def _compat_messages() -> tuple[type[Message], type[Message]]:
    """The (BatchingParameters, MonitoringConfig) message classes, built once on first use."""
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
    file_proto = descriptor_pb2.FileDescriptorProto(
        name="hotserve/tensorflow_serving_compat.proto",
        package="tensorflow.serving",
        syntax="proto3",
        dependency=["google/protobuf/wrappers.proto"],
    )
    for name, fields in (
        ("BatchingParameters", _BATCHING_FIELDS),
        ("PrometheusConfig", _PROMETHEUS_FIELDS),
        ("MonitoringConfig", _MONITORING_FIELDS),
    ):
        message = file_proto.message_type.add(name=name)
        for field_name, number, field_type, type_name, label in fields:
            field = message.field.add(name=field_name, number=number, type=field_type, label=label)
            if type_name:  # an empty but present type_name is rejected by the pool
                field.type_name = type_name
    pool.AddSerializedFile(file_proto.SerializeToString())
    return (
        message_factory.GetMessageClass(
            pool.FindMessageTypeByName("tensorflow.serving.BatchingParameters")
        ),
        message_factory.GetMessageClass(
            pool.FindMessageTypeByName("tensorflow.serving.MonitoringConfig")
        ),
    )
