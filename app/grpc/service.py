"""TF Serving's gRPC services over the serving layer: PredictionService and ModelService.

Each method translates protobuf into plain values, calls `app.serving.Serving`, and translates
back; every domain error becomes the gRPC status TF Serving answers for the same condition
(`app.grpc.errors`). Handlers are coroutines on the app's event loop (grpc.aio); model calls go
to the runners' inference limiter, never onto the loop.

Deadlines: the client's gRPC deadline is the request deadline (`context.time_remaining()`),
so expired work never reaches the model; without one there is no deadline, as in TF Serving.
Metrics: Predict, Classify and Regress are counted and timed under entrypoint="GRPC" with TF
Serving's API names (prediction_service_impl.cc); metadata and status are not, as in TF Serving.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, Protocol, TypeVar

import anyio
import grpc
import numpy as np
from anyio import to_thread
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)
from tensorflow_serving.apis.model_management_pb2 import ReloadConfigResponse

from app.errors import HotserveError, Internal, InvalidArgument
from app.grpc import metadata as meta
from app.grpc import tensors
from app.grpc.errors import grpc_message, grpc_status
from app.serving import checks
from app.serving.service import Api, Serving
from app.serving.types import Classification, ModelRef, Task

log = logging.getLogger(__name__)

Array = np.ndarray[Any, Any]


class RequestObserver(Protocol):
    """Metrics hook (app.metrics.RequestMetrics implements it)."""

    def observe(
        self, model: str, api: str, code: str, seconds: float, entrypoint: str = "REST"
    ) -> None: ...


Reload = Callable[[Any], Awaitable[None]]
T = TypeVar("T")
R = TypeVar("R")
# Tensors at least this big are converted in a worker thread (REST's thresholds, RestOptions).
OFFLOAD_BYTES = 64 * 1024
OFFLOAD_ELEMENTS = 16 * 1024
DECODE_THREADS = 2
_CODES = {code.name: code.value[0] for code in grpc.StatusCode}


def model_ref(
    spec: Any, has_spec: bool = True, key: Callable[[], str | None] | None = None
) -> ModelRef:
    """A ModelSpec as a ModelRef (version or version_label; neither = latest). `key` reads the
    request's routing key; it is called only when neither is given (a rollout splits only the
    default route), so named requests skip the metadata scan."""
    if not has_spec:
        raise InvalidArgument("Missing ModelSpec")
    choice = spec.WhichOneof("version_choice")
    if choice == "version":
        return ModelRef(spec.name, version=spec.version.value)
    if choice == "version_label":
        return ModelRef(spec.name, label=spec.version_label)
    return ModelRef(spec.name, key=key() if key is not None else None)


def route_key(context: grpc.aio.ServicerContext[Any, Any], name: str) -> str | None:
    """The value of metadata key `name` (lowercase, as gRPC keys are), None when absent or
    empty; a binary (`-bin`) value is decoded as Latin-1."""
    for item in context.invocation_metadata() or ():
        if item[0] == name and item[1]:  # an empty value is no key, as over REST
            value = item[1]
            return value.decode("latin-1") if isinstance(value, bytes) else str(value)
    return None


def deadline_of(context: grpc.aio.ServicerContext[Any, Any]) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


def set_spec(out: Any, name: str, signature_name: str, version: int) -> None:
    """TF Serving's MakeModelSpec: the resolved model spec echoed in a response."""
    out.name = name
    if signature_name:
        out.signature_name = signature_name
    out.version.value = version


def serialized_examples(request_input: Any) -> Array:
    """An Input (ExampleList or ExampleListWithContext) as a 1-D object array of serialized
    tf.Examples. With a context, each example is the context's bytes followed by the example's:
    protobuf merge semantics, so the example wins on a shared feature (as TF Serving does)."""
    kind = request_input.WhichOneof("kind")
    if kind == "example_list":
        items = [e.SerializeToString() for e in request_input.example_list.examples]
    elif kind == "example_list_with_context":
        lwc = request_input.example_list_with_context
        context = lwc.context.SerializeToString()
        items = [context + e.SerializeToString() for e in lwc.examples]
    else:
        raise InvalidArgument("Input is empty.")
    if not items:
        raise InvalidArgument("Input is empty.")
    arr = np.empty(len(items), dtype=object)
    arr[:] = items
    return arr


def fill_classification(result: Any, c: Classification) -> None:
    shaped = c.classes if c.classes is not None else c.scores
    assert shaped is not None
    batch, width = shaped.shape
    labels = c.classes.tolist() if c.classes is not None else None
    scores = c.scores.tolist() if c.scores is not None else None
    for i in range(batch):
        row = result.classifications.add()
        for j in range(width):
            cl = row.classes.add()
            if labels is not None:
                label = labels[i][j]
                # Class.label is a proto `string`; TF's labels are bytes, normally UTF-8.
                cl.label = label.decode("utf-8", "replace") if isinstance(label, bytes) else label
            if scores is not None:
                cl.score = scores[i][j]


