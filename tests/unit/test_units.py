"""Service definitions parse and carry the keys launchd and systemd document."""

from __future__ import annotations

import configparser
import plistlib

from cluster.bringup.units import LAUNCHD_LABEL, launchd_plist, systemd_unit

PROGRAM = ["/Users/lab/orchard/.venv/bin/python", "-m", "worker.agent", "--listen", "0.0.0.0:50051"]
# launchd.plist(5): the keys a LaunchAgent may use that we rely on, with their types.
LAUNCHD_KEYS = {
    "Label": str,
    "ProgramArguments": list,
    "RunAtLoad": bool,
    "KeepAlive": (bool, dict),
    "WorkingDirectory": str,
    "StandardOutPath": str,
    "StandardErrorPath": str,
    "EnvironmentVariables": dict,
    "ProcessType": str,
    "ThrottleInterval": int,
}


def test_launchd_plist_parses_with_documented_keys_only() -> None:
    plist = plistlib.loads(launchd_plist(PROGRAM, "/Users/lab/.orchard", {"HF_HUB_OFFLINE": "1"}))
    assert set(plist) <= set(LAUNCHD_KEYS)
    for key, kind in LAUNCHD_KEYS.items():
        assert isinstance(plist[key], kind), key
    assert plist["Label"] == LAUNCHD_LABEL and plist["ProgramArguments"] == PROGRAM
    assert plist["ProcessType"] in ("Background", "Standard", "Adaptive", "Interactive")
    assert plist["KeepAlive"] == {"SuccessfulExit": False}
    assert plist["StandardOutPath"] == "/Users/lab/.orchard/logs/agent.log"


def test_systemd_unit_parses_and_restarts_on_failure() -> None:
    text = systemd_unit(PROGRAM, "/home/lab/.orchard", {"VLLM_CPU_KVCACHE_SPACE": "4"})
    unit = configparser.ConfigParser(interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string(text)
    assert unit["Service"]["ExecStart"].split() == PROGRAM
    assert unit["Service"]["Restart"] == "on-failure"
    assert unit["Service"]["KillMode"] == "control-group"
    assert unit["Service"]["Environment"] == "VLLM_CPU_KVCACHE_SPACE=4"
    assert unit["Install"]["WantedBy"] == "default.target"
