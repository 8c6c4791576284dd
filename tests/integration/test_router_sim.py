"""Router + agent + sim engine as real processes on loopback: the request path, errors, cancellation,
engine restarts. The sim engine's text is not checked for meaning here; the vLLM tests do that."""

from __future__ import annotations

import collections
import json
import os
import resource
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from cluster.bringup.fleet import Fleet
from cluster.pki import authority
from cluster.router.connections import UNUSED_GRACE_S
from tests.conftest import SIM_MODEL, Cluster, engine_metric, free_port, wait_until, workers
from worker.shared.launch import RouterConfig


@pytest.fixture
def client(sim_cluster: Cluster) -> openai.OpenAI:
    return openai.OpenAI(base_url=sim_cluster.url + "/v1", api_key="unused", max_retries=0)


def test_models_lists_the_served_model(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list().data] == [SIM_MODEL]


def test_context_length_is_learned_from_the_engine(sim_cluster: Cluster) -> None:
    """The agent was given no --max-model-len: it asks the engine once ready, and the router enforces it."""
    cards = httpx.get(sim_cluster.url + "/v1/models", timeout=10).json()["data"]
    assert cards[0]["max_model_len"] == 8192  # the sim engine's own limit
    body = {"model": SIM_MODEL, "prompt": "hi", "max_tokens": 8193}
    response = httpx.post(sim_cluster.url + "/v1/completions", json=body, timeout=10)
    assert response.status_code == 400 and "8192" in response.json()["error"]["message"]


