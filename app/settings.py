"""Process settings: every `tensorflow_model_server` flag plus hotserve's own options.

`Settings` is read once (from keyword overrides, then `HOTSERVE_<FIELD>` environment variables,
then the defaults) into a frozen object that is passed down; nothing else in the app reads
`os.environ`. TF Serving's knobs keep TF Serving's names and defaults (spec 1.2). The official
Docker image's unprefixed `MODEL_NAME` / `MODEL_BASE_PATH` variables are read too (spec 1.3) into
`docker_model_name` / `docker_model_base_path`; `app.config.initial_models` gives them meaning.

This class is the one home of every option: its name, type, default, description, group (TF
Serving flag, hotserve option, docker environment) and, for TF Serving flags, whether hotserve
acts on it (`no_effect=True`: accepted so existing command lines keep working, logged as having no
effect). The command line (`app.cli`), `--help` and the README's flag table
(`scripts/update_readme_flags`, checked by `tests/test_settings.py`) are derived from it. A field
declared with a plain `Field(...)` is a hotserve option.

Cross-field rules that make TF Serving refuse to start raise `ConfigError` with TF's message;
a badly typed value raises pydantic's `ValidationError`.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic.config import JsonDict
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.errors import ConfigError

logger = logging.getLogger(__name__)

DEFAULT_REST_API_PORT = 8501

# Option groups (the `group` marker of a field).
TF_SERVING = "tf_serving"  # a `tensorflow_model_server` flag (spec 1.2)
HOTSERVE = "hotserve"  # hotserve's own option
DOCKER_ENV = "docker_env"  # a variable of the TF Serving docker image, not a flag (spec 1.3)
SECRET_ENV = "secret_env"  # read from HOTSERVE_<NAME> only, never a flag (`ps` shows flags)


def tf_flag(description: str, *, no_effect: bool = False, **kwargs: Any) -> Any:
    """A `Field` for a TF Serving flag; `no_effect=True` marks one hotserve accepts, ignores."""
    extra: JsonDict = {"group": TF_SERVING, "no_effect": no_effect}
    return Field(description=description, json_schema_extra=extra, **kwargs)


def docker_env(description: str, **kwargs: Any) -> Any:
    """A `Field` read from the docker image's environment only (no flag)."""
    return Field(description=description, json_schema_extra={"group": DOCKER_ENV}, **kwargs)


