"""Relaying one OpenAI request to the engine's local server, chunk by chunk.

Each request gets its own HTTP stream; closing the iterator (gRPC cancel) closes that stream, which makes
the engine abort the request.

Stream options are settled here, once (settle_stream_options): every OpenAI stream asks the engine for usage at
the end, and where the engine can report running token counts (vLLM's `stream_options.continuous_usage_stats`)
for those too, so that a stream cut short is still billed as the engine counted. What the client did not ask
for itself is taken out of the payloads again; the counts still reach the router, in the Final message.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx

DONE = b"[DONE]"


class EngineError(Exception):
    """The engine answered with an HTTP error; `body` is its (OpenAI-shaped) error JSON."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"engine answered HTTP {status}")
        self.status = status
        self.body = body


@dataclass
class Tally:
    """What the relay learned on the way: usage (running, then final) and finish reason for the Final message.

    `strip_running`, `strip_final`: the agent asked the engine for running counts, or the usage-only chunk at
    the end, that the client did not ask for; they are read here and removed before the payloads travel on."""

    usage: dict[str, Any] = field(default_factory=dict)
    finish_reason: str = ""
    tokens_seen: bool = False
    running: bool = False  # the engine reports running counts on this stream (asked for by the agent)
    strip_running: bool = False
    strip_final: bool = False
    first_at: float = 0.0  # monotonic time the first batch went on (0: none did)

    def observe(self, payload: dict[str, Any]) -> None:
        # Usage is on the payload (OpenAI's chunks, whole answers, Anthropic's message_delta), on its message
        # (Anthropic's message_start) or on its response (the Responses API's response.completed).
        for holder in (payload, payload.get("message"), payload.get("response")):
            if isinstance(holder, dict) and isinstance(holder.get("usage"), dict):
                self.usage = {**self.usage, **holder["usage"]}
        delta = payload.get("delta")
        for holder in (payload, delta if isinstance(delta, dict) else None):
            if holder and isinstance(holder.get("stop_reason"), str):  # Anthropic's finish reason
                self.finish_reason = holder["stop_reason"]
        for choice in payload.get("choices") or ():
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
            delta = choice.get("delta") or {}
            if choice.get("text") or delta.get("content") or delta.get("tool_calls") or choice.get("message"):
                self.tokens_seen = True


async def stream_batches(
    client: httpx.AsyncClient, url: str, body: bytes, tally: Tally
) -> AsyncGenerator[list[Frame], None]:
    """Yield the engine's SSE events (name and `data:` payload, unchanged) until `[DONE]` or the end of the
    body: one list of everything that arrived while the last one was being forwarded.

    So an agent behind its engine (its host busy, or the router's flow control holding its sends back) sends
    several tokens as one gRPC message, which the router writes to its client at once; a lone token leaves without
    waiting (one more step of the event loop: the reader's). It takes a reader ahead because the HTTP client hands
    over one chunk of the engine's chunked body at a time, even when many came in one network read."""
    headers = {"content-type": "application/json", "accept": "text/event-stream"}
    async with client.stream("POST", url, content=body, headers=headers) as response:
        if response.status_code != 200:
            raise EngineError(response.status_code, await response.aread())
        events = SseSplitter()
        async with ReadAhead(response.aiter_raw()) as ahead:
            while (raw := await ahead.take()) is not None:
                batch, done = events.feed(raw)
                batch = [(name, kept) for name, payload in batch if (kept := _observe(payload, tally)) is not None]
                if batch:
                    yield batch
                if done:
                    return


class ReadAhead:
    """Reads a byte stream ahead of its consumer, up to `max_bytes`: `take()` returns everything read since the
    last take (None at the end; the reader's error is raised there). Past `max_bytes` the reader waits, and the
    engine meets TCP's back-pressure as it did without it."""

    def __init__(self, source: AsyncIterator[bytes], max_bytes: int = 256 * 1024) -> None:
        self.source, self.max_bytes = source, max_bytes
        self.pieces: list[bytes] = []
        self.size, self.ended = 0, False
        self.error: Exception | None = None
        self.arrived, self.room = asyncio.Event(), asyncio.Event()
        self.room.set()

    async def __aenter__(self) -> ReadAhead:
        self.reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.reader.cancel()  # the consumer left (cancelled, or done): the read in flight ends here
        await asyncio.wait({self.reader})  # not `await self.reader`: its CancelledError is not ours to swallow

    async def _read(self) -> None:
        try:
            async for raw in self.source:
                self.pieces.append(raw)
                self.size += len(raw)
                self.arrived.set()
                if self.size >= self.max_bytes:
                    self.room.clear()
                    await self.room.wait()
        except Exception as exc:  # the consumer's to handle, at its next take
            self.error = exc
        except BaseException:  # cancelled, but not by the consumer's exit: a cut stream, never a normal end
            self.error = httpx.ReadError("reading the engine's stream was stopped")
            raise
        finally:
            self.ended = True
            self.arrived.set()

    async def take(self) -> bytes | None:
        await self.arrived.wait()
        if self.pieces:
            raw = self.pieces[0] if len(self.pieces) == 1 else b"".join(self.pieces)
            self.pieces.clear()
            self.size = 0
            self.room.set()
            if not self.ended:
                self.arrived.clear()
            return raw
        if self.error is not None:
            raise self.error
        return None


