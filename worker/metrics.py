"""Reading an engine's Prometheus /metrics into the load fields of a LoadSample."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

# vLLM's metric names (the sim engine exposes the same). Counters appear with a `_total` sample suffix.
_GAUGES = {
    "vllm:num_requests_running": "running",
    "vllm:num_requests_waiting": "waiting",
    "vllm:kv_cache_usage_perc": "kv_cache_usage",
}
_COUNTERS = {
    "vllm:prefix_cache_queries": "prefix_cache_queries",
    "vllm:prefix_cache_hits": "prefix_cache_hits",
    "vllm:generation_tokens": "generation_tokens",
    "vllm:prompt_tokens": "prompt_tokens",
}


@dataclass(frozen=True)
class EngineLoad:
    running: int = 0
    waiting: int = 0
    kv_cache_usage: float = 0.0
    prefix_cache_queries: int = 0
    prefix_cache_hits: int = 0
    generation_tokens: int = 0
    prompt_tokens: int = 0


def parse_engine_metrics(text: str) -> EngineLoad:
    """Sum each known metric over its label sets (one engine may serve several model names)."""
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        field = _GAUGES.get(family.name) or _COUNTERS.get(family.name)
        if field is None:
            continue
        for sample in family.samples:
            if sample.name.endswith(("_created",)):
                continue
            values[field] = values.get(field, 0.0) + sample.value
    return EngineLoad(
        running=int(values.get("running", 0)),
        waiting=int(values.get("waiting", 0)),
        kv_cache_usage=float(values.get("kv_cache_usage", 0.0)),
        prefix_cache_queries=int(values.get("prefix_cache_queries", 0)),
        prefix_cache_hits=int(values.get("prefix_cache_hits", 0)),
        generation_tokens=int(values.get("generation_tokens", 0)),
        prompt_tokens=int(values.get("prompt_tokens", 0)),
    )
