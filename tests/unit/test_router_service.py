"""The head's router as a service: the unit and plist it runs from, and the systemctl/launchctl calls that
install, start, hand over, find and remove it, against a fake runner (no service manager runs here)."""

from __future__ import annotations

import configparser
import dataclasses
import plistlib
import re
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import pytest

from cluster.bringup.units import (
    RouterService,
    ServiceError,
    other_slot,
    router_plist,
    router_unit,
)
from worker.shared.launch import RouterConfig

CONFIG = RouterConfig(
    listen="0.0.0.0:8000",
    workers=("10.0.0.2:50051",),
    handover="/home/lab/.orchard/router.sock",
    gateway_db="/home/lab/.orchard/gateway.db",
    tls_dir="/home/lab/.orchard/tls/router",
)
ENV = {"HOME": "/home/lab", "PATH": "/usr/bin:/bin"}


class FakeRunner:
    """Records each call (argv, stdin); answers from `replies` by the first words of a call, or raises."""

    def __init__(self, replies: dict[str, str | ServiceError] | None = None) -> None:
        self.calls: list[tuple[list[str], str | None]] = []
        self.replies = replies or {}

    def __call__(self, argv: list[str], stdin: str | None) -> str:
        self.calls.append((argv, stdin))
        line = shlex.join(argv)
        for start, reply in self.replies.items():
            if line.startswith(start):
                if isinstance(reply, ServiceError):
                    raise reply
                return reply
        return ""

    @property
    def argvs(self) -> list[list[str]]:
        return [argv for argv, _ in self.calls]


def _service(
    tmp_path: Path,
    platform: Literal["darwin", "linux"],
    run: FakeRunner,
    as_root: bool = False,
    root_stdin: Callable[[], str | None] = lambda: None,
    said: list[str] | None = None,
) -> RouterService:
    home = tmp_path / "orchard"
    home.mkdir(exist_ok=True)
    return RouterService(
        platform,
        home,
        "lab",
        "/home/lab",
        as_root,
        tmp_path / "units",
        run,
        root_stdin,
        (said if said is not None else []).append,
    )


def _unit(text: str) -> configparser.ConfigParser:
    unit = configparser.ConfigParser(interpolation=None, strict=False)  # Environment= repeats
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string(text)
    return unit


def test_the_router_unit_runs_exactly_the_configs_command_and_restarts_only_on_failure() -> None:
    unit = _unit(router_unit(CONFIG, "/home/lab/.orchard", ENV, system=False))
    service = unit["Service"]
    assert shlex.split(service["ExecStart"]) == CONFIG.command()
    assert service["Restart"] == "on-failure" and service["RestartPreventExitStatus"] == "2"
    assert service["StandardOutput"] == "append:/home/lab/.orchard/logs/router.log"
    assert service["StandardError"] == "inherit" and service["WorkingDirectory"] == "/home/lab/.orchard"
    assert int(service["TimeoutStopSec"]) > CONFIG.shutdown_grace_s  # a stopped router finishes its streams
    assert unit["Install"]["WantedBy"] == "default.target" and "Wants" not in unit["Unit"]
    text = router_unit(CONFIG, "/home/lab/.orchard", ENV, system=False)
    assert re.findall(r"^Environment=(.*)$", text, re.MULTILINE) == ["HOME=/home/lab", "PATH=/usr/bin:/bin"]


def test_as_root_the_router_unit_is_a_system_unit_wanting_the_network() -> None:
    unit = _unit(router_unit(CONFIG, "/root/.orchard", ENV, system=True))
    assert unit["Install"]["WantedBy"] == "multi-user.target"
    assert unit["Unit"]["Wants"] == "network-online.target"


def test_the_router_unit_escapes_what_systemd_would_expand_and_refuses_a_newline() -> None:
    odd = CONFIG.model_copy(update={"gateway_db": "/home/lab/100%/$db"})
    written = _unit(router_unit(odd, "/h", ENV, False))["Service"]["ExecStart"]
    assert "100%%/$$db" in written  # systemd's specifier and variable, doubled: literal
    assert shlex.split(written.replace("$$", "$").replace("%%", "%")) == odd.command()
    with pytest.raises(ValueError, match="control character"):
        router_unit(CONFIG, "/home/lab/\n.orchard", ENV, False)


