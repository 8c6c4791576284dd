"""Fuzzing the router as it publishes itself: schemathesis generates requests, valid and invalid, from the router's
own /openapi.json (fixed seed) against a real router and agent. No 5xx, no hang, and the router serves after."""

from __future__ import annotations

import collections
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, seed, settings
from schemathesis import GenerationMode

from tests.conftest import SIM_MODEL, Cluster, agent_config, start_cluster, stop_cluster

pytestmark = pytest.mark.fuzz

SEED = 20261127
CASES = {GenerationMode.POSITIVE: 150, GenerationMode.NEGATIVE: 100}  # per operation with a body (12 of them)
SKIPPED = {"/orchard/drain"}  # an operator's switch: fuzzing it would drain the only worker (503s by design)


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A router of its own (what the fuzzer does cannot touch other tests), over a fast sim engine with a small
    context, so that the largest valid request is cheap."""
    tmp: Path = tmp_path_factory.mktemp("fuzz")
    options = (("decode-ms-per-token", "0"), ("seed", "7"))
    cluster = start_cluster(tmp, [agent_config("sim", SIM_MODEL, tmp / "logs", sim_options=options, max_model_len=64)])
    yield cluster
    stop_cluster(cluster)


def _run(operation: schemathesis.APIOperation, mode: GenerationMode, url: str, tally: collections.Counter[str],
         failures: list[str]) -> None:  # fmt: skip
    session = requests.Session()

    @seed(SEED)
    @settings(max_examples=CASES[mode], deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(case=operation.as_strategy(generation_mode=mode))
    def one(case: schemathesis.Case) -> None:
        tally["cases"] += 1
        if mode is GenerationMode.POSITIVE and isinstance(case.body, dict) and "model" in case.body:
            case.body["model"] = SIM_MODEL  # past the model check, into validation, routing and the engine
        try:
            response = case.call(base_url=url, session=session, timeout=20)
        except requests.Timeout:
            tally["hangs"] += 1
            failures.append(f"hang: {case.method} {case.path} {case.body!r:.200}")
            return
        tally[f"{response.status_code // 100}xx"] += 1
        if response.status_code >= 500:
            failures.append(
                f"{response.status_code}: {case.method} {case.path} {case.body!r:.200} → {response.text:.300}"
            )

    one()


def test_a_thousand_generated_requests_get_no_5xx_and_no_hang(fuzzed: Cluster) -> None:
    published = httpx.get(fuzzed.url + "/openapi.json", timeout=10).json()
    schema = schemathesis.openapi.from_dict(published)
    tally: collections.Counter[str] = collections.Counter()
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.path in SKIPPED:
            continue
        modes = list(CASES) if operation.body else [GenerationMode.POSITIVE]
        for mode in modes:
            _run(operation, mode, fuzzed.url, tally, failures)
    after = httpx.post(fuzzed.url + "/v1/completions", json={"model": SIM_MODEL, "prompt": "hi", "max_tokens": 2},
                       timeout=30)  # fmt: skip
    print(f"\nfuzz (seed {SEED}): {dict(tally)}; router still serving: {after.status_code == 200}")
    assert failures == []
    assert tally["cases"] >= 1000 and tally["hangs"] == 0
    assert after.status_code == 200
