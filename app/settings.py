"""Process settings: every `tensorflow_model_server` flag plus hotserve's own options.

`Settings` is read once (from keyword overrides, then `HOTSERVE_<FIELD>` environment variables,
then the defaults) into a frozen object that is passed down; nothing else in the app reads
`os.environ`. TF Serving's knobs keep TF Serving's names and defaults (spec 1.2). The official
Docker image's unprefixed `MODEL_NAME` / `MODEL_BASE_PATH` variables are read too (spec 1.3) into
`docker_model_name` / `docker_model_base_path`; `app.config.initial_models` gives them meaning.

Cross-field rules that make TF Serving refuse to start raise `ConfigError` with TF's message;
a badly typed value raises pydantic's `ValidationError`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.errors import ConfigError

logger = logging.getLogger(__name__)

DEFAULT_REST_API_PORT = 8501


def schedulable_cpus() -> int:
    """CPUs this process may run on (TF Serving's `NumSchedulableCPUs`)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not every platform has sched_getaffinity
        return os.cpu_count() or 1


def _four_per_cpu() -> int:
    return 4 * schedulable_cpus()


def _default_model_repository() -> Path:
    # app/settings.py -> the checkout root -> models/
    return Path(__file__).resolve().parents[1] / "models"


class Settings(BaseSettings):
    """All configuration of one hotserve process. Immutable; safe to share between threads."""

    model_config = SettingsConfigDict(
        env_prefix="HOTSERVE_",
        frozen=True,
        populate_by_name=True,
        protected_namespaces=(),
    )

    # --- TensorFlow Serving's flags (spec 1.2), same names and defaults -----------------------
    port: int = Field(default=8500, description="gRPC port (hotserve serves REST only; no effect)")
    grpc_socket_path: str = Field(
        default="", description="UNIX socket for gRPC (hotserve serves REST only; no effect)"
    )
    rest_api_port: int = Field(
        default=DEFAULT_REST_API_PORT,
        description="REST port. TF Serving's default 0 disables REST, but hotserve is REST-only:"
        " 0 means the default 8501 (logged)",
    )
    rest_api_num_threads: int = Field(
        default_factory=_four_per_cpu, description="REST worker threads (4 x schedulable CPUs)"
    )
    rest_api_timeout_in_ms: int = Field(
        default=30000,
        description="per-request deadline of REST calls (exceeded: 504 DEADLINE_EXCEEDED);"
        " <= 0 means no deadline",
    )
    rest_api_enable_cors_support: bool = Field(default=False, description="add CORS headers")
    model_name: str = Field(
        default="default", description="name of the single model (ignored with --model_config_file)"
    )
    model_base_path: str = Field(
        default="",
        description="absolute base dir of the single model, holding integer version dirs"
        " (ignored with --model_config_file)",
    )
    model_config_file: str = Field(
        default="", description="text-format ModelServerConfig listing the models to serve"
    )
    model_config_file_poll_wait_seconds: int = Field(
        default=0, description="re-read --model_config_file every N s; 0 = read once at startup"
    )
    file_system_poll_wait_seconds: int = Field(
        default=1,
        description="scan each base path for new versions every N s; 0 = scan once;"
        " negative = never",
    )
    max_num_load_retries: int = Field(
        default=5, description="retries after a failed version load (0 = try once)"
    )
    load_retry_interval_micros: int = Field(
        default=60_000_000, description="wait between load retries, in microseconds"
    )
    num_load_threads: int = Field(
        default=0, description="threads loading versions; 0 = one at a time"
    )
    num_unload_threads: int = Field(
        default=0, description="unloads share the --num_load_threads workers (no effect)"
    )
    enable_batching: bool = Field(default=False, description="enable server-side request batching")
    batching_parameters_file: str = Field(
        default="",
        description="text-format BatchingParameters; requires --enable_batching",
    )
    enable_per_model_batching_parameters: bool = Field(
        default=False,
        description="read batching_params.pbtxt from each SavedModel dir instead of the"
        " global file",
    )
    allow_version_labels_for_unavailable_models: bool = Field(
        default=False,
        description="hotserve always lets a new label point at a version not yet available"
        " (it answers once that version is); a label only moves once its target is (no effect)",
    )
    enable_model_warmup: bool = Field(
        default=True, description="replay assets.extra/tf_serving_warmup_requests on load"
    )
    num_request_iterations_for_warmup: int = Field(
        default=0, description="times each warmup record is replayed, if > 0 (0 = once)"
    )
    monitoring_config_file: str = Field(
        default="", description="text-format MonitoringConfig (Prometheus endpoint)"
    )
    saved_model_tags: str = Field(
        default="serve", description="comma-separated tag set of the MetaGraph to load"
    )
    flush_filesystem_caches: bool = Field(
        default=True, description="flush file system caches after loads (no effect in hotserve)"
    )
    tensorflow_session_parallelism: int = Field(
        default=0, description="threads of both TF thread pools; 0 = auto"
    )
    tensorflow_intra_op_parallelism: int = Field(
        default=0, description="TF intra-op thread pool size; 0 = auto"
    )
    tensorflow_inter_op_parallelism: int = Field(
        default=0, description="TF inter-op thread pool size; 0 = auto"
    )
    tensorflow_session_config_file: str = Field(
        default="", description="text-format TF ConfigProto (no effect in hotserve)"
    )
    platform_config_file: str = Field(
        default="", description="text-format PlatformConfigMap (no effect in hotserve)"
    )
    per_process_gpu_memory_fraction: float = Field(
        default=0.0, description="GPU memory fraction (no effect in hotserve)"
    )
    enable_signature_method_name_check: bool = Field(
        default=False,
        description="predict/classify/regress insist on the matching SignatureDef method_name",
    )
    prefer_tflite_model: bool = Field(
        default=False, description="serve model.tflite if present (no effect in hotserve)"
    )
    grpc_channel_arguments: str = Field(
        default="", description="gRPC channel arguments (no effect in hotserve)"
    )
    grpc_max_threads: int = Field(
        default_factory=_four_per_cpu, description="gRPC threads (no effect in hotserve)"
    )
    ssl_config_file: str = Field(default="", description="gRPC SSL config (no effect in hotserve)")
    use_alts_credentials: bool = Field(
        default=False, description="gRPC ALTS credentials (no effect in hotserve)"
    )
    enable_profiler: bool = Field(
        default=True, description="TF profiler service (no effect in hotserve)"
    )
    enable_grpc_healthcheck_service: bool = Field(
        default=False, description="gRPC health service (no effect in hotserve)"
    )

    # --- hotserve's own options ---------------------------------------------------------------
    host: str = Field(default="0.0.0.0", description="interface the REST server binds to")
    model_repository: Path = Field(
        default_factory=_default_model_repository,
        description="directory whose subdirectories are served as models (one model per"
        " subdirectory) when no model flag or docker variable is given",
    )
    max_request_bytes: int = Field(
        default=64 * 1024 * 1024, description="largest accepted request body, in bytes"
    )
    version_settle_seconds: float = Field(
        default=1.0, description="a version dir must be unchanged this long before it is loaded"
    )
    version_done_marker: str = Field(
        default="", description="if set, a version dir is loaded only once this file exists in it"
    )
    load_policy: Literal["availability_preserving", "resource_preserving"] = Field(
        default="availability_preserving",
        description="availability_preserving loads the new version before unloading the old;"
        " resource_preserving unloads first",
    )
    drain_timeout_seconds: float = Field(
        default=30.0, description="on shutdown or unload, wait this long for in-flight requests"
    )
    synthetic_warmup: bool = Field(
        default=False, description="warm up versions without a warmup file with generated requests"
    )
    signature_check: Literal["used", "all", "off"] = Field(
        default="used",
        description="which signatures a new version must keep compatible (same inputs and"
        " dtypes, no new required input, same outputs) to replace the serving version: used ="
        " those clients called on it, all = every one, off = none (TF Serving's behaviour);"
        " a refused version ends FAILED_PRECONDITION with the reason, without retries",
    )
    allow_incompatible_signatures: bool = Field(
        default=False,
        description="deprecated: the same as --signature_check=off",
    )
    log_level: Literal["critical", "error", "warning", "info", "debug", "trace"] = Field(
        default="info", description="logging level"
    )
    watch_file_events: bool = Field(
        default=True,
        description="react to filesystem events under base paths (inotify) as well as polling; "
        "turn off where events are missing or unreliable (NFS, FUSE): polling alone then finds "
        "versions within --file_system_poll_wait_seconds",
    )
    load_thread_nice: int = Field(
        default=5,
        ge=0,
        le=19,
        description="nice increment of the thread that loads and warms up a version (Linux), so "
        "serving wins the CPU during a hot swap; 0 = normal priority",
    )
    access_log: bool = Field(
        default=False,
        description="log one line per request (off by default, like TF Serving: it costs "
        "throughput on the hot path)",
    )

    # --- the official Docker image's environment (spec 1.3), unprefixed -----------------------
    docker_model_name: str | None = Field(
        default=None,
        validation_alias="MODEL_NAME",
        description="$MODEL_NAME of the TF Serving docker image (default model)",
    )
    docker_model_base_path: str | None = Field(
        default=None,
        validation_alias="MODEL_BASE_PATH",
        description="$MODEL_BASE_PATH of the TF Serving docker image (default /models)",
    )

    @field_validator("rest_api_port")
    @classmethod
    def _rest_port_zero_means_default(cls, value: int) -> int:
        if value == 0:
            logger.info(
                "rest_api_port=0 disables REST in TF Serving; hotserve is REST-only and"
                " listens on %d instead",
                DEFAULT_REST_API_PORT,
            )
            return DEFAULT_REST_API_PORT
        return value

    @model_validator(mode="after")
    def _tf_serving_startup_rules(self) -> Settings:
        if (
            self.tensorflow_session_parallelism > 0
            and self.tensorflow_intra_op_parallelism > 0
            and self.tensorflow_inter_op_parallelism > 0
        ):
            raise ConfigError(
                "Either configure server_options.tensorflow_session_parallelism or"
                " (server_options.tensorflow_intra_op_parallelism,"
                " server_options.tensorflow_inter_op_parallelism) separately."
                " You cannot configure all."
            )
        if self.batching_parameters_file and not self.enable_batching:
            raise ConfigError(
                "server_options.batching_parameters_file is set without setting"
                " server_options.enable_batching to true."
            )
        return self


# Flag groups, in the order `--help` lists them.
TF_SERVING_FLAGS: tuple[str, ...] = (
    "port",
    "grpc_socket_path",
    "rest_api_port",
    "rest_api_num_threads",
    "rest_api_timeout_in_ms",
    "rest_api_enable_cors_support",
    "model_name",
    "model_base_path",
    "model_config_file",
    "model_config_file_poll_wait_seconds",
    "file_system_poll_wait_seconds",
    "max_num_load_retries",
    "load_retry_interval_micros",
    "num_load_threads",
    "num_unload_threads",
    "enable_batching",
    "batching_parameters_file",
    "enable_per_model_batching_parameters",
    "allow_version_labels_for_unavailable_models",
    "enable_model_warmup",
    "num_request_iterations_for_warmup",
    "monitoring_config_file",
    "saved_model_tags",
    "flush_filesystem_caches",
    "tensorflow_session_parallelism",
    "tensorflow_intra_op_parallelism",
    "tensorflow_inter_op_parallelism",
    "tensorflow_session_config_file",
    "platform_config_file",
    "per_process_gpu_memory_fraction",
    "enable_signature_method_name_check",
    "prefer_tflite_model",
    "grpc_channel_arguments",
    "grpc_max_threads",
    "ssl_config_file",
    "use_alts_credentials",
    "enable_profiler",
    "enable_grpc_healthcheck_service",
)

HOTSERVE_FLAGS: tuple[str, ...] = (
    "host",
    "model_repository",
    "max_request_bytes",
    "version_settle_seconds",
    "version_done_marker",
    "load_policy",
    "drain_timeout_seconds",
    "synthetic_warmup",
    "signature_check",
    "allow_incompatible_signatures",
    "log_level",
    "watch_file_events",
    "load_thread_nice",
    "access_log",
)

# TF Serving flags accepted so existing command lines keep working, but which hotserve does not
# act on (gRPC, TLS for gRPC, TFLite, GPU, profiler, TF session plumbing).
COMPAT_ONLY_FLAGS: frozenset[str] = frozenset(
    {
        "port",
        "grpc_socket_path",
        "grpc_channel_arguments",
        "grpc_max_threads",
        "ssl_config_file",
        "use_alts_credentials",
        "enable_profiler",
        "enable_grpc_healthcheck_service",
        "prefer_tflite_model",
        "per_process_gpu_memory_fraction",
        "platform_config_file",
        "tensorflow_session_config_file",
        "flush_filesystem_caches",
        "num_unload_threads",
        "allow_version_labels_for_unavailable_models",
    }
)
