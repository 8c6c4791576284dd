"""What `cluster up` records under ~/.orchard reads back, also when an earlier version wrote it."""

from __future__ import annotations

import json
from pathlib import Path

from cluster.bringup import labstate


def test_a_lab_record_written_before_typed_router_configs_still_reads(tmp_path: Path) -> None:
    old = {
        "spec": {"hosts": [{"address": "10.0.0.2"}], "models": [{"name": "m", "source": "/models/m"}]},
        "router_pid": 4242,
        "url": "http://127.0.0.1:8000",
        "router_args": [
            "/usr/bin/python3",
            "-m",
            "cluster.router",
            "--listen",
            "0.0.0.0:8000",
            "--worker",
            "10.0.0.2:50051",
            "--model-policy",
            "m=round_robin",
        ],
    }
    (tmp_path / "lab.json").write_text(json.dumps(old))
    state = labstate.read_state(tmp_path)
    assert state is not None and state.router_pid == 4242
    assert state.router.workers == ("10.0.0.2:50051",) and state.router.model_policies == (("m", "round_robin"),)


def test_a_lab_record_this_orchard_cannot_read_is_named_not_taken_for_no_lab(tmp_path: Path) -> None:
    import pytest

    from tests.conftest import run_cli

    (tmp_path / "lab.json").write_text(json.dumps({"spec": {"hosts": []}, "router_pid": 1, "url": "u"}))
    with pytest.raises(labstate.LabError, match=r"lab\.json: not a lab record this Orchard reads"):
        labstate.read_state(tmp_path)
    status = run_cli(["status"], tmp_path, timeout_s=60)
    assert status.returncode == 1 and "may still run" in status.stderr, status.stderr
