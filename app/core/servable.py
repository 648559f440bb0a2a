"""The contracts between the engine (core) and a model runtime.

A `Loader` turns a version directory into a `Servable`. Both are implemented by
`app.runtime.saved_model` for TensorFlow and by fakes in the tests. core never imports a runtime:
the lifespan injects the loader.

Threading: `Loader.load`, `Servable.run`, `Servable.warmup` and `Servable.unload` block and must be
called from a worker thread (the registry and batcher use named anyio limiters). `run` is
thread-safe: several calls may run at once on one servable.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from app.core.types import Signature

# A feature value as the REST codec parses it for classify/regress: the list kind and its values.
# kind is "float" | "int64" | "bytes".
Feature = tuple[str, list[Any]]
Example = dict[str, Feature]


class Servable(Protocol):
    @property
    def signatures(self) -> Mapping[str, Signature]:
        """Every callable SignatureDef, by key (serving_default, ...)."""
        ...

    def run(self, signature: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one signature. `inputs` maps input alias -> array (DT_STRING as object arrays of
        bytes); returns every output alias -> array. Raises an app.errors.HotserveError carrying
        the model's own status code, as TF Serving passes it on (INVALID_ARGUMENT for a bad
        input, INTERNAL for a model fault, ...)."""
        ...

    def metadata(self) -> dict[str, Any]:
        """`{"signature_def": {"signature_def": {...}}}`, TF Serving's metadata JSON (as a dict)."""
        ...

    def serialize_examples(
        self, context: Example | None, examples: Sequence[Example]
    ) -> np.ndarray:
        """tf.Example protos for classify/regress, as a 1-D object array of serialized bytes
        (context merged into each example; the example wins on a shared feature)."""
        ...

    def warmup(self, iterations: int) -> int:
        """Replay assets.extra/tf_serving_warmup_requests; return the number of records run.
        Raises app.errors.LoadError on any failing or malformed record."""
        ...

    def unload(self) -> None:
        """Release the model's resources (close the session). Idempotent."""
        ...


class Loader(Protocol):
    def load(self, path: Path) -> Servable:
        """Load the SavedModel in `path` (a version directory). Raises app.errors.LoadError."""
        ...
