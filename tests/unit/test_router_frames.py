"""How the router writes a batch the agent relayed: SSE events, in order, byte for byte."""

from __future__ import annotations

from cluster.router.forwarding import frames
from proto import orchard_pb2 as pb


def test_the_router_frames_a_batch_as_sse_one_event_per_chunk_in_order() -> None:
    """One chunk (the common batch, framed on a short path) and several frame alike; named events keep names."""
    one, two = b'{"choices":[{"delta":{"content":"a"}}]}', b'{"choices":[{"delta":{"content":"b"}}]}'
    assert frames(pb.Chunks(items=[one]), usage_chunk=False) == (b"data: " + one + b"\n\n", 1)
    assert frames(pb.Chunks(items=[one, two]), usage_chunk=False) == (
        b"data: " + one + b"\n\ndata: " + two + b"\n\n",
        2,
    )
    named = pb.Chunks(items=[b"{}", b"{}"], events=["message_start", "content_block_delta"])
    assert frames(named, usage_chunk=False) == (
        b"event: message_start\ndata: {}\n\nevent: content_block_delta\ndata: {}\n\n",
        1,
    )
