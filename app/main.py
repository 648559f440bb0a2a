"""`create_app(settings)` builds the ASGI app. Importing this module builds nothing.

Serve it with `hotserve` / `python -m app` (TF Serving's flags), or with uvicorn's standard way
to serve a factory, settings from `HOTSERVE_*` (and the docker image's `MODEL_NAME` /
`MODEL_BASE_PATH`) environment variables:

    uvicorn --factory app.main:create_app

`uvicorn app.main:app` keeps working for existing deployments: `app` is built on first access
(module `__getattr__`), never at import, so importing `app.main` (as the CLI does, or a test)
can neither read the environment nor fail on it.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from app import __version__
from app.api.openapi import install_openapi
from app.api.routes import Receive, RestOptions, Scope, Send, TFServingRest, is_v1
from app.config import monitoring_config_for
from app.control.admin import install_admin
from app.control.page import install_status_page
from app.core.registry import Registry
from app.core.servable import Loader
from app.lifespan import lifespan
from app.logs import configure_logging
from app.metrics import Metrics, install_routes
from app.rollout.controller import RolloutController
from app.rollout.shadow import RolloutTap, ShadowBudget
from app.rollout.table import RolloutTable
from app.serving.service import Serving
from app.settings import Settings
from app.tracing import Tracing

log = logging.getLogger(__name__)


class HotserveApp(FastAPI):
    """FastAPI for docs, health and metrics; `/v1` requests go straight to TF Serving's REST
    handler, skipping Starlette's middleware stack (about 20 µs a request, measured by
    scripts/bench/profile.py). Lifespan and everything else take FastAPI's usual path."""

    tf_serving_rest: TFServingRest | None = None
    tracing: Tracing | None = None  # request IDs, traceparent, access log (app.tracing)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        tracing = self.tracing
        if tracing is not None and scope["type"] == "http":
            await tracing(scope, receive, send)  # which calls dispatch_request()
            return
        await self.dispatch_request(scope, receive, send)

    async def dispatch_request(self, scope: Scope, receive: Receive, send: Send) -> None:
        rest = self.tf_serving_rest
        if rest is not None and is_v1(scope):
            scope["app"] = self
            await rest(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


def create_app(settings: Settings | None = None, *, loader: Loader | None = None) -> FastAPI:
    """Build the app from `settings` (default: `Settings()`, read from the environment).

    `loader` replaces the TensorFlow loader (tests inject fakes). Configures logging unless the
    process already did (`app.logs`), so every entry point logs version state changes.
    Raises `ConfigError` for a configuration TF Serving refuses (e.g. a bad monitoring config)
    and pydantic's `ValidationError` for a malformed `HOTSERVE_*` value. Models are read and
    loaded later, by the lifespan.
    """
    settings = settings or Settings()
    configure_logging(settings.log_level, settings.log_format)
    app = HotserveApp(
        title="hotserve",
        version=__version__,
        summary="TensorFlow Serving's REST API, with zero-downtime hot updates.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.loader = loader
    app.state.registry = None
    app.state.shutting_down = False  # set by the lifespan: at SIGTERM/SIGINT, else at its exit
    metrics = app.state.metrics = Metrics(lambda: app.state.registry)

    def registry() -> Registry:
        reg: Registry | None = app.state.registry
        if reg is None:
            from app.errors import Unavailable

            raise Unavailable("Server is starting")
        return reg

    rollouts = app.state.rollouts = RolloutTable(registry)  # issue 11: admin, file, controller
    budget = ShadowBudget(
        settings.shadow_max_in_flight, settings.shadow_batch_share, settings.shadow_busy_in_flight
    )
    tap = app.state.rollout_tap = RolloutTap(registry, budget)
    controller = app.state.rollout_controller = RolloutController(
        rollouts, tap, registry, interval=settings.rollout_interval_seconds
    )
    metrics.prometheus.register(controller.metrics)
    serving = app.state.serving = Serving(
        registry, settings.enable_signature_method_name_check, rollouts=tap
    )

    def keyed(model: str, old: object, new: object) -> None:
        serving.keyed = rollouts.keyed()

    rollouts.add_listener(keyed)
    app.tf_serving_rest = TFServingRest(
        serving=serving,
        options=RestOptions(
            max_request_bytes=settings.max_request_bytes,
            timeout_ms=settings.rest_api_timeout_in_ms,
            cors=settings.rest_api_enable_cors_support,
            method_name_check=settings.enable_signature_method_name_check,
            route_key_header=settings.route_key_header.lower().encode("latin-1"),
        ),
        observer=metrics.requests,
    )
    app.tracing = Tracing(app.dispatch_request, access=settings.access_log)
    install_routes(app, metrics, monitoring_config_for(settings))
    install_admin(app, settings)
    install_status_page(app)

    @app.get("/healthz", tags=["health"], summary="Liveness: the process serves HTTP")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], summary="Readiness: every configured model has settled")
    async def readyz() -> Response:
        reg: Registry | None = app.state.registry
        detail = reg.readiness() if reg is not None else {}
        if app.state.shutting_down:
            # From the shutdown signal on, whatever the models' states: take no new traffic.
            body = {"ready": False, "shutting_down": True, "models": detail}
            return JSONResponse(body, status_code=503)
        ready = reg is not None and reg.is_ready()
        return JSONResponse({"ready": ready, "models": detail}, status_code=200 if ready else 503)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        return JSONResponse({"error": validation_message(exc.errors())}, status_code=400)

    install_openapi(app)
    return app


def validation_message(errors: Any) -> str:
    """A FastAPI validation failure as one line: where and what, never the input itself (it
    may be megabytes, or a secret) nor a Python repr."""
    parts = [
        f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', 'invalid value')}"
        for e in errors
    ]
    return "Invalid request: " + "; ".join(parts)


def __getattr__(name: str) -> Any:
    """`app.main.app`, built from the environment on first access (for `uvicorn app.main:app`)."""
    if name == "app":
        return _default_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@functools.cache
def _default_app() -> FastAPI:
    return create_app()
