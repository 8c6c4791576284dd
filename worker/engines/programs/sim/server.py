"""The `sim` engine: a small OpenAI-compatible server whose answers cost time like a real engine's.

Run: python -m worker.engines.programs.sim --port P --model NAME [--seed S --decode-ms ...]. It exposes the load
metrics that vLLM exposes (same names on /metrics), so the agent scrapes both the same way.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from worker.engines.programs.sim.prefix_cache import PrefixCache
from worker.engines.programs.sim.timing import generate_words, render_chat, tokenize
from worker.shared.endpoints import RESET_PREFIX_CACHE
from worker.shared.simtiming import SimTiming

DEFAULT_MAX_TOKENS = 64
MAX_MODEL_LEN = 8192


@dataclass
class SimState:
    """Live counters of one sim engine; one per app, injected (no module globals)."""

    model: str
    timing: SimTiming
    seed: int
    stamp_chunks: bool = False  # add "orchard_sent_ns" (wall clock) to every streamed chunk, for latency studies
    hang_after_tokens: int = 0  # fault injection: every request stops advancing after this many (0: never)
    lockstep: bool = False  # one decode step for every running sequence at once, as continuous batching takes them
    running: int = 0
    waiting: int = 0
    slots: asyncio.Semaphore = field(init=False)
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        self.slots = asyncio.Semaphore(self.timing.max_concurrency)
        self.cache = PrefixCache(self.timing.kv_blocks)
        self.prefill_unit = asyncio.Lock()  # one compute unit: prefills queue behind each other
        self.step: asyncio.Future[None] | None = None  # lockstep: the decode step under way
        labels = ["model_name"]
        self.g_running = Gauge("vllm:num_requests_running", "running", labels, registry=self.registry)
        self.g_waiting = Gauge("vllm:num_requests_waiting", "waiting", labels, registry=self.registry)
        self.g_kv = Gauge("vllm:kv_cache_usage_perc", "kv use", labels, registry=self.registry)
        self.c_prompt = Counter("vllm:prompt_tokens", "prompt tokens", labels, registry=self.registry)
        self.c_gen = Counter("vllm:generation_tokens", "gen tokens", labels, registry=self.registry)
        self.c_pq = Counter("vllm:prefix_cache_queries", "prefix queries", labels, registry=self.registry)
        self.c_ph = Counter("vllm:prefix_cache_hits", "prefix hits", labels, registry=self.registry)
        self.h_prefill = Histogram("vllm:request_prefill_time_seconds", "prefill time", labels, registry=self.registry)
        self.h_decode = Histogram("vllm:request_decode_time_seconds", "decode time", labels, registry=self.registry)
        metrics = (self.g_running, self.g_waiting, self.g_kv, self.c_prompt, self.c_gen, self.c_pq, self.c_ph)
        for metric in (*metrics, self.h_prefill, self.h_decode):
            metric.labels(self.model)

    def publish(self) -> None:
        self.g_running.labels(self.model).set(self.running)
        self.g_waiting.labels(self.model).set(self.waiting)
        capacity = max(self.timing.kv_blocks, 1)
        self.g_kv.labels(self.model).set(min(1.0, len(self.cache) / capacity))


def _error(status: int, message: str, param: str | None = None) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "server_error"
    body = {"error": {"message": message, "type": kind, "param": param, "code": status}}
    return JSONResponse(body, status_code=status)


@dataclass(frozen=True)
class _Job:
    """One parsed request: what the sim needs to time and answer it."""

    rid: str
    kind: str  # "chat" or "text"
    prompt: str
    max_tokens: int
    temperature: float
    stream: bool
    include_usage: bool
    running_usage: bool  # vLLM's stream_options.continuous_usage_stats: usage in every chunk


def _parse_job(body: dict[str, Any], chat: bool) -> _Job:
    if chat:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise ValueError("'messages' must be a non-empty list")
        prompt = render_chat(messages)
    else:
        raw = body.get("prompt")
        prompt = raw if isinstance(raw, str) else " ".join(map(str, raw or []))
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens") or DEFAULT_MAX_TOKENS
    if not isinstance(max_tokens, int) or max_tokens < 1:
        raise ValueError("'max_tokens' must be a positive integer")
    temperature = body.get("temperature")
    options = body.get("stream_options") or {}
    return _Job(
        rid=("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex,
        kind="chat" if chat else "text",
        prompt=prompt,
        max_tokens=max_tokens,
        temperature=1.0 if temperature is None else float(temperature),
        stream=bool(body.get("stream")),
        include_usage=bool(options.get("include_usage")),
        running_usage=bool(options.get("include_usage") and options.get("continuous_usage_stats")),
    )


def create_app(state: SimState) -> FastAPI:
    app = FastAPI(title="orchard sim engine")

    @app.get("/health")
    async def health() -> PlainTextResponse:
        return PlainTextResponse("")

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        state.publish()
        return PlainTextResponse(generate_latest(state.registry).decode())

    @app.post(RESET_PREFIX_CACHE)
    async def reset_prefix_cache() -> PlainTextResponse:
        """Empty the prefix cache (vLLM has the same endpoint in its dev mode); benchmarks use it between runs."""
        state.cache.clear()
        return PlainTextResponse("")

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        card = {"id": state.model, "object": "model", "owned_by": "orchard-sim", "max_model_len": MAX_MODEL_LEN}
        return {"object": "list", "data": [card]}

    @app.post("/v1/chat/completions", response_model=None)
    async def chat(request: Request) -> JSONResponse | StreamingResponse:
        return await _serve(request, chat=True)

    @app.post("/v1/completions", response_model=None)
    async def completions(request: Request) -> JSONResponse | StreamingResponse:
        return await _serve(request, chat=False)

    async def _serve(request: Request, chat: bool) -> JSONResponse | StreamingResponse:
        try:
            body = json.loads(await request.body())
            if not isinstance(body, dict):
                raise ValueError("the body must be a JSON object")
            job = _parse_job(body, chat)
        except (ValueError, TypeError) as exc:
            return _error(400, str(exc))
        if body.get("model") != state.model:
            return _error(404, f"The model `{body.get('model')}` does not exist.", "model")
        if job.stream:
            return StreamingResponse(_stream(state, job), media_type="text/event-stream")
        words: list[str] = []

        async def run() -> None:
            words.extend([word async for word in _run(state, job)])

        task = asyncio.ensure_future(run())
        while not (await asyncio.wait({task}, timeout=0.25))[0]:
            if await request.is_disconnected():  # as vLLM does: a client that left frees its slot
                task.cancel()
                return _error(499, "the client closed the connection")
        await task
        return JSONResponse(_full_response(state, job, words))

    return app


async def _decode_step(state: SimState) -> None:
    """One decode step: the sequence's own, or (lockstep) the engine's next one, which every running sequence
    shares: a real engine emits their tokens together, and what relays them sees them come together."""
    seconds = state.timing.decode_seconds(state.running)
    if not state.lockstep:
        await asyncio.sleep(seconds)
        return
    step = state.step
    if step is None or step.done():
        loop = asyncio.get_running_loop()
        step = state.step = loop.create_future()
        loop.call_later(seconds, _end_step, step)
    await asyncio.shield(step)  # a cancelled sequence leaves the step to the others


def _end_step(step: asyncio.Future[None]) -> None:
    if not step.done():
        step.set_result(None)


async def _run(state: SimState, job: _Job) -> AsyncIterator[str]:
    """Wait for a slot, pay the prefill, then yield one word per decode step. Cancellation-safe."""
    prompt_tokens = tokenize(job.prompt)
    state.waiting += 1
    try:
        await state.slots.acquire()
    finally:
        state.waiting -= 1
    state.running += 1
    try:
        cached = state.cache.lookup_and_insert(prompt_tokens)
        state.c_prompt.labels(state.model).inc(len(prompt_tokens))
        state.c_pq.labels(state.model).inc(len(prompt_tokens))
        state.c_ph.labels(state.model).inc(cached)
        async with state.prefill_unit:
            began = time.perf_counter()
            await asyncio.sleep(state.timing.prefill_seconds(len(prompt_tokens) - cached))
            state.h_prefill.labels(state.model).observe(time.perf_counter() - began)
        words = generate_words(job.prompt, job.max_tokens, state.seed, job.temperature)
        first_token_at = time.perf_counter()
        try:
            for index, word in enumerate(words):
                if index:
                    await _decode_step(state)
                if state.hang_after_tokens and index >= state.hang_after_tokens:
                    await asyncio.Event().wait()  # hung as a lost collective peer leaves it; /health still answers
                state.c_gen.labels(state.model).inc()
                yield word if index == 0 else " " + word
        finally:
            state.h_decode.labels(state.model).observe(time.perf_counter() - first_token_at)
    finally:
        state.running -= 1
        state.slots.release()


def _usage(job: _Job, completion_tokens: int) -> dict[str, int]:
    prompt_tokens = len(tokenize(job.prompt))
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _full_response(state: SimState, job: _Job, words: list[str]) -> dict[str, Any]:
    text = "".join(words)
    if job.kind == "chat":
        choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": text}}
        obj = "chat.completion"
    else:
        choice = {"index": 0, "text": text, "logprobs": None}
        obj = "text_completion"
    choice["finish_reason"] = "length"
    return {
        "id": job.rid,
        "object": obj,
        "created": int(time.time()),
        "model": state.model,
        "choices": [choice],
        "usage": _usage(job, len(words)),
    }


async def _stream(state: SimState, job: _Job) -> AsyncIterator[bytes]:
    obj = "chat.completion.chunk" if job.kind == "chat" else "text_completion"
    created = int(time.time())

    def frame(choices: list[dict[str, Any]], usage: dict[str, int] | None = None) -> bytes:
        chunk: dict[str, Any] = {"id": job.rid, "object": obj, "created": created, "model": state.model}
        chunk["choices"] = choices
        if usage is not None:
            chunk["usage"] = usage
        if state.stamp_chunks:
            chunk["orchard_sent_ns"] = time.time_ns()
        return b"data: " + json.dumps(chunk).encode() + b"\n\n"

    def choice(text: str, finish: str | None) -> dict[str, Any]:
        if job.kind == "chat":
            return {"index": 0, "delta": {"content": text}, "finish_reason": finish}
        return {"index": 0, "text": text, "finish_reason": finish}

    def running(count: int) -> dict[str, int] | None:
        return _usage(job, count) if job.running_usage else None

    if job.kind == "chat":
        yield frame([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}], running(0))
    count = 0
    async for word in _run(state, job):
        count += 1
        yield frame([choice(word, None)], running(count))
    yield frame([choice("", "length")], running(count))
    if job.include_usage:
        yield frame([], _usage(job, count))
    yield b"data: [DONE]\n\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m worker.engines.programs.sim", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--seed", type=int, default=0)
    defaults = SimTiming()
    parser.add_argument("--overhead-ms", type=float, default=defaults.overhead_ms)
    parser.add_argument("--prefill-ms-per-token", type=float, default=defaults.prefill_ms_per_token)
    parser.add_argument("--decode-ms-per-token", type=float, default=defaults.decode_ms_per_token)
    parser.add_argument("--batch-slowdown", type=float, default=defaults.batch_slowdown)
    parser.add_argument("--max-concurrency", type=int, default=defaults.max_concurrency)
    parser.add_argument("--kv-blocks", type=int, default=defaults.kv_blocks, help="prefix-cache blocks (16 tokens)")
    parser.add_argument("--stamp-chunks", type=int, choices=(0, 1), default=0, help="1: send time in every chunk")
    parser.add_argument("--hang-after-tokens", type=int, default=0, help="fault injection: hang every request there")
    parser.add_argument("--lockstep", type=int, choices=(0, 1), default=0, help="1: one decode step for all running")
    args = parser.parse_args(argv)
    timing = SimTiming(
        overhead_ms=args.overhead_ms,
        prefill_ms_per_token=args.prefill_ms_per_token,
        decode_ms_per_token=args.decode_ms_per_token,
        batch_slowdown=args.batch_slowdown,
        max_concurrency=args.max_concurrency,
        kv_blocks=args.kv_blocks,
    )
    app = create_app(
        SimState(
            model=args.model,
            timing=timing,
            seed=args.seed,
            stamp_chunks=bool(args.stamp_chunks),
            hang_after_tokens=args.hang_after_tokens,
            lockstep=bool(args.lockstep),
        )
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
