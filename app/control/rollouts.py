"""The admin API's rollout routes (issue 11), under `/admin/v1`, behind the same token guard:

  GET    /admin/v1/rollouts                          every model's rollout and policy
  GET    /admin/v1/models/{name}/rollout             one model's rollout, policy, recent events
  PUT    /admin/v1/models/{name}/rollout             start one, or change the active one live
                                                     (body: one rollout-file entry, percents)
  DELETE /admin/v1/models/{name}/rollout             forget it: back to the version policy
  POST   /admin/v1/models/{name}/rollout/promote     {"reason": "..."} optional
  POST   /admin/v1/models/{name}/rollout/rollback
  POST   /admin/v1/models/{name}/rollout/pause
  POST   /admin/v1/models/{name}/rollout/resume

Errors as the rest of the admin API (one table, app.api.errors): `{"error": ...}`; 400 for a
body that does not check or an unknown label; 404 for an unknown model or version or no rollout;
FAILED_PRECONDITION (400, TF Serving's HTTP mapping) when a version that must be AVAILABLE is
not, and for every change under `--workers N > 1` (each worker has its own table; the rollout
file applies to all of them instead). Changes go through
`RolloutTable` (app.rollout.table); handlers run on the event-loop thread and never block.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from app.rollout.config import RolloutBody, describe
from app.rollout.spec import Policy, Rollout
from app.rollout.table import RolloutTable

NAME = Annotated[str, Field(min_length=1, max_length=256)]
Change = Callable[
    [Request, str, Awaitable[Any], Callable[[Any], dict[str, Any]]], Awaitable[JSONResponse]
]


class ReasonBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(default="", max_length=1000)


def rollout_document(table: RolloutTable, name: str, event_limit: int = 20) -> dict[str, Any]:
    """One model's rollout as JSON (status page, admin API): rollout (None if none), policy."""
    r = table.get(name)
    policy = table.policies.get(name)
    return {
        "rollout": describe(r) if r is not None else None,
        "policy": describe_policy(policy) if policy is not None else None,
        "events": table.events(name, event_limit),
    }


def describe_policy(p: Policy) -> dict[str, Any]:
    template = describe(p.template) if p.template is not None else None
    if template is not None:
        for key in ("model", "stable", "canary"):
            template.pop(key)
    return {"on_publish": p.on_publish, "template": template}


def install_rollout_routes(
    router: APIRouter, table: Callable[[], RolloutTable], change: Change
) -> None:
    """Add the routes to the admin router; `change` is the admin API's change runner (logs,
    refuses under --workers, maps errors)."""

    @router.get("/rollouts", summary="Every model's rollout and policy")
    async def every() -> JSONResponse:
        t = table()
        names = sorted(set(t.rollouts) | set(t.policies))
        return JSONResponse({"rollouts": {n: rollout_document(t, n, 0) for n in names}})

    @router.get("/models/{name}/rollout", summary="One model's rollout, policy and events")
    async def one(name: NAME) -> JSONResponse:
        t = table()
        doc = rollout_document(t, name)
        if doc["rollout"] is None and doc["policy"] is None:
            return JSONResponse({"error": f"Model {name} has no rollout"}, status_code=404)
        return JSONResponse(doc)

    @router.put("/models/{name}/rollout", summary="Start a rollout or change it live")
    async def put(name: NAME, body: RolloutBody, request: Request) -> JSONResponse:
        async def call() -> Rollout:
            return table().apply(name, body, source="admin")

        return await change(request, f"rollout of model {name}: {_brief(body)}", call(), _shown)

    @router.delete("/models/{name}/rollout", summary="Forget a rollout (version policy again)")
    async def delete(name: NAME, request: Request) -> JSONResponse:
        async def call() -> Rollout | None:
            return table().clear(name, source="admin")

        def cleared(r: Rollout | None) -> dict[str, Any]:
            return {"cleared": describe(r) if r is not None else None}

        return await change(request, f"clear rollout of model {name}", call(), cleared)

    def verb(action: str, run: Callable[[RolloutTable, str, str], Rollout]) -> None:
        @router.post(f"/models/{{name}}/rollout/{action}", summary=f"{action.title()} a rollout")
        async def act(name: NAME, request: Request, body: ReasonBody | None = None) -> JSONResponse:
            reason = body.reason if body is not None else ""

            async def call() -> Rollout:
                return run(table(), name, reason)

            return await change(request, f"{action} rollout of model {name}", call(), _shown)

    verb("promote", lambda t, n, why: t.promote(n, why or "promoted by operator"))
    verb("rollback", lambda t, n, why: t.rollback(n, why or "rolled back by operator"))
    verb("pause", lambda t, n, why: t.pause(n, why or "paused by operator"))
    verb("resume", lambda t, n, why: t.resume(n, why or "resumed by operator"))


def _shown(r: Rollout) -> dict[str, Any]:
    return {"rollout": describe(r)}


def _brief(body: RolloutBody) -> str:
    return (
        f"stable {body.stable}, canary {body.canary}, {body.canary_percent:g}% "
        f"(shadow {body.shadow_percent:g}%, phase {body.phase or 'auto'})"
    )
