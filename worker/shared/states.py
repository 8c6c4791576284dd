"""One vocabulary for an engine's lifecycle, from the agent's supervisor over gRPC to the router and the CLI.

The supervisor sets an `EngineState`; `Watch` carries it as the proto enum (`to_wire`/`from_wire`); the router's
`/orchard/workers` rows and every client read the same values.
"""

from __future__ import annotations

import enum
from typing import cast

from proto import orchard_pb2 as pb


class EngineState(enum.Enum):
    STARTING = "starting"
    READY = "ready"
    RESTARTING = "restarting"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"

    def to_wire(self) -> pb.EngineState:
        return cast(pb.EngineState, pb.EngineState.Value(f"ENGINE_STATE_{self.name}"))

    @classmethod
    def from_wire(cls, value: pb.EngineState) -> EngineState | None:
        """None for ENGINE_STATE_UNSPECIFIED (an agent that has not said) or a state newer than this code. A table
        lookup: the router asks for every worker on every request."""
        return _BY_WIRE.get(value)


_BY_WIRE = {state.to_wire(): state for state in EngineState}
