"""An agent's tap (worker/tap.py, cluster/router/tap.py): the replies after the first of streamed requests come
on one stream per router connection, tokens of different requests in one message when the engine made them
together; each request keeps its own window, so a client that does not read holds back only its own request.
A real agent and sim engine (lockstep decoding, as continuous batching), real gRPC; and through a router."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest

from cluster.bringup.fleet import Fleet
from proto import orchard_pb2 as pb
from proto import orchard_pb2_grpc as pb_grpc
from tests.conftest import SIM_MODEL, agent_config, start_cluster, stop_cluster, wait_until
from worker.shared.launch import AgentConfig

OPTIONS = (("decode-ms-per-token", "20"), ("lockstep", "1"), ("overhead-ms", "1"), ("seed", "3"))


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[AgentConfig, pb_grpc.WorkerStub]]:
    tmp = tmp_path_factory.mktemp("tap")
    fleet = Fleet(tmp / "logs")
    config = agent_config("sim", SIM_MODEL, tmp / "logs", sim_options=OPTIONS)
    try:
        fleet.start_agent(config, name="agent")
        stub = pb_grpc.WorkerStub(grpc.insecure_channel(config.listen))
        wait_until(lambda: _ready(stub), 60, "the agent's engine is ready")
        yield config, stub
    finally:
        fleet.stop()


def _ready(stub: pb_grpc.WorkerStub) -> bool:
    try:
        sample = next(iter(stub.Watch(pb.WatchRequest(interval_seconds=0.1), timeout=5)))
    except grpc.RpcError:
        return False
    return bool(sample.state == pb.ENGINE_STATE_READY)


def _generate(request_id: str, tokens: int, tap_id: str = "") -> pb.GenerateRequest:
    body = {
        "model": SIM_MODEL,
        "stream": True,
        "max_tokens": tokens,
        "temperature": 0,
        "messages": [{"role": "user", "content": f"tell me about {request_id[-1]}"}],
    }
    return pb.GenerateRequest(
        request_id=request_id,
        endpoint=pb.ENDPOINT_CHAT_COMPLETIONS,
        body=json.dumps(body).encode(),
        stream=True,
        tap_id=tap_id,
        tap_key=request_id,
    )


def _text(replies: list[pb.GenerateReply]) -> str:
    words = []
    for reply in replies:
        for item in reply.chunks.items:
            chunk = json.loads(item)
            words += [c["delta"].get("content") or "" for c in chunk.get("choices", [])]
    return "".join(words)


class TapReader:
    """Reads a tap on a thread: every batch, and each request's parts in order."""

    def __init__(self, stub: pb_grpc.WorkerStub, tap_id: str, window: int) -> None:
        self.call = stub.Tap(pb.TapRequest(tap_id=tap_id, window_bytes=window))
        self.batches: list[pb.TapBatch] = []
        self.parts: dict[str, list[pb.TapPart]] = {}
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            for batch in self.call:
                self.batches.append(batch)
                for part in batch.parts:
                    self.parts.setdefault(part.key, []).append(part)
        except grpc.RpcError:
            pass

    def ended(self, request_id: str) -> bool:
        return any(p.end for p in self.parts.get(request_id, []))

    def close(self) -> None:
        self.call.cancel()
        self.thread.join(5)


def test_requests_continue_on_the_tap_together_and_say_the_same_as_on_their_own_calls(
    agent: tuple[AgentConfig, pb_grpc.WorkerStub],
) -> None:
    _, stub = agent
    alone = {f"alone-{i}": list(stub.Generate(_generate(f"alone-{i}", 24), timeout=30)) for i in range(4)}
    assert all(not r.rest_on_tap for replies in alone.values() for r in replies)  # no tap named: all on the call
    tap = TapReader(stub, "tap-1", 256 * 1024)
    time.sleep(0.3)  # the tap is open at the agent
    calls = {f"tapped-{i}": stub.Generate(_generate(f"tapped-{i}", 24, "tap-1"), timeout=30) for i in range(4)}
    on_calls = {rid: list(call) for rid, call in calls.items()}  # each call ends (OK) after its end part
    wait_until(lambda: all(tap.ended(rid) for rid in calls), 10, "every request's end part")
    tap.close()
    for i, (rid, replies) in enumerate(on_calls.items()):
        assert len(replies) == 1 and replies[0].rest_on_tap  # the first reply only
        parts = tap.parts[rid]
        assert parts[-1].end and not any(p.end for p in parts[:-1])
        rest = [p.reply for p in parts[:-1]]
        assert rest[-1].HasField("final") and rest[-1].final.usage.completion_tokens == 24
        assert _text(replies + rest) == _text(alone[f"alone-{i}"])  # the same words, in order
    mixed = [b for b in tap.batches if len({p.key for p in b.parts}) > 1]
    assert mixed, "tokens of different requests made in one step travel in one message"


