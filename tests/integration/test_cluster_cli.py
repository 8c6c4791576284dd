"""The CLI on hosts files: bad files exit non-zero with file:line, nothing is started; `plan` starts nothing."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import run_cli

GOOD = """[router]
port = 8000

[[hosts]]
name = "a"
address = "10.0.0.2"
memory_gb = 96

[[models]]
name = "m"
source = "smollm2-135m-instruct"
"""


def test_invalid_hosts_file_exits_2_with_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "lab.toml"
    path.write_text(GOOD.replace("memory_gb = 96", "memroy_gb = 96"))
    result = run_cli(["up", str(path)], tmp_path / "home", timeout_s=60)
    assert result.returncode == 2
    assert f"{path}:7: unknown key 'memroy_gb' in [[hosts]] #1" in result.stderr.replace("\n", "")
    assert not (tmp_path / "home" / "lab.json").exists()


def test_plan_shows_the_placement_and_starts_nothing(tmp_path: Path) -> None:
    path = tmp_path / "lab.toml"
    path.write_text(GOOD)
    result = run_cli(["plan", str(path)], tmp_path / "home", timeout_s=60)
    assert result.returncode == 0
    assert "10.0.0.2:50051" in result.stdout and "96 GB" in result.stdout
    assert not (tmp_path / "home").exists()
