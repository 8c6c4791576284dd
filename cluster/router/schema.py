"""The router's published OpenAPI document: every route with the request body it reads (the validation models of
cluster/router/validation.py) and its errors in its API's shape, so clients and fuzzers can use it as published.

The routes read raw bytes (bounded, strictly parsed) rather than letting FastAPI parse bodies, so FastAPI cannot
see the models; this adds them."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from cluster.router.errors import Dialect
from cluster.router.routes import RELAYED, dialect_of
from proto import build

ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {"type": "object", "required": ["message", "type"], "properties": {
        "message": {"type": "string"}, "type": {"type": "string"},
        "param": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]}}}},
}  # fmt: skip
ERRORS = {  # each dialect's error shape (cluster/router/errors.py)
    Dialect.OPENAI: ("Error", ERROR),
    Dialect.ANTHROPIC: ("AnthropicError", {"type": "object", "required": ["type", "error"], "properties": {
        "type": {"const": "error"}, "error": {"type": "object", "required": ["type", "message"], "properties": {
            "type": {"type": "string"}, "message": {"type": "string"}}}}}),
    Dialect.OLLAMA: ("OllamaError", {"type": "object", "required": ["error"], "properties": {
        "error": {"type": "string"}}}),
}  # fmt: skip
ERROR_STATUSES = {"400": "bad input", "401": "missing or unknown key", "404": "unknown model", "408": "body too slow",
                  "413": "body too large", "415": "not JSON", "429": "over a limit", "503": "no ready worker",
                  "504": "waited past its deadline"}  # fmt: skip


def install(app: FastAPI, extra_bodies: dict[str, tuple[str, type[BaseModel]]] | None = None) -> None:
    """Replace the app's OpenAPI document with one carrying request bodies (built once, on first request)."""
    bodies = {route.path: ("post", route.body) for route in RELAYED} | (extra_bodies or {})
    cached: dict[str, Any] = {}

    def document() -> dict[str, Any]:
        if not cached:
            cached.update(_build(app, bodies))
        return cached

    app.openapi = document  # type: ignore[method-assign]


def _build(app: FastAPI, bodies: dict[str, tuple[str, type[BaseModel]]]) -> dict[str, Any]:
    doc = get_openapi(title="Orchard", version=build.describe(), routes=app.routes,
                      description="One OpenAI-compatible endpoint for a lab of Macs.")  # fmt: skip
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    schemas.update(dict(ERRORS.values()))
    for path, (method, model) in bodies.items():
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
        operation = doc["paths"][path][method]
        operation["requestBody"] = {"required": True, "content": {"application/json": {
            "schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}}  # fmt: skip
        error = ERRORS[dialect_of(path)][0]
        errors = {status: {"description": why, "content": {"application/json": {"schema": {
            "$ref": f"#/components/schemas/{error}"}}}} for status, why in ERROR_STATUSES.items()}  # fmt: skip
        operation["responses"] = {**operation.get("responses", {}), **errors}
    return doc
