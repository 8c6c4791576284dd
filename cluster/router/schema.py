"""The router's published OpenAPI document: every route with the request body it reads (the validation models of
cluster/router/validation.py), the media types of its success and every error status it really answers, in its
API's error shape, so clients and fuzzers can use it as published.

The routes read raw bytes (bounded, strictly parsed) and build their own responses rather than letting FastAPI
parse bodies and serialize models, so FastAPI cannot see either; this adds them (`ANSWERS`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel

from cluster.router.errors import Dialect
from cluster.router.routes import GET_RESPONSE, RELAYED, dialect_of
from cluster.router.rows import DashboardReply, WorkerRow, WorkersReply
from cluster.router.validation import TokenizeRequest
from worker.shared import build

JSON, SSE, NDJSON = "application/json", "text/event-stream", "application/x-ndjson"
PROMETHEUS = CONTENT_TYPE_LATEST  # Prometheus's text exposition format, as /metrics serves it

ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}
ERRORS = {  # each dialect's error shape (cluster/router/errors.py)
    Dialect.OPENAI: ("Error", ERROR),
    Dialect.ANTHROPIC: (
        "AnthropicError",
        {
            "type": "object",
            "required": ["type", "error"],
            "properties": {
                "type": {"const": "error"},
                "error": {
                    "type": "object",
                    "required": ["type", "message"],
                    "properties": {"type": {"type": "string"}, "message": {"type": "string"}},
                },
            },
        },
    ),
    Dialect.OLLAMA: (
        "OllamaError",
        {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
    ),
}
HEALTH = {
    "type": "object",
    "required": ["status", "workers_ready"],
    "properties": {"status": {"enum": ["ok", "unavailable"]}, "workers_ready": {"type": "integer", "minimum": 0}},
}
STATUSES = {
    400: "bad input",
    401: "missing or unknown key",
    403: "not an admin key",
    404: "unknown model, route, worker or stored response",
    408: "body too slow",
    409: "ambiguous worker",
    413: "body too large",
    415: "not JSON",
    429: "over a limit",
    500: "internal error (an incident id)",
    502: "the worker failed",
    503: "no ready worker",
    504: "waited past its deadline",
}

# What validators check beyond their fields, for the document to say it too.
CONSTRAINTS: dict[type[BaseModel], dict[str, Any]] = {
    TokenizeRequest: {
        "oneOf": [  # TokenizeRequest._one_text: exactly one of the two
            {"required": ["prompt"], "properties": {"prompt": {"type": "string"}}},
            {"required": ["messages"], "properties": {"messages": {"type": "array"}}},
        ]
    },
}


@dataclass(frozen=True)
class Answers:
    """What one operation answers: its success's media types (and schema, where the router has a model of it),
    and every error status it returns, in the error shape of its path's API."""

    media: tuple[str, ...] = (JSON,)
    errors: tuple[int, ...] = (500,)
    body: dict[str, Any] | type[BaseModel] | None = None  # None: any JSON
    unready: tuple[int, ...] = ()  # statuses answered in the success's own shape (the health's 503)


KEYED = (401, 500)  # a key is checked (once keys exist)
ADMIN = (401, 403, 500)
READ = (400, 408, 413, 415)  # a body read bounded, parsed strictly and validated
PIPELINE = (401, 404, 429, 500, 502, 503, 504)  # intake, admission, a worker (app.py's _Pipeline)


def _relayed() -> dict[tuple[str, str], Answers]:
    answers = {}
    for route in RELAYED:
        streams = route.body.model_fields["stream"].annotation != Literal[False]
        answers["post", route.path] = Answers((JSON, SSE) if streams else (JSON,), READ + PIPELINE)
    return answers


