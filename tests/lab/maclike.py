"""Mac-like test hosts: namespace hosts (cluster/bench/netlab.py) that a headless Mac Studio's admin would meet.

Each host's SSH sessions see what a fresh Mac with Remote Login on shows a non-interactive login:
- a real non-root admin user (its own home, zsh as its login shell, as macOS's default) whose real `sudo`
  (Debian's) asks for that user's password, as sudo does for every macOS admin;
- PATH /usr/bin:/bin:/usr/sbin:/sbin, and `python3` Apple's 3.9 (a stand-in), with no Python >= 3.11 anywhere
  until `cluster install` brings one (Debian's own python3.11 is hidden from the host);
- /Library/LaunchDaemons, and stand-ins in tests/lab/macos/ for `launchctl` (launchd), `uname -s` (Darwin) and
  `sw_vers`, each saying which Apple document its behaviour comes from.
The host's view is its own mount namespace (set up before its sshd starts): an overlay on /usr/bin with the
stand-ins on top, and its own folder bound on /Library. Nothing outside the namespace changes but the test users,
their sudoers entry and an empty /Library mount point, all removed at the end. What runs in Python keeps this
machine's `sys.platform` ("linux"): the darwin branches of Python code stay tested on fixtures (tests/unit).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.lab import netns

STANDINS = Path(__file__).with_name("macos")
MAC_PATH = "/usr/bin:/bin:/usr/sbin:/sbin"  # a non-interactive SSH login's PATH on macOS
HIDDEN = ("python3.11",)  # this machine's Pythons that a fresh Mac does not have
NEEDS = ("sudo", "zsh", "nsenter", "useradd")


def available() -> str | None:
    if reason := netns.available():
        return reason
    missing = [tool for tool in NEEDS if not shutil.which(tool)]
    if missing:
        return f"needs {', '.join(missing)} (apt-get install sudo zsh; deploy/system-packages.sh installs them)"
    if not Path("/usr/bin/python3.11").exists():
        return "needs /usr/bin/python3.11 (Debian's python3.11) to make the Python archive install brings"
    return None


@dataclass
class MacHost:
    lab: netns.LabHost
    user: str
    password: str
    home: Path

    @property
    def library(self) -> Path:
        return self.lab.orchard_dir.parent / f"h{self.lab.index}-Library"

    def on_host(self, *argv: str) -> subprocess.CompletedProcess[str]:
        """Run a command as root in the host's own view (its namespace and mounts): what its launchd would do."""
        return subprocess.run(
            ["nsenter", "-t", str(self.lab.sshd_pid), "-m", "-n", *argv], capture_output=True, text=True, timeout=60
        )


@dataclass
class MacLab:
    net: netns.Lab
    hosts: list[MacHost]

    def hosts_toml(self, models: str, router_port: int, engine: str = "sim") -> str:
        """A hosts file as the admin writes it: address, user and key; no python (install brings one)."""
        lines = [f'[router]\nhost = "127.0.0.1"\nport = {router_port}\n']
        for mac in self.hosts:
            lines.append(
                f'[[hosts]]\nname = "mac{mac.lab.index}"\naddress = "{mac.lab.address}"\nuser = "{mac.user}"\n'
                f'identity_file = "{self.net.identity_file}"\nknown_hosts = "{self.net.known_hosts}"\n'
                f'engine = "{engine}"\n'
            )
        return "\n".join(lines) + "\n" + models


def python_archive(out: Path) -> Path:
    """A standalone CPython >= 3.11 in python-build-standalone's install_only layout (`python/bin/python3`,
    `python/lib/python3.X/`), made of Debian's statically linked python3.11 and its standard library."""
    archive = out / "cpython-3.11-x86_64-linux-install_only.tar.gz"
    with tarfile.open(archive, "w:gz", compresslevel=1) as tar:
        tar.add("/usr/bin/python3.11", arcname="python/bin/python3.11")
        link = tarfile.TarInfo("python/bin/python3")
        link.type, link.linkname = tarfile.SYMTYPE, "python3.11"
        tar.addfile(link)
        left_out = ("python/lib/python3.11/dist-packages", "python/lib/python3.11/EXTERNALLY-MANAGED")
        tar.add(
            "/usr/lib/python3.11",
            arcname="python/lib/python3.11",
            filter=lambda info: None if info.name.startswith(left_out) else info,
        )
    return archive


