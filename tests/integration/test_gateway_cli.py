"""`cluster keys`, `cluster teams` and the refusal to serve beyond loopback without keys, as an admin runs them."""

from __future__ import annotations

import calendar
import contextlib
import json
import sqlite3
from pathlib import Path

from cluster.gateway import keys, store
from tests.conftest import free_port, run_cli
from tests.integration.test_cluster_cli import GOOD


def _key_row(home: Path) -> sqlite3.Row:
    with contextlib.closing(sqlite3.connect(home / "gateway.db")) as conn:
        conn.row_factory = sqlite3.Row
        return conn.execute("SELECT * FROM keys WHERE team != ?", (keys.OPERATOR_TEAM,)).fetchone()


def test_limits_are_set_then_cleared_and_a_date_alone_lasts_through_that_day(tmp_path: Path) -> None:
    made = run_cli(
        ["keys", "create", "--team", "ml", "--rpm", "5", "--models", "a,b", "--expires", "2027-01-31"],
        tmp_path,
        timeout_s=60,
    )
    assert made.returncode == 0, made.stderr
    row = _key_row(tmp_path)
    assert (row["rpm"], row["models"]) == (5, "a,b")
    assert row["expires"] == calendar.timegm((2027, 2, 1, 0, 0, 0))  # the end of Jan 31, UTC
    cleared = run_cli(["keys", "update", row["id"], "--rpm", "0", "--models", "all"], tmp_path, timeout_s=60)
    assert cleared.returncode == 0, cleared.stderr
    assert (_key_row(tmp_path)["rpm"], _key_row(tmp_path)["models"]) == (None, None)
    team = run_cli(["teams", "set", "ml", "--tpm", "9000", "--weight", "2"], tmp_path, timeout_s=60)
    assert team.returncode == 0, team.stderr
    with store.opened(tmp_path / "gateway.db") as conn:
        ml = keys.load_snapshot(conn).teams["ml"]
    assert ml.limits.tpm == 9000 and ml.weight == 2.0
    listed = run_cli(["teams", "list"], tmp_path, timeout_s=60)
    assert listed.returncode == 0 and "9,000" in listed.stdout
    teams = json.loads(run_cli(["teams", "list", "--json"], tmp_path, timeout_s=60).stdout)["teams"]
    assert [(t["name"], t["tpm"], t["weight"], t["keys"]) for t in teams] == [("ml", 9000, 2.0, 1)]
    listed_keys = json.loads(run_cli(["keys", "list", "--json"], tmp_path, timeout_s=60).stdout)["keys"]
    ml_keys = [k for k in listed_keys if k["team"] == "ml"]
    assert [(k["id"], k["rpm"], k["models"], k["state"]) for k in ml_keys] == [(row["id"], None, None, "active")]
    assert all("secret" not in k and "hash" not in k for k in listed_keys)  # never the secret, nor its hash


def test_bad_key_commands_say_why_and_change_nothing(tmp_path: Path) -> None:
    unknown = run_cli(["keys", "revoke", "key_nope"], tmp_path, timeout_s=60)
    assert unknown.returncode == 1 and "no key with id 'key_nope'" in unknown.stdout
    reserved = run_cli(["keys", "create", "--team", keys.OPERATOR_TEAM], tmp_path, timeout_s=60)
    assert reserved.returncode == 2 and "head's own" in reserved.stdout
    bad_date = run_cli(["keys", "create", "--team", "ml", "--expires", "soon"], tmp_path, timeout_s=60)
    assert bad_date.returncode == 2 and "expected a date like 2027-01-31" in bad_date.stderr
    with store.opened(tmp_path / "gateway.db") as conn:
        assert keys.key_count(conn) == 0


def test_serving_beyond_loopback_without_a_key_is_refused_before_anything_starts(tmp_path: Path) -> None:
    local = run_cli(
        ["up", "--engine", "sim", "--model", "sim-model", "--host", "0.0.0.0", "--port", str(free_port())],
        tmp_path,
        timeout_s=60,
    )
    assert local.returncode == 1 and "refusing to serve on 0.0.0.0" in local.stderr
    assert not (tmp_path / "local.json").exists()
    hosts = tmp_path / "lab.toml"
    hosts.write_text(GOOD.replace("port = 8000", 'host = "0.0.0.0"\nport = 8000'))
    lab = run_cli(["up", str(hosts)], tmp_path, timeout_s=60)  # refused before any SSH connection
    assert lab.returncode == 1 and "cluster keys create --team NAME --admin" in lab.stderr
    assert not (tmp_path / "lab.json").exists()