def test_stream_concatenation_equals_whole_answer_at_temperature_zero(client: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": "Tell me about apples."}]
    whole = client.chat.completions.create(model=SIM_MODEL, messages=messages, temperature=0, max_tokens=20)
    stream = client.chat.completions.create(
        model=SIM_MODEL,
        messages=messages,
        temperature=0,
        max_tokens=20,
        stream=True,
    )
    pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert len(pieces) > 5
    assert "".join(pieces) == whole.choices[0].message.content
    assert whole.usage is not None and whole.usage.completion_tokens == 20 and whole.usage.prompt_tokens > 0


def test_stream_usage_only_when_asked(sim_cluster: Cluster) -> None:
    body = {"model": SIM_MODEL, "prompt": "one two three", "max_tokens": 3, "stream": True}

    def usage_chunks(extra: dict[str, object]) -> list[dict[str, object]]:
        with httpx.stream("POST", sim_cluster.url + "/v1/completions", json={**body, **extra}, timeout=30) as r:
            lines = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
        assert lines[-1] == "[DONE]"
        return [c for c in map(json.loads, lines[:-1]) if c.get("usage")]

    assert usage_chunks({}) == []
    asked = usage_chunks({"stream_options": {"include_usage": True}})
    assert len(asked) == 1 and asked[0]["usage"]["completion_tokens"] == 3


def test_response_names_the_worker(sim_cluster: Cluster) -> None:
    body = {"model": SIM_MODEL, "prompt": "hi", "max_tokens": 2}
    response = httpx.post(sim_cluster.url + "/v1/completions", json=body, timeout=30)
    assert response.status_code == 200
    assert response.headers["x-orchard-worker"]


BAD_REQUESTS = [
    ("malformed JSON", b'{"model": "sim-model", "messages": [', 400, None),
    ("missing messages", json.dumps({"model": SIM_MODEL}).encode(), 400, "messages"),
    ("empty messages", json.dumps({"model": SIM_MODEL, "messages": []}).encode(), 400, "messages"),
    ("bad role", json.dumps({"model": SIM_MODEL, "messages": [{"role": "x", "content": "hi"}]}).encode(), 400, None),
    (
        "unknown model",
        json.dumps({"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]}).encode(),
        404,
        "model",
    ),
    (
        "max_tokens -1",
        json.dumps({"model": SIM_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": -1}).encode(),
        400,
        "max_tokens",
    ),
    (
        "max_tokens 10^9",
        json.dumps({"model": SIM_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10**9}).encode(),
        400,
        "max_tokens",
    ),
    (
        "temperature 7",
        json.dumps({"model": SIM_MODEL, "messages": [{"role": "user", "content": "hi"}], "temperature": 7}).encode(),
        400,
        "temperature",
    ),
    ("a JSON array", b"[1, 2, 3]", 400, None),
    (
        "max_tokens true",
        json.dumps({"model": SIM_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": True}).encode(),
        400,
        "max_tokens",
    ),
    (
        "nested 5000 deep",
        b'{"model": "' + SIM_MODEL.encode() + b'", "x": ' + b"[" * 5000 + b"]" * 5000 + b"}",
        400,
        None,
    ),
    (
        "a lone surrogate",
        b'{"model": "' + SIM_MODEL.encode() + b'", "messages": [{"role": "user", "content": "\\ud800"}]}',
        400,
        None,
    ),
]


@pytest.mark.parametrize(("what", "body", "status", "param"), BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
def test_bad_input_gets_openai_error(sim_cluster: Cluster, what: str, body: bytes, status: int, param: str) -> None:
    response = httpx.post(
        sim_cluster.url + "/v1/chat/completions",
        content=body,
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"] and error["type"]
    if param:
        assert error["param"] == param
    assert "Traceback" not in response.text


def test_ten_megabyte_body_is_rejected_and_router_keeps_serving(sim_cluster: Cluster) -> None:
    huge = json.dumps({"model": SIM_MODEL, "messages": [{"role": "user", "content": "x" * (10 * 1024 * 1024)}]})
    response = httpx.post(
        sim_cluster.url + "/v1/chat/completions", content=huge, timeout=60, headers={"content-type": "application/json"}
    )
    assert response.status_code == 413
    assert "exceeds" in response.json()["error"]["message"]
    ok = httpx.post(
        sim_cluster.url + "/v1/completions", json={"model": SIM_MODEL, "prompt": "hi", "max_tokens": 2}, timeout=30
    )
    assert ok.status_code == 200


def test_unknown_route_is_openai_shaped_404(sim_cluster: Cluster) -> None:
    response = httpx.get(sim_cluster.url + "/v1/nothing-here", timeout=10)
    assert response.status_code == 404
    assert response.json()["error"]["message"]


def test_client_disconnect_aborts_the_engine_request(sim_cluster: Cluster) -> None:
    engine = sim_cluster.engine_url()
    body = {"model": SIM_MODEL, "prompt": "long story", "max_tokens": 5000, "stream": True}
    with httpx.stream("POST", sim_cluster.url + "/v1/completions", json=body, timeout=30) as response:
        lines = response.iter_lines()  # kept referenced: a dropped iterator closes the stream early
        data = [line for line, _ in zip(lines, range(10), strict=False) if line.startswith("data: ")]
        assert len(data) >= 4
        assert engine_metric(engine, "vllm:num_requests_running") >= 1
    # 5000 tokens at 2 ms each would run for 10 s; an aborted request leaves within a moment.
    wait_until(lambda: engine_metric(engine, "vllm:num_requests_running") == 0, 5, "engine running == 0")
    produced = engine_metric(engine, "vllm:generation_tokens_total")
    time.sleep(0.5)
    assert engine_metric(engine, "vllm:generation_tokens_total") == produced
    wait_until(lambda: workers(sim_cluster.url)[0].inflight == 0, 5, "the router's in-flight count to return to 0")


def test_a_client_that_leaves_a_whole_answer_frees_its_engine_slot(sim_cluster: Cluster) -> None:
    """Not streamed: the answer is all first byte, so the router watches the client while it waits."""
    engine = sim_cluster.engine_url()
    body = {"model": SIM_MODEL, "prompt": "long story", "max_tokens": 5000}  # 10 s of decoding
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(sim_cluster.url + "/v1/completions", json=body, timeout=1.0)  # the client gives up
    left = time.monotonic()
    wait_until(lambda: engine_metric(engine, "vllm:num_requests_running") == 0, 3, "engine running == 0")
    print(f"\nengine slot free {time.monotonic() - left:.2f} s after the client left a whole answer")
    wait_until(lambda: workers(sim_cluster.url)[0].inflight == 0, 5, "the router's in-flight count to return to 0")


def test_killed_engine_is_restarted_and_requests_get_503_in_the_gap(sim_cluster: Cluster) -> None:
    body = {"model": SIM_MODEL, "prompt": "hello", "max_tokens": 2}
    url = sim_cluster.url + "/v1/completions"
    old_pid = sim_cluster.engine_pid()
    os.kill(old_pid, signal.SIGKILL)
    during = httpx.post(url, json=body, timeout=30)
    assert during.status_code == 503 and during.headers["retry-after"] == "2", during.text
    assert during.json()["error"]["type"] == "service_unavailable"
    wait_until(lambda: httpx.post(url, json=body, timeout=30).status_code == 200, 60, "a request to succeed again")
    assert sim_cluster.engine_pid() != old_pid


def test_an_engine_that_dies_mid_stream_ends_it_with_a_stable_code_not_exception_text(sim_cluster: Cluster) -> None:
    body = {"model": SIM_MODEL, "prompt": "long story", "max_tokens": 5000, "stream": True}
    with httpx.stream("POST", sim_cluster.url + "/v1/completions", json=body, timeout=30) as response:
        lines = (line for line in response.iter_lines() if line.startswith("data: "))
        assert next(lines) and next(lines)
        os.kill(sim_cluster.engine_pid(), signal.SIGKILL)
        rest = list(lines)
    assert rest[-1] == "data: [DONE]"
    error = json.loads(rest[-2].removeprefix("data: "))["error"]
    assert error["code"] == "engine_unavailable" and error["type"] == "service_unavailable", error
    assert error["message"] == "The engine stopped answering before the reply was complete; try again."
    ok = {"model": SIM_MODEL, "prompt": "hello", "max_tokens": 2}
    wait_until(
        lambda: httpx.post(sim_cluster.url + "/v1/completions", json=ok, timeout=30).status_code == 200,
        60,
        "the engine back",
    )


def test_sim_prefix_cache_shows_in_engine_metrics_and_saves_prefill(sim_cluster: Cluster) -> None:
    engine = sim_cluster.engine_url()
    shared = "orchard " * 400  # 25 blocks of 16 tokens
    hits_before = engine_metric(engine, "vllm:prefix_cache_hits_total")
    for question in ("one", "two"):
        body = {"model": SIM_MODEL, "prompt": shared + question, "max_tokens": 1}
        assert httpx.post(sim_cluster.url + "/v1/completions", json=body, timeout=30).status_code == 200
    assert engine_metric(engine, "vllm:prefix_cache_hits_total") - hits_before == 400


def test_what_the_sim_engine_cannot_honour_is_a_400_not_a_wrong_answer(client: openai.OpenAI) -> None:
    question = [{"role": "user", "content": "two answers please"}]
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=SIM_MODEL, messages=question, n=2, max_tokens=4)
    assert caught.value.status_code == 400 and caught.value.param == "n" and "sim engine" in caught.value.message
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=SIM_MODEL, messages=question, max_tokens=4, response_format={"type": "json_object"}
        )
    assert caught.value.param == "response_format"
    one = client.chat.completions.create(model=SIM_MODEL, messages=question, n=1, max_tokens=4)
    assert len(one.choices) == 1  # n=1 is what the engine does anyway


@pytest.mark.parametrize(
    "content_type", [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"]
)
def test_a_body_a_web_page_could_send_unasked_is_refused(sim_cluster: Cluster, content_type: str | None) -> None:
    """A page in a user's browser may POST these to any address without a CORS preflight; JSON it may not."""
    body = json.dumps({"model": SIM_MODEL, "prompt": "hi", "max_tokens": 2}).encode()
    headers = {"content-type": content_type} if content_type else {}
    response = httpx.post(sim_cluster.url + "/v1/completions", content=body, headers=headers, timeout=30)
    assert response.status_code == 415, response.text
    assert "Content-Type: application/json" in response.json()["error"]["message"]
    ok = httpx.post(
        sim_cluster.url + "/v1/completions",
        content=body,
        timeout=30,
        headers={"content-type": "application/json; charset=utf-8"},
    )
    assert ok.status_code == 200


def test_bounded_session_ids_and_message_counts(sim_cluster: Cluster) -> None:
    chat = {"model": SIM_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    long_session = httpx.post(
        sim_cluster.url + "/v1/chat/completions", json=chat, timeout=30, headers={"x-session-id": "s" * 257}
    )
    assert long_session.status_code == 400 and "X-Session-Id" in long_session.json()["error"]["message"]
    many = {**chat, "messages": [{"role": "user", "content": "hi"}] * 2049}
    too_many = httpx.post(sim_cluster.url + "/v1/chat/completions", json=many, timeout=30)
    assert too_many.status_code == 400 and too_many.json()["error"]["param"] == "messages"
    fine = httpx.post(
        sim_cluster.url + "/v1/chat/completions", json=chat, timeout=30, headers={"x-session-id": "s" * 256}
    )
    assert fine.status_code == 200


@pytest.mark.parametrize(
    ("route", "body"),
    [
        ("/v1/embeddings", {"model": SIM_MODEL, "input": ["a", "b"]}),
        ("/tokenize", {"model": SIM_MODEL, "prompt": "hello"}),
        ("/detokenize", {"model": SIM_MODEL, "tokens": [1, 2]}),
    ],
)
def test_a_route_the_engine_does_not_serve_is_a_404_naming_model_and_route(
    sim_cluster: Cluster, route: str, body: dict[str, object]
) -> None:
    response = httpx.post(sim_cluster.url + route, json=body, timeout=30)
    assert response.status_code == 404, response.text
    error = response.json()["error"]
    assert error["message"] == (
        f"The model `{SIM_MODEL}` does not serve {route} (it serves /v1/chat/completions, /v1/completions)."
    )
    assert error["type"] == "not_found_error" and error["code"] == "route_not_served"
    listed = httpx.get(sim_cluster.url + "/v1/models", timeout=10).json()["data"][0]
    assert listed["routes"] == ["/v1/chat/completions", "/v1/completions"]


@pytest.mark.parametrize(
    ("route", "body", "param"),
    [
        ("/v1/embeddings", {"model": SIM_MODEL, "input": "x", "stream": True}, "stream"),
        ("/v1/embeddings", {"model": SIM_MODEL, "input": []}, "input"),
        ("/tokenize", {"model": SIM_MODEL}, None),
        ("/detokenize", {"model": SIM_MODEL, "tokens": [-1]}, "tokens.0"),
        ("/detokenize", {"model": SIM_MODEL, "tokens": "12"}, "tokens"),
    ],
)
def test_bad_input_on_the_other_routes_is_a_400(
    sim_cluster: Cluster, route: str, body: dict[str, object], param: str | None
) -> None:
    response = httpx.post(sim_cluster.url + route, json=body, timeout=30)
    assert response.status_code == 400, response.text
    if param:  # a union's first member names where it failed: input.str
        assert response.json()["error"]["param"].startswith(param)


def test_a_router_starting_over_running_agents_never_calls_a_served_model_unknown(
    sim_cluster: Cluster, tmp_path: Path
) -> None:
    """A restarted router (a crash under its keeper) serves before it has heard from its agents: a model the
    hosts file serves is 503 with Retry-After until an agent reports it, never 404 (SDKs do not retry a 404);
    a name nobody serves is still a 404 once the agents have told."""
    config = RouterConfig(listen=f"127.0.0.1:{free_port()}", workers=(sim_cluster.agent_address,), models=(SIM_MODEL,))
    fleet = Fleet(tmp_path / "logs")
    body = {"model": SIM_MODEL, "prompt": "hi", "max_tokens": 2}
    seen: collections.Counter[str] = collections.Counter()
    try:
        fleet.start_router(config)
        with httpx.Client(base_url=config.local_url, timeout=10) as client:
            deadline = time.monotonic() + 30
            while seen["200"] < 5 and time.monotonic() < deadline:
                try:
                    response = client.post("/v1/completions", json=body)
                except httpx.TransportError:
                    continue  # not listening yet
                code = response.json()["error"]["code"] if response.status_code != 200 else ""
                seen[f"{response.status_code} {code}".strip()] += 1
                if response.status_code == 503:
                    assert response.headers["retry-after"], response.headers
            print(f"\nfirst answers of a router starting over a running agent: {dict(seen)}")
            assert seen["200"] == 5 and set(seen) <= {"200", "503 model_not_ready", "503 no_worker"}, dict(seen)
            unknown = client.post("/v1/completions", json={**body, "model": "no-such-model"})
            assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"
    finally:
        fleet.stop()


def test_a_served_model_whose_agent_has_not_answered_yet_is_a_503_not_a_404(tmp_path: Path) -> None:
    """The same window held open: the router's only agent does not answer (nothing listens there yet)."""
    config = RouterConfig(listen=f"127.0.0.1:{free_port()}", workers=(f"127.0.0.1:{free_port()}",), models=(SIM_MODEL,))
    fleet = Fleet(tmp_path / "logs")
    body = {"model": SIM_MODEL, "prompt": "hi", "max_tokens": 2}
    try:
        fleet.start_router(config)
        wait_until(lambda: _answers(config.local_url, body) == 503, 30, "the router to answer")
        served = httpx.post(config.local_url + "/v1/completions", json=body, timeout=10)
        typo = httpx.post(config.local_url + "/v1/completions", json={**body, "model": "sim-modle"}, timeout=10)
        assert served.status_code == 503 and served.json()["error"]["code"] == "model_not_ready"
        assert served.headers["retry-after"] and "not available yet" in served.json()["error"]["message"]
        assert typo.status_code == 503  # while an agent has not told its models, any name may yet be served
    finally:
        fleet.stop()


def test_the_drain_route_reads_its_body_by_the_same_rules_as_every_route(sim_cluster: Cluster) -> None:
    """No keys here (the local default): /orchard/drain still refuses what is not JSON, a body past its bound
    (declared or chunked: not read whole), and a name too long to echo; the worker stays in service."""
    url = sim_cluster.url + "/orchard/drain"
    text = httpx.post(url, content=b"x" * 1000, headers={"content-type": "text/plain"}, timeout=10)
    declared = httpx.post(url, content=b" " * 5_000_000, headers={"content-type": "application/json"}, timeout=10)

    def chunks() -> Iterator[bytes]:
        yield b'{"worker": "'
        for _ in range(64):
            yield b"a" * 65536

    chunked = httpx.post(url, content=chunks(), headers={"content-type": "application/json"}, timeout=10)
    long_name = httpx.post(url, json={"worker": "w" * 1000}, timeout=10)
    statuses = [r.status_code for r in (text, declared, chunked, long_name)]
    assert statuses == [415, 413, 413, 400], statuses
    assert all(len(r.content) < 1000 and "error" in r.json() for r in (text, declared, chunked, long_name))
    assert not next(iter(workers(sim_cluster.url))).draining


@pytest.mark.parametrize("https", [False, True], ids=["http", "https"])
def test_under_ulimit_256_a_thousand_idle_connections_do_not_stop_real_requests(
    sim_cluster: Cluster, tmp_path: Path, https: bool
) -> None:
    """Started as launchd starts a process (soft limit 256, and here the hard one too, so nothing can be raised):
    the router sizes its connection cap from what it got and logs it; 1,000 connections that never send a
    request (over HTTPS: never start their handshake) make room, the idle ones first, for clients with one, and
    no descriptor runs out."""
    tls: dict[str, str] = {}
    if https:
        ca = authority.create(authority.now_utc())
        tls["tls_cert"] = tls["tls_key"] = str(tmp_path / "endpoint.pem")
        authority.write_identity(
            tmp_path, ca, authority.issue(ca, "endpoint", ("127.0.0.1",), authority.now_utc(), client=False)
        )
        (tmp_path / "identity.pem").rename(tls["tls_cert"])
    config = RouterConfig(listen=f"127.0.0.1:{free_port()}", workers=(sim_cluster.agent_address,), **tls)
    verify = ssl.create_default_context(cafile=str(tmp_path / "ca.pem")) if https else True
    log_path = tmp_path / "router.log"
    launchd_like = lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))  # noqa: E731
    with log_path.open("wb") as log:
        router = subprocess.Popen(config.command(), stdout=log, stderr=subprocess.STDOUT, preexec_fn=launchd_like)
    idle: list[socket.socket] = []
    body = {"model": SIM_MODEL, "prompt": "hi", "max_tokens": 2}
    try:
        wait_until(lambda: _answers(config.local_url, body, verify) == 200, 30, "the router to answer")
        for _ in range(1000):
            idle.append(socket.create_connection(("127.0.0.1", config.port)))
        time.sleep(UNUSED_GRACE_S)  # idle long enough that a client with a request may take one's place
        statuses = collections.Counter(_answers(config.local_url, body, verify) for _ in range(20))
        assert statuses == {200: 20}, statuses
        assert router.poll() is None
        said = "open-file limit 256 (not raised; hard limit 256): at most 188 client connections"
        assert said in log_path.read_text()
    finally:
        for sock in idle:
            sock.close()
        router.terminate()
        router.wait(30)


def _answers(url: str, body: dict[str, object], verify: ssl.SSLContext | bool = True) -> int | str:
    try:
        return httpx.post(url + "/v1/completions", json=body, timeout=10, verify=verify).status_code
    except httpx.HTTPError as exc:
        return repr(exc)


def test_a_client_that_leaves_mid_body_is_a_499_not_an_incident(sim_cluster: Cluster) -> None:
    before = _requests_with_status(sim_cluster.url, 499)
    log = sim_cluster.log_dir / "router.log"
    lines_before = len(log.read_text().splitlines())
    with socket.create_connection(("127.0.0.1", sim_cluster.router.port)) as sock:
        sock.sendall(
            b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"content-length: 1000\r\n\r\n" + b'{"model": "' + SIM_MODEL.encode()
        )
        time.sleep(0.3)
    wait_until(lambda: "status=499" in "".join(log.read_text().splitlines()[lines_before:]), 5, "a 499 request line")
    after = log.read_text().splitlines()[lines_before:]
    assert not [line for line in after if "unexpected error" in line], after
    assert _requests_with_status(sim_cluster.url, 499) == before + 1


def _requests_with_status(url: str, status: int) -> float:
    page = httpx.get(url + "/metrics", timeout=10).text
    mark = f'status="{status}"'
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in page.splitlines()
        if line.startswith("orchard_requests_total{") and mark in line
    )


def test_an_agent_streams_for_a_router_from_before_the_stream_field(sim_cluster: Cluster) -> None:
    """An upgrade restarts agents before the router: the old router sends no `stream` field and asks for usage in
    the body itself (then drops that chunk); the new agent streams, and keeps the usage chunk that was asked for."""
    import grpc

    from proto import orchard_pb2 as pb
    from proto import orchard_pb2_grpc as pb_grpc

    body = {"model": SIM_MODEL, "prompt": "an older router", "max_tokens": 5, "stream": True}
    body["stream_options"] = {"include_usage": True}  # what the older router added
    request = pb.GenerateRequest(request_id="old", endpoint=pb.ENDPOINT_COMPLETIONS, body=json.dumps(body).encode())
    assert not request.HasField("stream")
    with grpc.insecure_channel(sim_cluster.agent_address) as channel:
        replies = list(pb_grpc.WorkerStub(channel).Generate(request, timeout=30))
    items = [json.loads(item) for reply in replies if reply.HasField("chunks") for item in reply.chunks.items]
    texts = [item["choices"][0]["text"] for item in items if item.get("choices") and item["choices"][0].get("text")]
    assert len(texts) == 5  # streamed, token by token, not one whole answer
    assert items[-1]["choices"] == [] and items[-1]["usage"]["completion_tokens"] == 5
    assert replies[-1].HasField("final") and replies[-1].final.usage.completion_tokens == 5
    with grpc.insecure_channel(sim_cluster.agent_address) as channel:
        info = pb_grpc.WorkerStub(channel).Info(pb.InfoRequest(), timeout=10)
    assert info.settles_stream_options  # a newer router leaves stream options to it
