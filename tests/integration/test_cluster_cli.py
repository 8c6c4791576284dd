"""The CLI on hosts files: bad files exit non-zero with file:line, nothing is started; `plan` starts nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO, run_cli

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


def test_commands_print_no_library_warnings(tmp_path: Path) -> None:
    """asyncssh names cryptography's deprecated DSA types at import: ten lines of warnings on every command."""
    helped = run_cli(["--help"], tmp_path, timeout_s=60)
    assert helped.returncode == 0 and "cluster" in helped.stdout
    assert helped.stderr == ""
    planned = run_cli(["certs", "show"], tmp_path, timeout_s=60)  # imports the SSH side too
    assert planned.returncode == 0 and "Warning" not in planned.stderr, planned.stderr


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
    assert result.returncode == 0, result.stderr
    assert "replica" in result.stdout and "72.0 GB" in result.stdout  # 96 GB x 0.75: no report, no fraction set
    assert not (tmp_path / "home").exists()


LAB = "[placement]\nmemory_fraction = 0.8\n\n" + "".join(
    f'[[hosts]]\nname = "{name}"\naddress = "10.0.0.{i}"\nmemory_gb = {gb}\n\n'
    for i, (name, gb) in enumerate((("ultra-1", 512), ("ultra-2", 512), ("studio-1", 96), ("studio-2", 96)), 2)
)


def plan_of(tmp_path: Path, models: str) -> tuple[int, str, str]:
    path = tmp_path / "lab.toml"
    path.write_text(LAB + models)
    result = run_cli(["plan", str(path)], tmp_path / "home", timeout_s=60)
    return result.returncode, " ".join(result.stdout.split()), " ".join(result.stderr.split())


def test_plan_spreads_a_model_too_big_for_one_mac_over_a_pipeline_group(tmp_path: Path) -> None:
    models = '[[models]]\nname = "big"\nsource = "org/big"\nsize_gb = 700\n\n'
    models += '[[models]]\nname = "small"\nsource = "org/small"\nsize_gb = 30\n'
    code, out, _ = plan_of(tmp_path, models)
    assert code == 0
    assert "big#1 pipeline/vllm rank 0 of 2" in out and "big#1 pipeline/vllm rank 1 of 2" in out
    assert "ultra-1" in out and "ultra-2" in out and "385.0 GB" in out
    assert "small" in out and "studio-1" in out  # the smallest Mac that holds it
    assert (
        "warning: group big#1: its Ray traffic (unauthenticated) would run over the lab network on ultra-1, "
        "ultra-2; give each host a group_address on a private link" in out
    )
    private = LAB.replace('name = "ultra-1"\n', 'name = "ultra-1"\ngroup_address = "169.254.1.1"\n').replace(
        'name = "ultra-2"\n', 'name = "ultra-2"\ngroup_address = "169.254.1.2"\n'
    )
    (tmp_path / "private.toml").write_text(private + models)
    quiet = run_cli(["plan", str(tmp_path / "private.toml")], tmp_path / "home", timeout_s=60)
    assert quiet.returncode == 0 and "warning" not in quiet.stdout


def test_plan_refuses_a_model_that_fits_nowhere_and_says_what_is_missing(tmp_path: Path) -> None:
    code, _, err = plan_of(tmp_path, '[[models]]\nname = "huge"\nsource = "org/huge"\nsize_gb = 1200\n')
    assert code == 1
    assert "needs 1,320 GB (weights 1,200 GB + KV reserve 120 GB)" in err and "347 GB missing" in err


def test_plan_refuses_a_two_host_tensor_group_of_the_bundled_model(tmp_path: Path) -> None:
    # SmolLM2's config.json (prepared by setup): 9 attention heads and 3 KV heads divide by 3, not by 2.
    models = '[[models]]\nname = "s"\nsource = "smollm2-135m-instruct"\nhosts = ["studio-1", "studio-2"]\n'
    code, _, err = plan_of(tmp_path, models + 'mode = "tensor"\nbackend = "mlx"\n')
    assert code == 1
    assert "cannot run as a 2-host tensor group: attention heads 9, KV heads 3 do not divide by 2" in err
    assert "(group sizes that divide: 3)" in err


def test_ctrl_c_ends_a_long_running_command_even_when_it_started_with_sigint_ignored(tmp_path: Path) -> None:
    """A background job, nohup and some CI runners start commands with SIGINT ignored: every `cluster` command
    installs its own handlers (one policy, cluster/commands/signals.py), so Ctrl-C still ends `logs -f`."""
    (tmp_path / "logs").mkdir()
    log = tmp_path / "logs" / "router.log"
    log.write_text("first line\n")
    follow = subprocess.Popen(
        [sys.executable, "-m", "cluster.cli", "logs", "router", "-f"],
        env={**os.environ, "ORCHARD_HOME": str(tmp_path)},
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
        cwd=REPO,
    )
    try:
        assert follow.stdout is not None and follow.stdout.readline() == "first line\n"
        with log.open("a") as more:
            more.write("second line\n")
        assert follow.stdout.readline() == "second line\n"  # it follows
        follow.send_signal(signal.SIGINT)
        assert follow.wait(timeout=10) == 0
    finally:
        follow.kill()
