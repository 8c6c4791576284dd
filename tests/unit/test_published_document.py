"""The router's published OpenAPI document says what the router answers: each route's success media types, every
error status in its API's error shape, a 405's `Allow`, and what validators check beyond their fields. The app is
built over a registry it never starts and asked in process (no sockets, no workers)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import jsonschema_rs
import pytest
from fastapi.testclient import TestClient
from prometheus_client import CONTENT_TYPE_LATEST

from cluster.router.app import create_app
from cluster.router.registry import Registry
from worker.shared.launch import RouterConfig


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    app = create_app(Registry(["127.0.0.1:1"]), RouterConfig(workers=("127.0.0.1:1",)))
    yield TestClient(app)  # not entered: the lifespan (the registry's streams) never starts


@pytest.fixture(scope="module")
def document(client: TestClient) -> dict[str, Any]:
    return dict(client.get("/openapi.json").json())


def _operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            yield method, path, operation


def _valid(document: dict[str, Any], schema: dict[str, Any], instance: Any) -> bool:
    return bool(jsonschema_rs.validator_for(schema | {"components": document["components"]}).is_valid(instance))


def test_every_operation_documents_its_success_and_its_errors_in_its_apis_shape(document: dict[str, Any]) -> None:
    shapes = {"/v1/messages": "AnthropicError", "/v1/messages/count_tokens": "AnthropicError", "/api/": "OllamaError"}
    for method, path, operation in _operations(document):
        responses = operation["responses"]
        assert "200" in responses and "422" not in responses, (method, path)  # FastAPI validates no route here
        shape = next((s for prefix, s in shapes.items() if path.startswith(prefix)), "Error")
        for status, response in responses.items():
            if status.startswith(("4", "5")) and path != "/health":
                schema = response["content"]["application/json"]["schema"]
                assert schema == {"$ref": f"#/components/schemas/{shape}"}, (method, path, status)
    assert "HTTPValidationError" not in document["components"]["schemas"]


def test_metrics_are_documented_as_prometheus_text_and_served_as_text(
    document: dict[str, Any], client: TestClient
) -> None:
    assert list(document["paths"]["/metrics"]["get"]["responses"]["200"]["content"]) == [CONTENT_TYPE_LATEST]
    assert client.get("/metrics").headers["content-type"] == CONTENT_TYPE_LATEST


def test_an_unknown_stored_response_is_a_documented_404_in_openais_error_shape(
    document: dict[str, Any], client: TestClient
) -> None:
    answer = client.get("/v1/responses/resp_unknown")
    documented = document["paths"]["/v1/responses/{response_id}"]["get"]["responses"]
    assert answer.status_code == 404 and "404" in documented
    assert _valid(document, documented["404"]["content"]["application/json"]["schema"], answer.json())
    assert answer.json()["error"]["code"] == "response_not_found"


def test_health_documents_its_503_in_its_own_shape(document: dict[str, Any], client: TestClient) -> None:
    answer = client.get("/health")  # no worker has reported: unavailable
    documented = document["paths"]["/health"]["get"]["responses"]
    assert answer.status_code == 503
    assert _valid(document, documented["503"]["content"]["application/json"]["schema"], answer.json())


def test_a_method_a_path_does_not_publish_is_a_405_with_allow_naming_the_ones_it_does(
    document: dict[str, Any], client: TestClient
) -> None:
    for path, operations in document["paths"].items():
        answer = client.request("TRACE", path.replace("{response_id}", "resp_1"))
        assert answer.status_code == 405, path
        assert {m.strip() for m in answer.headers["allow"].split(",")} == {m.upper() for m in operations}, path


def test_streaming_routes_document_their_stream_media_type(document: dict[str, Any]) -> None:
    def media(path: str) -> set[str]:
        return set(document["paths"][path]["post"]["responses"]["200"]["content"])

    assert media("/v1/chat/completions") == media("/v1/messages") == {"application/json", "text/event-stream"}
    assert media("/api/chat") == {"application/json", "application/x-ndjson"}
    assert media("/v1/embeddings") == {"application/json"}  # never streamed


def test_tokenize_is_documented_to_take_exactly_one_of_prompt_or_messages(document: dict[str, Any]) -> None:
    tokenize = {"$ref": "#/components/schemas/TokenizeRequest"}
    messages = [{"role": "user", "content": "hi"}]
    assert _valid(document, tokenize, {"model": "m", "prompt": "hi"})
    assert _valid(document, tokenize, {"model": "m", "messages": messages, "prompt": None})
    assert not _valid(document, tokenize, {"model": "m"})
    assert not _valid(document, tokenize, {"model": "m", "prompt": "hi", "messages": messages})
