"""TF Serving's REST route grammar: the one home of which `/v1` paths exist and what they mean.

Routes (`app.api.routes`) parse requests with `parse`; the OpenAPI document (`app.api.openapi`)
lists `templates()`; nothing else spells a `/v1` path. The grammar is TF Serving's
(model_servers/http_rest_api_util.cc, kPredictionApiGegex and kModelStatusApiRegex) and is
matched the way TF Serving matches it:
- against the RAW request path, still percent-encoded (libevent's evhttp_uri_get_path does not
  decode), so an escaped '/' or ':' inside a name is not a separator (tensorflow/serving#1726);
- case-insensitively, while the verb and `metadata` are then compared case-sensitively
  (`:PREDICT` is a malformed request, `/METADATA` a status request: TF Serving's QUIRK, kept);
- only then are the model name and label percent-decoded (curl_easy_unescape, see
  `app.api.unescape`), and a version converted to int64.
The query string is not part of the match (uvicorn splits it off; TF Serving keeps it in the
path: see the README's compatibility table).

Pure functions: any thread may call them.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any, Literal, NamedTuple

from app.api.unescape import percent_unescape
from app.errors import InvalidArgument

Kind = Literal["predict", "classify", "regress", "status", "metadata"]

# The verbs of `POST ...:<verb>`, with the method_name a signature serving each must declare
# (checked with --enable_signature_method_name_check).
VERBS: Mapping[Kind, str] = {
    "classify": "tensorflow/serving/classify",
    "regress": "tensorflow/serving/regress",
    "predict": "tensorflow/serving/predict",
}
METADATA = "metadata"
INT64_MAX = 2**63 - 1

_NAME = rb"([^/:]+)"  # a model name or a label: anything but the separators, still encoded
_SPEC = rb"(?:/versions/([0-9]+)|/labels/" + _NAME + rb")?"
_VERBS = "|".join(VERBS).encode()
_PREDICT_RE = re.compile(rb"/v1/models/" + _NAME + _SPEC + rb":(" + _VERBS + rb")", re.I)
_STATUS_RE = re.compile(
    rb"/v1/models(?:/" + _NAME + rb")?" + _SPEC + rb"(?:/(" + METADATA.encode() + rb"))?", re.I
)
_V1_RE = re.compile(rb"/v1/", re.I)  # TF Serving's dispatcher: (?i)/v1/.*
_VERB_OF: Mapping[bytes, Kind] = {verb.encode(): verb for verb in VERBS}


class Route(NamedTuple):
    """A parsed `/v1/models/...` request: what it asks of which model (name and label decoded)."""

    kind: Kind
    name: str
    version: int | None
    label: str | None


def raw_path(scope: Mapping[str, Any]) -> bytes:
    """The request path as sent (percent-encoded). ASGI makes `raw_path` optional: without it,
    the decoded path is the best there is."""
    raw = scope.get("raw_path")
    if raw:
        return bytes(raw).partition(b"?")[0]
    return str(scope["path"]).encode("utf-8", "surrogateescape")


def is_v1(raw: bytes) -> bool:
    """Whether TF Serving's REST handler answers this path (others are 404 from the server)."""
    return _V1_RE.match(raw) is not None


def parse(method: str, raw: bytes) -> Route:
    """The route of a GET or POST request. Raises InvalidArgument with TF Serving's messages:
    "Malformed request: <METHOD> <path>", "Missing model name in request." (GET without a name),
    "Failed to convert version: <v> to numeric." (beyond int64)."""
    if method == "POST":
        m = _PREDICT_RE.fullmatch(raw)
        verb = _VERB_OF.get(m.group(4)) if m is not None else None  # case-sensitive, as TFS
        if m is not None and verb is not None:
            return _route(verb, m.group(1), m.group(2), m.group(3))
    elif method == "GET":
        m = _STATUS_RE.fullmatch(raw)
        if m is not None:
            if m.group(1) is None:
                raise InvalidArgument("Missing model name in request.")
            kind: Kind = "metadata" if m.group(4) == METADATA.encode() else "status"
            return _route(kind, m.group(1), m.group(2), m.group(3))
    raise malformed(method, raw)


def malformed(method: str, raw: bytes) -> InvalidArgument:
    return InvalidArgument(f"Malformed request: {method} {_text(raw)}")


def model_name_hint(raw: bytes) -> str:
    """The (decoded) model name of a path that may not parse, for metrics; "" when none."""
    m = _PREDICT_RE.fullmatch(raw) or _STATUS_RE.fullmatch(raw)
    return _text(percent_unescape(m.group(1))) if m is not None and m.group(1) else ""


def _route(kind: Kind, name: bytes, version: bytes | None, label: bytes | None) -> Route:
    v: int | None = None
    if version is not None:
        v = int(version)
        if v > INT64_MAX:
            # TF Serving answers this one with an empty body (QUIRK); hotserve sends the message.
            raise InvalidArgument(f"Failed to convert version: {version.decode()} to numeric.")
    decoded_label = _text(percent_unescape(label)) if label is not None else None
    return Route(kind, _text(percent_unescape(name)), v, decoded_label)


def _text(raw: bytes) -> str:
    # Names are compared with the configured (text) names; bytes that are not UTF-8 survive as
    # lone surrogates, so they match nothing and still show in messages.
    return raw.decode("utf-8", "surrogateescape")


def templates() -> Iterator[tuple[str, str, Kind, str]]:
    """Every route as (HTTP method, OpenAPI path template, kind, addressing), addressing being
    "latest", "version" or "label"; the OpenAPI document is built from these."""
    prefixes = {
        "latest": "/v1/models/{model_name}",
        "version": "/v1/models/{model_name}/versions/{version}",
        "label": "/v1/models/{model_name}/labels/{label}",
    }
    for addressing, prefix in prefixes.items():
        for verb in VERBS:
            yield "post", f"{prefix}:{verb}", verb, addressing
        yield "get", prefix, "status", addressing
        yield "get", f"{prefix}/{METADATA}", "metadata", addressing
