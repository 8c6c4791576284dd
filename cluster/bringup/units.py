"""Service definitions that keep a host's agent running across reboots: launchd (macOS) and systemd (Linux).

Pure text/bytes; `cluster units FILE HOST` prints the one for a host. Keys follow Apple's launchd.plist(5)
(Label, ProgramArguments, RunAtLoad, KeepAlive, WorkingDirectory, StandardOutPath, StandardErrorPath,
EnvironmentVariables, ProcessType, ThrottleInterval, UserName) and systemd.service(5).

On a Mac the agent is a LaunchDaemon running as the lab user, not a LaunchAgent: a LaunchAgent starts only
after someone logs in at the screen (`launchctl bootstrap gui/UID` over SSH fails with 125 on a headless
Mac), and macOS 15's Local Network Privacy (Apple TN3179) drops a LaunchAgent's LAN connections while it
exempts launchd daemons, which the group peers, Ray and the MLX ring need.

The head's router is a service of the head too (`RouterService`, `cluster up --install-service`), for the same
reasons a LaunchDaemon on a Mac and a user unit on Linux (a system unit when run as root). It has two slots,
`a` and `b`: a planned restart starts the new router in the free slot, it takes the listening socket from the
running one (cluster.router.handover), and only then is the old slot stopped, so nothing is refused; one slot is
enabled at a time, so a reboot starts one router. Its systemctl/launchctl calls go through an injected `Runner`.
"""

from __future__ import annotations

import getpass
import math
import os
import plistlib
import re
import shlex
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from worker.shared import procs
from worker.shared.launch import RouterConfig

LAUNCHD_LABEL = "ai.orchard.agent"
SYSTEMD_NAME = "orchard-agent.service"


LAUNCH_DAEMONS = "/Library/LaunchDaemons"
EXIT_TIMEOUT_S = 30  # launchd's SIGKILL after SIGTERM; the reload below waits a little longer than this


def launchd_plist(
    program: list[str], orchard_dir: str, env: dict[str, str] | None = None, user: str | None = None
) -> bytes:
    """The agent's launchd job. With `user`: a LaunchDaemon (/Library/LaunchDaemons/ai.orchard.agent.plist,
    `launchctl bootstrap system …`) that runs as that user from boot; KeepAlive restarts it if it exits."""
    plist: dict[str, object] = {
        "Label": LAUNCHD_LABEL,
        "ProgramArguments": program,
        "RunAtLoad": True,
        "KeepAlive": {"SuccessfulExit": False},
        "WorkingDirectory": orchard_dir,
        "StandardOutPath": f"{orchard_dir}/logs/agent.log",
        "StandardErrorPath": f"{orchard_dir}/logs/agent.log",
        "EnvironmentVariables": dict(env or {}),
        "ProcessType": "Interactive",  # not throttled like Background jobs: it serves requests
        "ThrottleInterval": 10,
    }
    if user:
        plist["UserName"] = user
        plist["ExitTimeOut"] = EXIT_TIMEOUT_S  # the agent drains gRPC and stops its engine before it exits
    return plistlib.dumps(plist)


def root_prefix() -> str:
    """POSIX sh: `$S CMD` runs CMD as root — directly as root, with `sudo -n`, or with the password the head sends
    on stdin (cluster/bringup/sudo.py), read once into a variable and given to `sudo -S` by the built-in printf
    (never on a command line). Exits 77 with the way out when none of these works."""
    return (
        'S=""; _pw() { printf "%s\\n" "$ORCHARD_PW" | sudo -S -p "" "$@"; }; '
        'if [ "$(id -u)" != 0 ]; then if sudo -n true 2>/dev/null; then S="sudo -n"; else '
        "IFS= read -r ORCHARD_PW || true; S=_pw; "
        '[ -n "$ORCHARD_PW" ] || { echo "installing the LaunchDaemon needs root: sudo wants a password for '
        '$(id -un) (cluster up asks for it on a terminal), or give $(id -un) sudo without one" >&2; exit 77; }; '
        '_pw true 2>/dev/null || { echo "sudo did not accept the password for $(id -un)" >&2; exit 77; }; '
        "fi; fi; "
    )


