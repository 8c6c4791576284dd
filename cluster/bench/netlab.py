"""A lab of SSH hosts on this machine: network namespaces joined by a bridge, each with its own address and sshd.

Needs root, iproute2 and openssh-server (`.ci/run` installs them). Key-only auth with a key made here. Every
name carries a random tag, and teardown removes namespaces, links and sshd processes whatever happened. The lab
tests (tests/lab) and the chaos benchmark build on it; `set_link` cuts and restores a host's cable.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

SUBNET = "10.213.7"  # only inside namespaces this module creates; one lab per subnet on a machine


def available() -> str | None:
    """None when the lab can be built here, else why not."""
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    for tool in ("ip", "/usr/sbin/sshd", "ssh-keygen"):
        if not shutil.which(tool):
            return f"needs {tool} (apt-get install iproute2 openssh-server)"
    return None


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, text=True)


def veth_name(tag: str, index: int) -> str:
    """The bridge-side end of host `index`'s cable (the other end is `eth0` in its namespace)."""
    return f"ov{tag}{index}"


@dataclass
class LabHost:
    index: int
    namespace: str
    address: str
    sshd_pid: int = 0
    orchard_dir: Path = field(default_factory=Path)

    def stop_sshd(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.sshd_pid, signal.SIGTERM)
        time.sleep(0.2)


@dataclass
class Lab:
    root: Path
    tag: str
    bridge: str
    identity_file: Path
    known_hosts: Path
    hosts: list[LabHost]

    def hosts_toml(
        self,
        python: str,
        engines: list[str],
        models: str,
        router_port: int,
        sim_options: Mapping[str, str] | None = None,
    ) -> str:
        """A hosts file for `cluster up`: host `hN` per namespace, `models` appended; `sim_options` on every host."""
        options = ", ".join(f'"{k}" = "{v}"' for k, v in (sim_options or {}).items())
        lines = [f'[router]\nhost = "127.0.0.1"\nport = {router_port}\n']
        for host, engine in zip(self.hosts, engines, strict=True):
            lines.append(
                f'[[hosts]]\nname = "h{host.index}"\naddress = "{host.address}"\nuser = "root"\n'
                f'identity_file = "{self.identity_file}"\nknown_hosts = "{self.known_hosts}"\n'
                f'python = "{python}"\norchard_dir = "{host.orchard_dir}"\nengine = "{engine}"\n'
                + (f"sim_options = {{ {options} }}\n" if options else "")
            )
        return "\n".join(lines) + "\n" + models

    def veth(self, host: LabHost) -> str:
        return veth_name(self.tag, host.index)

    def shape(self, rate: str | None) -> None:
        """Each host's cable at `rate` (tc's units: "200mbit") both ways: token-bucket filters on the bridge's end
        (into the host) and on its own eth0 (out of it); None takes them off. Needs tc (iproute2), sch_tbf."""
        tbf = ["root", "tbf", "rate", rate, "burst", "256kb", "latency", "50ms"] if rate else ["root"]
        for host in self.hosts:
            verb = "replace" if rate else "del"
            _run("tc", "qdisc", verb, "dev", self.veth(host), *tbf)
            _run("ip", "netns", "exec", host.namespace, "tc", "qdisc", verb, "dev", "eth0", *tbf)

    def set_link(self, host: LabHost, up: bool) -> None:
        """Plug or unplug the host's cable at the bridge: its processes live on, unreachable."""
        _run("ip", "link", "set", self.veth(host), "up" if up else "down")


def _bridge_on(subnet: str) -> str | None:
    """The link that already holds `subnet`.1 (another lab's bridge), if any."""
    shown = subprocess.run(["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True, check=False).stdout
    return next((line.split()[1] for line in shown.splitlines() if f" {subnet}.1/" in line), None)


Prelude = Callable[[LabHost], str]  # shell run in a host's own mount namespace before its sshd starts


@contextlib.contextmanager
def lab(
    root: Path, count: int, subnet: str = SUBNET, prelude: Prelude | None = None, login_path: str | None = None
) -> Iterator[Lab]:
    """`count` hosts h1..hN at `subnet`.11.. with sshd; on exit every process in them is killed, every link gone.
    `prelude` shapes each host's file system as its sessions see it (mounts in its own namespace); `login_path` is the
    PATH its SSH sessions get (default: this one's). Raises RuntimeError when another lab holds the subnet."""
    if (other := _bridge_on(subnet)) is not None:
        raise RuntimeError(f"{subnet}.0/24 is taken by {other} (another lab running?); use another subnet")
    tag = secrets.token_hex(2)
    bridge = f"ob{tag}"
    root.mkdir(parents=True, exist_ok=True)
    key, host_key = root / "id_ed25519", root / "host_ed25519"
    for path in (key, host_key):
        _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path))
    (root / "authorized_keys").write_text(Path(f"{key}.pub").read_text())
    host_pub = Path(f"{host_key}.pub").read_text().split()
    hosts = [LabHost(i, f"orch{tag}h{i}", f"{subnet}.{10 + i}") for i in range(1, count + 1)]
    Path("/run/sshd").mkdir(exist_ok=True)
    try:
        _run("ip", "link", "add", bridge, "type", "bridge")
        _run("ip", "addr", "add", f"{subnet}.1/24", "dev", bridge)
        _run("ip", "link", "set", bridge, "up")
        for host in hosts:
            _start_host(
                root, bridge, tag, host, prelude(host) if prelude else "", login_path or os.environ.get("PATH", "")
            )
        (root / "known_hosts").write_text("".join(f"{h.address} {host_pub[0]} {host_pub[1]}\n" for h in hosts))
        yield Lab(root, tag, bridge, key, root / "known_hosts", hosts)
    finally:
        for host in hosts:
            _kill_namespace(host)
        with contextlib.suppress(subprocess.CalledProcessError):
            _run("ip", "link", "del", bridge)


