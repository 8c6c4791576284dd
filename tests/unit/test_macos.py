"""macOS branches run here against stand-ins for Apple's tools that behave as Apple documents them.

`launchctl` (launchctl(1), and the exits Mac admins meet: 0; 5 "Input/output error" while launchd still holds
a job it was told to boot out; 125 "Domain does not support specified action" for a gui domain nobody is logged
in to; 113 from `print` for a job it does not know), `sudo -n` (sudo(8): fails instead of asking for a password),
BSD `install -m -o -g` and `id -u/-un`. The scripts run under /bin/sh (dash here) and bash in POSIX mode: macOS
runs them with /bin/sh, which is bash 3.2.
"""

from __future__ import annotations

import plistlib
import subprocess
from pathlib import Path

import pytest

from cluster.bringup import units
from cluster.bringup.remote import posix
from worker.agent import keep_awake

LAUNCHCTL = r"""#!/bin/sh
# Stand-in for launchctl(1): state in $FAKE; every call logged.
echo "launchctl $*" >> "$FAKE/log"
n() { cat "$FAKE/$1" 2>/dev/null || echo 0; }
case "$1" in
  bootout) [ -f "$FAKE/loaded" ] || exit 3; rm -f "$FAKE/loaded"; echo 3 > "$FAKE/lingers"; exit 0 ;;
  print)
    [ -f "$FAKE/loaded" ] && exit 0
    left=$(n lingers); [ "$left" -gt 0 ] && { echo $((left-1)) > "$FAKE/lingers"; exit 0; }
    echo "Bad request. Could not find service \"${2#system/}\" in domain for system" >&2; exit 113 ;;
  bootstrap)
    if [ -f "$FAKE/refuse125" ]; then
      echo "Bootstrap failed: 125: Domain does not support specified action" >&2; exit 125
    fi
    busy=$(n busy5)
    if [ "$busy" -gt 0 ]; then
      echo $((busy-1)) > "$FAKE/busy5"; echo "Bootstrap failed: 5: Input/output error" >&2; exit 5
    fi
    [ "$(n lingers)" -gt 0 ] && { echo "bootstrap while launchd still held the job" >&2; exit 99; }
    touch "$FAKE/loaded"; exit 0 ;;
esac
exit 64
"""
SUDO = """#!/bin/sh
# sudo(8): -n fails where a password is needed; -S -p PROMPT reads it from stdin (the user's, in $FAKE/password)
echo "sudo $*" >> "$FAKE/log"
if [ "$1" = -S ]; then
  IFS= read -r given; shift 3
  [ -f "$FAKE/password" ] && [ "$given" = "$(cat "$FAKE/password")" ] || { echo "Sorry, try again." >&2; exit 1; }
  exec "$@"
fi
[ -f "$FAKE/no-sudo" ] && { echo "sudo: a password is required" >&2; exit 1; }
[ "$1" = -n ] && shift
exec "$@"
"""
INSTALL = """#!/bin/sh
# BSD install(1): install -m MODE -o OWNER -g GROUP SRC DST (owner and group noted, not applied here)
echo "install $*" >> "$FAKE/log"
while [ $# -gt 2 ]; do case "$1" in -m) mode=$2; shift 2 ;; -o|-g) shift 2 ;; *) shift ;; esac; done
cp "$1" "$2" && chmod "$mode" "$2"
"""
ID = """#!/bin/sh
case "$1" in -u) echo 501 ;; -un) echo lab ;; *) exit 1 ;; esac
"""


Mac = tuple[Path, Path, list[str]]  # fake tools, their state, the shell


