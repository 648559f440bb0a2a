"""The admin API under `/admin/v1` (never under `/v1`, which is TF Serving's grammar).

Off unless a token is configured: `HOTSERVE_ADMIN_TOKEN` in the environment or
`--admin_token_file` (a command-line value is refused: `ps` shows it). When on, every request
under `/admin/` needs `Authorization: Bearer <token>`; `AdminAuth`, a raw ASGI guard in front of
routing, compares SHA-256 digests with `hmac.compare_digest` (constant time, length included) and
answers 401 `{"error": "Unauthorized"}` for a missing, malformed or wrong token alike, before any
route or parameter is looked at. Every change is logged at INFO (WARNING for refusals) with the
caller's address (the TCP peer; a proxy's `X-Forwarded-For` is not trusted) and what changed.

Routes (documented in the OpenAPI page under the `admin` tag):
  GET    /admin/v1/status                         every model (the status page polls this)
  GET    /admin/v1/models/{name}                  one model: versions, states, durations, events
  GET    /admin/v1/events?model=&limit=           recent version events, newest first
  POST   /admin/v1/config/reload                  re-read --model_config_file now
  POST   /admin/v1/models/{name}/versions/{v}/load
  POST   /admin/v1/models/{name}/versions/{v}/unload?force=false
  PUT    /admin/v1/models/{name}/pin              {"version": v}; DELETE unpins
  PUT    /admin/v1/models/{name}/labels/{label}   {"version": v}; DELETE removes the label
  .../rollouts, .../models/{name}/rollout[/promote|rollback|pause|resume]   app.control.rollouts
Errors are `{"error": "..."}` with the status of `app.api.errors` (one table).
"""

from __future__ import annotations

import hashlib
import hmac
import inspect
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, FastAPI, Query, Request, Security
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBearer
from pydantic import BaseModel, Field
from starlette._utils import get_route_path
from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.errors import http_status
from app.control.actions import AdminActions
from app.control.events import EventLog
from app.control.rollouts import install_rollout_routes
from app.control.status import model_document, status_document
from app.control.traffic import Traffic
from app.core.registry import Registry
from app.errors import ConfigError, FailedPrecondition, HotserveError, Unavailable
from app.settings import Settings
from app.tracing import loggable

log = logging.getLogger(__name__)

PREFIX = "/admin/v1"
MIN_TOKEN_CHARS = 16
UNAUTHORIZED = b'{"error":"Unauthorized"}'
T = TypeVar("T")

# Declares the scheme for the OpenAPI page ("Authorize" button); AdminAuth does the checking.
bearer = HTTPBearer(auto_error=False, description="HOTSERVE_ADMIN_TOKEN / --admin_token_file")
NAME = Annotated[str, Field(min_length=1, max_length=256)]
VERSION = Annotated[int, Field(ge=0, le=2**63 - 1)]
LABEL = Annotated[str, Field(min_length=1, max_length=256)]


class VersionBody(BaseModel):
    # strict: "1" and true are not versions (lax mode would read true as version 1)
    version: int = Field(ge=0, le=2**63 - 1, strict=True, examples=[1])


def admin_token(settings: Settings) -> str | None:
    """The configured token (environment first, then the file), or None: admin API off.
    Raises ConfigError for an unreadable file or a token shorter than MIN_TOKEN_CHARS."""
    token = settings.admin_token
    if not token and settings.admin_token_file:
        try:
            token = Path(settings.admin_token_file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"Cannot read --admin_token_file: {exc}") from None
    if not token:
        return None
    if len(token) < MIN_TOKEN_CHARS:
        raise ConfigError(f"The admin token must be at least {MIN_TOKEN_CHARS} characters")
    return token