ANSWERS: dict[tuple[str, str], Answers] = {
    ("get", "/health"): Answers(body=HEALTH, unready=(503,)),
    ("get", "/v1/models"): Answers(errors=KEYED),
    ("get", "/metrics"): Answers((PROMETHEUS,), ADMIN),
    ("get", "/orchard/workers"): Answers(errors=ADMIN, body=WorkersReply),
    ("get", "/orchard/dashboard.json"): Answers(errors=ADMIN, body=DashboardReply),
    ("post", "/orchard/drain"): Answers(errors=(*READ, 404, 409, 503, *ADMIN), body=WorkerRow),
    **_relayed(),
    ("get", GET_RESPONSE.path): Answers(errors=PIPELINE),
    ("post", "/api/chat"): Answers((JSON, NDJSON), READ + PIPELINE),
    ("post", "/api/generate"): Answers((JSON, NDJSON), READ + PIPELINE),
    ("post", "/api/embed"): Answers(errors=READ + PIPELINE),
    ("post", "/api/show"): Answers(errors=(*READ, 404, *KEYED)),
    ("get", "/api/tags"): Answers(errors=KEYED),
    ("get", "/api/ps"): Answers(errors=KEYED),
    ("get", "/api/version"): Answers(),
}


def install(app: FastAPI, extra_bodies: dict[str, tuple[str, type[BaseModel]]] | None = None) -> None:
    """Replace the app's OpenAPI document with one carrying request bodies and answers (built once, on first
    request)."""
    bodies = {route.path: ("post", route.body) for route in RELAYED} | (extra_bodies or {})
    cached: dict[str, Any] = {}

    def document() -> dict[str, Any]:
        if not cached:
            cached.update(_build(app, bodies))
        return cached

    app.openapi = document  # type: ignore[method-assign]


def _build(app: FastAPI, bodies: dict[str, tuple[str, type[BaseModel]]]) -> dict[str, Any]:
    doc = get_openapi(
        title="Orchard",
        version=build.describe(),
        routes=app.routes,
        description="One OpenAI-compatible endpoint for a lab of Macs.",
    )
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):  # FastAPI's 422: no route lets FastAPI validate
        schemas.pop(unused, None)
    schemas.update(dict(ERRORS.values()))
    for path, (method, model) in bodies.items():
        doc["paths"][path][method]["requestBody"] = {
            "required": True,
            "content": {JSON: {"schema": _ref(model, schemas, "validation")}},
        }
    for path, operations in doc["paths"].items():
        for method, operation in operations.items():
            answers = ANSWERS.get((method, path))
            if answers is None:
                raise LookupError(f"{method.upper()} {path} is published without its answers in schema.ANSWERS")
            operation["responses"] = _responses(answers, path, schemas)
    return doc


def _responses(answers: Answers, path: str, schemas: dict[str, Any]) -> dict[str, Any]:
    body = answers.body
    ok = _ref(body, schemas, "serialization") if isinstance(body, type) else body or {}
    # A stream's events and lines are the engine's chunks, which the router passes on without a model of them.
    schemas_by_media = {JSON: ok, PROMETHEUS: {"type": "string"}, SSE: {}, NDJSON: {}}
    responses = {
        "200": {"description": "OK", "content": {media: {"schema": schemas_by_media[media]} for media in answers.media}}
    }
    error = {"$ref": f"#/components/schemas/{ERRORS[dialect_of(path)][0]}"}
    for status, shape in [(s, error) for s in answers.errors] + [(s, ok) for s in answers.unready]:
        responses[str(status)] = {"description": STATUSES[status], "content": {JSON: {"schema": shape}}}
    return responses


def _ref(
    model: type[BaseModel], schemas: dict[str, Any], mode: Literal["validation", "serialization"]
) -> dict[str, Any]:
    """`model`'s schema, added to the document's components, as a reference."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}", mode=mode)
    schemas.update(schema.pop("$defs", {}))
    schemas[model.__name__] = schema | CONSTRAINTS.get(model, {})
    return {"$ref": f"#/components/schemas/{model.__name__}"}