Frame = tuple[str, bytes]  # (the event's name, "" when unnamed; its data payload)


class SseSplitter:
    """Bytes in, complete events out as frames (events end with a blank line; CRLF tolerated)."""

    def __init__(self, max_pending: int = 16 * 1024 * 1024) -> None:
        self.pending = b""
        self.max_pending = max_pending

    def feed(self, raw: bytes) -> tuple[list[Frame], bool]:
        """(frames completed by this read, whether `[DONE]` arrived)."""
        self.pending += raw.replace(b"\r\n", b"\n") if b"\r" in raw else raw
        *events, self.pending = self.pending.split(b"\n\n")
        if len(self.pending) > self.max_pending:
            raise EngineError(502, b'{"error": {"message": "the engine sent an oversized event"}}')
        frames: list[Frame] = []
        for event in events:
            name = ""
            for line in event.split(b"\n"):
                if line.startswith(b"event:"):
                    name = line[6:].strip().decode(errors="replace")
                elif line.startswith(b"data:"):  # comments and other fields are not relayed
                    payload = line[5:].strip()
                    if payload == DONE:
                        return frames, True
                    frames.append((name, payload))
        return frames, False


def _observe(payload: bytes, tally: Tally) -> bytes | None:
    """Note what the payload says; return it unchanged, or without what the client did not ask for (a running
    count: the payload without it; the usage-only chunk: None)."""
    if not _worth_parsing(payload):
        tally.tokens_seen = True  # a plain delta chunk: text arrived
        return payload
    if tally.running and (kept := _running_count(payload, tally)) is not None:
        return kept
    try:
        chunk = json.loads(payload)
        tally.observe(chunk)
    except (ValueError, AttributeError):
        return payload  # not ours to judge: pass it on unchanged
    if tally.strip_final and not chunk.get("choices") and chunk.get("usage") is not None:
        return None
    if tally.strip_running and chunk.get("choices") and "usage" in chunk:
        del chunk["usage"]  # a running count; the final usage-only chunk (no choices) stays
        return json.dumps(chunk, separators=(",", ":"), ensure_ascii=False).encode()
    return payload


def settle_stream_options(body: dict[str, Any], running: bool) -> tuple[bool, bool]:
    """Ask the engine (in place) for usage at the end of this stream and, with `running`, for running counts;
    (strip_running, strip_final): whether the client had not asked for each itself."""
    options = body.get("stream_options")
    options = dict(options) if isinstance(options, dict) else {}
    final = bool(options.get("include_usage"))
    asked_running = final and bool(options.get("continuous_usage_stats"))
    body["stream_options"] = {**options, "include_usage": True, **({"continuous_usage_stats": True} if running else {})}
    return running and not asked_running, not final


# A running count as vLLM and the sim write it: a flat member after the chunk's id. Quotes inside JSON strings are
# escaped, so generated text cannot look like it.
_RUNNING_USAGE = re.compile(rb',\s*"usage":\s*(\{[^{}]*\})')
_NO_CHOICES = re.compile(rb'"choices":\s*\[\s*\]')


def _running_count(payload: bytes, tally: Tally) -> bytes | None:
    """The common chunk of a stream with running counts, a delta whose count is its only reason to be parsed,
    without parsing it: the count noted, the payload to send on (the engine's bytes, without the count when the
    client did not ask for it). None for any other chunk (the usage-only one, a finish reason): parse it whole."""
    found = _RUNNING_USAGE.search(payload)
    if found is None:
        return None
    rest = payload[: found.start()] + payload[found.end() :]
    if b'"choices":' not in rest or _NO_CHOICES.search(rest) or _worth_parsing(rest):
        return None
    try:
        usage = json.loads(found.group(1))
    except ValueError:
        return None
    tally.usage = {**tally.usage, **usage}
    tally.tokens_seen = True
    return rest if tally.strip_running else payload


def _worth_parsing(payload: bytes) -> bool:
    """Only chunks that may carry usage or a finish reason need JSON parsing. With running counts (vLLM, the
    sim) that is every chunk; mlx-lm's plain deltas still skip it."""
    return b'"usage"' in payload or b'"finish_reason":"' in payload or b'"finish_reason": "' in payload


async def whole_response(client: httpx.AsyncClient, method: str, url: str, body: bytes, tally: Tally) -> bytes:
    if method == "GET":  # a retrieval: what to get is in the URL
        response = await client.get(url)
    else:
        response = await client.post(url, content=body, headers={"content-type": "application/json"})
    if response.status_code != 200:
        raise EngineError(response.status_code, response.content)
    try:
        tally.observe(response.json())
    except ValueError:
        pass
    return response.content
