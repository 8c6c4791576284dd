"""An engine's load for a LoadSample: read from its Prometheus /metrics, or, for engines that publish none
(mlx-lm), counted by the agent from the requests it relays."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from worker.shared.load import Load

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
# Histograms whose running `_sum` (seconds) we read: time requests spent in prefill and in decode.
_HISTOGRAM_SUMS = {
    "vllm:request_prefill_time_seconds": "prefill_seconds",
    "vllm:request_decode_time_seconds": "decode_seconds",
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
    prefill_seconds: float = 0.0  # cumulative, summed over requests
    decode_seconds: float = 0.0


def _prefixes() -> tuple[str, ...]:
    samples = [*_GAUGES, *(f"{name}_total" for name in _COUNTERS), *(f"{name}_sum" for name in _HISTOGRAM_SUMS)]
    names = [*_GAUGES, *_COUNTERS, *_HISTOGRAM_SUMS, *samples]  # a counter's TYPE may name it with `_total`
    meta = (f"# {kind} {name} " for kind in ("HELP", "TYPE") for name in names)
    return (*(sample + end for sample in samples for end in "{ "), *meta)


_PREFIXES = _prefixes()


def relevant_lines(text: str) -> str:
    """The lines of the samples we read, with their families' HELP and TYPE. vLLM's page is ~600 lines, mostly
    histogram buckets; the parser is pure Python, and parsing all of it every second was most of the agent's
    CPU while streaming (measured with py-spy)."""
    return "\n".join(line for line in text.splitlines() if line.startswith(_PREFIXES))


def parse_engine_metrics(text: str) -> EngineLoad:
    """Sum each known metric over its label sets (one engine may serve several model names)."""
    return load_of(relevant_lines(text))


def load_of(text: str) -> EngineLoad:
    """The load a metrics page says, whichever of its lines are given."""
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name in _HISTOGRAM_SUMS:
            total = _HISTOGRAM_SUMS[family.name]
            for sample in family.samples:
                if sample.name == family.name + "_sum":
                    values[total] = values.get(total, 0.0) + sample.value
            continue
        name = _GAUGES.get(family.name) or _COUNTERS.get(family.name)
        if name is None:
            continue
        for sample in family.samples:
            if sample.name.endswith(("_created",)):
                continue
            values[name] = values.get(name, 0.0) + sample.value
    return EngineLoad(
        running=int(values.get("running", 0)),
        waiting=int(values.get("waiting", 0)),
        kv_cache_usage=float(values.get("kv_cache_usage", 0.0)),
        prefix_cache_queries=int(values.get("prefix_cache_queries", 0)),
        prefix_cache_hits=int(values.get("prefix_cache_hits", 0)),
        generation_tokens=int(values.get("generation_tokens", 0)),
        prompt_tokens=int(values.get("prompt_tokens", 0)),
        prefill_seconds=float(values.get("prefill_seconds", 0.0)),
        decode_seconds=float(values.get("decode_seconds", 0.0)),
    )


def figures(load: EngineLoad | None, rates: RateMeter) -> Load:
    """What a sample reports: the engine's counts (none while it is not ready) and the rates the agent measured."""
    counts = {name: getattr(load, name) for name in Load.model_fields if hasattr(load, name)} if load else {}
    return Load(
        **counts, prefill_tokens_per_s=rates.prefill_tokens_per_s, decode_tokens_per_s=rates.decode_tokens_per_s
    )


class LastLoad:
    """An engine's last scraped load in its current run: what a failed scrape (a busy engine, a timeout) reports
    instead of nothing, so counters do not read 0 and jump back (a fake rate spike and a counter reset)."""

    def __init__(self) -> None:
        self._run, self._load = -1, EngineLoad()

    def through(self, scraped: EngineLoad | None, run: int) -> EngineLoad | None:
        """`scraped`, kept; or, when the scrape failed, the last one of this engine run (None: none yet)."""
        if scraped is not None:
            self._run, self._load = run, scraped
            return scraped
        return self._load if run == self._run else None


class TrafficMeter:
    """The same counters as vLLM's, kept by the agent from the traffic it relays: prompt and generated tokens
    (the engine's usage), time to the first chunk as prefill time, the rest as decode time."""

    def __init__(self) -> None:
        self.prompt_tokens = self.generation_tokens = 0
        self.prefill_seconds = self.decode_seconds = 0.0

    def observe(self, prompt_tokens: int, completion_tokens: int, first_s: float, total_s: float) -> None:
        self.prompt_tokens += prompt_tokens
        self.generation_tokens += completion_tokens
        self.prefill_seconds += first_s
        self.decode_seconds += max(total_s - first_s, 0.0)

    def load(self, running: int) -> EngineLoad:
        return EngineLoad(
            running=running,
            generation_tokens=self.generation_tokens,
            prompt_tokens=self.prompt_tokens,
            prefill_seconds=self.prefill_seconds,
            decode_seconds=self.decode_seconds,
        )


class RateMeter:
    """Prefill and decode speed of one engine, from the deltas of its cumulative counters between scrapes.

    prefill = prompt tokens actually computed (prompt - prefix-cache hits) / prefill seconds;
    decode = generated tokens / decode seconds (one request's speed; batching shows up as a lower rate).
    Each new measurement moves an exponential moving average. `epoch` names the engine process (its restart
    count): a new epoch starts the deltas over; within one epoch a scrape older than the last one (two
    watchers scraping at once) is ignored. 0.0 means "not measured yet".
    """

    def __init__(self, weight: float = 0.3, min_seconds: float = 0.005) -> None:
        self.weight = weight
        self.min_seconds = min_seconds
        self.prefill_tokens_per_s = 0.0
        self.decode_tokens_per_s = 0.0
        self._last: EngineLoad | None = None
        self._epoch = -1

    def update(self, load: EngineLoad, epoch: int = 0) -> None:
        if epoch != self._epoch:
            self._epoch, self._last = epoch, load
            return
        last = self._last
        assert last is not None  # set together with the epoch
        computed = (load.prompt_tokens - load.prefix_cache_hits) - (last.prompt_tokens - last.prefix_cache_hits)
        prefill_s = load.prefill_seconds - last.prefill_seconds
        generated = load.generation_tokens - last.generation_tokens
        decode_s = load.decode_seconds - last.decode_seconds
        if min(computed, prefill_s, generated, decode_s) < 0:
            return  # an older scrape finishing after a newer one
        self._last = load
        if computed > 0 and prefill_s >= self.min_seconds:
            self.prefill_tokens_per_s = self._mix(self.prefill_tokens_per_s, computed / prefill_s)
        if generated > 0 and decode_s >= self.min_seconds:
            self.decode_tokens_per_s = self._mix(self.decode_tokens_per_s, generated / decode_s)

    def _mix(self, old: float, new: float) -> float:
        return new if old == 0.0 else old + self.weight * (new - old)
