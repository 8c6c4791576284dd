"""Models that follow demand (issue 30): which on-demand model to load where, which to unload, and when a model
gains or loses a replica — pure functions over a snapshot of the lab. The router's demand loop takes a snapshot,
applies what these decide (agents load and unload engines) and takes the next one.

Memory is plan.py's: a host offers its usable memory; an engine holds its model's need (weights + KV reserve)
from the moment its load is decided until its unload ends. A cold model goes to the allowed host with the least
room that holds it (big rooms stay for big models, as plan.py places replicas). With no room anywhere, engines are
evicted on one host — unpinned ones with nothing in flight and nothing waiting, least recently used first, until
the model fits — choosing the host that needs the fewest. While room could come only from engines in use, the
request waits. A model that would not fit an allowed host even with every on-demand engine gone is refused,
naming the memory it needs. Scaling follows a sustained queue up and a sustained quiet down, never both within a window
(hysteresis), between the model's minimum and maximum replicas.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Literal

EngineState = Literal["loading", "ready", "unloading"]
UP_QUEUE = 4  # requests waiting per replica that count as a long queue
UP_AFTER_S = 10.0  # a queue that stays long this long gains a replica
DOWN_AFTER_S = 120.0  # a replica idle this long (and the model's queue empty) is let go, down to the minimum


@dataclass(frozen=True)
class Engine:
    """A model's engine on a host."""

    model: str
    need_gb: float
    pinned: bool = False
    state: EngineState = "ready"
    inflight: int = 0
    last_used: float = 0.0  # when it last finished or started a request (the snapshot's clock)


@dataclass(frozen=True)
class Host:
    label: str
    usable_gb: float
    engines: tuple[Engine, ...] = ()
    reachable: bool = True

    @property
    def room_gb(self) -> float:
        return self.usable_gb - sum(e.need_gb for e in self.engines)


@dataclass(frozen=True)
class Offer:
    """An on-demand model as the hosts file offers it."""

    name: str
    need_gb: float
    keep_alive_s: float = 300.0
    min_replicas: int = 0
    max_replicas: int = 1
    hosts: tuple[str, ...] | None = None  # the hosts it may load on (None: any)


@dataclass(frozen=True)
class Trend:
    """How long a model's queue has stayed long, or its replicas quiet (observe() keeps it)."""

    busy_since: float | None = None
    quiet_since: float | None = None


@dataclass(frozen=True)
class Scaling:
    up_queue: int = UP_QUEUE
    up_after_s: float = UP_AFTER_S
    down_after_s: float = DOWN_AFTER_S


@dataclass(frozen=True)
class Lab:
    now: float
    hosts: tuple[Host, ...]
    offers: Mapping[str, Offer]
    waiting: Mapping[str, int] = field(default_factory=dict)  # requests queued per model, in the router
    scaling: Scaling = Scaling()

    def engines_of(self, model: str) -> list[tuple[Host, Engine]]:
        return [(h, e) for h in self.hosts for e in h.engines if e.model == model]


@dataclass(frozen=True)
class Load:
    model: str
    host: str
    evict: tuple[str, ...] = ()  # models on that host to drain and unload first
    why: str = ""


@dataclass(frozen=True)
class Unload:
    model: str
    host: str
    why: str


@dataclass(frozen=True)
class Refuse:
    model: str
    why: str


def _gb(value: float) -> str:
    return f"{value:,.0f} GB" if value >= 10 else f"{value:,.2f} GB"


def _evictable(lab: Lab, engine: Engine) -> bool:
    return not engine.pinned and engine.state == "ready" and not engine.inflight and not lab.waiting.get(engine.model)


def _allowed(lab: Lab, offer: Offer, exclude: frozenset[str] = frozenset()) -> list[Host]:
    return [
        h
        for h in lab.hosts
        if h.reachable and h.label not in exclude and (offer.hosts is None or h.label in offer.hosts)
    ]


def place(lab: Lab, offer: Offer, exclude: frozenset[str] = frozenset()) -> Load | Refuse | None:
    """Where a new engine of `offer` goes: the tightest host with room, else the host that makes room by
    evicting the fewest (then least recently used) idle engines; None when room can be made only once engines in
    use now go idle (wait); or why it can never go anywhere."""
    hosts = _allowed(lab, offer, exclude)
    if not hosts:
        return Refuse(offer.name, f"model '{offer.name}' has no reachable host it may load on")
    biggest = max(h.usable_gb for h in hosts)
    if offer.need_gb > biggest:
        return Refuse(
            offer.name,
            f"model '{offer.name}' needs {_gb(offer.need_gb)}; the largest host it may load on holds {_gb(biggest)}",
        )
    fitting = [h for h in hosts if h.room_gb >= offer.need_gb]
    if fitting:
        host = min(fitting, key=lambda h: h.room_gb)
        return Load(offer.name, host.label, why=f"{_gb(host.room_gb)} free on {host.label}")
    options = []
    for host in hosts:
        victims, room = [], host.room_gb
        for engine in sorted((e for e in host.engines if _evictable(lab, e)), key=lambda e: e.last_used):
            if room >= offer.need_gb:
                break
            victims.append(engine)
            room += engine.need_gb
        if room >= offer.need_gb:
            options.append((len(victims), max(e.last_used for e in victims), host.label, victims))
    if not options:
        pinned = [h.usable_gb - sum(e.need_gb for e in h.engines if e.pinned) for h in hosts]
        if max(pinned) >= offer.need_gb:
            return None  # room comes when an engine in use goes idle
        return Refuse(
            offer.name,
            f"model '{offer.name}' needs {_gb(offer.need_gb)}; beside their pinned models the hosts it may load on "
            f"hold {_gb(max(pinned))} at most",
        )
    _, _, label, victims = min(options, key=lambda o: (o[0], o[1]))
    names = tuple(e.model for e in victims)
    return Load(offer.name, label, names, why=f"evicting {', '.join(names)} (least recently used) on {label}")


