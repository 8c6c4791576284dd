"""A tapped stream's tokens written straight to its client. While a stream's relay waits for its next reply with
nothing queued, the chunks the agent's tap brings for it are framed and written to the client's connection as the
tap sorts them (one write for all of the request's in one tap message), without waking the relay or passing the
ASGI middleware: for one token that wake-up and the ASGI path cost more than the socket write itself.

Anything else takes the relay's path: the first reply, the end, errors, and any chunk while the connection cannot
take data now (a client reading slowly; `send` then waits for it). Order holds because the relay waits only after
writing all it took, and resumes only after the tap's writes of that message. It applies only where the body goes
out as the relay made it: the router's middleware look at a response's start, never its body, and a route that
rewrites the frames (Ollama's) replaces the body iterator, which turns it off."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from cluster.router.connections import BodyWriter, body_writer
from proto import orchard_pb2 as pb


@dataclass
class Outlet:
    """Where a relay may write straight to its client: set when the response goes out as the relay made it."""

    writer: BodyWriter | None = None


class RelayResponse(StreamingResponse):
    """A relayed stream's response: while its body is still the relay's own frames, it gives the relay the
    connection's BodyWriter."""

    def __init__(self, relay: AsyncIterator[bytes], outlet: Outlet, **kwargs: Any) -> None:
        super().__init__(relay, media_type="text/event-stream", **kwargs)
        self.relay, self.outlet = relay, outlet

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.body_iterator is self.relay:
            self.outlet.writer = body_writer(scope)
        await super().__call__(scope, receive, send)


class PassThrough:
    """A tapped request's sink (tap.Inbox.sink): takes chunk replies while the connection takes data now, framed
    by the relay's `frames` (which counts them), and tells the relay's reads it `heard` their size."""

    def __init__(self, frames: Callable[[pb.Chunks], bytes], writer: BodyWriter, heard: Callable[[int], None]) -> None:
        self.frames, self.writer, self.heard = frames, writer, heard

    def take(self, part: pb.TapPart, size: int) -> bytes | None:
        """The part's bytes to write once the tap's message is sorted; None: the relay's to take."""
        if part.end or not part.reply.HasField("chunks") or not self.writer.ready():
            return None
        framed = self.frames(part.reply.chunks)
        self.heard(size)
        return framed

    def write(self, data: bytes) -> None:
        self.writer.write(data)
