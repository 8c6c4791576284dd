"""Tokenize, detokenize and embeddings through the router, on real vLLM with the bundled model: the same answers
as from the engine directly, with the official openai client for embeddings."""

from __future__ import annotations

import math

import httpx
import pytest

from tests.e2e.conftest import UpCluster, client_of
from worker.shared.models import BUNDLED_NAME

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


def test_tokenize_and_detokenize_through_the_router_match_the_engine(up: UpCluster) -> None:
    question = {"model": BUNDLED_NAME, "prompt": "What is the capital of France?"}
    routed = httpx.post(up.url + "/tokenize", json=question, timeout=60)
    direct = httpx.post(up.engine_url + "/tokenize", json=question, timeout=60)
    assert routed.status_code == 200, routed.text
    assert routed.json()["tokens"] == direct.json()["tokens"] and routed.json()["count"] > 5
    back = httpx.post(
        up.url + "/detokenize", json={"model": BUNDLED_NAME, "tokens": routed.json()["tokens"]}, timeout=60
    )
    assert back.status_code == 200 and back.json()["prompt"].endswith("What is the capital of France?")
    chat = {"model": BUNDLED_NAME, "messages": [{"role": "user", "content": "Hi"}]}
    assert httpx.post(up.url + "/tokenize", json=chat, timeout=60).json()["count"] > 2  # the chat template's


def test_embeddings_need_a_model_served_for_them(up: UpCluster) -> None:
    answer = httpx.post(up.url + "/v1/embeddings", json={"model": BUNDLED_NAME, "input": "x"}, timeout=60)
    assert answer.status_code == 404, answer.text
    assert f"`{BUNDLED_NAME}` does not serve /v1/embeddings" in answer.json()["error"]["message"]
    [card] = httpx.get(up.url + "/v1/models", timeout=10).json()["data"]
    assert card["routes"] == [
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/messages",
        "/v1/messages/count_tokens",
        "/v1/responses",
        "/v1/responses/{response_id}",
        "/tokenize",
        "/detokenize",
    ]


def _cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def test_embeddings_of_a_batch_with_the_openai_client(embedder: str) -> None:
    texts = ["The cat sat on the mat.", "A cat was sitting on the mat.", "Quarterly revenue rose by four percent."]
    result = client_of(embedder).embeddings.create(model=BUNDLED_NAME, input=texts)
    vectors = [item.embedding for item in result.data]
    assert [item.index for item in result.data] == [0, 1, 2]
    assert len({len(v) for v in vectors}) == 1 and len(vectors[0]) == 576  # SmolLM2-135M's hidden size
    assert result.usage.prompt_tokens > 0
    [card] = httpx.get(embedder + "/v1/models", timeout=10).json()["data"]
    assert card["routes"] == ["/v1/embeddings", "/tokenize", "/detokenize"]
    paraphrase, unrelated = _cosine(vectors[0], vectors[1]), _cosine(vectors[0], vectors[2])
    print(f"\ncosine: paraphrase {paraphrase:.3f}, unrelated {unrelated:.3f}")
    assert paraphrase > unrelated
