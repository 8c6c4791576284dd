"""The team gateway through real processes: a router with a key database, a sim agent, the `cluster keys` CLI
and the official `openai` SDK as the client."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import anthropic
import httpx
import ollama
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import (
    SIM_MODEL,
    Cluster,
    agent_config,
    free_port,
    run_cli,
    start_cluster,
    stop_cluster,
    usage_rows,
    wait_until,
)


@dataclass
class GatedLab:
    cluster: Cluster
    home: Path  # ORCHARD_HOME: the CLI and the router share home/gateway.db

    def client(self, key: str | None) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.cluster.url + "/v1", api_key=key or "none", max_retries=0, timeout=30)

    def create_key(self, *args: str) -> str:
        result = run_cli(["keys", "create", *args], self.home, timeout_s=60)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    def rows(self) -> list[sqlite3.Row]:
        return usage_rows(self.home)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatedLab]:
    home = tmp_path_factory.mktemp("gated")
    options = (("decode-ms-per-token", "5"),)
    agent = agent_config("sim", SIM_MODEL, home / "logs", sim_options=options)
    cluster = start_cluster(home, [agent], gateway_db=str(home / "gateway.db"))
    yield GatedLab(cluster, home)
    stop_cluster(cluster)


def chat(client: openai.OpenAI, **extra: object) -> object:
    return client.chat.completions.create(
        model=SIM_MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4, **extra
    )


def test_open_until_the_first_key_then_every_route_needs_one(lab: GatedLab) -> None:
    assert chat(lab.client(None))  # loopback and no key yet: open
    admin = lab.create_key("--team", "ops", "--admin")
    assert admin.startswith("sk-orch-") and "\n" not in admin

    def refused() -> bool:
        try:
            chat(lab.client(None))
        except openai.AuthenticationError:
            return True
        return False

    wait_until(refused, 5, "auth to switch on", interval_s=0.1)
    with pytest.raises(openai.AuthenticationError) as caught:
        chat(lab.client("sk-orch-not-a-key"))
    assert caught.value.status_code == 401 and caught.value.code == "invalid_api_key"
    assert caught.value.body["type"] == "invalid_request_error"  # OpenAI's own body for a bad key
    assert caught.value.body["message"] == "Incorrect API key provided: the key is not known."
    assert chat(lab.client(admin))
    assert lab.client(admin).models.list().data[0].id == SIM_MODEL
    with pytest.raises(openai.AuthenticationError):
        lab.client(None).models.list()
    body = {"model": SIM_MODEL, "prompt": "hi", "max_tokens": 2}
    for header, status in ((admin, 200), ("sk-orch-not-a-key", 401)):  # Anthropic's clients send x-api-key
        answer = httpx.post(lab.cluster.url + "/v1/completions", json=body, headers={"x-api-key": header}, timeout=30)
        assert answer.status_code == status, answer.text


def test_operator_endpoints_need_an_admin_key(lab: GatedLab) -> None:
    admin = lab.create_key("--team", "ops", "--admin")
    user = lab.create_key("--team", "ops")
    wait_until(lambda: _status(lab, user) != 401, 5, "the new keys to be known", interval_s=0.1)
    assert _status(lab, admin) == 200 and _status(lab, user) == 403 and _status(lab, None) == 401
    for path in ("/orchard/dashboard.json", "/metrics"):
        assert [_status(lab, key, path) for key in (admin, user, None)] == [200, 403, 401], path
    assert httpx.get(lab.cluster.url + "/dashboard", timeout=5).status_code == 200  # the page holds no data


def _metrics(lab: GatedLab, headers: dict[str, str]) -> str:
    answer = httpx.get(lab.cluster.url + "/metrics", timeout=5, headers=headers)
    return answer.text if answer.status_code == 200 else ""


def _status(lab: GatedLab, key: str | None, path: str = "/orchard/workers") -> int:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return httpx.get(lab.cluster.url + path, headers=headers, timeout=5).status_code


def test_a_revoked_key_fails_within_a_second(lab: GatedLab) -> None:
    key = lab.create_key("--team", "ml")
    wait_until(lambda: _works(lab, key), 5, "the key to work", interval_s=0.1)
    key_id = _key_id(lab, key)
    result = run_cli(["keys", "revoke", key_id], lab.home, timeout_s=60)
    assert result.returncode == 0, result.stderr
    revoked_at = time.monotonic()
    wait_until(lambda: not _works(lab, key), 2, "the revoked key to fail", interval_s=0.05)
    assert time.monotonic() - revoked_at < 1.0 + 0.5  # refresh every 0.5 s, plus a request in flight
    with pytest.raises(openai.AuthenticationError, match="revoked"):
        chat(lab.client(key))


def test_the_other_apis_take_the_same_keys_and_refuse_in_their_own_shapes(lab: GatedLab) -> None:
    key = lab.create_key("--team", "tools")
    wait_until(lambda: _works(lab, key), 5, "the key to work", interval_s=0.1)
    client = ollama.Client(host=lab.cluster.url, headers={"Authorization": f"Bearer {key}"}, timeout=30)
    assert [m.model for m in client.list().models] == [SIM_MODEL]
    lines = list(
        client.chat(
            model=SIM_MODEL, messages=[{"role": "user", "content": "hi"}], stream=True, options={"num_predict": 4}
        )
    )
    assert lines[-1].done and lines[-1].eval_count == 4 and all(line.message.content for line in lines[:-1])
    stranger = ollama.Client(host=lab.cluster.url, headers={"Authorization": "Bearer sk-orch-not-a-key"})
    with pytest.raises(ollama.ResponseError) as refused:
        stranger.chat(model=SIM_MODEL, messages=[{"role": "user", "content": "hi"}])
    assert refused.value.status_code == 401 and "not known" in refused.value.error
    with pytest.raises(anthropic.AuthenticationError) as unknown:  # x-api-key, Anthropic's error shape
        anthropic.Anthropic(base_url=lab.cluster.url, api_key="sk-orch-not-a-key", max_retries=0).messages.create(
            model=SIM_MODEL, max_tokens=4, messages=[{"role": "user", "content": "hi"}]
        )
    assert unknown.value.body == {
        "type": "error",
        "error": {"type": "authentication_error", "message": "Incorrect API key provided: the key is not known."},
    }
    with pytest.raises(anthropic.NotFoundError, match="does not serve /v1/messages"):  # the sim engine does not
        anthropic.Anthropic(base_url=lab.cluster.url, api_key=key, max_retries=0).messages.create(
            model=SIM_MODEL, max_tokens=4, messages=[{"role": "user", "content": "hi"}]
        )
    billed = wait_until(lambda: [r for r in lab.rows() if r["team"] == "tools" and r["status"] == 200], 5, "rows")
    assert billed[-1]["completion_tokens"] == 4  # the Ollama stream, billed as any other


def _works(lab: GatedLab, key: str) -> bool:
    try:
        chat(lab.client(key))
    except openai.AuthenticationError:
        return False
    return True


def _key_id(lab: GatedLab, secret: str) -> str:
    import hashlib

    digest = hashlib.sha256(secret.encode()).hexdigest()
    with sqlite3.connect(lab.home / "gateway.db") as conn:
        return str(conn.execute("SELECT id FROM keys WHERE hash = ?", (digest,)).fetchone()[0])


def test_a_model_outside_the_keys_list_is_403(lab: GatedLab) -> None:
    key = lab.create_key("--team", "vision", "--models", "some-other-model")
    wait_until(lambda: _known(lab, key), 5, "the key to be known", interval_s=0.1)
    with pytest.raises(openai.PermissionDeniedError) as caught:
        chat(lab.client(key))
    assert caught.value.code == "model_not_allowed" and SIM_MODEL in caught.value.message


def _known(lab: GatedLab, key: str) -> bool:
    try:
        chat(lab.client(key))
    except openai.AuthenticationError:
        return False
    except openai.APIStatusError:
        return True
    return True


def test_requests_per_minute_count_down_then_429_with_retry_after(lab: GatedLab) -> None:
    key = lab.create_key("--team", "batch", "--rpm", "3")
    wait_until(lambda: _known_no_spend(lab, key), 5, "the key to be known", interval_s=0.1)
    client = lab.client(key)
    remaining = []
    for _ in range(3):
        raw = client.chat.completions.with_raw_response.create(
            model=SIM_MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2
        )
        assert raw.headers["x-ratelimit-limit-requests"] == "3"
        remaining.append(int(raw.headers["x-ratelimit-remaining-requests"]))
    assert remaining == [2, 1, 0]
    with pytest.raises(openai.RateLimitError) as caught:
        chat(client)
    assert caught.value.code == "rate_limit_exceeded" and "(rpm) of key" in caught.value.message
    assert int(caught.value.response.headers["retry-after"]) >= 1
    key_id = _key_id(lab, key)

    def refused_rows() -> list[sqlite3.Row]:
        return [r for r in lab.rows() if r["key_id"] == key_id and r["status"] == 429]

    wait_until(refused_rows, 5, "the refusal's usage row", interval_s=0.2)  # admins see who was throttled


def _known_no_spend(lab: GatedLab, key: str) -> bool:
    response = httpx.get(lab.cluster.url + "/v1/models", headers={"authorization": f"Bearer {key}"}, timeout=5)
    return response.status_code == 200


def test_usage_rows_equal_what_the_clients_were_told(lab: GatedLab) -> None:
    key = lab.create_key("--team", "acct")
    wait_until(lambda: _known_no_spend(lab, key), 5, "the key to be known", interval_s=0.1)
    client = lab.client(key)
    whole = client.chat.completions.create(
        model=SIM_MODEL, messages=[{"role": "user", "content": "count me"}], max_tokens=7
    )
    stream = client.chat.completions.create(
        model=SIM_MODEL,
        messages=[{"role": "user", "content": "and me"}],
        max_tokens=5,
        stream=True,
        stream_options={"include_usage": True},
    )
    streamed = [chunk.usage for chunk in stream if chunk.usage is not None]
    key_id = _key_id(lab, key)

    def mine() -> list[sqlite3.Row]:
        return [r for r in lab.rows() if r["key_id"] == key_id]

    wait_until(lambda: len(mine()) == 2, 5, "two usage rows (flushed every second)", interval_s=0.2)
    first, second = mine()
    assert whole.usage is not None and len(streamed) == 1
    for row, told in ((first, whole.usage), (second, streamed[0])):
        assert (row["prompt_tokens"], row["completion_tokens"]) == (told.prompt_tokens, told.completion_tokens)
        assert row["team"] == "acct" and row["status"] == 200 and row["model"] == SIM_MODEL
        assert row["worker"] and row["ttft_s"] is not None and row["duration_s"] >= row["ttft_s"]
    report = run_cli(["usage", "--team", "acct", "--by", "key", "--json"], lab.home, timeout_s=60)
    assert report.returncode == 0, report.stderr
    [line] = json.loads(report.stdout)["rows"]
    assert line["group"] == key_id and line["requests"] == 2
    assert line["completion_tokens"] == whole.usage.completion_tokens + streamed[0].completion_tokens
    admin = {"authorization": f"Bearer {lab.create_key('--team', 'ops', '--admin')}"}
    assert httpx.get(lab.cluster.url + "/metrics", timeout=5).status_code == 401  # an operator's view
    metrics = wait_until(lambda: _metrics(lab, admin), 5, "the admin key to be known", interval_s=0.1)
    served = [
        s
        for f in text_string_to_metric_families(metrics)
        for s in f.samples
        if s.name == "orchard_team_requests_total" and s.labels["team"] == "acct"
    ]
    assert sum(s.value for s in served if s.labels["status"] == "200" and s.labels["model"] == SIM_MODEL) == 2
    assert {s.labels["worker"] for s in served} == {row["worker"] for row in mine()}


def test_a_stream_cut_by_the_client_is_still_accounted(lab: GatedLab) -> None:
    key = lab.create_key("--team", "leaver")
    wait_until(lambda: _known_no_spend(lab, key), 5, "the key to be known", interval_s=0.1)
    body = {"model": SIM_MODEL, "prompt": "go on", "max_tokens": 400, "stream": True}
    headers = {"authorization": f"Bearer {key}"}
    received = 0
    with httpx.stream("POST", lab.cluster.url + "/v1/completions", json=body, headers=headers, timeout=30) as r:
        for line in r.iter_lines():
            received += line.startswith("data: {")
            if received == 10:
                break  # leave mid-stream
    key_id = _key_id(lab, key)
    wait_until(lambda: [r for r in lab.rows() if r["key_id"] == key_id], 5, "the cut request's row", interval_s=0.2)
    [row] = [r for r in lab.rows() if r["key_id"] == key_id]
    assert row["status"] == 499 and 10 <= row["completion_tokens"] < 400  # what streamed before the client left
    whole = lab.client(key).completions.create(model=SIM_MODEL, prompt="go on", max_tokens=1)
    assert whole.usage is not None and row["prompt_tokens"] == whole.usage.prompt_tokens  # the engine's, no guess


def test_router_beyond_loopback_without_keys_refuses_to_start(tmp_path: Path) -> None:
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "cluster.router",
        "--listen",
        f"0.0.0.0:{port}",
        "--worker",
        "127.0.0.1:1",
        "--gateway-db",
        str(tmp_path / "gateway.db"),
    ]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert (
        "refusing to serve on 0.0.0.0" in result.stderr and "cluster keys create --team NAME --admin" in result.stderr
    )


def test_usage_rows_survive_a_router_sigterm(tmp_path: Path) -> None:
    agent = agent_config("sim", SIM_MODEL, tmp_path / "logs", sim_options=(("decode-ms-per-token", "1"),))
    cluster = start_cluster(tmp_path, [agent], gateway_db=str(tmp_path / "gateway.db"))
    try:
        client = openai.OpenAI(base_url=cluster.url + "/v1", api_key="none", max_retries=0, timeout=30)
        for _ in range(3):
            chat(client)
        router = next(c for c in cluster.fleet.children if c.name == "router")
        cluster.fleet.stop(router)  # SIGTERM right away: before the next one-second flush
    finally:
        stop_cluster(cluster)
    with sqlite3.connect(tmp_path / "gateway.db") as conn:
        assert conn.execute("SELECT COUNT(*) FROM usage WHERE status = 200").fetchone()[0] == 3