def schedulable_cpus() -> int:
    """CPUs this process may run on (TF Serving's `NumSchedulableCPUs`)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not every platform has sched_getaffinity
        return os.cpu_count() or 1


def _four_per_cpu() -> int:
    """4 x schedulable CPUs"""
    return 4 * schedulable_cpus()


def _default_model_repository() -> Path:
    """`models/` of the checkout"""
    # app/settings.py -> the checkout root -> models/
    return Path(__file__).resolve().parents[1] / "models"


def _default_model_cache() -> Path:
    """`hotserve-model-cache` in the temp dir"""
    return Path(tempfile.gettempdir()) / "hotserve-model-cache"


MIN_IDLE_TICK_MICROS = 1000  # see Settings.load_idle_tick_micros


class Settings(BaseSettings):
    """All configuration of one hotserve process. Immutable; safe to share between threads."""

    model_config = SettingsConfigDict(
        env_prefix="HOTSERVE_",
        frozen=True,
        populate_by_name=True,
        protected_namespaces=(),
    )

    # --- TensorFlow Serving's flags (spec 1.2), same names, defaults and order ----------------
    port: int = tf_flag(
        "gRPC port (TF Serving's PredictionService and ModelService); 0 disables TCP gRPC",
        default=8500,
    )
    grpc_socket_path: str = tf_flag("also serve gRPC on this UNIX socket (unix:<path>)", default="")
    rest_api_port: int = tf_flag(
        "REST port. TF Serving's default 0 disables REST, but hotserve always serves REST:"
        " 0 means the default 8501 (logged)",
        default=DEFAULT_REST_API_PORT,
    )
    rest_api_num_threads: int = tf_flag(
        "REST worker threads (4 x schedulable CPUs)", default_factory=_four_per_cpu
    )
    rest_api_timeout_in_ms: int = tf_flag(
        "per-request deadline of REST calls (exceeded: 504 DEADLINE_EXCEEDED);"
        " <= 0 means no deadline",
        default=30000,
    )
    rest_api_enable_cors_support: bool = tf_flag("add CORS headers", default=False)
    model_name: str = tf_flag(
        "name of the single model (ignored with --model_config_file)", default="default"
    )
    model_base_path: str = tf_flag(
        "absolute base dir of the single model, holding integer version dirs"
        " (ignored with --model_config_file)",
        default="",
    )
    model_config_file: str = tf_flag(
        "text-format ModelServerConfig listing the models to serve", default=""
    )
    model_config_file_poll_wait_seconds: int = tf_flag(
        "re-read --model_config_file every N s; 0 = read once at startup", default=0
    )
    file_system_poll_wait_seconds: int = tf_flag(
        "scan each base path for new versions every N s; 0 = scan once; negative = never",
        default=1,
    )
    max_num_load_retries: int = tf_flag(
        "retries after a failed version load (0 = try once)", default=5
    )
    load_retry_interval_micros: int = tf_flag(
        "wait between load retries, in microseconds", default=60_000_000
    )
    num_load_threads: int = tf_flag("threads loading versions; 0 = one at a time", default=0)
    num_unload_threads: int = tf_flag(
        "unloads share the --num_load_threads workers", default=0, no_effect=True
    )
    enable_batching: bool = tf_flag("enable server-side request batching", default=False)
    batching_parameters_file: str = tf_flag(
        "text-format BatchingParameters; requires --enable_batching", default=""
    )
    enable_per_model_batching_parameters: bool = tf_flag(
        "read batching_params.pbtxt from each SavedModel dir instead of the global file",
        default=False,
    )
    allow_version_labels_for_unavailable_models: bool = tf_flag(
        "hotserve always lets a new label point at a version not yet available (it answers"
        " once that version is); a label only moves once its target is",
        default=False,
        no_effect=True,
    )
    enable_model_warmup: bool = tf_flag(
        "replay assets.extra/tf_serving_warmup_requests on load", default=True
    )
    num_request_iterations_for_warmup: int = tf_flag(
        "times each warmup record is replayed, if > 0 (0 = once)", default=0
    )
    monitoring_config_file: str = tf_flag(
        "text-format MonitoringConfig (Prometheus endpoint)", default=""
    )
    saved_model_tags: str = tf_flag(
        "comma-separated tag set of the MetaGraph to load", default="serve"
    )
    flush_filesystem_caches: bool = tf_flag(
        "flush file system caches after loads", default=True, no_effect=True
    )
    tensorflow_session_parallelism: int = tf_flag(
        "threads of both TF thread pools; 0 = auto", default=0
    )
    tensorflow_intra_op_parallelism: int = tf_flag(
        "TF intra-op thread pool size; 0 = auto", default=0
    )
    tensorflow_inter_op_parallelism: int = tf_flag(
        "TF inter-op thread pool size; 0 = auto", default=0
    )
    tensorflow_session_config_file: str = tf_flag(
        "text-format TF ConfigProto", default="", no_effect=True
    )
    platform_config_file: str = tf_flag("text-format PlatformConfigMap", default="", no_effect=True)
    per_process_gpu_memory_fraction: float = tf_flag(
        "GPU memory fraction", default=0.0, no_effect=True
    )
    enable_signature_method_name_check: bool = tf_flag(
        "predict/classify/regress insist on the matching SignatureDef method_name", default=False
    )
    prefer_tflite_model: bool = tf_flag(
        "serve model.tflite if present", default=False, no_effect=True
    )
    grpc_channel_arguments: str = tf_flag(
        "gRPC server arguments, key=value,... (integers as ints), applied after hotserve's"
        " 2 GiB message limits",
        default="",
    )
    grpc_max_threads: int = tf_flag(
        "gRPC threads (gRPC handlers run on the event loop here)",
        default_factory=_four_per_cpu,
        no_effect=True,
    )
    ssl_config_file: str = tf_flag(
        "TLS for gRPC: a text-format tensorflow.serving.SSLConfig", default=""
    )
    use_alts_credentials: bool = tf_flag("gRPC ALTS credentials", default=False, no_effect=True)
    enable_profiler: bool = tf_flag("TF profiler service", default=True, no_effect=True)
    enable_grpc_healthcheck_service: bool = tf_flag(
        "serve grpc.health.v1.Health (SERVING while up)", default=False
    )

    # --- hotserve's own options (a plain Field() here is one too) ------------------------------
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
    malloc_huge_pages: bool = Field(
        default=False,
        description="re-run the hotserve command once with GLIBC_TUNABLES=glibc.malloc.hugetlb=1 "
        "(malloc asks for transparent huge pages): unloading a large model is then a few huge "
        "munmaps, but every 2 MiB page a load first touches stalls requests for ~5 ms "
        "(app/hugepages.py)",
    )
    load_thread_nice: int = Field(
        default=5,
        ge=0,
        le=19,
        description="nice increment of the thread that loads and warms up a version (Linux), so "
        "serving wins the CPU during a hot swap; 0 = normal priority",
    )
    load_busy_cpu_share: float = Field(
        default=0.025,
        gt=0.0,
        le=1.0,
        description="while requests are in flight, the share of a core a version load and "
        "warmup may take: the load sleeps between sub-millisecond units of work, and the "
        "serving threads write the checkpoint's pieces between batches, so requests never wait "
        "behind it (a busy server loads slower, an idle one at full speed); 1 = unpaced",
    )
    load_idle_tick_micros: int = Field(
        default=0,
        ge=0,
        description="opt-in: the kernel's scheduler tick (1/HZ, e.g. 4000 for HZ=250). While "
        "requests are in flight, a load's steps that cannot be cut (graph import, making a "
        "callable) run at SCHED_IDLE, which the kernel still lets run from one tick to the next "
        "while requests wait; with this set, a helper process wakes that CPU a quarter and a "
        "half tick after each tick meanwhile, so no such stretch lasts over half a tick. The "
        "same CPU then comes in more, shorter stretches: on the 2-core VM measured, the longest "
        "span without an answer during a swap fell ~2 ms and p99 rose ~0.1x "
        "(app/core/ticker.py); 0 = no helper, else at least 1000",
    )
    access_log: bool = Field(
        default=False,
        description="log one line per request (off by default, like TF Serving: it costs "
        "throughput on the hot path)",
    )
    log_format: Literal["text", "json"] = Field(
        default="text",
        description="text: one human-readable line per record; json: one JSON object per line "
        "(time, level, logger, message, request_id, trace_id and the record's extra fields)",
    )
    shutdown_grace_seconds: float = Field(
        default=0.0,
        ge=0,
        description="after SIGTERM/SIGINT, keep accepting and serving requests this long while "
        "/readyz answers 503, so a load balancer takes the server out first (Kubernetes: set it "
        "a little above the readiness probe's period)",
    )
    shutdown_timeout_seconds: float = Field(
        default=25.0,
        gt=0,
        description="the whole shutdown (grace, in-flight requests, unloading) ends within this "
        "many seconds of the first signal; past it the process exits anyway. The default fits "
        "Kubernetes' 30 s terminationGracePeriodSeconds",
    )
    rest_ssl_certfile: str = Field(
        default="",
        description="PEM certificate (chain) for HTTPS on the REST port; with "
        "--rest_ssl_keyfile turns TLS on (uvicorn's ssl options). Empty: plain HTTP",
    )
    rest_ssl_keyfile: str = Field(default="", description="PEM private key for --rest_ssl_certfile")
    admin_token_file: str = Field(
        default="",
        description="file holding the admin API's bearer token (also: HOTSERVE_ADMIN_TOKEN in "
        "the environment); the admin API under /admin/v1 is off unless a token is configured",
    )
    admin_token: str = Field(
        default="",
        exclude=True,
        repr=False,
        json_schema_extra={"group": SECRET_ENV},
        description="the admin API's bearer token, from the environment only "
        "(HOTSERVE_ADMIN_TOKEN; the command line refuses it: `ps` would show it)",
    )

    model_cache_dir: Path = Field(
        default_factory=_default_model_cache,
        description="local folder object-store versions (s3://, gs://, az:// base paths) are"
        " downloaded into before they are loaded",
    )
    model_cache_max_bytes: int = Field(
        default=0,
        ge=0,
        description="size cap of --model_cache_dir in bytes (versions no longer in use are"
        " evicted to make room); 0 = no cap",
    )
    rollout_config_file: str = Field(
        default="",
        description="hotserve's rollout file (JSON, or TOML when it ends in .toml) beside "
        "models.config: per model a weighted/sticky canary rollout and/or a policy for newly "
        "published versions (see README: Rollouts); re-read live; a bad file keeps the previous "
        "rollouts. Empty: no file (rollouts only through the admin API)",
    )
    rollout_config_poll_wait_seconds: float = Field(
        default=2.0,
        gt=0,
        description="re-read --rollout_config_file every N s (an entry that cannot apply yet, "
        "e.g. its stable version still loading, is tried again at every read)",
    )
    route_key_header: str = Field(
        default="X-Route-Key",
        min_length=1,
        pattern=r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$",
        description="request header (REST) or metadata key (gRPC, lowercased) whose value makes a "
        "rollout's split sticky: the same key always lands on the same version for a given split",
    )
    workers: int = Field(
        default=1,
        ge=1,
        description="serving processes sharing the port(s), each with its own models; a new"
        " version becomes the default in all of them together (see README: Workers)",
    )
    worker_swap_timeout_seconds: float = Field(
        default=600.0,
        gt=0,
        description="with --workers > 1: how long a loaded version waits for every worker to"
        " load it before it is given up everywhere",
    )
    shadow_max_in_flight: int = Field(
        default=16,
        ge=0,
        description="rollouts: most mirrored (shadow) requests in flight per model; more are"
        " dropped (counted), never queued",
    )
    shadow_batch_share: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description="rollouts: the share of the canary's max_batch_size rows that mirrored"
        " requests may occupy at once (batching on); more are dropped",
    )
    shadow_busy_in_flight: int = Field(
        default=64,
        ge=1,
        description="rollouts: no new mirrored request while the primary version has this many"
        " requests in flight (under overload shadow work goes first)",
    )
    rollout_interval_seconds: float = Field(
        default=1.0,
        gt=0,
        description="rollouts: how often the controller evaluates each automatic rollout",
    )

    # --- the official Docker image's environment (spec 1.3), unprefixed -----------------------
    docker_model_name: str | None = docker_env(
        "$MODEL_NAME of the TF Serving docker image (default model)",
        default=None,
        validation_alias="MODEL_NAME",
    )
    docker_model_base_path: str | None = docker_env(
        "$MODEL_BASE_PATH of the TF Serving docker image (default /models)",
        default=None,
        validation_alias="MODEL_BASE_PATH",
    )

    @field_validator("load_idle_tick_micros")
    @classmethod
    def _tick_is_off_or_at_least_a_millisecond(cls, value: int) -> int:
        # A shorter "tick" would make the helper wake almost continuously on the serving CPU.
        if 0 < value < MIN_IDLE_TICK_MICROS:
            raise ValueError(
                f"must be 0 (off) or at least {MIN_IDLE_TICK_MICROS} (a kernel tick, 1/HZ)"
            )
        return value

    @field_validator("rest_api_port")
    @classmethod
    def _rest_port_zero_means_default(cls, value: int) -> int:
        if value == 0:
            logger.info(
                "rest_api_port=0 disables REST in TF Serving; hotserve always serves REST and"
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
        if self.shutdown_grace_seconds > 0 and (
            self.shutdown_grace_seconds >= self.shutdown_timeout_seconds
        ):
            # The grace counts inside the budget (app.shutdown): a grace that fills it leaves
            # no time to finish in-flight requests, and the watchdog would cut them off.
            raise ConfigError(
                f"--shutdown_grace_seconds ({self.shutdown_grace_seconds:g}) must be shorter"
                f" than --shutdown_timeout_seconds ({self.shutdown_timeout_seconds:g}), which"
                " bounds the whole shutdown, grace included"
            )
        return self


def _group_of(name: str) -> str:
    extra = Settings.model_fields[name].json_schema_extra
    return str(extra["group"]) if isinstance(extra, dict) and "group" in extra else HOTSERVE


def _has_no_effect(name: str) -> bool:
    extra = Settings.model_fields[name].json_schema_extra
    return isinstance(extra, dict) and extra.get("no_effect") is True


# Derived from the fields above, in their order (the order `--help` and the README list them).
TF_SERVING_FLAGS: tuple[str, ...] = tuple(
    n for n in Settings.model_fields if _group_of(n) == TF_SERVING
)
HOTSERVE_FLAGS: tuple[str, ...] = tuple(
    n for n in Settings.model_fields if _group_of(n) == HOTSERVE
)
# TF Serving flags accepted so existing command lines keep working, but which hotserve does not
# act on (the fields marked `no_effect=True`).
COMPAT_ONLY_FLAGS: frozenset[str] = frozenset(n for n in Settings.model_fields if _has_no_effect(n))
