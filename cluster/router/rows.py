"""What `GET /orchard/workers` answers, as typed models: written by the router, read by the CLI, bring-up,
benchmarks and tests. A worker's state is its engine's (`proto.states.EngineState`) once the router hears
from it, or why the router cannot say (`Reachability`)."""

from __future__ import annotations

import enum

from pydantic import BaseModel, ConfigDict

from proto.states import EngineState


class Reachability(enum.Enum):
    UNREACHABLE = "unreachable"  # the agent's stream is down
    CONNECTING = "connecting"  # connected, no load sample yet
    SUSPECT = "suspect"  # its circuit breaker is open: failures just now; probed again after a cool-down


class GroupRow(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    mode: str
    backend: str
    size: int
    peers: list[str]


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
    inflight: int = 0
    served: int = 0
    running: int = 0
    waiting: int = 0
    prefill_tokens_per_s: float = 0.0
    decode_tokens_per_s: float = 0.0
    detail: str = ""
    draining: bool = False  # cluster drain: takes no new requests
    breaker: str = "closed"  # cluster.router.breaker.BreakerState: closed, open, half-open
    group: GroupRow | None = None

    @property
    def ready(self) -> bool:
        return self.state is EngineState.READY

    @property
    def state_text(self) -> str:
        """`ready`, or the state with why (e.g. `starting: loading weights`)."""
        text = self.state.value if self.ready or not self.detail else f"{self.state.value}: {self.detail}"
        return text + ", draining" if self.draining else text


class WorkersReply(BaseModel):
    workers: list[WorkerRow]
    router_pid: int = 0  # which router answered: during a hand-over two share the port