def launchd_load_script(staged: str, label: str = LAUNCHD_LABEL, daemons: str = LAUNCH_DAEMONS) -> str:
    """POSIX sh (macOS /bin/sh is bash 3.2): put the staged plist in place (root:wheel, 644) and (re)load it.

    `bootout` returns before launchd has let go of the job, and a `bootstrap` meanwhile fails with 5
    (Input/output error) for a few seconds; so wait until `launchctl print` no longer knows the job, then
    bootstrap, retrying on 5 for up to ten seconds. Other exits are reported as they are."""
    target = f"{daemons}/{label}.plist"
    return (
        root_prefix() + f"$S install -m 644 -o 0 -g 0 {shlex.quote(staged)} {shlex.quote(target)} || exit 1; "
        f"$S launchctl bootout system/{label} >/dev/null 2>&1; "
        f"n=0; while $S launchctl print system/{label} >/dev/null 2>&1; do n=$((n+1)); "
        f"if [ $n -ge {EXIT_TIMEOUT_S * 5 + 25} ]; then "
        f'echo "launchd still holds {label} {EXIT_TIMEOUT_S + 5} s after bootout" >&2; exit 1; fi; '
        "sleep 0.2; done; "
        f"n=0; while :; do out=$($S launchctl bootstrap system {shlex.quote(target)} 2>&1) && break; code=$?; "
        'n=$((n+1)); if [ "$code" != 5 ] || [ $n -ge 25 ]; then '
        'echo "launchctl bootstrap failed ($code): $out" >&2; exit $code; fi; sleep 0.4; done'
    )


def launchd_unload_script(label: str = LAUNCHD_LABEL, daemons: str = LAUNCH_DAEMONS) -> str:
    """POSIX sh: unload and remove the LaunchDaemon if there is one; prints 1 if there was, else 0."""
    target = f"{daemons}/{label}.plist"
    return (
        f"if [ ! -f {shlex.quote(target)} ]; then echo 0; exit 0; fi; "
        + root_prefix()
        + f"$S launchctl bootout system/{label} >/dev/null 2>&1; $S rm -f {shlex.quote(target)}; echo 1"
    )


def systemd_unit(program: list[str], orchard_dir: str, env: dict[str, str] | None = None) -> str:
    """A user unit (~/.config/systemd/user/orchard-agent.service), enabled with
    `systemctl --user enable --now orchard-agent` (and `loginctl enable-linger` to start at boot)."""
    environment = "".join(f"Environment={_quoted(shlex.quote(f'{k}={v}'))}\n" for k, v in sorted((env or {}).items()))
    if any(_CONTROL.search(part) for part in (*program, orchard_dir, *(env or {}).values())):
        raise ValueError("a control character (newline, tab, …) cannot be written into a systemd unit")
    return (
        "[Unit]\n"
        "Description=Orchard worker agent\n"
        "After=network-online.target\n\n"
        "[Service]\n"
        f"ExecStart={_command(shlex.join(program))}\n"
        f"WorkingDirectory={_specifiers(orchard_dir)}\n"
        f"{environment}"
        "Restart=on-failure\n"
        "RestartSec=5\n"
        "KillMode=control-group\n"  # the engine and its workers stop with the agent
        "TimeoutStopSec=30\n\n"
        "[Install]\n"
        "WantedBy=default.target\n"
    )


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _specifiers(text: str) -> str:
    """systemd expands `%` specifiers in every setting: doubled, they stay literal."""
    return text.replace("%", "%%")


def _quoted(text: str) -> str:
    """A setting systemd unquotes (Environment=): backslashes are its C escapes, so they are doubled too."""
    return _specifiers(text.replace("\\", "\\\\"))


def _command(text: str) -> str:
    """ExecStart=: unquoted like Environment=, and `$` expands variables there, even inside quotes."""
    return _quoted(text).replace("$", "$$")


# -- the head's router --------------------------------------------------------------------------------------

ROUTER_LABEL = "ai.orchard.router"  # a slot's job: ai.orchard.router.a
ROUTER_UNIT = "orchard-router"  # a slot's unit: orchard-router-a.service
SYSTEM_UNITS = "/etc/systemd/system"
SLOTS = ("a", "b")
Slot = Literal["a", "b"]
SERVICE_PATH = "/usr/bin:/bin:/usr/sbin:/sbin"  # the router runs its venv's python by absolute path
COMMAND_TIMEOUT_S = 120.0  # a stop that waits for streams (shutdown grace) or launchd letting go (above)
Runner = Callable[[list[str], str | None], str]  # argv and stdin in, stdout out; raises ServiceError


class ServiceError(Exception):
    """A service manager refused a step; the message is its own, with the command."""


