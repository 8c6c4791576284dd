"""What `cluster up hosts.toml` applied (~/.orchard/lab.json), so that down, status, logs and the next `up` work
without the file and after it was edited; and the error a lab command ends with."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from cluster.bringup import units
from cluster.placement.hostsfile import ClusterSpec
from worker.shared import procs
from worker.shared.launch import ROUTER_MODULE, RouterConfig


class LabState(BaseModel):
    """What `cluster up hosts.toml` applied, so that down/status/logs work without the file."""

    model_config = ConfigDict(frozen=True)

    spec: ClusterSpec  # validated once, when read
    router_pid: int
    router: RouterConfig
    url: str
    build: str = ""  # the Orchard build the router runs: another one (an upgrade) is handed over to
    router_started: float | None = None  # its start time: only that very process is handed over from or stopped
    router_slot: Literal["", "a", "b"] = ""  # the head's router service's slot (units.RouterService); "": detached

    def router_running(self) -> bool:
        """The recorded router still runs (the same process, not a reused pid)."""
        return procs.ours(self.router_pid, self.router_started, ROUTER_MODULE)

    def router_now(self, service: units.RouterService) -> int | None:
        """The lab's router process now: its service's (which may have started it again since, after a crash or
        a reboot), or the recorded detached one while it runs."""
        if self.router_slot:
            pid = service.main_pid(self.router_slot)
            return pid if pid is not None and procs.ours(pid, None, ROUTER_MODULE) else None
        return self.router_pid if self.router_running() else None

    @model_validator(mode="before")
    @classmethod
    def _from_router_args(cls, data: Any) -> Any:
        """A lab.json written before RouterConfig kept the router's argv; read it, so `down` still finds it."""
        if isinstance(data, dict) and "router_args" in data and "router" not in data:
            args = data["router_args"]
            data = {**{k: v for k, v in data.items() if k != "router_args"}, "router": RouterConfig.from_argv(args[3:])}
        return data


def state_path(home: Path) -> Path:
    return home / "lab.json"


def read_state(home: Path) -> LabState | None:
    """The lab `cluster up` applied (None: none). A record this Orchard cannot read is a LabError naming the file,
    never "no lab": its router and agents may still run."""
    path = state_path(home)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise LabError(f"{path}: {exc.strerror}") from None
    try:
        return LabState.model_validate_json(data)
    except ValidationError as exc:
        where = ".".join(str(part) for part in exc.errors()[0]["loc"])
        raise LabError(
            f"{path}: not a lab record this Orchard reads ({where}: {exc.errors()[0]['msg']}); the lab it describes "
            "may still run: stop it with the Orchard that started it, or move the file away"
        ) from None


class LabError(Exception):
    """The lab could not be brought up as asked; the message says which hosts and why."""
