"""Service definitions that keep a host's agent running across reboots: launchd (macOS) and systemd (Linux).

Pure text/bytes; `cluster units FILE HOST` prints the one for a host. Keys follow Apple's launchd.plist(5)
(Label, ProgramArguments, RunAtLoad, KeepAlive, WorkingDirectory, StandardOutPath, StandardErrorPath,
EnvironmentVariables, ProcessType, ThrottleInterval) and systemd.service(5).
"""

from __future__ import annotations

import plistlib
import shlex

LAUNCHD_LABEL = "ai.orchard.agent"
SYSTEMD_NAME = "orchard-agent.service"


def launchd_plist(program: list[str], orchard_dir: str, env: dict[str, str] | None = None) -> bytes:
    """A user LaunchAgent (~/Library/LaunchAgents/ai.orchard.agent.plist), loaded with
    `launchctl bootstrap gui/$(id -u) <plist>`. KeepAlive restarts the agent if it exits."""
    plist = {
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
    return plistlib.dumps(plist)


def systemd_unit(program: list[str], orchard_dir: str, env: dict[str, str] | None = None) -> str:
    """A user unit (~/.config/systemd/user/orchard-agent.service), enabled with
    `systemctl --user enable --now orchard-agent` (and `loginctl enable-linger` to start at boot)."""
    environment = "".join(f"Environment={shlex.quote(f'{k}={v}')}\n" for k, v in sorted((env or {}).items()))
    return (
        "[Unit]\n"
        "Description=Orchard worker agent\n"
        "After=network-online.target\n\n"
        "[Service]\n"
        f"ExecStart={shlex.join(program)}\n"
        f"WorkingDirectory={orchard_dir}\n"
        f"{environment}"
        "Restart=on-failure\n"
        "RestartSec=5\n"
        "KillMode=control-group\n"  # the engine and its workers stop with the agent
        "TimeoutStopSec=30\n\n"
        "[Install]\n"
        "WantedBy=default.target\n"
    )
