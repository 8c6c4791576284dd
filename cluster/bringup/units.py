"""Service definitions that keep a host's agent running across reboots: launchd (macOS) and systemd (Linux).

Pure text/bytes; `cluster units FILE HOST` prints the one for a host. Keys follow Apple's launchd.plist(5)
(Label, ProgramArguments, RunAtLoad, KeepAlive, WorkingDirectory, StandardOutPath, StandardErrorPath,
EnvironmentVariables, ProcessType, ThrottleInterval, UserName) and systemd.service(5).

On a Mac the agent is a LaunchDaemon running as the lab user, not a LaunchAgent: a LaunchAgent starts only
after someone logs in at the screen (`launchctl bootstrap gui/UID` over SSH fails with 125 on a headless
Mac), and macOS 15's Local Network Privacy (Apple TN3179) drops a LaunchAgent's LAN connections while it
exempts launchd daemons, which the group peers, Ray and the MLX ring need.
"""

from __future__ import annotations

import plistlib
import re
import shlex

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