def test_the_router_plist_is_a_launch_daemon_running_exactly_the_configs_command_as_the_user() -> None:
    plist = plistlib.loads(router_plist(CONFIG, "/Users/lab/.orchard", "ai.orchard.router.a", ENV, user="lab"))
    assert plist["Label"] == "ai.orchard.router.a" and plist["ProgramArguments"] == CONFIG.command()
    assert plist["UserName"] == "lab" and plist["RunAtLoad"] is True
    assert plist["KeepAlive"] == {"SuccessfulExit": False}  # restarted after a crash, not after a stop
    assert plist["StandardOutPath"] == plist["StandardErrorPath"] == "/Users/lab/.orchard/logs/router.log"
    assert plist["EnvironmentVariables"] == ENV and plist["ExitTimeOut"] > CONFIG.shutdown_grace_s
    assert "UserName" not in plistlib.loads(router_plist(CONFIG, "/var/root/.orchard", "x", ENV, user=None))


def test_a_hand_over_alternates_slots() -> None:
    assert (other_slot(""), other_slot("a"), other_slot("b")) == ("a", "b", "a")


def test_on_linux_start_writes_a_user_unit_enables_and_restarts_it_and_turns_lingering_on(tmp_path: Path) -> None:
    run = FakeRunner({"loginctl show-user": "no\n"})
    service = _service(tmp_path, "linux", run)
    service.start(CONFIG, "b")
    assert shlex.split(_unit(service.path("b").read_text())["Service"]["ExecStart"]) == CONFIG.command()
    assert service.path("b") == tmp_path / "units" / "orchard-router-b.service"
    assert run.argvs == [
        ["systemctl", "--user", "daemon-reload"],
        ["systemctl", "--user", "enable", "orchard-router-b.service"],
        ["systemctl", "--user", "restart", "orchard-router-b.service"],
        ["loginctl", "show-user", "lab", "--property=Linger", "--value"],
        ["loginctl", "enable-linger", "lab"],
    ]
    assert (service.home / "logs" / "router.log").stat().st_mode & 0o777 == 0o600  # ours, before systemd opens it


def test_a_refused_linger_is_said_with_the_way_out_and_the_router_still_starts(tmp_path: Path) -> None:
    said: list[str] = []
    run = FakeRunner({"loginctl show-user": "no", "loginctl enable-linger": ServiceError("Access denied")})
    _service(tmp_path, "linux", run, said=said).start(CONFIG, "a")
    assert ["systemctl", "--user", "restart", "orchard-router-a.service"] in run.argvs
    assert len(said) == 1 and "sudo loginctl enable-linger lab" in said[0] and "Access denied" in said[0]


def test_as_root_on_linux_it_is_a_system_unit_without_user_flags_or_lingering(tmp_path: Path) -> None:
    run = FakeRunner()
    _service(tmp_path, "linux", run, as_root=True).start(CONFIG, "a")
    assert run.argvs == [
        ["systemctl", "daemon-reload"],
        ["systemctl", "enable", "orchard-router-a.service"],
        ["systemctl", "restart", "orchard-router-a.service"],
    ]


def test_on_linux_the_main_pid_is_systemds_and_zero_or_an_error_is_none(tmp_path: Path) -> None:
    assert _service(tmp_path, "linux", FakeRunner({"systemctl": "4242\n"})).main_pid("a") == 4242
    assert _service(tmp_path, "linux", FakeRunner({"systemctl": "0\n"})).main_pid("a") is None
    assert _service(tmp_path, "linux", FakeRunner({"systemctl": ServiceError("no bus")})).main_pid("a") is None
    run = FakeRunner({"systemctl": "1\n"})
    _service(tmp_path, "linux", run).main_pid("b")
    assert run.argvs == [["systemctl", "--user", "show", "--property=MainPID", "--value", "orchard-router-b.service"]]


def test_on_linux_retiring_a_slot_disables_it_and_stops_it_without_waiting(tmp_path: Path) -> None:
    run = FakeRunner()
    _service(tmp_path, "linux", run).retire("a")
    assert run.argvs == [
        ["systemctl", "--user", "disable", "orchard-router-a.service"],
        ["systemctl", "--user", "stop", "--no-block", "orchard-router-a.service"],
    ]


