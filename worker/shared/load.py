"""An engine's load figures: one type from the agent's sample to the router's routing view and the operator's
row, in SI units (counts, a 0..1 fraction, tokens per second), formatted only where shown. On the wire it is
`orchard.v1.Load`, whose fields have the same names."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from proto import orchard_pb2 as pb


class Load(BaseModel):
    model_config = ConfigDict(frozen=True)

    running: int = 0
    waiting: int = 0
    kv_cache_usage: float = 0.0  # 0..1
    prefix_cache_queries: int = 0  # cumulative, tokens
    prefix_cache_hits: int = 0  # cumulative, tokens
    generation_tokens: int = 0  # cumulative
    prompt_tokens: int = 0  # cumulative
    prefill_tokens_per_s: float = 0.0  # measured by the agent (0: not yet)
    decode_tokens_per_s: float = 0.0

    def to_wire(self) -> pb.Load:
        return pb.Load(**self.model_dump())

    @classmethod
    def from_wire(cls, wire: pb.Load | pb.LoadSample) -> Load:
        return cls.model_construct(**{name: getattr(wire, name) for name in cls.model_fields})  # typed by protobuf

    @classmethod
    def of(cls, sample: pb.LoadSample) -> Load:
        """A sample's figures: its `load`, or the same fields flat from an agent from before it."""
        return cls.from_wire(sample.load if sample.HasField("load") else sample)

    def into(self, sample: pb.LoadSample) -> None:
        """Into a sample: as `load`, and flat too for a router from before it (the same field names)."""
        sample.load.CopyFrom(self.to_wire())
        for name, value in self.model_dump().items():
            setattr(sample, name, value)
