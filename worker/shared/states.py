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
        """None for ENGINE_STATE_UNSPECIFIED (an agent that has not said) or a state newer than this code."""
        try:
            name = pb.EngineState.Name(value).removeprefix("ENGINE_STATE_")
        except ValueError:
            return None
        return cls.__members__.get(name)
