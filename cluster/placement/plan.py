"""Where each model runs: a pure function from the hosts file (plus measured sizes) to per-host assignments.

A Mac runs one engine: two engines oversubscribe unified memory. Each model needs its weights plus a KV-cache
reserve; each host offers its memory times a usable fraction. Models pinned with `hosts = [...]` take those
hosts. The others are placed largest first: a model that fits one host gets, per replica, the smallest free
host that holds it (big hosts stay free for big models); one that fits no single host becomes a shard group
over the fewest hosts that hold it together — pipeline by default, its layers split in proportion to each
host's usable memory (exo's rule); tensor only where the model's heads and sizes divide by the group size.
A model whose size is unknown takes the largest free host. A model that fits nowhere is an error that says
how much memory is missing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from cluster.placement.hostsfile import DEFAULT_MEMORY_FRACTION, ClusterSpec, HostSpec, ModelSpec
from cluster.placement.sizing import ModelFacts


class PlacementError(Exception):
    """The models do not fit the hosts; the message names the model and what is missing."""


@dataclass(frozen=True)
class GroupPlan:
    """One replica of a model spread over several hosts, in rank order (rank 0 serves HTTP)."""

    model: str
    index: int  # which replica of the model (0-based)
    mode: str  # pipeline | tensor
    backend: str  # mlx | vllm
    transport: str  # ring | jaccl (mlx)
    hosts: tuple[str, ...]
    shares: tuple[float, ...]  # share of the model each rank holds
    layers: tuple[int, ...] | None = None  # pipeline: layers per rank, when the layer count is known

    @property
    def name(self) -> str:
        return f"{self.model}#{self.index + 1}"

    @property
    def size(self) -> int:
        return len(self.hosts)

    def layer_range(self, rank: int) -> tuple[int, int] | None:
        """[start, end) of the layers `rank` runs. vLLM gives rank 0 the first layers; mlx-lm's pipeline
        gives rank 0 the last ones (it receives from the higher ranks and samples)."""
        if self.layers is None:
            return None
        before = sum(self.layers[:rank]) if self.backend == "vllm" else sum(self.layers[rank + 1 :])
        return before, before + self.layers[rank]


@dataclass(frozen=True)
class Assignment:
    host: HostSpec
    model: ModelSpec
    need_gb: float | None = None  # what this host holds for the model (its share, in a group)
    usable_gb: float | None = None
    why: str = ""
    group: GroupPlan | None = None
    rank: int = 0

    @property
    def agent_address(self) -> str:
        return self.host.agent_address

    @property
    def routed(self) -> bool:
        """The router sends requests to this agent: a single-host replica, or a group's rank 0."""
        return self.group is None or self.rank == 0


@dataclass(frozen=True)
class _Need:
    weights_gb: float | None
    reserve_gb: float | None

    @property
    def total(self) -> float | None:
        return None if self.weights_gb is None else self.weights_gb + (self.reserve_gb or 0.0)

    def describe(self) -> str:
        if self.weights_gb is None:
            return "size unknown"
        return f"{_gb(self.total)} (weights {_gb(self.weights_gb)} + KV reserve {_gb(self.reserve_gb or 0.0)})"


def _gb(value: float | None) -> str:
    if value is None:
        return "?"
    return f"{value:,.0f} GB" if value >= 10 else f"{value:,.2f} GB"


