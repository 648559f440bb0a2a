"""The protocol-neutral data plane: what a request does between "decoded" and "encoded".

Both edges (REST in `app.api`, gRPC in `app.grpc`) translate their wire format into plain values
(model name, version or label, signature name, named numpy inputs, a deadline) and call this
module, which returns named numpy outputs or raises a domain error (`app.errors`). It owns:

- pinning: `pin()` asks `app.core.routing` (through the registry) which version serves the
  request and holds that version (refcount) until the block exits, so a request that resolved a
  version always finishes on it, even across a hot swap;
- the signature lookup and the method-name check, with TF Serving's codes and messages for each
  API (predict_util.cc, classifier.cc, regressor.cc, multi_inference.cc);
- running through the version's runner (batcher or direct) under the request deadline: expired
  work never reaches the model (the batcher drops it from its queue; the direct path stops
  waiting for an inference thread at the deadline); a model call already running is not
  interrupted (as in TF Serving) and its answer is sent;
- output filtering, and the checks TF Serving applies to classify/regress results.

Each edge times its whole request (decoding included) and reports it to the metrics observer
with its entrypoint label ("REST" / "GRPC"); the serving layer does not, so neither edge pays
for a second clock.

Threading: every function runs on the event-loop thread; model calls go to the runner's
inference limiter. Nothing here knows JSON, protobuf, HTTP or gRPC.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Container, Sequence
from contextlib import AbstractContextManager
from typing import Any, Literal, Protocol

import anyio
import numpy as np

from app.core.registry import Registry
from app.core.types import Signature, VersionStatus
from app.core.versions import ModelVersion
from app.errors import DeadlineExceeded, InvalidArgument, Unimplemented
from app.serving import checks
from app.serving.types import Classification, ModelRef, Task

Array = np.ndarray[Any, Any]
Api = Literal["predict", "classify", "regress"]
Edge = Literal["REST", "GRPC"]
__all__ = ["Classification", "ModelRef", "Serving", "Task"]

RunFn = Callable[
    [ModelVersion, Signature, dict[str, Array], float | None], Awaitable[dict[str, Array]]
]


class RolloutTap(Protocol):
    """What `run` calls for a default-route request of a model in `models` (those with an
    active rollout): `app.rollout.shadow.RolloutTap` records the arm and mirrors to the canary.
    A Protocol so the serving layer imports nothing of the rollout package."""

    @property
    def models(self) -> Container[str]: ...

    async def run_primary(
        self,
        run: RunFn,
        mv: ModelVersion,
        sig: Signature,
        inputs: dict[str, Array],
        deadline: float | None,
    ) -> dict[str, Array]: ...


PREDICT = "tensorflow/serving/predict"
CLASSIFY = "tensorflow/serving/classify"
REGRESS = "tensorflow/serving/regress"
DEFAULT_SIGNATURE = "serving_default"


class Serving:
    """The serving layer both edges call. `registry` returns the live registry (raising
    Unavailable while the server starts)."""

    def __init__(
        self,
        registry: Callable[[], Registry],
        method_name_check: bool = False,
        rollouts: RolloutTap | None = None,
    ):
        self._registry = registry
        self.method_name_check = method_name_check
        self.rollouts = rollouts
        # Whether any model's default route is split by a rollout (set on the loop thread by
        # app.rollout.table's listener, wired in app.main): the edges read a request's routing
        # key only then, so a server without rollouts pays one attribute read per request.
        self.keyed = False

    # ---- pinning and lookups ----------------------------------------------------------------

    def pin(self, ref: ModelRef) -> AbstractContextManager[ModelVersion]:
        """Resolve the version that serves `ref` (app.core.routing) and hold it for the block.
        Raises NotFound / InvalidArgument (routing) or Unavailable (server starting)."""
        return self._registry().acquire(ref.name, ref.version, ref.label, ref.key)

    def signature(self, mv: ModelVersion, name: str, api: Api, edge: Edge = "GRPC") -> Signature:
        """The signature `name` ("" -> serving_default) of the pinned version, checked for `api`.

        Unknown signature: Predict over gRPC answers FAILED_PRECONDITION (predict_util.cc);
        REST's JSON decoding looks it up first and answers INVALID_ARGUMENT with its own words
        (http_rest_api_handler.cc); classify/regress answer INVALID_ARGUMENT (classifier.cc).
        The method-name check runs only with --enable_signature_method_name_check, as in TF
        Serving: predict accepts any of the three methods (INTERNAL otherwise), classify and
        regress insist on their own (INVALID_ARGUMENT).
        """
        key = name or DEFAULT_SIGNATURE
        sig = mv.signatures.get(key)
        if sig is None:
            if api != "predict":
                raise InvalidArgument(f"No signature was found with the name: {key}")
            if edge == "REST":
                raise InvalidArgument(f'Serving signature name: "{key}" not found in signature def')
            raise checks.failed_precondition(f'Serving signature key "{key}" not found.')
        if self.method_name_check:
            checks.method_name(sig, api)
        mv.mark_used(sig.name)  # --signature_check=used protects what clients call, on any edge
        return sig

    def status(self, name: str, version: int | None = None) -> list[VersionStatus]:
        """TF Serving's GetModelStatus: every tracked version of `name`, highest first."""
        return self._registry().status(name, version)

    def metadata(self, ref: ModelRef) -> tuple[int, dict[str, Any]]:
        """(served version, {signature key: SignatureDef as proto3 JSON with field names}) of the
        version `ref` resolves to: plain data each edge renders (REST as JSON, gRPC as a
        SignatureDefMap packed in Any)."""
        with self.pin(ref) as mv:
            return mv.id.version, self.signature_defs(mv)

    @staticmethod
    def signature_defs(mv: ModelVersion) -> dict[str, Any]:
        """Every SignatureDef of a pinned version, as proto3 JSON with proto field names."""
        defs: dict[str, Any] = mv.servable.metadata()["signature_def"]["signature_def"]
        return defs

    # ---- running ----------------------------------------------------------------------------

    async def run(
        self,
        mv: ModelVersion,
        sig: Signature,
        inputs: dict[str, Array],
        deadline: float | None,
        *,
        ref: ModelRef | None = None,
    ) -> dict[str, Array]:
        """Every output of `sig` for `inputs`, through the version's runner, within `deadline`
        (time.monotonic() seconds; None = no deadline). Raises DeadlineExceeded once it passes;
        work whose deadline has passed never reaches the model.

        `ref`: what the request named. A default-route request (no version, no label) of a model
        with an active rollout goes through the rollout tap (arm records, shadow traffic); for
        every other request the tap costs one attribute read and a set lookup."""
        tap = self.rollouts
        if (
            tap is not None
            and ref is not None
            and ref.version is None
            and ref.label is None
            and ref.name in tap.models
        ):
            return await tap.run_primary(self._run, mv, sig, inputs, deadline)
        return await self._run(mv, sig, inputs, deadline)

    async def _run(
        self, mv: ModelVersion, sig: Signature, inputs: dict[str, Array], deadline: float | None
    ) -> dict[str, Array]:
        runner = mv.runner
        if deadline is None or runner.enforces_deadlines:
            # One timer per request is enough: a second anyio scope cost 15-25 µs (profiled).
            return await runner.submit(sig.name, inputs, deadline)
        with anyio.move_on_after(deadline - time.monotonic()) as scope:
            return await runner.submit(sig.name, inputs, deadline)
        assert scope.cancelled_caught
        raise DeadlineExceeded("Deadline Exceeded")

    async def predict(
        self,
        mv: ModelVersion,
        sig: Signature,
        inputs: dict[str, Array],
        deadline: float | None,
        output_filter: Sequence[str] = (),
        *,
        ref: ModelRef | None = None,
    ) -> dict[str, Array]:
        """TF Serving's Predict on a pinned version: checks the inputs against the signature and
        the output filter before the model runs (predict_util.cc), then returns the filtered
        outputs in filter order (every output when the filter is empty)."""
        checks.predict_inputs(sig, inputs)
        wanted = checks.output_filter(sig, output_filter)
        outputs = await self.run(mv, sig, inputs, deadline, ref=ref)
        if not wanted:
            return outputs
        return {alias: outputs[alias] for alias in wanted}

    async def classify(
        self,
        mv: ModelVersion,
        sig: Signature,
        examples: Array,
        deadline: float | None,
        *,
        ref: ModelRef | None = None,
    ) -> Classification:
        """Classify serialized tf.Examples (1-D object array of bytes) with a classify-shaped
        signature (classifier.cc PreProcess/PostProcessClassificationResult)."""
        in_alias, classes, scores = checks.classify_io(sig)
        outputs = await self.run(mv, sig, {in_alias: examples}, deadline, ref=ref)
        return checks.classification(
            outputs.get(classes) if classes else None,
            outputs.get(scores) if scores else None,
            len(examples),
        )

    async def regress(
        self,
        mv: ModelVersion,
        sig: Signature,
        examples: Array,
        deadline: float | None,
        *,
        ref: ModelRef | None = None,
    ) -> Array:
        """Regress serialized tf.Examples: a float32 [batch] array (regressor.cc)."""
        in_alias, out_alias = checks.regress_io(sig)
        outputs = await self.run(mv, sig, {in_alias: examples}, deadline, ref=ref)
        return checks.regression(outputs[out_alias], len(examples))

    async def multi_inference(
        self, mv: ModelVersion, tasks: Sequence[Task], examples: Array, deadline: float | None
    ) -> list[Classification | Array]:
        """TF Serving's MultiInference (multi_inference.cc): several classify/regress signatures
        sharing one input tensor, over the same examples; one result per task, in order."""
        plan: list[tuple[Task, Signature, Api]] = []
        seen: set[str] = set()
        input_alias = ""
        for task in tasks:
            key = task.signature_name or DEFAULT_SIGNATURE
            if key in seen:
                raise InvalidArgument(f"Duplicate evaluation of signature: {key}")
            seen.add(key)
            sig = mv.signatures.get(key)
            if sig is None:
                raise InvalidArgument(f"Requested signature not found in model graph: {key}")
            if task.method_name == CLASSIFY:
                api: Api = "classify"
                alias = checks.classify_io(sig)[0]
            elif task.method_name == REGRESS:
                api = "regress"
                alias = checks.regress_io(sig)[0]
            else:
                raise Unimplemented(f"Unsupported signature method_name: {task.method_name}")
            tensor = sig.inputs[alias].tensor_name or alias
            if input_alias and tensor != input_alias:
                raise InvalidArgument("Input tensor must be the same for all Signatures.")
            input_alias = tensor
            plan.append((task, sig, api))
            mv.mark_used(sig.name)
        results: list[Classification | Array] = []
        for _task, sig, api in plan:
            if api == "classify":
                results.append(await self.classify(mv, sig, examples, deadline))
            else:
                results.append(await self.regress(mv, sig, examples, deadline))
        return results