@pytest.fixture(params=["sh", "bash --posix"])
def mac(request: pytest.FixtureRequest, tmp_path: Path) -> Mac:
    bin_dir, state = tmp_path / "bin", tmp_path / "state"
    bin_dir.mkdir()
    state.mkdir()
    for name, text in (("launchctl", LAUNCHCTL), ("sudo", SUDO), ("install", INSTALL), ("id", ID)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return bin_dir, state, request.param.split()


def run(mac: Mac, script: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    bin_dir, state, shell = mac
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "FAKE": str(state), "HOME": str(state)}
    return subprocess.run([*shell, "-c", script], capture_output=True, text=True, env=env, timeout=60, input=stdin)


def staged_plist(tmp_path: Path) -> Path:
    program = ["/Users/lab/.orchard/venv/bin/python", "-m", "worker.agent"]
    staged = tmp_path / "staged.plist"
    staged.write_bytes(units.launchd_plist(program, "/Users/lab/.orchard", {"HOME": "/Users/lab"}, user="lab"))
    return staged


def test_the_agent_is_a_launchdaemon_running_as_the_lab_user(tmp_path: Path) -> None:
    plist = plistlib.loads(staged_plist(tmp_path).read_bytes())
    assert plist["UserName"] == "lab" and plist["EnvironmentVariables"] == {"HOME": "/Users/lab"}
    assert plist["RunAtLoad"] is True and plist["Label"] == units.LAUNCHD_LABEL
    assert plist["ExitTimeOut"] == units.EXIT_TIMEOUT_S  # launchd(8) waits this long before SIGKILL


def test_a_first_load_installs_root_owned_and_bootstraps_the_system_domain(mac: Mac, tmp_path: Path) -> None:
    daemons = tmp_path / "LaunchDaemons"
    daemons.mkdir()
    done = run(mac, units.launchd_load_script(str(staged_plist(tmp_path)), daemons=str(daemons)))
    assert done.returncode == 0, done.stderr
    target = daemons / f"{units.LAUNCHD_LABEL}.plist"
    assert oct(target.stat().st_mode & 0o777) == "0o644" and plistlib.loads(target.read_bytes())["UserName"] == "lab"
    log = (mac[1] / "log").read_text()
    assert "-m 644 -o 0 -g 0" in log and "sudo -n launchctl bootstrap system " + str(target) in log


def test_a_reload_waits_out_the_asynchronous_bootout_and_retries_on_5(mac: Mac, tmp_path: Path) -> None:
    daemons = tmp_path / "LaunchDaemons"
    daemons.mkdir()
    (mac[1] / "loaded").touch()  # installed before
    (mac[1] / "busy5").write_text("2")  # and launchd answers 5 twice more after it let go
    done = run(mac, units.launchd_load_script(str(staged_plist(tmp_path)), daemons=str(daemons)))
    assert done.returncode == 0, done.stderr
    calls = [line.split()[1] for line in (mac[1] / "log").read_text().splitlines() if line.startswith("launchctl")]
    assert calls == ["bootout", "print", "print", "print", "print", "bootstrap", "bootstrap", "bootstrap"]
    assert (mac[1] / "loaded").exists()


def test_other_bootstrap_failures_are_reported_with_launchds_words(mac: Mac, tmp_path: Path) -> None:
    (mac[1] / "refuse125").touch()
    done = run(mac, units.launchd_load_script(str(staged_plist(tmp_path)), daemons=str(tmp_path)))
    assert done.returncode == 125
    assert "launchctl bootstrap failed (125): Bootstrap failed: 125: Domain does not support" in done.stderr


def test_without_root_or_passwordless_sudo_it_says_what_is_needed(mac: Mac, tmp_path: Path) -> None:
    (mac[1] / "no-sudo").touch()
    done = run(mac, units.launchd_load_script(str(staged_plist(tmp_path)), daemons=str(tmp_path)))
    assert done.returncode == 77 and "needs root" in done.stderr and "give lab sudo without one" in done.stderr


def test_an_admin_whose_sudo_wants_a_password_installs_with_it_from_stdin(mac: Mac, tmp_path: Path) -> None:
    (mac[1] / "no-sudo").touch()
    (mac[1] / "password").write_text("s3cret pass")
    daemons = tmp_path / "LaunchDaemons"
    daemons.mkdir()
    script = units.launchd_load_script(str(staged_plist(tmp_path)), daemons=str(daemons))
    assert "s3cret" not in script
    wrong = run(mac, script, "wrong\n")
    assert wrong.returncode == 77 and "did not accept the password for lab" in wrong.stderr
    done = run(mac, script, "s3cret pass\n")
    assert done.returncode == 0, done.stderr
    assert (daemons / f"{units.LAUNCHD_LABEL}.plist").exists() and (mac[1] / "loaded").exists()
    log = (mac[1] / "log").read_text()
    assert "sudo -S -p  launchctl bootstrap system" in log and "s3cret" not in log  # never on a command line


def test_unload_removes_the_daemon_and_says_whether_there_was_one(mac: Mac, tmp_path: Path) -> None:
    target = tmp_path / f"{units.LAUNCHD_LABEL}.plist"
    target.write_bytes(b"x")
    (mac[1] / "loaded").touch()
    first = run(mac, units.launchd_unload_script(daemons=str(tmp_path)))
    assert first.stdout.strip() == "1" and not target.exists() and not (mac[1] / "loaded").exists()
    assert run(mac, units.launchd_unload_script(daemons=str(tmp_path))).stdout.strip() == "0"


def test_scripts_go_to_bin_sh_whatever_the_login_shell() -> None:
    command = posix("S='sudo -n'; $S true")
    assert command == "/bin/sh -c 'S='\"'\"'sudo -n'\"'\"'; $S true'"


def test_a_mac_agent_keeps_the_mac_awake_while_it_lives() -> None:
    assert keep_awake("darwin", 4242) == ["/usr/bin/caffeinate", "-ims", "-w", "4242"]
    assert keep_awake("linux", 4242) is None