class _Planner:
    def __init__(
        self,
        spec: ClusterSpec,
        facts: Mapping[str, ModelFacts],
        memory_gb: Mapping[str, float],
        usable_gb: Mapping[str, float],
    ) -> None:
        self.spec, self.facts, self.memory_gb, self.usable_gb = spec, facts, memory_gb, usable_gb
        self.taken: dict[str, str] = {}  # host label -> model name
        self.out: list[Assignment] = []

    def usable(self, host: HostSpec) -> float | None:
        """The hosts file's figures where it gives them; else the Mac's own report; else a default share."""
        fraction = host.memory_fraction or self.spec.placement.memory_fraction
        reported = self.usable_gb.get(host.label)
        if fraction is None and host.memory_gb is None and reported:
            return reported
        memory = host.memory_gb or self.memory_gb.get(host.label)
        if memory is None:
            return None
        return memory * (fraction or DEFAULT_MEMORY_FRACTION)

    def need(self, model: ModelSpec) -> _Need:
        weights = model.size_gb or self.facts.get(model.name, ModelFacts()).weights_gb
        if weights is None:
            return _Need(None, None)
        reserve = model.kv_reserve_gb
        if reserve is None:
            reserve = weights * self.spec.placement.kv_reserve_fraction
        return _Need(weights, reserve)

    def free(self) -> list[HostSpec]:
        return [h for h in self.spec.hosts if h.label not in self.taken]

    def take(self, host: HostSpec, model: ModelSpec) -> None:
        if host.label in self.taken:
            raise PlacementError(
                f"host '{host.label}' is asked to serve both '{self.taken[host.label]}' and '{model.name}'; "
                "a host runs one engine"
            )
        self.taken[host.label] = model.name

    # --- single-host replicas -------------------------------------------------------------------------------

    def replica(self, host: HostSpec, model: ModelSpec, why: str) -> None:
        self.take(host, model)
        self.out.append(Assignment(host, model, self.need(model).total, self.usable(host), why))

    def place_pinned_replicas(self, model: ModelSpec) -> None:
        need = self.need(model)
        for label in model.hosts or ():
            host = self.spec.host(label)
            usable = self.usable(host)
            if need.total is not None and usable is not None and need.total > usable:
                raise PlacementError(
                    f"model '{model.name}' needs {need.describe()} but host '{host.label}' has {_gb(usable)} usable; "
                    f'pin more hosts with mode = "pipeline" to make a shard group'
                )
            self.replica(host, model, f"pinned; needs {_gb(need.total)} of {_gb(usable)} usable")

    def place_replica(self, model: ModelSpec, replica: int) -> None:
        need = self.need(model)
        free = self.free()
        if not free:
            raise PlacementError(self._no_hosts(model, replica))
        if need.total is None:
            host = max(free, key=lambda h: self.usable(h) or 0.0)  # first among equals: file order
            self.replica(host, model, "size unknown (no files here, no size_gb): the largest free host")
            return
        fitting = [h for h in free if (self.usable(h) or 0.0) >= need.total]
        if fitting:
            host = min(fitting, key=lambda h: self.usable(h) or 0.0)
            self.replica(host, model, f"fits one host: needs {need.describe()}, {_gb(self.usable(host))} usable")
            return
        unknown = [h for h in free if self.usable(h) is None]
        if unknown:
            self.replica(unknown[0], model, f"needs {need.describe()}; this host's memory is not known yet")
            return
        self.auto_group(model, replica, model.mode or "pipeline")

    def _no_hosts(self, model: ModelSpec, replica: int) -> str:
        wanted = model.replicas or 1
        missing = wanted - replica
        return (
            f"model '{model.name}' asks for {wanted} replica(s) but only {replica} host(s) are free ({missing} missing)"
        )

    # --- shard groups -------------------------------------------------------------------------------------------

    def auto_group(self, model: ModelSpec, replica: int, mode: str) -> None:
        need = self.need(model)
        free = sorted(self.free(), key=lambda h: -(self.usable(h) or 0.0))
        total = sum(self.usable(h) or 0.0 for h in free)
        if need.total is not None and need.total > total:
            raise PlacementError(
                f"model '{model.name}' needs {need.describe()} but the {len(free)} free host(s) hold "
                f"{_gb(total)} usable together: {_gb(need.total - total)} missing"
            )
        for size in range(2, len(free) + 1):
            hosts = free[:size]
            if need.total is None or self._fits(need.total, hosts, mode):
                if mode == "tensor" and self._tensor_problem(model, size):
                    continue
                biggest = _gb(self.usable(free[0])) if free else "0 GB"
                why = f"needs {need.describe()}, more than any free host ({biggest} usable): {size}-host {mode} group"
                if model.mode and need.total is not None and need.total <= (self.usable(free[0]) or 0.0):
                    why = f'mode = "{mode}" asked: smallest {mode} group that holds {need.describe()}'
                self.group(model, replica, mode, hosts, why)
                return
        raise PlacementError(
            f"model '{model.name}' ({need.describe()}) does not fit a {mode} group of the {len(free)} free host(s)"
            + (f": {self._tensor_problem(model, len(free))}" if mode == "tensor" else "")
        )

    def _fits(self, need: float, hosts: list[HostSpec], mode: str) -> bool:
        usable = [self.usable(h) or 0.0 for h in hosts]
        if mode == "tensor":  # every rank holds an equal share
            return min(usable) >= need / len(hosts)
        return sum(usable) >= need

    def _tensor_problem(self, model: ModelSpec, size: int) -> str:
        facts = self.facts.get(model.name, ModelFacts())
        divisors = facts.tensor_divisors()
        if "attention heads" not in divisors:
            return f"tensor mode needs the model's config.json on this machine to check that its heads divide by {size}"
        bad = {name: value for name, value in divisors.items() if value % size}
        if not bad:
            return ""
        sizes = [n for n in range(2, 17) if all(v % n == 0 for v in divisors.values())]
        listed = ", ".join(f"{name} {value}" for name, value in bad.items())
        hint = f"group sizes that divide: {', '.join(map(str, sizes))}" if sizes else "no group size divides them"
        return f"{listed} do not divide by {size} ({hint})"

    def pinned_group(self, model: ModelSpec) -> None:
        hosts = [self.spec.host(label) for label in model.hosts or ()]
        mode = model.mode or "pipeline"
        need = self.need(model)
        if mode == "tensor" and (problem := self._tensor_problem(model, len(hosts))):
            raise PlacementError(f"model '{model.name}' cannot run as a {len(hosts)}-host tensor group: {problem}")
        known = all(self.usable(h) is not None for h in hosts)
        if need.total is not None and known and not self._fits(need.total, hosts, mode):
            held = sum(self.usable(h) or 0.0 for h in hosts)
            raise PlacementError(
                f"model '{model.name}' needs {need.describe()} but its pinned hosts hold {_gb(held)} usable "
                f"as a {mode} group ({_gb(max(need.total - held, 0.0))} missing"
                + (", or a rank's equal share does not fit its host)" if mode == "tensor" else ")")
            )
        self.group(model, 0, mode, hosts, f"pinned {mode} group")

    def group(self, model: ModelSpec, replica: int, mode: str, hosts: list[HostSpec], why: str) -> None:
        engines: set[str] = {h.engine for h in hosts}
        backend: str = model.backend or (engines.pop() if len(engines) == 1 else "")
        if backend not in ("mlx", "vllm"):
            found = ", ".join(f"{h.label}: {h.engine}" for h in hosts)
            raise PlacementError(
                f"model '{model.name}' needs a shard group but its hosts run {found}; "
                'groups run on mlx or vllm: set backend = "mlx" or "vllm"'
            )
        if backend == "vllm" and mode == "tensor":
            raise PlacementError(f"model '{model.name}': vllm-metal does not support tensor parallelism")
        usable = [self.usable(h) for h in hosts]
        facts = self.facts.get(model.name, ModelFacts())
        split = _mlx_pipeline_split(model, facts) if backend == "mlx" and mode == "pipeline" else ""
        if mode == "pipeline" and split != "even" and all(u is not None for u in usable):
            shares = _proportional([u or 0.0 for u in usable])
        else:
            shares = tuple(1.0 / len(hosts) for _ in hosts)
        layers = None
        count = model.layers or facts.layers
        if mode == "pipeline" and count is not None:
            if count < len(hosts):
                raise PlacementError(
                    f"model '{model.name}' has {count} layers: too few for {len(hosts)} pipeline ranks"
                )
            layers = _split_layers(count, shares)
        plan = GroupPlan(
            model.name, replica, mode, backend, model.transport, tuple(h.label for h in hosts), shares, layers
        )
        need = self.need(model).total
        for rank, host in enumerate(hosts):
            self.take(host, model)
            part = None if need is None else need * shares[rank]
            self.out.append(Assignment(host, model, part, usable[rank], why, plan, rank))


