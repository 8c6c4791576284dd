"""What `GET /orchard/workers` answers, as typed models: written by the router, read by the CLI, bring-up,
benchmarks and tests. A worker's state is its engine's (`worker.shared.states.EngineState`) once the router hears
from it, or why the router cannot say (`Reachability`)."""

from __future__ import annotations

import enum
from typing import Literal

from pydantic import BaseModel, ConfigDict, computed_field

from worker.shared.load import Load
from worker.shared.states import EngineState


class Reachability(enum.Enum):
    UNREACHABLE = "unreachable"  # the agent's stream is down
    CONNECTING = "connecting"  # connected, no load sample yet
    SUSPECT = "suspect"  # its circuit breaker is open: failures just now; probed again after a cool-down
    HUNG = "hung"  # connected, but no state from the agent lately, or its engine fails its health checks
    HALF_OPEN = "half-open"  # suspect until just now: one request probes it before it is trusted again


class GroupRow(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    mode: str
    backend: str
    size: int
    peers: list[str]


class ModelFacts(BaseModel):
    """What a worker's engine offers for one model: its context and what it does beyond text."""

    model_config = ConfigDict(frozen=True)

    name: str
    context_length: int = 0  # tokens (0: not known yet)
    capabilities: list[str] | None = None  # worker/shared/capabilities.py's words; None: not known yet

    def describe(self) -> str:
        """e.g. `32k context · tools, reasoning` (what `cluster status` shows beside the name)."""
        parts = [f"{self.context_length // 1024}k context" if self.context_length >= 1024 else ""]
        if self.capabilities is not None:
            parts.append(", ".join(self.capabilities) or "no tools")
        return " · ".join(part for part in parts if part)


class WorkerRow(BaseModel):
    model_config = ConfigDict(frozen=True)

    address: str
    worker_id: str
    state: EngineState | Reachability
    models: list[str]
    engine: str = ""
    chip: str = ""
    os: str = ""
    memory_bytes: int = 0
    memory_available_bytes: int = 0  # free for use now (0: not reported)
    inflight: int = 0  # the router's requests on it now
    served: int = 0
    load: Load = Load()  # its engine's figures as its agent last reported them (counters: since the engine started)
    host: str = ""  # the hostname the agent reports
    engine_restarts: int = 0
    tokens_per_s: float = 0.0  # generated lately (between its last two samples)
    ttft_p50_s: float | None = None  # its streams' median time to first token over the last minute
    detail: str = ""
    draining: bool = False  # cluster drain: takes no new requests
    breaker: str = "closed"  # cluster.router.breaker.BreakerState: closed, open, half-open
    group: GroupRow | None = None
    model_facts: list[ModelFacts] = []

    @property
    def ready(self) -> bool:
        return self.state is EngineState.READY

    @computed_field  # type: ignore[prop-decorator]  # sent with the row: the dashboard reads it
    @property
    def down(self) -> bool:
        """Neither serving nor on its way to: unreachable, suspect, hung, stopped or failed."""
        return self.state in (
            Reachability.UNREACHABLE,
            Reachability.SUSPECT,
            Reachability.HUNG,
            EngineState.STOPPED,
            EngineState.FAILED,
        )

    @property
    def state_text(self) -> str:
        """`ready`, or the state with why (e.g. `starting: loading weights`)."""
        text = self.state.value if self.ready or not self.detail else f"{self.state.value}: {self.detail}"
        return text + ", draining" if self.draining else text


class OnDemandRow(BaseModel):
    """An on-demand model on a host (or nowhere: "unloaded"), as the router's demand manager sees it."""

    model_config = ConfigDict(frozen=True)

    model: str
    host: str = ""  # "" when unloaded
    state: Literal["loaded", "loading", "unloading", "unloaded"]
    inflight: int = 0
    idle_s: float | None = None  # since its last request started or ended (None: never used)
    need_gb: float = 0.0
    waiting: int = 0  # requests waiting for it to load (cold starts)


class WorkersReply(BaseModel):
    workers: list[WorkerRow]
    router_pid: int = 0  # which router answered: during a hand-over two share the port
    on_demand: list[OnDemandRow] = []


class ModelRow(BaseModel):
    """A model as the lab serves it: its replicas (workers) and shard groups."""

    model_config = ConfigDict(frozen=True)

    name: str
    workers: list[str]
    ready: int
    groups: list[str] = []


class ErrorRow(BaseModel):
    model_config = ConfigDict(frozen=True)

    at: float  # unix time
    request_id: str
    status: int
    reason: str
    model: str
    worker: str = ""
    team: str = ""


class TeamRow(BaseModel):
    """A team's use since the router started; the dashboard's activity adds to it in place, per request."""

    team: str
    requests: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0


class DashboardReply(BaseModel):
    """What `GET /orchard/dashboard.json` answers: everything the dashboard page draws."""

    at: float  # unix time
    workers: list[WorkerRow]
    models: list[ModelRow]
    errors: list[ErrorRow]
    teams: list[TeamRow]
    queued: dict[str, int]
    on_demand: list[OnDemandRow] = []


def model_rows(workers: list[WorkerRow]) -> list[ModelRow]:
    """Each model with the workers that serve it; a shard group is one replica, named by its group."""
    by_model: dict[str, list[WorkerRow]] = {}
    for w in workers:
        for model in w.models:
            by_model.setdefault(model, []).append(w)
    return [_model_row(name, serving) for name, serving in sorted(by_model.items())]


def _model_row(name: str, serving: list[WorkerRow]) -> ModelRow:
    groups = sorted({w.group.name for w in serving if w.group})
    ready = sum(w.ready for w in serving)
    return ModelRow(name=name, workers=[w.worker_id for w in serving], ready=ready, groups=groups)