def _start_host(root: Path, bridge: str, tag: str, host: LabHost, prelude: str, path: str) -> None:
    veth = veth_name(tag, host.index)
    _run("ip", "netns", "add", host.namespace)
    _run("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", host.namespace)
    _run("ip", "link", "set", veth, "master", bridge, "up")
    _run("ip", "-n", host.namespace, "addr", "add", f"{host.address}/24", "dev", "eth0")
    _run("ip", "-n", host.namespace, "link", "set", "eth0", "up")
    _run("ip", "-n", host.namespace, "link", "set", "lo", "up")
    host.orchard_dir = root / f"h{host.index}-orchard"
    config = root / f"sshd-h{host.index}.conf"
    pidfile = root / f"sshd-h{host.index}.pid"
    config.write_text(
        f"Port 22\nListenAddress {host.address}\nHostKey {root / 'host_ed25519'}\nPidFile {pidfile}\n"
        f"AuthorizedKeysFile {root / 'authorized_keys'} .ssh/authorized_keys\nPermitRootLogin prohibit-password\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
        "Subsystem sftp internal-sftp\n"  # as a Mac with Remote Login on: `cluster install` copies over SFTP
        f"SetEnv PATH={path or '/usr/bin:/bin'}\n"
    )
    sshd = f"exec /usr/sbin/sshd -f {shlex.quote(str(config))} -E {shlex.quote(str(root / f'sshd-h{host.index}.log'))}"
    _run("ip", "netns", "exec", host.namespace, "/bin/sh", "-ec", f"{prelude}\n{sshd}" if prelude else sshd)
    deadline = time.monotonic() + 10
    written = ""
    while not written and time.monotonic() < deadline:  # sshd creates the file, then writes its pid
        with contextlib.suppress(FileNotFoundError):
            written = pidfile.read_text().strip()
        if not written:
            time.sleep(0.05)
    if not written:
        raise RuntimeError(f"sshd for {host.namespace} wrote no pid to {pidfile} within 10 s")
    host.sshd_pid = int(written)


def pids_in(namespace: str) -> list[int]:
    result = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True, check=False)
    return [int(p) for p in result.stdout.split()]


def argv_of(pid: int) -> list[str]:
    """A process's command line as its argv ([] once it is gone)."""
    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
        raw = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0")
        return [part.decode(errors="replace") for part in raw.split(b"\0")] if raw else []
    return []


def runs_module(argv: Sequence[str], module: str) -> bool:
    """True when `argv` is a Python running `-m module`: the interpreter's own -m, not one in the argv it passes
    on (a keeper, `python -m worker.keeper … -- python -m worker.agent …`, is not the agent)."""
    i = 1
    while i < len(argv):
        if argv[i] == "-m":
            return list(argv[i + 1 : i + 2]) == [module]
        if argv[i] in ("-X", "-W"):  # interpreter options with a value
            i += 2
            continue
        if not argv[i].startswith("-") or argv[i] in ("-", "-c", "--"):
            return False
        i += 1
    return False


def running(host: LabHost, module: str) -> list[int]:
    """Pids of the processes in the host's namespace that run `python -m module`."""
    return [pid for pid in pids_in(host.namespace) if runs_module(argv_of(pid), module)]


def leftovers(host: LabHost) -> list[str]:
    """Command lines of the processes in a host's namespace other than its sshd (for assertion messages)."""
    found = []
    for pid in pids_in(host.namespace):
        if pid == host.sshd_pid:
            continue
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            found.append(f"{pid}: " + Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:200])
    return found


def _kill_namespace(host: LabHost) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids_in(host.namespace):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + 5
        while pids_in(host.namespace) and time.monotonic() < deadline:
            time.sleep(0.1)
    with contextlib.suppress(subprocess.CalledProcessError):
        _run("ip", "netns", "del", host.namespace)
