"""An upgrade restarts the agents in waves while the old router still serves, and a stalled wave leaves old
agents behind the new router: each side of the contract still understands the other's build."""

from __future__ import annotations

import json

from cluster.router.errors import Dialect
from cluster.router.forwarding import _settled_here, frames
from cluster.router.intake import Incoming
from cluster.router.registry import WorkerHandle
from cluster.routing.choose import RequestView
from proto import orchard_pb2 as pb
from worker.shared.load import Load

FIGURES = Load(running=2, waiting=1, kv_cache_usage=0.5, generation_tokens=900, decode_tokens_per_s=40.0)


def test_load_figures_travel_as_one_message_and_flat_for_an_older_router() -> None:
    sample = pb.LoadSample()
    FIGURES.into(sample)
    assert Load.of(sample) == FIGURES and sample.running == 2 and sample.decode_tokens_per_s == 40.0
    older = pb.LoadSample(running=2, waiting=1, kv_cache_usage=0.5, generation_tokens=900, decode_tokens_per_s=40.0)
    assert Load.of(older) == FIGURES  # an older agent's sample, without `load`


def _incoming(body: dict[str, object], wants_usage: bool = False) -> Incoming:
    body_bytes = json.dumps(body).encode()
    return Incoming(
        "r1", pb.ENDPOINT_CHAT_COMPLETIONS, Dialect.OPENAI, "m", True, wants_usage, body_bytes, RequestView("m")
    )


def test_an_older_agent_is_asked_for_usage_by_the_router_and_its_usage_chunk_dropped() -> None:
    incoming = _incoming({"model": "m", "stream": True, "messages": []})
    current, older = WorkerHandle("a:1"), WorkerHandle("b:1")
    current.info = pb.InfoReply(settles_stream_options=True)
    older.info = pb.InfoReply()
    assert _settled_here(current, incoming) is None  # the client's bytes, unchanged
    request = _settled_here(older, incoming)
    assert request is not None and json.loads(request.body)["stream_options"] == {"include_usage": True}
    assert request.stream and request.request_id == "r1"
    assert _settled_here(older, _incoming({"stream": True}, wants_usage=True)) is None  # asked for it itself
    chunks = pb.Chunks(items=[b'{"choices":[{"delta":{"content":"a"}}]}', b'{"choices":[],"usage":{"total_tokens":3}}'])
    assert frames(chunks, usage_chunk=False, drop_usage=True) == (
        b'data: {"choices":[{"delta":{"content":"a"}}]}\n\n',
        1,
    )
    assert frames(chunks, usage_chunk=True)[1] == 1 and frames(chunks, usage_chunk=False)[1] == 2
