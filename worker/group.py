"""Keeping one shard-group rank in step with its group. A collective group cannot shrink: when one member's
process dies, every member's process must go and the group starts again together.

Rank 0's agent leads. Each launch of rank 0's engine gets a fresh *epoch* id, published on Watch while that
process runs ("" while rank 0 waits to launch). Rank 0 launches only when every member's agent is reachable,
and relaunches (taking the group down at once, so the router stops sending to it) when a member's agent is
lost, restarted (a new `agent_instance`), or reports a crash of a process it launched for the current epoch.
Its own engine dying relaunches it too (the supervisor does that; the new launch gets a new epoch).

The other ranks follow: each launches only once rank 0 publishes an epoch, and restarts whenever its
process was launched for another epoch than the one rank 0 publishes now. Members never start epochs
themselves, so the group cannot chase its own tail.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from dataclasses import dataclass
from pathlib import Path

import grpc

from proto import orchard_pb2 as pb
from proto import orchard_pb2_grpc as pb_grpc
from worker.shared import tls
from worker.shared.download import fetching
from worker.shared.launch import GroupRole
from worker.supervisor import EngineSupervisor

log = logging.getLogger(__name__)

WATCH_INTERVAL_S = 0.5
RECONNECT_S = 0.5


@dataclass
class PeerView:
    address: str
    rank: int
    connected: bool = False
    instance: str = ""
    crashes: int = 0
    epoch: str = ""  # what that agent publishes: rank 0's current launch, or a member's launched-for epoch
    state: int = pb.ENGINE_STATE_UNSPECIFIED
    fetching: bool = False  # its model's files are still on their way


class GroupController:
    def __init__(self, role: GroupRole, supervisor: EngineSupervisor, tls_dir: Path | None = None) -> None:
        self.role = role
        self.tls_dir = tls_dir  # this agent's own identity: it is a client of its peers' agents
        self.supervisor = supervisor
        self.leader = role.rank == 0
        self.run_epoch = ""  # the epoch this rank's current process was launched for ("" = none running)
        self.peers = {address: PeerView(address, rank) for rank, address in enumerate(role.peers) if rank != role.rank}
        self._tasks: list[asyncio.Task[None]] = []
        supervisor.gate = self.gate

    # -- the supervisor's gate: called right before every launch --------------------------------------------

    def gate(self) -> str | None:
        self.run_epoch = ""
        if self.leader:
            missing = [p.address for p in self.peers.values() if not p.connected]
            if missing:
                return f"group {self.role.name}: waiting for members {', '.join(missing)}"
            if fetching := [p.address for p in self.peers.values() if p.fetching]:
                return f"group {self.role.name}: waiting for members to fetch the model: {', '.join(fetching)}"
            self.run_epoch = uuid.uuid4().hex[:12]
            log.info("group %s: launching epoch %s", self.role.name, self.run_epoch)
            return None
        leader = self.peers[self.role.peers[0]]
        if not leader.connected or not leader.epoch:
            return f"group {self.role.name}: waiting for rank 0 ({leader.address}) to launch"
        self.run_epoch = leader.epoch
        return None

    # -- watching peers --------------------------------------------------------------------------------------

    async def start(self) -> None:
        watched = self.peers.values() if self.leader else [self.peers[self.role.peers[0]]]
        self._tasks = [asyncio.create_task(self._follow(p), name=f"group peer {p.address}") for p in watched]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _follow(self, peer: PeerView) -> None:
        while True:
            try:
                async with tls.channel(peer.address, self.tls_dir) as channel:
                    stream = pb_grpc.WorkerStub(channel).Watch(pb.WatchRequest(interval_seconds=WATCH_INTERVAL_S))
                    async for sample in stream:
                        self.observe(peer, sample)
            except grpc.aio.AioRpcError:
                pass
            if peer.connected:
                self.lost(peer)
            await asyncio.sleep(RECONNECT_S)

    def observe(self, peer: PeerView, sample: pb.LoadSample) -> None:
        restarted = bool(peer.instance) and sample.agent_instance != peer.instance
        crashed_now = (
            sample.engine_crashes > peer.crashes and bool(self.run_epoch) and sample.group_epoch == self.run_epoch
        )
        peer.connected, peer.instance, peer.crashes = True, sample.agent_instance, sample.engine_crashes
        peer.epoch, peer.state = sample.group_epoch, sample.state
        peer.fetching = fetching(sample.state_detail)
        if self.leader:
            if restarted:
                self._relaunch(f"member {peer.address} restarted its agent")
            elif crashed_now:
                self._relaunch(f"member {peer.address} lost its rank process")
        elif self.run_epoch and sample.group_epoch != self.run_epoch:
            self._relaunch(f"rank 0 relaunched the group (epoch {sample.group_epoch or 'pending'})")

    def lost(self, peer: PeerView) -> None:
        peer.connected, peer.epoch = False, ""
        log.warning("group %s: lost %s", self.role.name, peer.address)
        if self.leader and self.run_epoch:
            self._relaunch(f"member {peer.address} is unreachable")

    def _relaunch(self, reason: str) -> None:
        log.warning("group %s: %s; relaunching this rank", self.role.name, reason)
        self.run_epoch = ""
        self.supervisor.request_restart(f"group {self.role.name}: {reason}")
