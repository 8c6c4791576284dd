"""Hosts-file values that try to reach a shell, a systemd unit or a launchd plist: refused at load (naming file
and line) or quoted so that they stay one argument — checked by running the command under a real /bin/sh."""

from __future__ import annotations

import plistlib
import subprocess
from pathlib import Path

import pytest

from cluster.bringup import remote, units
from cluster.placement.hostsfile import HostsFileError, HostSpec, parse

GOOD = """
[[hosts]]
name = "h1"
address = "10.0.0.2"
{extra}

[[models]]
name = "m"
source = "m"
"""


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ('orchard_dir = "~/o\\nExecStartPre=/bin/rm -rf ~"', "control character"),
        ('python = "/usr/bin/python3\\r"', "control character"),
        ('labels = ["ok", "bad\\u0000"]', "control character"),
        ('orchard_dir = "relative/dir"', "absolute path or one under ~/"),
        ('engine_args = ["--x\\n"]', "unknown"),  # engine_args belong to a model, not a host
    ],
)
def test_hostile_values_are_refused_with_file_and_line(extra: str, message: str) -> None:
    with pytest.raises(HostsFileError) as refused:
        parse(GOOD.format(extra=extra), Path("lab.toml"))
    assert str(refused.value).startswith("lab.toml:") and message in str(refused.value)


def test_a_model_argument_with_a_newline_is_refused() -> None:
    text = GOOD.format(extra="") + 'engine_args = ["--served\\nx"]\n'
    with pytest.raises(HostsFileError, match=r"lab.toml:\d+: .*control character"):
        parse(text, Path("lab.toml"))


def test_an_orchard_dir_full_of_shell_stays_one_path(tmp_path: Path) -> None:
    hostile = str(tmp_path / "o'; touch PWNED; echo \"$(touch PWNED2)`touch PWNED3`")
    (Path(hostile) / "logs").mkdir(parents=True)
    (Path(hostile) / "logs" / "agent.log").write_text("line one\nline two\n")
    command = remote.log_command(HostSpec(address="x", orchard_dir=hostile), 5, follow=False)
    result = subprocess.run(["/bin/sh", "-c", command], cwd=tmp_path, capture_output=True, text=True, timeout=10)
    assert result.stdout == "line one\nline two\n", result.stderr
    assert not list(tmp_path.glob("PWNED*"))


def test_units_keep_hostile_paths_literal() -> None:
    program = ["/Users/lab/.venv/bin/python", "-m", "worker.agent", "--log-dir", "/srv/%h/$HOME/a\\b"]
    unit = units.systemd_unit(program, "/srv/%h/$HOME", {"HOME": "/home/a\\b"})
    # systemd.syntax(7): specifiers everywhere, $ in Exec lines only, C escapes where it unquotes
    assert "ExecStart=/Users/lab/.venv/bin/python -m worker.agent --log-dir '/srv/%%h/$$HOME/a\\\\b'\n" in unit
    assert "WorkingDirectory=/srv/%%h/$HOME\n" in unit
    assert "Environment='HOME=/home/a\\\\b'\n" in unit
    with pytest.raises(ValueError, match="control character"):
        units.systemd_unit(program, "/srv/o\nExecStartPre=/bin/true")
    plist = plistlib.loads(units.launchd_plist(program, "/srv/<o>&", {"HOME": "/Users/lab"}, user="lab"))
    assert plist["WorkingDirectory"] == "/srv/<o>&" and plist["ProgramArguments"] == program