def cold_start(lab: Lab, model: str) -> Load | Refuse | None:
    """A request for `model`, which no engine serves: the load to start; None when one is already loading (the
    request waits for it: many requests, one load) or when room comes only once an engine in use goes idle."""
    engines = lab.engines_of(model)
    if any(e.state in ("loading", "ready") for _, e in engines):
        return None
    return place(lab, lab.offers[model], exclude=frozenset(h.label for h, _ in engines))  # not where it is leaving


def expired(lab: Lab) -> list[Unload]:
    """On-demand engines idle past their model's keep_alive, above its minimum: oldest use first."""
    out = []
    for name, offer in lab.offers.items():
        ready = [(h, e) for h, e in lab.engines_of(name) if e.state == "ready"]
        spare = len(ready) - offer.min_replicas
        idle = sorted(
            ((h, e) for h, e in ready if _evictable(lab, e) and lab.now - e.last_used >= offer.keep_alive_s),
            key=lambda he: he[1].last_used,
        )
        out += [
            Unload(name, h.label, f"idle {lab.now - e.last_used:.0f} s (keep_alive {offer.keep_alive_s:.0f} s)")
            for h, e in idle[: max(spare, 0)]
        ]
    return out


def observe(trends: Mapping[str, Trend], lab: Lab) -> dict[str, Trend]:
    """Each offered model's trend after this snapshot: since when its queue has been long, or it quiet."""
    out = {}
    for name in lab.offers:
        ready = [e for _, e in lab.engines_of(name) if e.state == "ready"]
        waiting = lab.waiting.get(name, 0)
        old = trends.get(name, Trend())
        busy = bool(ready) and waiting >= lab.scaling.up_queue * len(ready)
        quiet = bool(ready) and not waiting and any(not e.inflight for e in ready)
        out[name] = Trend(
            busy_since=(old.busy_since if old.busy_since is not None else lab.now) if busy else None,
            quiet_since=(old.quiet_since if old.quiet_since is not None else lab.now) if quiet else None,
        )
    return out


def scale(lab: Lab, trends: Mapping[str, Trend]) -> list[Load | Unload]:
    """A replica more for a model whose queue stayed long for `up_after_s` (on a host not serving it yet), one
    less for one quiet for `down_after_s`; one step per model per snapshot, none while one of its loads runs."""
    out: list[Load | Unload] = []
    for name, offer in lab.offers.items():
        engines = lab.engines_of(name)
        if any(e.state != "ready" for _, e in engines):
            continue
        trend = trends.get(name, Trend())
        if (
            trend.busy_since is not None
            and lab.now - trend.busy_since >= lab.scaling.up_after_s
            and len(engines) < offer.max_replicas
        ):
            placed = place(lab, offer, exclude=frozenset(h.label for h, _ in engines))
            if isinstance(placed, Load):
                out.append(replace(placed, why=f"queue long for {lab.now - trend.busy_since:.0f} s; {placed.why}"))
        elif trend.quiet_since is not None and lab.now - trend.quiet_since >= lab.scaling.down_after_s:
            idle = sorted((he for he in engines if not he[1].inflight), key=lambda he: he[1].last_used)
            if idle and len(engines) > max(offer.min_replicas, 1):
                host, _ = idle[0]
                out.append(Unload(name, host.label, f"quiet for {lab.now - trend.quiet_since:.0f} s"))
    return out


def below_minimum(lab: Lab) -> list[Load]:
    """A load for each model with fewer engines (loading ones count) than its min_replicas, on a host not
    serving it yet; one per model per snapshot."""
    out = []
    for name, offer in lab.offers.items():
        every = lab.engines_of(name)
        engines = [(h, e) for h, e in every if e.state != "unloading"]
        if len(engines) >= offer.min_replicas:
            continue
        placed = place(lab, offer, exclude=frozenset(h.label for h, _ in every))
        if isinstance(placed, Load):
            out.append(replace(placed, why=f"min_replicas {offer.min_replicas}; {placed.why}"))
    return out
