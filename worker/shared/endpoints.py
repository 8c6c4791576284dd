"""The contract's endpoints and the HTTP route each one is on an engine, at the router and in `/v1/models`."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from proto import orchard_pb2 as pb

PATHS: dict[int, str] = {
    pb.ENDPOINT_CHAT_COMPLETIONS: "/v1/chat/completions",
    pb.ENDPOINT_COMPLETIONS: "/v1/completions",
    pb.ENDPOINT_EMBEDDINGS: "/v1/embeddings",
    pb.ENDPOINT_TOKENIZE: "/tokenize",
    pb.ENDPOINT_DETOKENIZE: "/detokenize",
    pb.ENDPOINT_MESSAGES: "/v1/messages",
    pb.ENDPOINT_COUNT_TOKENS: "/v1/messages/count_tokens",
    pb.ENDPOINT_RESPONSES: "/v1/responses",
    pb.ENDPOINT_GET_RESPONSE: "/v1/responses/{response_id}",
}
# Streams of `data:` payloads ending with `data: [DONE]`, usage on a last chunk of its own when asked for
# (`stream_options`); the others name each event and end when the body does.
OPENAI_STREAMS = (pb.ENDPOINT_CHAT_COMPLETIONS, pb.ENDPOINT_COMPLETIONS)


# The sim engine's and vLLM's (with VLLM_SERVER_DEV_MODE=1) way to empty the prefix cache; mlx-lm's server has none.
RESET_PREFIX_CACHE = "/reset_prefix_cache"
PREFIX_CACHE_RESETTERS = ("vllm", "sim")


def engine_request(endpoint: int, body: dict[str, Any]) -> tuple[str, str]:
    """(HTTP method, path) of the engine's route for a request; a retrieval names its resource in the body."""
    if endpoint == pb.ENDPOINT_GET_RESPONSE:
        return "GET", PATHS[endpoint].format(response_id=quote(str(body["response_id"]), safe=""))
    return "POST", PATHS[endpoint]


def served(engine: str, task: str) -> tuple[str, ...]:
    """The routes a model serves on an engine: vLLM serves Anthropic's Messages, OpenAI's Responses and
    tokenizes too, and serves embeddings instead of text for a model served for them; mlx-lm and the sim engine
    serve chat and completions only."""
    text = tuple(PATHS[e] for e in OPENAI_STREAMS)
    if engine != "vllm":
        return text
    tokens = (PATHS[pb.ENDPOINT_TOKENIZE], PATHS[pb.ENDPOINT_DETOKENIZE])
    if task == "embed":
        return (PATHS[pb.ENDPOINT_EMBEDDINGS], *tokens)
    others = (pb.ENDPOINT_MESSAGES, pb.ENDPOINT_COUNT_TOKENS, pb.ENDPOINT_RESPONSES, pb.ENDPOINT_GET_RESPONSE)
    return text + tuple(PATHS[e] for e in others) + tokens