def run_here(argv: list[str], stdin: str | None) -> str:
    """The Runner of this machine: argv with `stdin` (else /dev/null), bounded by COMMAND_TIMEOUT_S."""
    source = {"input": stdin} if stdin is not None else {"stdin": subprocess.DEVNULL}
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, check=False, **source)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ServiceError(f"`{shlex.join(argv)[:80]}`: {exc}") from None
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        raise ServiceError(f"`{shlex.join(argv)[:80]}` failed: {lines[-1] if lines else f'exit {done.returncode}'}")
    return done.stdout


def router_log(home: str) -> str:
    return f"{home}/logs/router.log"  # the lab's log folder, where a detached router writes too


def router_plist(config: RouterConfig, home: str, label: str, env: dict[str, str], user: str | None) -> bytes:
    """A LaunchDaemon (as `user`) running exactly `config.command()`; KeepAlive restarts a router that failed,
    ExitTimeOut lets a stopped one finish its streams."""
    plist: dict[str, object] = {
        "Label": label,
        "ProgramArguments": config.command(),
        "RunAtLoad": True,
        "KeepAlive": {"SuccessfulExit": False},
        "WorkingDirectory": home,
        "StandardOutPath": router_log(home),
        "StandardErrorPath": router_log(home),
        "EnvironmentVariables": dict(env),
        "ProcessType": "Interactive",
        "ThrottleInterval": 5,
        "ExitTimeOut": math.ceil(config.shutdown_grace_s) + 5,
    }
    if user:
        plist["UserName"] = user
    return plistlib.dumps(plist)


def router_unit(config: RouterConfig, home: str, env: dict[str, str], system: bool) -> str:
    """A systemd unit running exactly `config.command()`: restarted on failure (not after exit 2, a refusal
    that trying again cannot help), given the shutdown grace to finish its streams when stopped."""
    program = config.command()
    if any(_CONTROL.search(part) for part in (*program, home, *env.values())):
        raise ValueError("a control character (newline, tab, …) cannot be written into a systemd unit")
    environment = "".join(f"Environment={_quoted(shlex.quote(f'{k}={v}'))}\n" for k, v in sorted(env.items()))
    wants = "Wants=network-online.target\n" if system else ""  # a user manager has no network targets
    return (
        "[Unit]\n"
        "Description=Orchard router\n"
        f"After=network-online.target\n{wants}\n"
        "[Service]\n"
        f"ExecStart={_command(shlex.join(program))}\n"
        f"WorkingDirectory={_specifiers(home)}\n"
        f"{environment}"
        f"StandardOutput=append:{_specifiers(router_log(home))}\n"
        "StandardError=inherit\n"
        "Restart=on-failure\n"
        "RestartSec=5\n"
        "RestartPreventExitStatus=2\n"
        f"TimeoutStopSec={math.ceil(config.shutdown_grace_s) + 5}\n\n"
        "[Install]\n"
        f"WantedBy={'multi-user.target' if system else 'default.target'}\n"
    )


def _no_password() -> str | None:
    return None