def fill_regression(result: Any, values: Array) -> None:
    for v in values.tolist():
        result.regressions.add().value = v


def _decoded_bytes(request: Any) -> int:
    return sum(tensors.decoded_bytes(t) for t in request.inputs.values())


def _decode(request: Any) -> dict[str, Array]:
    return {a: tensors.to_numpy(a, t) for a, t in request.inputs.items()}


def _encode(outputs: dict[str, Array]) -> Any:
    response = predict_pb2.PredictResponse()
    for alias, arr in outputs.items():
        tensors.from_numpy(arr, response.outputs[alias])
    return response


class _Edge:
    def __init__(
        self, serving: Serving, observer: RequestObserver | None, key_header: str = "x-route-key"
    ) -> None:
        self._serving = serving
        self._observer = observer
        self._key_header = key_header
        self._limiter: anyio.CapacityLimiter | None = None

    def _ref(self, request: Any, context: Any) -> ModelRef:
        """The request's ModelSpec as a ModelRef, with the routing key from the metadata when
        a rollout splits some model (`Serving.keyed`; read only for the default route)."""
        key = partial(route_key, context, self._key_header) if self._serving.keyed else None
        return model_ref(request.model_spec, request.HasField("model_spec"), key)

    async def _offload(self, fn: Callable[[T], R], arg: T, big: bool) -> R:
        """`fn(arg)` inline when small, else in a worker thread (at most DECODE_THREADS at
        once), so converting a large tensor never stalls the loop that serves REST too (REST's
        routes offload the same way). protobuf and numpy release the GIL only in places; the
        thread still lets the loop run between them."""
        if not big:
            return fn(arg)
        if self._limiter is None:  # made on first use: it needs the running loop
            self._limiter = anyio.CapacityLimiter(DECODE_THREADS)
        return await to_thread.run_sync(fn, arg, limiter=self._limiter)

    async def _answer(
        self,
        context: grpc.aio.ServicerContext[Any, Any],
        model: str,
        api: str,
        work: Callable[[], Awaitable[Any]],
    ) -> Any:
        """Run `work`; a domain error ends the call with its gRPC status (context.abort)."""
        started = time.perf_counter()
        code = "OK"
        try:
            return await work()
        except HotserveError as exc:
            code = exc.code
            await context.abort(grpc_status(exc), grpc_message(exc.message))
        except Exception:
            log.exception("unexpected error serving gRPC %s for model %s", api or "call", model)
            code = "INTERNAL"
            await context.abort(grpc.StatusCode.INTERNAL, "Internal error")
        except BaseException:
            # The client cancelled, or its deadline passed (grpc.aio cancels the handler).
            remaining = context.time_remaining()
            code = "DEADLINE_EXCEEDED" if remaining is not None and remaining <= 0 else "CANCELLED"
            raise
        finally:
            if self._observer is not None and api:
                self._observer.observe(model, api, code, time.perf_counter() - started, "GRPC")


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer, _Edge):  # type: ignore[misc]
    """tensorflow.serving.PredictionService."""

    async def Predict(self, request: Any, context: Any) -> Any:
        async def work() -> Any:
            ref = self._ref(request, context)
            serving = self._serving
            with serving.pin(ref) as mv:
                sig = serving.signature(mv, request.model_spec.signature_name, "predict")
                inputs = await self._offload(
                    _decode, request, _decoded_bytes(request) >= OFFLOAD_BYTES
                )
                checks.predict_inputs(sig, inputs)  # TF's order: the aliases, then the dtypes
                checks.fed_dtypes(sig, inputs)
                outputs = await serving.predict(
                    mv, sig, inputs, deadline_of(context), list(request.output_filter), ref=ref
                )
                version = mv.id.version
            big = sum(arr.size for arr in outputs.values()) >= OFFLOAD_ELEMENTS
            response = await self._offload(_encode, outputs, big)
            set_spec(response.model_spec, request.model_spec.name, sig.name, version)
            return response

        return await self._answer(context, request.model_spec.name, "Predict", work)

    async def Classify(self, request: Any, context: Any) -> Any:
        return await self._on_examples(
            request,
            context,
            method="Classify",
            api="classify",
            call=self._serving.classify,
            response_type=classification_pb2.ClassificationResponse,
            fill=fill_classification,
        )

    async def Regress(self, request: Any, context: Any) -> Any:
        return await self._on_examples(
            request,
            context,
            method="Regress",
            api="regress",
            call=self._serving.regress,
            response_type=regression_pb2.RegressionResponse,
            fill=fill_regression,
        )

    async def _on_examples(
        self,
        request: Any,
        context: Any,
        *,
        method: str,
        api: Api,
        call: Callable[..., Awaitable[T]],
        response_type: Callable[[], Any],
        fill: Callable[[Any, T], None],
    ) -> Any:
        """Classify or Regress: the request's tf.Examples through `call` (Serving.classify /
        .regress) on the pinned version, the result into `response_type().result` by `fill`."""

        async def work() -> Any:
            ref = self._ref(request, context)
            examples = serialized_examples(request.input)
            serving = self._serving
            with serving.pin(ref) as mv:
                sig = serving.signature(mv, request.model_spec.signature_name, api)
                result = await call(mv, sig, examples, deadline_of(context), ref=ref)
                version = mv.id.version
            response = response_type()
            set_spec(
                response.model_spec, request.model_spec.name, request.model_spec.signature_name,
                version,
            )  # fmt: skip
            fill(response.result, result)
            return response

        return await self._answer(context, request.model_spec.name, method, work)

    async def MultiInference(self, request: Any, context: Any) -> Any:
        async def work() -> Any:
            if not request.tasks:
                raise InvalidArgument("Expected at least one task")  # multi_inference_helper.cc
            name = ""
            for task in request.tasks:
                if not task.model_spec.name:
                    raise InvalidArgument("Found ModelSpec with an empty model name.")
                if name and task.model_spec.name != name:
                    raise InvalidArgument(
                        "All ModelSpecs in a MultiInferenceRequest must access the same model name."
                    )
                name = task.model_spec.name
            examples = serialized_examples(request.input)
            plan = [Task(t.model_spec.signature_name, t.method_name) for t in request.tasks]
            serving = self._serving
            key = partial(route_key, context, self._key_header) if serving.keyed else None
            with serving.pin(model_ref(request.tasks[0].model_spec, key=key)) as mv:
                results = await serving.multi_inference(mv, plan, examples, deadline_of(context))
                version = mv.id.version
            response = inference_pb2.MultiInferenceResponse()
            for task, result in zip(request.tasks, results, strict=True):
                out = response.results.add()
                if isinstance(result, Classification):
                    fill_classification(out.classification_result, result)
                else:
                    fill_regression(out.regression_result, result)
                set_spec(out.model_spec, name, task.model_spec.signature_name, version)
            return response

        name = request.tasks[0].model_spec.name if request.tasks else ""
        return await self._answer(context, name, "", work)

    async def GetModelMetadata(self, request: Any, context: Any) -> Any:
        async def work() -> Any:
            if not request.HasField("model_spec"):
                raise InvalidArgument("Missing ModelSpec")
            meta.check_fields(list(request.metadata_field))
            version, defs = self._serving.metadata(self._ref(request, context))  # keyed
            response = get_model_metadata_pb2.GetModelMetadataResponse()
            response.model_spec.name = request.model_spec.name
            response.model_spec.version.value = version
            response.metadata["signature_def"].CopyFrom(meta.packed_signature_defs(defs))
            return response

        return await self._answer(context, request.model_spec.name, "", work)


