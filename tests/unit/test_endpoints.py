"""Which routes a model serves, per engine and task, and how the router merges what its workers say."""

from __future__ import annotations

from cluster.router.registry import Registry
from proto import orchard_pb2 as pb
from worker.shared import endpoints


def test_routes_by_engine_and_task() -> None:
    assert endpoints.served("vllm", "generate") == (
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/messages",
        "/v1/messages/count_tokens",
        "/v1/responses",
        "/v1/responses/{response_id}",
        "/tokenize",
        "/detokenize",
    )
    assert endpoints.served("vllm", "embed") == ("/v1/embeddings", "/tokenize", "/detokenize")
    assert (
        endpoints.served("mlx", "generate")
        == endpoints.served("sim", "generate")
        == ("/v1/chat/completions", "/v1/completions")
    )
    assert set(endpoints.PATHS) == {v for v in pb.Endpoint.values() if v != pb.ENDPOINT_UNSPECIFIED}


def test_a_model_serves_what_every_worker_of_it_serves() -> None:
    registry = Registry(["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"])
    routes = (endpoints.served("vllm", "generate"), endpoints.served("mlx", "generate"), ())  # () an older agent
    for handle, served in zip(registry.workers.values(), routes, strict=True):
        handle.info = pb.InfoReply(models=[pb.ModelInfo(name="m", routes=served)])
    assert list(registry.models()["m"].routes) == ["/v1/chat/completions", "/v1/completions"]


def test_a_retrieval_names_its_response_in_the_url_quoted() -> None:
    assert endpoints.engine_request(pb.ENDPOINT_RESPONSES, {}) == ("POST", "/v1/responses")
    assert endpoints.engine_request(pb.ENDPOINT_GET_RESPONSE, {"response_id": "resp_1"}) == (
        "GET",
        "/v1/responses/resp_1",
    )
    assert endpoints.engine_request(pb.ENDPOINT_GET_RESPONSE, {"response_id": "../x?y"})[1] == (
        "/v1/responses/..%2Fx%3Fy"
    )


def test_a_model_can_do_what_every_worker_that_knows_can_do() -> None:
    registry = Registry(["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3", "127.0.0.1:4"])
    said = [(True, ("tools", "reasoning")), (False, ()), (True, ("tools",))]  # (known, capabilities)
    handles = list(registry.workers.values())
    for handle, (known, capabilities) in zip(handles, said, strict=False):
        handle.info = pb.InfoReply(models=[pb.ModelInfo(name="m", capabilities=capabilities, capabilities_known=known)])
    merged = registry.models()["m"]
    assert merged.capabilities_known and list(merged.capabilities) == ["tools"]  # the one not knowing adds nothing
    handles[0].info = handles[2].info = pb.InfoReply(models=[pb.ModelInfo(name="m")])  # none knows yet
    handles[3].info = pb.InfoReply(models=[pb.ModelInfo(name="m")])
    assert not registry.models()["m"].capabilities_known