@dataclass(frozen=True)
class RouterService:
    """The head's router under this machine's service manager, in slot `a` or `b` (see the module's doc).

    macOS: a LaunchDaemon running as `user` (root installs it: `root_stdin` gives the sudo password line the
    load script reads, see root_prefix). Linux: a user unit (`systemctl --user`, with lingering so that it
    starts at boot without a login), or a system unit when `as_root`."""

    platform: Literal["darwin", "linux"]
    home: Path  # the lab's ~/.orchard: logs, a LaunchDaemon's staged plist
    user: str
    user_home: str
    as_root: bool
    units_dir: Path
    run: Runner = run_here
    root_stdin: Callable[[], str | None] = _no_password
    say: Callable[[str], None] = print
    systemd_booted: Callable[[], bool] = lambda: Path("/run/systemd/system").is_dir()

    @classmethod
    def here(
        cls,
        home: Path,
        run: Runner = run_here,
        root_stdin: Callable[[], str | None] = _no_password,
        say: Callable[[str], None] = print,
    ) -> RouterService:
        darwin, as_root = sys.platform == "darwin", os.geteuid() == 0
        units = LAUNCH_DAEMONS if darwin else SYSTEM_UNITS if as_root else str(Path.home() / ".config/systemd/user")
        return cls(
            "darwin" if darwin else "linux",
            home,
            getpass.getuser(),
            str(Path.home()),
            as_root,
            Path(units),
            run,
            root_stdin,
            say,
        )

    @property
    def manager(self) -> str:
        return "launchd" if self.platform == "darwin" else "systemd"

    def unavailable(self) -> str | None:
        """Why this machine's service manager cannot run the router (None: it can). launchd always runs; systemd
        only where it booted the machine (its own test, sd_booted: /run/systemd/system), not in a container."""
        if self.platform == "darwin" or self.systemd_booted():
            return None
        return "this machine was not booted by systemd (no /run/systemd/system)"

    def name(self, slot: Slot) -> str:
        return f"{ROUTER_LABEL}.{slot}" if self.platform == "darwin" else f"{ROUTER_UNIT}-{slot}.service"

    def path(self, slot: Slot) -> Path:
        return self.units_dir / (f"{self.name(slot)}.plist" if self.platform == "darwin" else self.name(slot))

    def definition(self, config: RouterConfig, slot: Slot) -> bytes:
        env = {"HOME": self.user_home, "PATH": SERVICE_PATH}
        if self.platform == "darwin":
            return router_plist(config, str(self.home), self.name(slot), env, None if self.as_root else self.user)
        return router_unit(config, str(self.home), env, self.as_root).encode()

    def start(self, config: RouterConfig, slot: Slot) -> None:
        """Install `slot` with `config`, enabled at boot, and (re)start it. Raises ServiceError."""
        procs.open_log(Path(router_log(str(self.home)))).close()  # ours and private before the manager opens it
        if self.platform == "darwin":
            staged = self.home / f"{self.name(slot)}.plist"  # the load script installs it as root's
            staged.write_bytes(self.definition(config, slot))
            script = launchd_load_script(str(staged), self.name(slot), str(self.units_dir))
            self.run(["/bin/sh", "-c", script], self.root_stdin())
            return
        self.path(slot).parent.mkdir(parents=True, exist_ok=True)
        self.path(slot).write_bytes(self.definition(config, slot))
        for step in (["daemon-reload"], ["enable", self.name(slot)], ["restart", self.name(slot)]):
            self.run(self._systemctl(*step), None)
        if not self.as_root:
            self._linger()

    def main_pid(self, slot: Slot) -> int | None:
        """The process the manager runs for `slot` now, if it runs one."""
        try:
            if self.platform == "darwin":
                found = re.search(
                    r"^\s*pid = (\d+)\s*$",
                    self.run(["launchctl", "print", f"system/{self.name(slot)}"], None),
                    re.MULTILINE,
                )
                return int(found.group(1)) if found else None
            pid = self.run(self._systemctl("show", "--property=MainPID", "--value", self.name(slot)), None).strip()
        except ServiceError:  # not loaded
            return None
        return int(pid) if pid.isdigit() and int(pid) > 0 else None

    def retire(self, slot: Slot) -> None:
        """After a hand-over (or one that failed): `slot` no longer starts at boot, and is stopped without waiting
        for its router, which finishes its streams (the shutdown grace). Raises ServiceError."""
        if self.platform == "darwin":
            if self.path(slot).exists():
                self.run(
                    ["/bin/sh", "-c", launchd_unload_script(self.name(slot), str(self.units_dir))], self.root_stdin()
                )
            return
        self.run(self._systemctl("disable", self.name(slot)), None)
        self.run(self._systemctl("stop", "--no-block", self.name(slot)), None)

    def remove(self) -> list[Slot]:
        """`cluster down`: stop every installed slot (its router's streams finish first) and remove it; the
        slots that were installed. Raises ServiceError."""
        found: list[Slot] = [slot for slot in ("a", "b") if self.path(slot).exists()]
        for slot in found:
            if self.platform == "darwin":
                self.retire(slot)
                continue
            self.run(self._systemctl("disable", "--now", self.name(slot)), None)
            self.path(slot).unlink(missing_ok=True)
        if found and self.platform == "linux":
            self.run(self._systemctl("daemon-reload"), None)
        return found

    def _systemctl(self, *args: str) -> list[str]:
        return ["systemctl", *([] if self.as_root else ["--user"]), *args]

    def _linger(self) -> None:
        """A user's units start at boot only with lingering on; it is asked for, and said when refused."""
        try:
            if self.run(["loginctl", "show-user", self.user, "--property=Linger", "--value"], None).strip() == "yes":
                return
            self.run(["loginctl", "enable-linger", self.user], None)
        except ServiceError as exc:
            self.say(
                f"router: it starts at boot only once someone runs `sudo loginctl enable-linger {self.user}` ({exc})"
            )


def other_slot(slot: Slot | Literal[""]) -> Slot:
    """The slot a hand-over starts the new router in ("": none is installed yet)."""
    return "b" if slot == "a" else "a"