class AdminAuth:
    """Raw ASGI guard: requests under /admin/ pass only with the right bearer token."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self._digest = hashlib.sha256(token.encode()).digest()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        guarded = scope["type"] == "http" and _admin_path(scope)
        if guarded and not self._authorized(scope):
            log.warning(
                "admin: refused %s %s from %s (missing or wrong token)",
                scope["method"],
                loggable(scope["path"]),
                _address(scope.get("client")),
            )
            await _send_401(send)
            return
        await self.app(scope, receive, send)

    def _authorized(self, scope: Scope) -> bool:
        values = [v for k, v in scope["headers"] if k == b"authorization"]
        if len(values) != 1:
            return False
        scheme, _, credentials = values[0].partition(b" ")
        if scheme.lower() != b"bearer" or not credentials.strip():
            return False
        offered = hashlib.sha256(credentials.strip()).digest()
        return hmac.compare_digest(offered, self._digest)


def _admin_path(scope: Scope) -> bool:
    """Whether the router may route this request to an admin route. The router matches the
    path without the ASGI `root_path` (`uvicorn --root-path /api` makes `/admin/v1/status`
    arrive as `/api/admin/v1/status`), so the guard looks at that path too, with Starlette's
    own function, or a root path would open the admin API to anyone."""
    prefix = "/admin/"
    return scope["path"].startswith(prefix) or get_route_path(scope).startswith(prefix)


async def _send_401(send: Send) -> None:
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(UNAUTHORIZED)).encode()),
        (b"www-authenticate", b"Bearer"),
    ]
    await send({"type": "http.response.start", "status": 401, "headers": headers})
    await send({"type": "http.response.body", "body": UNAUTHORIZED})


def _address(client: Any) -> str:
    if not client:
        return "unknown"
    host, port = client
    return f"{host}:{port}"


def _caller(request: Request) -> str:
    return _address(request.client)


async def _answer(call: Awaitable[T], ok: Callable[[T], dict[str, Any]]) -> JSONResponse:
    try:
        result = await call
    except HotserveError as exc:
        return JSONResponse({"error": exc.message}, status_code=http_status(exc))
    return JSONResponse(ok(result))


def install_admin(app: FastAPI, settings: Settings) -> bool:
    """Create the event log and traffic windows (always: the lifespan records into them) and,
    when a token is configured, the admin routes and their guard. Returns True when on."""
    events = app.state.events = EventLog()
    traffic = app.state.traffic = Traffic()
    token = admin_token(settings)
    if token is None:
        log.info("admin API off (no HOTSERVE_ADMIN_TOKEN or --admin_token_file)")
        return False

    def registry() -> Registry:
        reg: Registry | None = app.state.registry
        if reg is None:
            raise Unavailable("Server is starting")
        return reg

    async def reload_config() -> list[str]:
        reload = getattr(app.state, "reload_config", None)  # set by the lifespan
        if reload is None:
            raise FailedPrecondition("No --model_config_file to reload")
        names: list[str] = await reload()
        return names

    actions = AdminActions(registry, reload_config)
    router = APIRouter(prefix=PREFIX, tags=["admin"], dependencies=[Security(bearer)])
    _read_routes(router, app, registry, events, traffic)
    _change_routes(router, actions)
    install_rollout_routes(router, lambda: app.state.rollouts, _change)
    app.include_router(router)
    app.add_middleware(AdminAuth, token=token)
    log.info("admin API on under %s (bearer token)", PREFIX)
    return True


def _with_analysis(app: FastAPI, doc: dict[str, Any]) -> dict[str, Any]:
    """Add the rollout controller's window and verdict (app.rollout.controller) to a model's
    `rollout` section, when it has an active one."""
    controller = getattr(app.state, "rollout_controller", None)
    section = doc.get("rollout")
    if controller is not None and isinstance(section, dict) and section.get("rollout"):
        section["analysis"] = controller.status(doc.get("name", ""))
    return doc


def _read_routes(
    router: APIRouter,
    app: FastAPI,
    registry: Callable[[], Registry],
    events: EventLog,
    traffic: Traffic,
) -> None:
    @router.get("/status", summary="Every model: versions, states, pins, labels, traffic, events")
    async def status() -> JSONResponse:
        reg: Registry | None = app.state.registry
        shutting_down = bool(getattr(app.state, "shutting_down", False))
        rollouts = getattr(app.state, "rollouts", None)
        doc = status_document(reg, events, traffic, shutting_down, rollouts)
        for m in doc.get("models", []):
            _with_analysis(app, m)
        return JSONResponse(doc)

    @router.get("/models/{name}", summary="One model: versions, durations, in-flight, events")
    async def model(name: NAME) -> JSONResponse:
        async def build() -> dict[str, Any]:
            rollouts = getattr(app.state, "rollouts", None)
            doc = model_document(registry(), events, traffic, name, 50, rollouts=rollouts)
            return _with_analysis(app, doc)

        return await _answer(build(), lambda doc: doc)

    @router.get("/events", summary="Recent version events (the swap history), newest first")
    async def recent(
        model: Annotated[str | None, Query(max_length=256)] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> JSONResponse:
        return JSONResponse({"events": events.recent(model, limit)})


async def _change(
    request: Request, what: str, call: Awaitable[T], ok: Callable[[T], dict[str, Any]]
) -> JSONResponse:
    """Run one change and log it with the caller's address and its outcome.

    Under `--workers N` a change would reach the one worker that took the connection, and its
    versions wait for every worker (app.workers): refused until admin actions go through the
    supervisor. Reads (status, events) still answer, for that worker."""
    caller = _caller(request)
    try:
        if getattr(request.app.state, "publish_gate", None) is not None:
            if inspect.iscoroutine(call):
                call.close()  # never started: no "was never awaited" warning
            raise FailedPrecondition(
                "admin changes are not available with --workers > 1 (each worker has its own"
                " registry); change models.config or the model directories instead"
            )
        result = await call
    except HotserveError as exc:
        log.warning("admin: %s: %s refused: %s", caller, loggable(what), loggable(exc.message))
        return JSONResponse({"error": exc.message}, status_code=http_status(exc))
    log.info("admin: %s: %s done", caller, loggable(what))
    return JSONResponse(ok(result))


def _change_routes(router: APIRouter, actions: AdminActions) -> None:
    @router.post("/config/reload", summary="Re-read --model_config_file now")
    async def reload(request: Request) -> JSONResponse:
        call = actions.reload_config()
        return await _change(request, "config reload", call, lambda names: {"models": names})

    @router.post("/models/{name}/versions/{version}/load", summary="Load a version and keep it")
    async def load(name: NAME, version: VERSION, request: Request) -> JSONResponse:
        what = f"load model {name} version {version}"
        call = actions.load(name, version)
        return await _change(request, what, call, lambda state: {"state": state})

    @router.post("/models/{name}/versions/{version}/unload", summary="Unload a version")
    async def unload(
        name: NAME, version: VERSION, request: Request, force: bool = False
    ) -> JSONResponse:
        what = f"unload model {name} version {version}" + (" (force)" if force else "")
        call = actions.unload(name, version, force)
        return await _change(request, what, call, lambda _: {"unloading": version})

    @router.put("/models/{name}/pin", summary="Route requests without a version to one version")
    async def pin(name: NAME, body: VersionBody, request: Request) -> JSONResponse:
        what = f"pin model {name} to version {body.version}"
        call = actions.pin(name, body.version)
        return await _change(request, what, call, lambda _: {"pinned": body.version})

    @router.delete("/models/{name}/pin", summary="Unpin: back to the highest AVAILABLE version")
    async def unpin(name: NAME, request: Request) -> JSONResponse:
        call = actions.unpin(name)
        return await _change(request, f"unpin model {name}", call, lambda was: {"unpinned": was})

    @router.put("/models/{name}/labels/{label}", summary="Set or move a label (AVAILABLE only)")
    async def set_label(
        name: NAME, label: LABEL, body: VersionBody, request: Request
    ) -> JSONResponse:
        what = f"set label {label} of model {name} to version {body.version}"
        call = actions.set_label(name, label, body.version)
        return await _change(request, what, call, lambda _: {"label": label, **body.model_dump()})

    @router.delete("/models/{name}/labels/{label}", summary="Delete a label")
    async def delete_label(name: NAME, label: LABEL, request: Request) -> JSONResponse:
        what = f"delete label {label} of model {name}"
        call = actions.delete_label(name, label)
        return await _change(request, what, call, lambda _: {"deleted": label})