def test_on_linux_down_stops_and_removes_every_installed_slot_and_nothing_else(tmp_path: Path) -> None:
    run = FakeRunner()
    service = _service(tmp_path, "linux", run)
    assert service.remove() == [] and run.calls == []
    service.start(CONFIG, "b")
    run.calls.clear()
    assert service.remove() == ["b"] and not service.path("b").exists()
    assert run.argvs == [
        ["systemctl", "--user", "disable", "--now", "orchard-router-b.service"],
        ["systemctl", "--user", "daemon-reload"],
    ]


LAUNCHCTL_PRINT = """system/ai.orchard.router.a = {
\tactive count = 1
\tpath = /Library/LaunchDaemons/ai.orchard.router.a.plist
\tstate = running
\tprogram = /Users/lab/orchard/.venv/bin/python
\tpid = 913
\timmediate reason = speculative
}
"""


def test_on_a_mac_start_stages_the_plist_and_loads_it_as_root_with_launchctl_bootstrap(tmp_path: Path) -> None:
    run = FakeRunner()
    service = _service(tmp_path, "darwin", run, root_stdin=lambda: "secret\n")
    service.start(CONFIG, "a")
    [(argv, stdin)] = run.calls
    assert argv[:2] == ["/bin/sh", "-c"] and stdin == "secret\n"  # the password on stdin, never on a command line
    script = argv[2]
    target = tmp_path / "units" / "ai.orchard.router.a.plist"
    assert f"install -m 644 -o 0 -g 0 {service.home}/ai.orchard.router.a.plist {target}" in script
    assert "launchctl bootout system/ai.orchard.router.a" in script
    assert f"launchctl bootstrap system {target}" in script
    assert not re.search(r"\s--[a-z]", script)  # BSD tools: no GNU long options
    staged = plistlib.loads((service.home / "ai.orchard.router.a.plist").read_bytes())
    assert staged["ProgramArguments"] == CONFIG.command() and staged["UserName"] == "lab"


def test_on_a_mac_the_main_pid_is_launchds_and_an_unloaded_job_has_none(tmp_path: Path) -> None:
    run = FakeRunner({"launchctl print": LAUNCHCTL_PRINT})
    assert _service(tmp_path, "darwin", run).main_pid("a") == 913
    assert run.argvs == [["launchctl", "print", "system/ai.orchard.router.a"]]
    stopped = LAUNCHCTL_PRINT.replace("\tpid = 913\n", "").replace("running", "not running")
    assert _service(tmp_path, "darwin", FakeRunner({"launchctl": stopped})).main_pid("a") is None
    gone = FakeRunner({"launchctl": ServiceError("Could not find service")})
    assert _service(tmp_path, "darwin", gone).main_pid("a") is None


def test_on_a_mac_down_boots_out_and_removes_installed_slots_asking_root_only_then(tmp_path: Path) -> None:
    asked: list[str] = []

    def password() -> str:
        asked.append("asked")
        return "secret\n"

    run = FakeRunner()
    service = _service(tmp_path, "darwin", run, root_stdin=password)
    assert service.remove() == [] and run.calls == [] and asked == []
    service.units_dir.mkdir()
    service.path("b").write_bytes(b"")  # what the load script installed
    assert service.remove() == ["b"]
    [(argv, stdin)] = run.calls
    assert stdin == "secret\n" and "launchctl bootout system/ai.orchard.router.b" in argv[2]
    assert f"rm -f {service.path('b')}" in argv[2]


def test_a_head_not_booted_by_systemd_cannot_keep_the_router_as_a_service(tmp_path: Path) -> None:
    """A container or a chroot has systemctl but no systemd: `cluster up --install-service` then says so and keeps
    the router under Orchard's keeper rather than fail (launchd always runs on a Mac)."""
    linux = _service(tmp_path, "linux", FakeRunner())
    assert dataclasses.replace(linux, systemd_booted=lambda: True).unavailable() is None
    why = dataclasses.replace(linux, systemd_booted=lambda: False).unavailable()
    assert why is not None and "not booted by systemd" in why
    assert _service(tmp_path, "darwin", FakeRunner()).unavailable() is None
