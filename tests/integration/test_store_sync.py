"""`python -m worker.store.sync` as the head runs it on each host, here as local processes over loopback HTTP:
a file still arriving is passed on down the chain; a peer's bad copy is caught by its hash and copied again
from the head; a source that keeps sending wrong bytes is refused, naming the file."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from worker.shared.store.folder import ModelFolder
from worker.shared.store.manifest import Manifest, ModelFile
from worker.shared.store.messages import SyncEvent, SyncOrder, SyncSources
from worker.shared.store.serve import FileServer

TOKEN = "push-token"


class Sync:
    def __init__(self, root: Path, manifest: Manifest) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "worker.store.sync"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        order = SyncOrder(
            root=str(root),
            manifest=manifest,
            wanted=tuple(f.path for f in manifest.files),
            bind="127.0.0.1",
            token=TOKEN,
        )
        self.send(order.model_dump_json())
        self.ready = self.event()
        assert self.ready.kind == "ready", self.ready
        self.url = f"http://127.0.0.1:{self.ready.port}"

    def send(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def event(self) -> SyncEvent:
        assert self.process.stdout is not None
        return SyncEvent.model_validate_json(self.process.stdout.readline())

    def pull(self, sources: dict[str, tuple[str, ...]]) -> None:
        self.send(SyncSources(sources=sources).model_dump_json())

    def outcome(self) -> SyncEvent:
        while (event := self.event()).kind == "progress":
            pass
        return event

    def close(self) -> SyncEvent:
        assert self.process.stdin is not None
        self.process.stdin.close()
        closed = self.event()
        assert self.process.wait(timeout=10) == 0
        return closed


@pytest.fixture
def syncs() -> Iterator[list[Sync]]:
    started: list[Sync] = []
    yield started
    for sync in started:
        sync.process.kill()


def model(folder: ModelFolder, size: int) -> tuple[Manifest, bytes]:
    data = os.urandom(size)
    file = ModelFile(path="model.safetensors", size=size, sha256=hashlib.sha256(data).hexdigest())
    return Manifest(source="test/model", revision="r1", files=(file,)), data


def test_a_file_still_arriving_is_passed_down_the_chain(tmp_path: Path, syncs: list[Sync]) -> None:
    head = ModelFolder(tmp_path / "head")
    manifest, data = model(head, 24_000_000)
    file = manifest.files[0]
    partial = head.partial(file)
    partial.parent.mkdir(parents=True)
    partial.write_bytes(b"")
    server = FileServer(head, manifest, TOKEN, expecting=lambda _path: not (head.path / file.path).exists())
    head_url = f"http://127.0.0.1:{server.start('127.0.0.1')}"

    def arrive() -> None:  # the head's own copy grows by 1 MB every 20 ms, then is renamed into place
        with partial.open("ab") as out:
            for start in range(0, len(data), 1_000_000):
                out.write(data[start : start + 1_000_000])
                out.flush()
                time.sleep(0.02)
        os.replace(partial, head.path / file.path)

    try:
        a, b = Sync(tmp_path / "a", manifest), Sync(tmp_path / "b", manifest)
        syncs += [a, b]
        growing = threading.Thread(target=arrive)
        growing.start()
        a.pull({file.path: (head_url,)})
        b.pull({file.path: (a.url, head_url)})
        assert a.outcome().kind == "done" and b.outcome().kind == "done"
        growing.join()
        for host in ("a", "b"):
            assert (tmp_path / host / "test--model" / "r1" / file.path).read_bytes() == data
        assert (a.close().served, b.close().served, server.served) == (len(data), 0, len(data))
    finally:
        server.stop()


def test_a_peers_bad_copy_is_copied_again_from_the_head(tmp_path: Path, syncs: list[Sync]) -> None:
    head = ModelFolder(tmp_path / "head")
    manifest, data = model(head, 3_000_000)
    file = manifest.files[0]
    head.path.mkdir(parents=True)
    (head.path / file.path).write_bytes(data)
    peer = ModelFolder.of(tmp_path / "peer", manifest.source, manifest.revision)
    peer.path.mkdir(parents=True)
    (peer.path / file.path).write_bytes(data)
    peer.record(file)
    stat = (peer.path / file.path).stat()
    with (peer.path / file.path).open("r+b") as out:  # the disk flips bytes after the check, mtime unchanged
        out.write(b"\x00" * 16)
    os.utime(peer.path / file.path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    server = FileServer(head, manifest, TOKEN)
    head_url = f"http://127.0.0.1:{server.start('127.0.0.1')}"
    try:
        holder, fresh = Sync(tmp_path / "peer", manifest), Sync(tmp_path / "fresh", manifest)
        syncs += [holder, fresh]
        assert holder.ready.have == (file.path,)  # by its record
        holder.pull({})
        fresh.pull({file.path: (holder.url, head_url)})
        assert holder.outcome().kind == "done"
        done = fresh.outcome()
        assert (done.kind, done.recopied) == ("done", (file.path,))
        assert (tmp_path / "fresh" / "test--model" / "r1" / file.path).read_bytes() == data
    finally:
        server.stop()


def test_a_source_that_keeps_sending_wrong_bytes_is_refused_naming_the_file(tmp_path: Path, syncs: list[Sync]) -> None:
    head = ModelFolder(tmp_path / "head")
    manifest, data = model(head, 1_000_000)
    head.path.mkdir(parents=True)
    (head.path / "model.safetensors").write_bytes(b"\x01" + data[1:])  # the head's copy is damaged too
    server = FileServer(head, manifest, TOKEN)
    head_url = f"http://127.0.0.1:{server.start('127.0.0.1')}"
    try:
        host = Sync(tmp_path / "h", manifest)
        syncs.append(host)
        host.pull({"model.safetensors": (head_url,)})
        failed = host.outcome()
        assert failed.kind == "failed"
        assert failed.reason == "model.safetensors: content differs from the published hash (copied twice)"
        assert not (tmp_path / "h" / "test--model" / "r1" / "model.safetensors").exists()
    finally:
        server.stop()


def test_a_host_that_gave_up_sends_its_peers_to_the_head_at_once(tmp_path: Path, syncs: list[Sync]) -> None:
    data = {"a.safetensors": os.urandom(500_000), "b.safetensors": os.urandom(500_000)}
    files = tuple(
        ModelFile(path=path, size=len(body), sha256=hashlib.sha256(body).hexdigest()) for path, body in data.items()
    )
    manifest = Manifest(source="test/model", revision="r1", files=files)
    head = ModelFolder(tmp_path / "head")
    head.path.mkdir(parents=True)
    for path, body in data.items():
        (head.path / path).write_bytes(body)
    server = FileServer(head, manifest, TOKEN)
    head_url = f"http://127.0.0.1:{server.start('127.0.0.1')}"
    try:
        failing, next_one = Sync(tmp_path / "failing", manifest), Sync(tmp_path / "next", manifest)
        syncs += [failing, next_one]
        failing.pull({"b.safetensors": (head_url,)})  # no source for a: it gives up on its first file
        assert failing.outcome().reason == "a.safetensors: no source to copy it from"
        began = time.monotonic()
        next_one.pull({path: (failing.url, head_url) for path in data})
        assert next_one.outcome().kind == "done"
        assert time.monotonic() - began < 5  # not the 20 s a peer waits for a copy still coming
        assert failing.close().served == 0 and server.served == sum(len(b) for b in data.values())
    finally:
        server.stop()
