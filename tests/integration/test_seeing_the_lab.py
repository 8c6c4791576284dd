"""Seeing the lab (real router, agents and sim engines on loopback): every response's x-request-id and the
router's one JSON line per request; /metrics per model and worker, with every engine re-exported; the Grafana
board's queries all found on a running router's /metrics; the dashboard's data and page."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam
from prometheus_client.parser import text_string_to_metric_families

from cluster.router.rows import DashboardReply
from tests.conftest import SIM_MODEL, Cluster, agent_config, start_cluster, stop_cluster, wait_until

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "deploy" / "grafana" / "orchard.json"


@pytest.fixture(scope="module")
def trio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("trio")
    agents = [
        agent_config("sim", SIM_MODEL, tmp / "logs", sim_options=(("decode-ms-per-token", "2"),)) for _ in range(3)
    ]
    cluster = start_cluster(tmp, agents, log_format="json", policy="round_robin")
    yield cluster
    stop_cluster(cluster)


def _client(cluster: Cluster) -> openai.OpenAI:
    return openai.OpenAI(base_url=cluster.url + "/v1", api_key="none", max_retries=0)


def _traffic(cluster: Cluster, requests: int = 6) -> list[str]:
    """A few streamed and whole answers over the three workers; their request ids."""
    ids, chat = [], _client(cluster).chat.completions.with_raw_response
    for i in range(requests):
        messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": f"hello {i}"}]
        if i % 2 == 0:
            streamed = chat.create(model=SIM_MODEL, messages=messages, max_tokens=16, stream=True)
            assert sum(1 for chunk in streamed.parse() if chunk.choices) >= 2
            ids.append(streamed.headers["x-request-id"])
        else:
            whole = chat.create(model=SIM_MODEL, messages=messages, max_tokens=16)
            assert whole.parse().choices
            ids.append(whole.headers["x-request-id"])
    return ids


def _request_lines(cluster: Cluster) -> dict[str, dict[str, object]]:
    lines = (cluster.log_dir / "router.log").read_text().splitlines()
    found = {}
    for line in lines:
        record = json.loads(line)  # --log-format json: every line is one JSON object
        if record["logger"] == "orchard.requests":
            found[str(record["request_id"])] = record
    return found


def test_every_response_has_a_request_id_and_each_request_one_json_log_line(trio: Cluster) -> None:
    ids = _traffic(trio)
    assert len(set(ids)) == len(ids) and all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    given = httpx.post(
        trio.url + "/v1/chat/completions",
        headers={"x-request-id": "trace-42.a:b"},
        json={"model": SIM_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
        timeout=30,
    )
    assert given.status_code == 200 and given.headers["x-request-id"] == "trace-42.a:b"  # a team's own tracing
    odd = httpx.get(trio.url + "/v1/models", headers={"x-request-id": "no spaces\tor tabs"}, timeout=10)
    assert re.fullmatch(r"[0-9a-f]{32}", odd.headers["x-request-id"])  # not echoed: replaced
    unknown = httpx.post(
        trio.url + "/v1/chat/completions",
        json={"model": "nope", "messages": [{"role": "user", "content": "hi"}]},
        timeout=10,
    )
    for response in (unknown, httpx.get(trio.url + "/health"), httpx.get(trio.url + "/nowhere")):
        assert response.headers["x-request-id"], response.url
    lines = wait_until(
        lambda: (found := _request_lines(trio)) and unknown.headers["x-request-id"] in found and found,
        5,
        "the request lines",
    )
    for rid in [*ids, "trace-42.a:b"]:
        line = lines[rid]
        assert line["model"] == SIM_MODEL and line["status"] == 200 and line["worker"]
        assert int(str(line["completion_tokens"])) > 0 and float(str(line["duration_ms"])) > 0
    assert lines[ids[0]]["ttft_ms"] is not None  # streamed
    refused = lines[unknown.headers["x-request-id"]]
    assert refused["status"] == 404 and refused["worker"] is None
    assert len({lines[i]["worker"] for i in ids}) == 3  # round robin: every worker served, each line names it


def _metrics(cluster: Cluster) -> dict[str, list[tuple[dict[str, str], float]]]:
    text = httpx.get(cluster.url + "/metrics", timeout=10).text
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def test_metrics_cover_every_worker_and_its_engine_from_one_scrape(trio: Cluster) -> None:
    _traffic(trio)
    unknown = {"model": "nope", "messages": [{"role": "user", "content": "hi"}]}
    assert httpx.post(trio.url + "/v1/chat/completions", json=unknown, timeout=10).status_code == 404
    workers = {str(w["worker_id"]) for w in httpx.get(trio.url + "/orchard/workers", timeout=10).json()["workers"]}
    assert len(workers) == 3

    def scraped() -> dict[str, list[tuple[dict[str, str], float]]] | None:
        samples = _metrics(trio)
        generated = {labels["worker"]: v for labels, v in samples.get("orchard_engine_generation_tokens_total", [])}
        return samples if set(generated) == workers and all(generated.values()) else None

    samples = wait_until(scraped, 10, "every engine's counters on the router's /metrics")  # the next load sample
    ready = [labels["worker"] for labels, v in samples["orchard_worker_state"] if labels["state"] == "ready" and v]
    assert sorted(ready) == sorted(workers)
    for name in (
        "orchard_engine_running",
        "orchard_engine_kv_cache_usage",
        "orchard_worker_inflight",
        "orchard_worker_memory_available_bytes",
        "orchard_worker_tokens_per_second",
        "orchard_engine_prefix_cache_queries_total",
    ):
        assert {labels["worker"] for labels, _ in samples[name]} == workers, name
    ttft = samples["orchard_time_to_first_token_seconds_count"]
    assert {labels["worker"] for labels, _ in ttft} == workers and {labels["model"] for labels, _ in ttft} == {
        SIM_MODEL
    }
    assert sum(v for _, v in samples["orchard_inter_token_latency_seconds_count"]) >= 3  # one per stream
    assert sum(v for _, v in samples["orchard_request_duration_seconds_count"]) >= 6
    assert sum(v for _, v in samples["orchard_queue_wait_seconds_count"]) >= 6
    assert [labels["model"] for labels, _ in samples["orchard_queue_depth"]] == [SIM_MODEL]
    reasons = {labels["reason"] for labels, _ in samples["orchard_routing_decisions_total"]}
    assert reasons, "routing decisions by reason"
    names = {lb["model"] for family in samples.values() for lb, _ in family if "model" in lb}
    assert "nope" not in names and "unknown" in names  # a name no worker serves: one label for all such
    by_team = [(labels, v) for labels, v in samples["orchard_team_requests_total"] if labels["status"] == "200"]
    assert {labels["worker"] for labels, _ in by_team} == workers and all(lb["team"] == "-" for lb, _ in by_team)


def _queried_metrics(board: dict[str, Any]) -> set[str]:
    exprs = [t["expr"] for p in board["panels"] for t in p["targets"]]
    return {name for expr in exprs for name in re.findall(r"\b(orchard_[a-z_]+)\b", expr)}


def test_the_grafana_board_queries_only_metrics_the_router_exports(trio: Cluster) -> None:
    board = json.loads(GRAFANA.read_text())
    queried = _queried_metrics(board)
    assert len(queried) >= 20, queried
    _traffic(trio)
    samples = _metrics(trio)
    missing = sorted(queried - set(samples))
    assert not missing, f"the Grafana board queries metrics /metrics does not have: {missing}"
    for expr in (t["expr"] for p in board["panels"] for t in p["targets"]):
        named = [n for n in re.findall(r"\b(orchard_[a-z_]+)\b", expr)]
        labels = {lb for n in named for labels, _ in samples[n] for lb in labels}
        grouped = {lb.strip() for group in re.findall(r"by \(([^)]*)\)", expr) for lb in group.split(",")}
        grouped |= set(
            re.findall(
                r"\{\{(\w+)\}\}",
                " ".join(t.get("legendFormat", "") for p in board["panels"] for t in p["targets"] if t["expr"] == expr),
            )
        )
        assert grouped <= labels, (expr, grouped - labels)  # by (...) and {{legend}} name labels that exist
        for name, selector in re.findall(r"(orchard_[a-z_]+)\{([^}]*)\}", expr):
            for key, value in re.findall(r'(\w+)="([^"]*)"', selector):
                assert any(lb.get(key) == value for lb, _ in samples[name]), (expr, key, value)


def test_dashboard_data_and_page(trio: Cluster) -> None:
    _traffic(trio, 2)
    httpx.post(
        trio.url + "/v1/chat/completions",
        json={"model": "nope", "messages": [{"role": "user", "content": "hi"}]},
        timeout=10,
    )
    reply = DashboardReply.model_validate_json(httpx.get(trio.url + "/orchard/dashboard.json", timeout=10).content)
    assert len(reply.workers) == 3 and reply.models[0].name == SIM_MODEL and reply.models[0].ready == 3
    assert reply.errors[0].status == 404 and reply.errors[0].model == "nope"
    assert reply.teams[0].team == "-" and reply.teams[0].requests >= 3 and abs(reply.at - time.time()) < 60
    page = httpx.get(trio.url + "/dashboard", timeout=10)
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "script-src 'self'" in page.headers["content-security-policy"]  # no inline script, nothing from a CDN
    assert '<script src="/dashboard.js"' in page.text and "http" not in page.text.split("<body>")[0].lower()
    script = httpx.get(trio.url + "/dashboard.js", timeout=10)
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert "innerHTML" not in script.text  # data goes in as text only
