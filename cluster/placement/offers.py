"""The lab's on-demand models as the router knows them (issue 30): `cluster up` writes this record from the hosts
file and placement (`~/.orchard/demand-<digest>.json`, `--demand` on the router's command line); the router's demand
manager loads and unloads by it. Typed on both sides: a renamed field cannot read as missing."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class HostRoom(_Record):
    """A host on-demand engines may go to: its agent, the memory its engines may hold together, and what its
    pinned engine already holds."""

    label: str
    agent: str  # the host's agent address (host:port): it starts and stops the children
    usable_bytes: int = Field(ge=0)  # 0: the agent's own report (Info.usable_memory_bytes)
    pinned_bytes: int = Field(default=0, ge=0)
    pinned_model: str = ""


class Placeable(_Record):
    """How an on-demand model runs on one host: the child agent's arguments there."""

    host: str  # a HostRoom's label
    argv: tuple[str, ...]


class Offered(_Record):
    name: str
    engine: str
    source: str
    need_bytes: int = Field(ge=0)
    keep_alive_s: float = Field(gt=0)
    min_replicas: int = Field(default=0, ge=0)
    max_replicas: int = Field(default=1, ge=1)
    places: tuple[Placeable, ...]


class Scaling(_Record):
    """When a model gains a replica (its queue this long per replica, this long) and loses one (quiet this long)."""

    up_queue: int = Field(default=4, ge=1)
    up_after_s: float = Field(default=10.0, gt=0)
    down_after_s: float = Field(default=120.0, gt=0)


class DemandCatalog(_Record):
    hosts: tuple[HostRoom, ...] = ()
    models: tuple[Offered, ...] = ()
    scaling: Scaling = Scaling()

    def host(self, label: str) -> HostRoom:
        return next(h for h in self.hosts if h.label == label)

    def model(self, name: str) -> Offered | None:
        return next((m for m in self.models if m.name == name), None)


def read(path: Path) -> DemandCatalog:
    """ValueError (with the file named) for a record that is not one."""
    try:
        return DemandCatalog.model_validate_json(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not an on-demand catalog: {exc}") from exc


def write(path: Path, catalog: DemandCatalog) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_suffix(".tmp")
    staging.write_text(catalog.model_dump_json(indent=2) + "\n")
    staging.replace(path)