def _mlx_pipeline_split(model: ModelSpec, facts: ModelFacts) -> str:
    """How mlx-lm splits this architecture ("planned", "even", "" unknown); refuses one it cannot pipeline."""
    if facts.mlx_pipeline != "none":
        return facts.mlx_pipeline
    raise PlacementError(
        f"model '{model.name}': mlx-lm cannot split architecture '{facts.model_type}' into a pipeline (it would fail "
        "to load with 'The model does not support pipelining'); use mode = \"tensor\" if its heads divide by the "
        'group size, backend = "vllm", or hosts that hold it whole'
    )


def _proportional(weights: list[float]) -> tuple[float, ...]:
    total = sum(weights)
    return tuple(w / total for w in weights) if total else tuple(1.0 / len(weights) for _ in weights)


def _split_layers(count: int, shares: tuple[float, ...]) -> tuple[int, ...]:
    """Layers per rank in proportion to `shares` (largest remainder), every rank at least one."""
    exact = [count * s for s in shares]
    layers = [max(1, int(e)) for e in exact]
    while sum(layers) > count:  # the minimum of one pushed us over: take from the largest
        layers[layers.index(max(layers))] -= 1
    order = sorted(range(len(shares)), key=lambda i: exact[i] - int(exact[i]), reverse=True)
    for i in order[: count - sum(layers)]:
        layers[i] += 1
    return tuple(layers)


