"""`python -m cluster.bench fanout`: the time to put one model on N = 1, 2, 3 hosts over shaped links, the store's
pipeline (each host passes the files on as they arrive) against N copies from the head one after the other, and
the bytes the head sent. Root: a lab of SSH hosts in network namespaces (netlab.py), each link shaped by tc.

The model is the bundled one (about 540 MB) unless `--size-mb` asks for random weight files of that size.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from cluster.bench import netlab
from cluster.bringup import remote
from cluster.placement import hostsfile
from cluster.store import catalog, push
from worker.shared.store.messages import gb


@dataclass
class Run:
    hosts: int
    seconds: float
    head_sent: int


def model_folder(root: Path, size_mb: int | None) -> tuple[Path, str]:
    if size_mb is None:
        from worker.shared.models import BUNDLED_NAME, prepare_bundled

        return prepare_bundled(), BUNDLED_NAME
    folder = root / "random-model"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "llama"}\n')
    for index in range(3):
        (folder / f"model-0000{index + 1}-of-00003.safetensors").write_bytes(os.urandom(size_mb * 1_000_000 // 3))
    return folder, "bench/random"


async def _push(spec: hostsfile.ClusterSpec, labels: list[str], entry: catalog.Entry, chain: bool) -> Run:
    hosts = [h for h in spec.hosts if h.label in labels]
    conns = [await remote.connect(h) for h in hosts]
    try:
        files = tuple(f.path for f in entry.manifest.files)
        targets = [push.Target(h, c, files) for h, c in zip(hosts, conns, strict=True)]
        done = await push.push(entry, targets, lambda _line: None, chain=chain)
    finally:
        for conn in conns:
            conn.close()
    if failed := {label: c.reason for label, c in done.hosts.items() if c.reason}:
        raise RuntimeError(f"copy failed: {failed}")
    return Run(len(hosts), done.seconds, done.head_sent)


async def _sftp(spec: hostsfile.ClusterSpec, label: str, entry: catalog.Entry) -> float:
    """The baseline transport: the same files to one host with asyncssh's SFTP client, one after another."""
    host = next(h for h in spec.hosts if h.label == label)
    target = f"{host.orchard_dir}/sftp-copy"
    conn = await remote.connect(host)
    try:
        async with conn.start_sftp_client() as sftp:
            await sftp.makedirs(target, exist_ok=True)
            began = time.monotonic()
            for file in entry.manifest.files:
                await sftp.put(str(entry.folder.path / file.path), f"{target}/{file.path}")
            seconds = time.monotonic() - began
    finally:
        conn.close()
    return seconds


def _fresh(net: netlab.Lab) -> None:
    for host in net.hosts:
        shutil.rmtree(host.orchard_dir / "models", ignore_errors=True)
        shutil.rmtree(host.orchard_dir / "sftp-copy", ignore_errors=True)


async def measure(net: netlab.Lab, spec: hostsfile.ClusterSpec, entry: catalog.Entry) -> tuple[list[Run], list[Run]]:
    labels = [h.label for h in spec.hosts]
    piped, sequential = [], []
    for n in range(1, len(labels) + 1):
        _fresh(net)
        piped.append(await _push(spec, labels[:n], entry, chain=True))
    _fresh(net)
    seconds, sent = 0.0, 0
    for n in range(1, len(labels) + 1):  # the baseline: one host after the other, each from the head
        one = await _push(spec, [labels[n - 1]], entry, chain=False)
        seconds, sent = seconds + one.seconds, sent + one.head_sent
        sequential.append(Run(n, seconds, sent))
    return piped, sequential


async def transports(spec: hostsfile.ClusterSpec, entry: catalog.Entry) -> tuple[float, float]:
    """One copy to one host: the store's HTTP pull against SFTP over the same link."""
    label = spec.hosts[0].label
    http = (await _push(spec, [label], entry, chain=True)).seconds
    return http, await _sftp(spec, label, entry)


def run(hosts: int, rate: str, size_mb: int | None, console: Console) -> None:
    if why := netlab.available():
        raise SystemExit(f"the fanout benchmark {why}")
    with tempfile.TemporaryDirectory(prefix="orchard-fanout-") as tmp:
        root = Path(tmp)
        source, name = model_folder(root, size_mb)
        entry = catalog.import_folder(root / "home", source, name)
        with netlab.lab(root / "net", hosts, subnet="10.213.9") as net:
            net.shape(rate)
            for host in net.hosts:
                host.orchard_dir = root / f"h{host.index}"
            text = net.hosts_toml(sys.executable, ["mlx"] * hosts, '[[models]]\nname = "m"\nsource = "m"\n', 8000)
            spec = hostsfile.parse(text, root / "bench.toml")
            piped, sequential = asyncio.run(measure(net, spec, entry))
            _fresh(net)
            shaped = asyncio.run(transports(spec, entry))
            net.shape(None)
            _fresh(net)
            unshaped = asyncio.run(transports(spec, entry))
    size = entry.manifest.size
    table = Table(title=f"one model ({gb(size)}, {len(entry.manifest.files)} files) onto N hosts, links {rate}")
    for column in ("N", "pipeline s", "head sent", "sequential s", "head sent", "time ratio", "vs one copy"):
        table.add_column(column, justify="right")
    for p, s in zip(piped, sequential, strict=True):
        table.add_row(
            str(p.hosts),
            f"{p.seconds:.1f}",
            f"{p.head_sent / size:.2f} copies",
            f"{s.seconds:.1f}",
            f"{s.head_sent / size:.2f} copies",
            f"{s.seconds / p.seconds:.2f}x",
            f"{p.seconds / piped[0].seconds:.2f}x",
        )
    console.print(table)
    both = Table(title="one copy to one host: transport")
    for column in ("link", "HTTP pull s", "SFTP s", "SFTP / HTTP"):
        both.add_column(column, justify="right")
    for link, (http, sftp) in ((rate, shaped), ("unshaped (veth)", unshaped)):
        both.add_row(link, f"{http:.1f}", f"{sftp:.1f}", f"{sftp / http:.2f}x")
    console.print(both)