class ModelService(model_service_pb2_grpc.ModelServiceServicer, _Edge):  # type: ignore[misc]
    """tensorflow.serving.ModelService: status, and config reload through `reload`."""

    def __init__(self, serving: Serving, reload: Reload | None) -> None:
        super().__init__(serving, None)
        self._reload = reload

    async def GetModelStatus(self, request: Any, context: Any) -> Any:
        async def work() -> Any:
            if not request.HasField("model_spec"):
                raise InvalidArgument("Missing ModelSpec")
            spec = request.model_spec
            # get_model_status_impl.cc reads `version` only: a label lists every version.
            version = spec.version.value if spec.HasField("version") else None
            response = get_model_status_pb2.GetModelStatusResponse()
            for st in self._serving.status(spec.name, version):
                out = response.model_version_status.add()
                out.version = st.version
                out.state = get_model_status_pb2.ModelVersionStatus.State.Value(st.state.value)
                out.status.error_code = _CODES.get(st.error_code, 2)  # 2: UNKNOWN
                out.status.error_message = st.error_message
            return response

        return await self._answer(context, request.model_spec.name, "", work)

    async def HandleReloadConfigRequest(self, request: Any, context: Any) -> Any:
        """The new config replaces the whole model set, as a models.config reload does. TF
        Serving answers errors both as the RPC status and in the response's `status`."""
        response = ReloadConfigResponse()
        try:
            if request.config.WhichOneof("config") != "model_config_list":
                raise InvalidArgument(
                    "ServerModelConfig type not supported by HandleReloadConfigRequest. Only "
                    "ModelConfigList is currently supported"
                )
            if self._reload is None:
                raise Internal("config reload is not available")
            await self._reload(request.config)
        except HotserveError as exc:
            log.error("ReloadConfig failed: %s", exc.message)
            response.status.error_code = grpc_status(exc).value[0]
            response.status.error_message = exc.message
            context.set_code(grpc_status(exc))
            context.set_details(grpc_message(exc.message))
        return response
