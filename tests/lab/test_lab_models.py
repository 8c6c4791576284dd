"""The model store's fan-out on real SSH hosts (network namespaces, links shaped by tc to 400 Mbit/s each way):
a model pulled into the head's store reaches every host over the lab network, the head sending about one copy;
a re-run copies nothing; a copy killed half way resumes; a corrupted file is found and copied again; a host short
of disk is refused with the reason; a 2-rank MLX pipeline gets only its layers' weight files. Needs root,
iproute2 (`ip`, `tc`) and openssh-server."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import free_port, run_cli
from tests.lab import netns

pytestmark = [pytest.mark.slow, pytest.mark.e2e]
if reason := netns.available() or (None if os.path.exists("/usr/sbin/tc") else "needs tc (apt-get install iproute2)"):
    pytestmark.append(pytest.mark.skip(reason=reason))

RATE = "400mbit"
MB = 1_000_000
SHARDS = {
    "model-00001-of-00003.safetensors": 20 * MB,
    "model-00002-of-00003.safetensors": 60 * MB,
    "model-00003-of-00003.safetensors": 60 * MB,
}
NAME = "lab/layered"
SMALL_DISK = "30m"


def layered_model(folder: Path) -> None:
    """Six layers in three weight files: the embeddings and final norm in the first, layers 0-2 in the second,
    3-5 in the third (the bytes are random: nothing loads them here)."""
    folder.mkdir(parents=True)
    config = {
        "model_type": "llama",
        "num_hidden_layers": 6,
        "hidden_size": 64,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "intermediate_size": 128,
        "vocab_size": 1000,
    }
    (folder / "config.json").write_text(json.dumps(config))
    names = list(SHARDS)
    weight_map = {"model.embed_tokens.weight": names[0], "model.norm.weight": names[0]}
    for layer in range(6):
        weight_map[f"model.layers.{layer}.mlp.up_proj.weight"] = names[1 if layer < 3 else 2]
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    for name, size in SHARDS.items():
        (folder / name).write_bytes(os.urandom(size))


@dataclass
class Lab:
    net: netns.Lab
    home: Path
    source: Path
    root: Path

    def hosts_file(self, name: str, models: str, dirs: str = "orchard") -> Path:
        for host in self.net.hosts:
            host.orchard_dir = self.root / f"h{host.index}-{dirs}"
        path = self.root / f"{name}.toml"
        path.write_text(self.net.hosts_toml(sys.executable, ["mlx"] * len(self.net.hosts), models, free_port()))
        return path

    def folder(self, host: int, dirs: str = "orchard") -> Path:
        found = list((self.root / f"h{host}-{dirs}" / "models" / NAME.replace("/", "--")).glob("*"))
        assert len(found) == 1, found
        return found[0]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    root = tmp_path_factory.mktemp("models-lab")
    small = root / "h4-orchard" / "models"

    def prelude(host: netns.LabHost) -> str:  # h4's store is a small disk of its own
        return f"mkdir -p {small} && mount -t tmpfs -o size={SMALL_DISK} tmpfs {small}" if host.index == 4 else ""

    with netns.lab(root / "net", 4, prelude=prelude) as net:
        try:
            net.shape(RATE)
        except subprocess.CalledProcessError as exc:
            pytest.skip(f"needs tc's tbf queueing (the kernel's sch_tbf): {exc.stderr.strip()}")
        layered_model(root / "layered")
        yield Lab(net, root / "home", root / "layered", root)


def models_on(hosts: list[int]) -> str:
    names = ", ".join(f'"h{i}"' for i in hosts)
    return f'[[models]]\nname = "layered"\nsource = "{NAME}"\nhosts = [{names}]\n'


def push(lab: Lab, hosts_file: Path) -> subprocess.CompletedProcess[str]:
    return run_cli(["models", "push", str(hosts_file)], lab.home, timeout_s=300)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def head_sent(output: str) -> float:
    found = re.search(r"the head sent .*?\((\d+\.\d+) copies\)", output)
    assert found, output
    return float(found.group(1))


def test_a_model_reaches_three_hosts_once_then_a_rerun_copies_nothing(lab: Lab) -> None:
    pulled = run_cli(["models", "pull", str(lab.source), "--name", NAME], lab.home)
    assert pulled.returncode == 0, pulled.stderr
    listed = json.loads(run_cli(["models", "list", "--json"], lab.home).stdout)["models"]
    assert [(m["source"], m["files"], m["verified"]) for m in listed] == [(NAME, 5, True)]

    hosts_file = lab.hosts_file("three", models_on([1, 2, 3]))
    first = push(lab, hosts_file)
    assert first.returncode == 0, first.stdout + first.stderr
    assert head_sent(first.stdout) <= 1.05, first.stdout  # the hosts passed it on to each other
    for host in (1, 2, 3):
        for name in [*SHARDS, "config.json", "model.safetensors.index.json"]:
            assert sha(lab.folder(host) / name) == sha(lab.source / name)

    again = push(lab, hosts_file)
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.count("already here (5 files verified)") == 3, again.stdout
    assert head_sent(again.stdout) == 0.0

    listed = json.loads(run_cli(["models", "list", str(hosts_file), "--json"], lab.home).stdout)["models"]
    assert listed[0]["hosts"] == {"h1": "complete", "h2": "complete", "h3": "complete", "h4": ""} or listed[0][
        "hosts"
    ] == {"h1": "complete", "h2": "complete", "h3": "complete"}


def test_a_corrupted_file_is_found_and_copied_again(lab: Lab) -> None:
    hosts_file = lab.hosts_file("three", models_on([1, 2, 3]))
    victim = lab.folder(2) / "model-00002-of-00003.safetensors"
    with victim.open("r+b") as data:  # same size, other bytes
        data.seek(1000)
        data.write(b"\xff" * 64)
    result = push(lab, hosts_file)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "h2: lab/layered copied (60.0 MB" in result.stdout, result.stdout
    assert result.stdout.count("already here (5 files verified)") == 2
    assert sha(victim) == sha(lab.source / victim.name)


def test_a_copy_killed_half_way_resumes(lab: Lab) -> None:
    hosts_file = lab.hosts_file("fresh", models_on([1]), dirs="resume")
    started = subprocess.Popen(
        [sys.executable, "-m", "cluster.cli", "models", "push", str(hosts_file)],
        env={**os.environ, "ORCHARD_HOME": str(lab.home)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    partial_dir = lab.root / "h1-resume" / "models" / NAME.replace("/", "--")
    deadline, kept = time.monotonic() + 60, 0
    while time.monotonic() < deadline and kept < 30 * MB:
        kept = sum(p.stat().st_size for p in partial_dir.rglob("partial/*") if p.is_file())
        time.sleep(0.05)
    started.send_signal(signal.SIGKILL)  # the head dies: SSH closes, the host's copy stops where it is
    started.wait()
    time.sleep(1)
    assert kept >= 30 * MB
    result = push(lab, hosts_file)
    assert result.returncode == 0, result.stdout + result.stderr
    copied = re.search(r"h1: lab/layered copied \((\d+\.\d+) MB in .*resumed after (\d+\.\d+) MB", result.stdout)
    assert copied, result.stdout
    again, resumed = float(copied.group(1)), float(copied.group(2))
    assert resumed > 0 and again <= 140 - 30, result.stdout  # what was kept (whole files, a partial) is not sent again
    for name in SHARDS:
        assert sha(lab.folder(1, "resume") / name) == sha(lab.source / name)


def test_a_host_short_of_disk_is_refused_with_the_shortfall(lab: Lab) -> None:
    hosts_file = lab.hosts_file("small", models_on([4]))
    result = push(lab, hosts_file)
    assert result.returncode == 1
    said = result.stdout + result.stderr
    assert re.search(
        r"h4: copying lab/layered refused: needs 140\.0 MB more free disk at .*h4-orchard/models: "
        r"\d+\.\d MB free, \d+\.\d MB short",
        said,
    ), said
    assert "h4 " in said and "model copy: needs 140.0 MB more free disk" in said  # the table's row


def test_a_two_rank_mlx_pipeline_gets_only_its_layers_files(lab: Lab) -> None:
    models = models_on([1, 2]) + 'mode = "pipeline"\nbackend = "mlx"\n'
    hosts_file = lab.hosts_file("pipeline", models, dirs="pipeline")
    result = push(lab, hosts_file)
    assert result.returncode == 0, result.stdout + result.stderr
    held = {i: sorted(p.name for p in lab.folder(i, "pipeline").glob("*.safetensors")) for i in (1, 2)}
    names = list(SHARDS)
    assert held == {1: [names[0], names[2]], 2: [names[0], names[1]]}  # rank 0 (h1) runs the last layers