def plan(
    spec: ClusterSpec,
    facts: Mapping[str, ModelFacts] | None = None,
    memory_gb: Mapping[str, float] | None = None,
    usable_gb: Mapping[str, float] | None = None,
) -> list[Assignment]:
    """Assignments for every model. `facts` (by model name) come from the model files, `memory_gb` and
    `usable_gb` (by host label) from the hosts' own reports (usable: Metal's recommended working set); the
    hosts file's `size_gb`, `memory_gb` and `memory_fraction` take precedence."""
    planner = _Planner(spec, facts or {}, memory_gb or {}, usable_gb or {})
    pinned = [m for m in spec.models if m.load == "pinned"]  # on-demand ones: the router places them (demand.py)
    for model in pinned:
        if model.hosts is not None:
            if model.mode is not None:
                planner.pinned_group(model)
            else:
                planner.place_pinned_replicas(model)
    unpinned = [m for m in pinned if m.hosts is None]
    unpinned.sort(key=lambda m: -(planner.need(m).total or -1.0))  # largest first; unknown sizes last
    for model in unpinned:
        for replica in range(model.replicas or 1):
            if model.mode is not None:
                planner.auto_group(model, replica, model.mode)
            else:
                planner.place_replica(model, replica)
    order = {m.name: i for i, m in enumerate(spec.models)}
    return sorted(planner.out, key=lambda a: order[a.model.name])  # stable: placement order within a model


@dataclass(frozen=True)
class Room:
    """What on-demand placement starts from: each host's usable memory and each on-demand model's need, by the
    same rules as plan() (None: not known)."""

    usable_gb: dict[str, float | None]
    need_gb: dict[str, float | None]


def room(
    spec: ClusterSpec,
    facts: Mapping[str, ModelFacts] | None = None,
    memory_gb: Mapping[str, float] | None = None,
    usable_gb: Mapping[str, float] | None = None,
) -> Room:
    planner = _Planner(spec, facts or {}, memory_gb or {}, usable_gb or {})
    return Room(
        {h.label: planner.usable(h) for h in spec.hosts},
        {m.name: planner.need(m).total for m in spec.models if m.load == "on-demand"},
    )


def shared_network_warnings(assignments: list[Assignment]) -> list[str]:
    """Shard groups whose traffic would cross the lab's shared network: MLX ring/JACCL and Ray authenticate
    nothing, so a group belongs on a private link (a Thunderbolt bridge) given as each host's `group_address`."""
    exposed: dict[str, list[str]] = {}
    for a in assignments:
        if a.group is not None and a.group.transport != "jaccl" and a.host.group_address in (None, a.host.address):
            exposed.setdefault(a.group.name, []).append(a.host.label)
    return [
        f"group {name}: its {_transport(assignments, name)} traffic (unauthenticated) would run over the lab "
        f"network on {', '.join(hosts)}; give each host a group_address on a private link (a Thunderbolt "
        "bridge) that only the group's Macs reach"
        for name, hosts in exposed.items()
    ]


def _transport(assignments: list[Assignment], name: str) -> str:
    group = next(a.group for a in assignments if a.group is not None and a.group.name == name)
    return "Ray" if group.backend == "vllm" else "MLX ring"
