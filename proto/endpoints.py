"""The contract's endpoints and the HTTP route each one is on an engine, at the router and in `/v1/models`."""

from __future__ import annotations

from proto import orchard_pb2 as pb

PATHS: dict[int, str] = {
    pb.ENDPOINT_CHAT_COMPLETIONS: "/v1/chat/completions",
    pb.ENDPOINT_COMPLETIONS: "/v1/completions",
    pb.ENDPOINT_EMBEDDINGS: "/v1/embeddings",
    pb.ENDPOINT_TOKENIZE: "/tokenize",
    pb.ENDPOINT_DETOKENIZE: "/detokenize",
}
GENERATING = (pb.ENDPOINT_CHAT_COMPLETIONS, pb.ENDPOINT_COMPLETIONS)


def served(engine: str, task: str) -> tuple[str, ...]:
    """The routes a model serves on an engine: vLLM tokenizes too, and serves embeddings instead of text for a
    model served for them; mlx-lm and the sim engine generate only."""
    text = (PATHS[pb.ENDPOINT_CHAT_COMPLETIONS], PATHS[pb.ENDPOINT_COMPLETIONS])
    tokens = (PATHS[pb.ENDPOINT_TOKENIZE], PATHS[pb.ENDPOINT_DETOKENIZE])
    if engine != "vllm":
        return text
    return ((PATHS[pb.ENDPOINT_EMBEDDINGS],) if task == "embed" else text) + tokens