def test_a_request_whose_reader_stops_is_held_at_its_window_and_the_others_go_on(
    agent: tuple[AgentConfig, pb_grpc.WorkerStub],
) -> None:
    _, stub = agent
    tap = TapReader(stub, "tap-2", 16 * 1024)  # the smallest window an agent takes
    time.sleep(0.3)
    slow = stub.Generate(_generate("slow-1", 400, "tap-2"), timeout=60)  # ~80 KB of chunks with running usage
    fast = stub.Generate(_generate("fast-2", 40, "tap-2"), timeout=60)
    assert next(iter(fast)).rest_on_tap
    wait_until(lambda: tap.ended("fast-2"), 20, "the other request ends while the slow one waits")
    time.sleep(1.0)  # the slow request has had time to make many more tokens than its window
    held = sum(p.reply.ByteSize() for p in tap.parts["slow-1"])
    assert 16 * 1024 <= held < 2 * 16 * 1024 and not tap.ended("slow-1")  # its window and the batch crossing it
    credited = 0
    while not tap.ended("slow-1"):  # the router's writes: credit what arrived
        now = sum(p.reply.ByteSize() for p in tap.parts["slow-1"])
        stub.Credit(pb.CreditRequest(tap_id="tap-2", key="slow-1", bytes=now - credited), timeout=5)
        credited = now
        time.sleep(0.05)
    assert next(iter(slow)).rest_on_tap
    assert tap.parts["slow-1"][-2].reply.final.usage.completion_tokens == 400
    tap.close()


def test_a_generate_naming_a_tap_that_is_not_open_replies_on_its_call(
    agent: tuple[AgentConfig, pb_grpc.WorkerStub],
) -> None:
    _, stub = agent
    replies = list(stub.Generate(_generate("lost-1", 8, "no-such-tap"), timeout=30))
    assert not any(r.rest_on_tap for r in replies) and replies[-1].final.usage.completion_tokens == 8


def test_streams_through_a_router_come_whole_over_taps(tmp_path: Path) -> None:
    """The router reads requests' replies on each agent's tap: concurrent streams come whole, two with the same
    client request id each get their own, one longer than its window flows on as the router acknowledges what it
    wrote, and a client that leaves ends its request at the agent."""
    fast = (("decode-ms-per-token", "2"), ("lockstep", "1"), ("overhead-ms", "1"), ("seed", "3"))
    agents = [agent_config("sim", SIM_MODEL, tmp_path / "logs", sim_options=fast) for _ in range(2)]
    cluster = start_cluster(tmp_path, agents, policy="round_robin")
    try:
        url = cluster.router.local_url + "/v1/chat/completions"

        def stream(prompt: str, tokens: int, request_id: str = "") -> list[str]:
            body = {"model": SIM_MODEL, "stream": True, "max_tokens": tokens, "temperature": 0}
            body["messages"] = [{"role": "user", "content": prompt}]
            headers = {"x-request-id": request_id} if request_id else {}
            with httpx.stream("POST", url, json=body, headers=headers, timeout=60) as response:
                assert response.status_code == 200
                lines = [line for line in response.iter_lines() if line.startswith("data: ")]
            assert lines[-1] == "data: [DONE]"
            chunks = [json.loads(line[6:]) for line in lines[:-1]]
            assert all(c.get("usage") is None for c in chunks)  # nobody asked for it
            return [c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices")]

        def together(asks: list[tuple[str, int, str]]) -> list[list[str]]:
            results: dict[int, list[str]] = {}
            threads = [
                threading.Thread(target=lambda i=i, a=a: results.__setitem__(i, stream(*a))) for i, a in enumerate(asks)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(60)
            return [results[i] for i in range(len(asks))]

        for words in together([(f"q{i}", 48, "") for i in range(8)]):
            assert sum(1 for w in words if w) == 48
        twins = together([("the first", 64, "same-id"), ("the second", 64, "same-id")])  # one client id, twice
        assert twins[0] == stream("the first", 64) and twins[1] == stream("the second", 64) and twins[0] != twins[1]
        long = stream("a long one", 3000)  # ~600 KB of chunks: more than two windows of 256 KiB
        assert sum(1 for w in long if w) == 3000
        metrics = httpx.get(cluster.router.local_url + "/metrics", timeout=10).text
        assert "orchard_tapped_streams_total 13.0" in metrics  # every one came over a tap
        body = {"model": SIM_MODEL, "stream": True, "max_tokens": 20000, "messages": [{"role": "user", "content": "x"}]}
        with httpx.stream("POST", url, json=body, timeout=60) as response:
            next(response.iter_lines())  # the first chunk came; then the client leaves
        stubs = [pb_grpc.WorkerStub(grpc.insecure_channel(a.listen)) for a in agents]
        wait_until(
            lambda: all(next(iter(s.Watch(pb.WatchRequest(), timeout=5))).agent_inflight == 0 for s in stubs),
            10,
            "no request left in flight at the agents",
        )
    finally:
        stop_cluster(cluster)
