"""OpenAPI documentation of TF Serving's `/v1` routes (served by the raw handler in routes.py);
the list of routes comes from the grammar's one home, `app.api.paths`.

The examples run against the demo repository in `models/` (`half_plus_two`, `mlp`), so "Try it
out" on `/docs` works on a fresh checkout.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from app.api import paths

ERROR = {
    "description": "TF Serving's error body",
    "content": {
        "application/json": {
            "schema": {"type": "object", "properties": {"error": {"type": "string"}}},
            "example": {"error": "Servable not found for request: Latest(nope)"},
        }
    },
}

PREDICT_EXAMPLES: dict[str, Any] = {
    "row": {
        "summary": "Row format (instances)",
        "value": {"instances": [1.0, 2.0, 5.0]},
    },
    "columnar": {
        "summary": "Columnar format (inputs)",
        "value": {"inputs": [1.0, 2.0, 5.0]},
    },
    "named": {
        "summary": "Named inputs, explicit signature",
        "value": {"signature_name": "serving_default", "instances": [{"x": 1.0}, {"x": 2.0}]},
    },
}
PREDICT_ANSWERS: dict[str, Any] = {
    "row": {"summary": "half_plus_two version 2", "value": {"predictions": [3.5, 4.0, 5.5]}},
    "columnar": {"summary": "columnar request", "value": {"outputs": [3.5, 4.0, 5.5]}},
}
REGRESS_EXAMPLE = {"signature_name": "regress_x_to_y", "examples": [{"x": 1.0}, {"x": 2.0}]}
CLASSIFY_EXAMPLE = {"signature_name": "classify_x_to_y", "examples": [{"x": 1.0}]}
STATUS_EXAMPLE = {
    "model_version_status": [
        {"version": "2", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
    ]
}


def _params(kind: str) -> list[dict[str, Any]]:
    params: list[dict[str, Any]] = [
        {
            "name": "model_name",
            "in": "path",
            "required": True,
            "schema": {"type": "string", "example": "half_plus_two"},
        }
    ]
    if kind == "version":
        params.append(
            {
                "name": "version",
                "in": "path",
                "required": True,
                "schema": {"type": "integer", "example": 1},
            }
        )
    if kind == "label":
        params.append(
            {
                "name": "label",
                "in": "path",
                "required": True,
                "schema": {"type": "string", "example": "stable"},
            }
        )
    return params


def _post(verb: str, kind: str) -> dict[str, Any]:
    if verb == "predict":
        examples, answers = PREDICT_EXAMPLES, PREDICT_ANSWERS
    elif verb == "regress":
        examples = {"regress": {"value": REGRESS_EXAMPLE}}
        answers = {"regress": {"value": {"results": [3.5, 4.0]}}}
    else:
        examples = {"classify": {"value": CLASSIFY_EXAMPLE}}
        answers = {"classify": {"value": {"results": [[["", 3.5]]]}}}
    return {
        "post": {
            "tags": [verb],
            "summary": f"{verb.capitalize()} ({kind})",
            "operationId": f"{verb}_{kind}",
            "parameters": _params(kind),
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": {"type": "object"}, "examples": examples}
                },
            },
            "responses": {
                "200": {
                    "description": "Model output",
                    "content": {
                        "application/json": {"schema": {"type": "object"}, "examples": answers}
                    },
                },
                "400": ERROR,
                "404": ERROR,
                "503": ERROR,
                "504": ERROR,
            },
        }
    }


def _get(what: str, kind: str) -> dict[str, Any]:
    example: Any = STATUS_EXAMPLE if what == "status" else {"model_spec": {"name": "half_plus_two"}}
    return {
        "get": {
            "tags": [what],
            "summary": f"Model {what} ({kind})",
            "operationId": f"{what}_{kind}",
            "parameters": _params(kind),
            "responses": {
                "200": {
                    "description": f"TF Serving's {what} JSON",
                    "content": {
                        "application/json": {"schema": {"type": "object"}, "example": example}
                    },
                },
                "400": ERROR,
                "404": ERROR,
            },
        }
    }


def tf_serving_paths() -> dict[str, Any]:
    """The `/v1` paths, one per route of the grammar's one home (`app.api.paths.templates`)."""
    out: dict[str, Any] = {}
    for method, template, kind, addressing in paths.templates():
        if method == "post":
            out[template] = _post(kind, addressing)
        else:
            out[template] = _get(kind, addressing)
    return out


def install_openapi(app: FastAPI) -> None:
    """Add the `/v1` paths to FastAPI's generated schema (built once, on first request)."""

    def schema() -> dict[str, Any]:
        if app.openapi_schema is None:
            generated = get_openapi(
                title=app.title, version=app.version, summary=app.summary, routes=app.routes
            )
            generated["paths"] = {**tf_serving_paths(), **generated.get("paths", {})}
            app.openapi_schema = generated
        return app.openapi_schema

    app.openapi = schema  # type: ignore[method-assign]
