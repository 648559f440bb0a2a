"""The rules a `BatchPolicy` must follow: the one check both the batching-parameters parser
(`app.config`, at start-up and for a version's own `batching_params.pbtxt`) and the `Batcher`
(for a policy built in code) apply. The rules and messages follow TF Serving's checks of
BatchingParameters when it builds a batching session. Pure; any thread.
"""

from __future__ import annotations

import itertools

from app.core.types import BatchPolicy
from app.errors import ConfigError

MAX_WARMUP_BATCH_SIZES = 256


def batch_sizes(policy: BatchPolicy) -> tuple[int, ...]:
    """The row counts of the model calls a batcher with `policy` makes, ascending: what a new
    version is warmed up with before it serves (app.core.versions), so its first real batches
    of every size cost what the old version's last ones did.

    Padded batches run only at `allowed_batch_sizes`. Otherwise any count from 1 to the
    execution limit (`max_execution_batch_size` with splitting, else `max_batch_size`); above
    MAX_WARMUP_BATCH_SIZES counts, every count up to 64 plus the powers of two and the limit
    (a first call at another size then pays only the shape's own first-run cost)."""
    if policy.allowed_batch_sizes:
        return tuple(policy.allowed_batch_sizes)
    limit = policy.max_batch_size
    if policy.enable_large_batch_splitting and policy.max_execution_batch_size:
        limit = policy.max_execution_batch_size
    if limit <= MAX_WARMUP_BATCH_SIZES:
        return tuple(range(1, limit + 1))
    sizes = set(range(1, 65)) | {1 << k for k in range(limit.bit_length()) if 1 << k <= limit}
    return tuple(sorted(sizes | {limit}))


def validate_batch_policy(policy: BatchPolicy) -> None:
    """Raise `ConfigError` (INVALID_ARGUMENT) for a policy TF Serving refuses to start with."""
    for name in ("max_batch_size", "max_enqueued_batches", "num_batch_threads"):
        if getattr(policy, name) <= 0:
            raise ConfigError(f"{name} must be positive; was {getattr(policy, name)}")
    if policy.batch_timeout_micros < 0:
        raise ConfigError(
            f"batch_timeout_micros must be non-negative; was {policy.batch_timeout_micros}"
        )
    sizes = policy.allowed_batch_sizes
    if any(size <= 0 for size in sizes):
        raise ConfigError(f"allowed_batch_sizes entries must be positive; got {list(sizes)}")
    if any(later <= earlier for earlier, later in itertools.pairwise(sizes)):
        raise ConfigError("allowed_batch_sizes entries must be monotonically increasing")
    if policy.enable_large_batch_splitting:
        _validate_splitting(policy)
    elif sizes and sizes[-1] != policy.max_batch_size:
        raise ConfigError(
            "Last entry in allowed_batch_sizes must match max_batch_size; last entry was"
            f" {sizes[-1]}; expected {policy.max_batch_size}"
        )


def _validate_splitting(policy: BatchPolicy) -> None:
    execution = policy.max_execution_batch_size
    if execution is None:
        execution = policy.max_batch_size
    if not 0 < execution <= policy.max_batch_size:
        raise ConfigError(
            "max_execution_batch_size must be positive and at most max_batch_size; was"
            f" {execution}; max_batch_size is {policy.max_batch_size}"
        )
    sizes = policy.allowed_batch_sizes
    if not sizes:
        return
    if sizes[-1] > policy.max_batch_size:
        raise ConfigError(
            "Last entry in allowed_batch_sizes must be less than or equal to max_batch_size;"
            f" last entry was {sizes[-1]}; expected {policy.max_batch_size}"
        )
    if sizes[-1] != execution:
        raise ConfigError(
            "Last entry in allowed_batch_sizes must be equal to max_execution_batch_size;"
            f" last entry was {sizes[-1]}; expected {execution}"
        )