def _standins(root: Path) -> Path:
    folder = root / "standins"
    folder.mkdir()
    for tool in STANDINS.iterdir():
        text = tool.read_text()
        if text.startswith("#!/usr/bin/env python3"):  # launchd runs as root with the head's interpreter
            text = f"#!{sys.executable}\n" + text.split("\n", 1)[1]
        (folder / tool.name).write_text(text)
        (folder / tool.name).chmod(0o755)
    shutil.copy2(shutil.which("uname") or "/usr/bin/uname", folder / ".uname-real")
    for name in HIDDEN:  # overlayfs whiteouts: a 0/0 character device hides the lower file
        os.mknod(folder / name, 0o600 | 0o020000, os.makedev(0, 0))
    return folder


def _prelude(standins: Path, libraries: Path) -> netns.Prelude:
    def prelude(host: netns.LabHost) -> str:
        library = libraries / f"h{host.index}-Library"
        return f"mount -t overlay overlay -o lowerdir={standins}:/usr/bin /usr/bin\nmount --bind {library} /Library\n"

    return prelude


def _add_user(name: str, password: str, public_key: str) -> Path:
    subprocess.run(["useradd", "-m", "-s", shutil.which("zsh") or "/bin/sh", name], check=True, capture_output=True)
    subprocess.run(["chpasswd"], input=f"{name}:{password}\n", text=True, check=True, capture_output=True)
    home = Path(f"~{name}").expanduser()
    ssh = home / ".ssh"
    ssh.mkdir(mode=0o700)
    (ssh / "authorized_keys").write_text(public_key)
    subprocess.run(["chown", "-R", f"{name}:{name}", str(ssh)], check=True)
    (home / ".zshrc").touch()  # zsh's first-run wizard waits for none of this: nothing is interactive
    return home


@contextlib.contextmanager
def mac_lab(root: Path, count: int) -> Iterator[MacLab]:
    """`count` Mac-like hosts mac1..macN; everything made for them is removed on exit."""
    root.mkdir(parents=True, exist_ok=True)
    tag = secrets.token_hex(2)
    users = [f"omac{tag}{i}" for i in range(1, count + 1)]
    sudoers = Path(f"/etc/sudoers.d/orchard-lab-{tag}")
    made_library = not Path("/Library").exists()
    Path("/Library").mkdir(exist_ok=True)
    standins = _standins(root)
    for i in range(1, count + 1):
        (root / "net" / f"h{i}-Library" / "LaunchDaemons").mkdir(parents=True)
    try:
        sudoers.write_text("".join(f"{u} ALL=(ALL:ALL) ALL\n" for u in users))
        sudoers.chmod(0o440)
        with netns.lab(root / "net", count, prelude=_prelude(standins, root / "net"), login_path=MAC_PATH) as net:
            key = Path(f"{net.identity_file}.pub").read_text()
            passwords = [secrets.token_urlsafe(12) for _ in users]
            homes = [_add_user(user, password, key) for user, password in zip(users, passwords, strict=True)]
            yield MacLab(
                net, [MacHost(h, u, p, home) for h, u, p, home in zip(net.hosts, users, passwords, homes, strict=True)]
            )
    finally:
        for user in users:
            subprocess.run(["pkill", "-KILL", "-u", user], capture_output=True)
            subprocess.run(["userdel", "-r", user], capture_output=True)
        sudoers.unlink(missing_ok=True)
        if made_library:
            with contextlib.suppress(OSError):
                Path("/Library").rmdir()
