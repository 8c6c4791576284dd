"""The routes the router relays to a worker: for each, the contract's endpoint (and so its path), the body it
validates and publishes, and whose API it speaks (the shape of its errors). The app registers them from this one
table, and the published OpenAPI document reads its bodies here."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel

from cluster.router.errors import Dialect
from cluster.router.validation import (
    ChatRequest,
    CompletionRequest,
    CountTokensRequest,
    DetokenizeRequest,
    EmbeddingRequest,
    MessagesRequest,
    ResponseRetrieval,
    ResponsesRequest,
    TokenizeRequest,
)
from proto import orchard_pb2 as pb
from worker.shared import endpoints


@dataclass(frozen=True)
class Route:
    endpoint: pb.Endpoint
    body: type[BaseModel]
    dialect: Dialect = Dialect.OPENAI

    @property
    def path(self) -> str:
        return endpoints.PATHS[self.endpoint]


RELAYED = (
    Route(pb.ENDPOINT_CHAT_COMPLETIONS, ChatRequest),
    Route(pb.ENDPOINT_COMPLETIONS, CompletionRequest),
    Route(pb.ENDPOINT_EMBEDDINGS, EmbeddingRequest),
    Route(pb.ENDPOINT_TOKENIZE, TokenizeRequest),
    Route(pb.ENDPOINT_DETOKENIZE, DetokenizeRequest),
    Route(pb.ENDPOINT_MESSAGES, MessagesRequest, Dialect.ANTHROPIC),
    Route(pb.ENDPOINT_COUNT_TOKENS, CountTokensRequest, Dialect.ANTHROPIC),
    Route(pb.ENDPOINT_RESPONSES, ResponsesRequest),
)
GET_RESPONSE = Route(pb.ENDPOINT_GET_RESPONSE, ResponseRetrieval)  # a GET: no body; the router fills one in
OLLAMA_PREFIX = "/api/"


def dialect_of(path: str) -> Dialect:
    """Whose error shape a path answers in, also for paths that match no route (404, 405)."""
    if path == "/v1/messages" or path.startswith("/v1/messages/"):
        return Dialect.ANTHROPIC
    if path.startswith(OLLAMA_PREFIX):
        return Dialect.OLLAMA
    return Dialect.OPENAI
