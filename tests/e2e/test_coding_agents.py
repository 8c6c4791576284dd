"""Coding agents a team runs, through a cluster brought up as the README says, with a team key: Claude Code
(`claude -p`, Anthropic's Messages API: system turns in `messages`, adaptive thinking, a dozen tools, streaming)
and Codex CLI (`codex exec`, OpenAI's Responses API with its tools). Both are the current npm releases, pinned.

Their requests are long: Codex's first is 9.2k tokens of instructions and tools, Claude Code's 12.4k with its
default tools. The bundled SmolLM2 gets a 32k position limit for them and a chat template that renders tools (so
Orchard turns vLLM's tool parsing on), and ends each answer at its first full stop, greedily: a 135M model under a
coding agent's system prompt otherwise writes until max_tokens, which the agents report as an error. Past ~10k
tokens (beyond the 8k it was trained on) it writes nothing sensible at all, so Claude Code runs with its read-only
tools (`--tools Read,Glob,Grep`: its full system prompt, three tools, 3.7k tokens). That proves the protocol, not
the model's judgement (tests/e2e/conftest.py: tool_model). Nothing leaves the machine: telemetry and update
checks are off, and any connection that is not to this machine goes to a proxy that does not exist."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cluster.bringup import local
from tests.conftest import free_port, run_cli, usage_rows, wait_until
from tests.e2e.conftest import tool_model

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

REPO = Path(__file__).resolve().parents[2]
AGENTS = {"@anthropic-ai/claude-code": "2.1.332", "@openai/codex": "0.171.0"}  # the newest on 2026-12-06
PROMPT = "What is the capital of France?"
NOWHERE = "http://127.0.0.1:9"  # the discard port: a connection anywhere but loopback fails at once
OFFLINE = {
    "HTTP_PROXY": NOWHERE,
    "HTTPS_PROXY": NOWHERE,
    "ALL_PROXY": NOWHERE,
    "NO_PROXY": "127.0.0.1,localhost",
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    "DISABLE_TELEMETRY": "1",
    "DISABLE_AUTOUPDATER": "1",
    "DISABLE_ERROR_REPORTING": "1",
}


@pytest.fixture(scope="session")
def agent_bin() -> Path:
    """The pinned agents, installed once into .venv/agents (npm may skip Claude Code's install script, which
    puts its native binary in place: it is run by hand)."""
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip("the coding-agent tests need Node.js and npm (Debian: apt install nodejs npm)")
    prefix = REPO / ".venv" / "agents"
    stamp = prefix / "installed"
    wanted = json.dumps(AGENTS, sort_keys=True)
    if not stamp.exists() or stamp.read_text() != wanted:
        prefix.mkdir(parents=True, exist_ok=True)
        specs = [f"{name}@{version}" for name, version in AGENTS.items()]
        subprocess.run(
            [npm, "install", "--prefix", str(prefix), "--no-audit", "--no-fund", "--no-save", *specs],
            check=True,
            capture_output=True,
            timeout=900,
        )
        installer = prefix / "node_modules" / "@anthropic-ai" / "claude-code" / "install.cjs"
        subprocess.run(["node", str(installer)], check=True, capture_output=True, timeout=300, cwd=installer.parent)
        stamp.write_text(wanted)
    return prefix / "node_modules" / ".bin"


@dataclass
class Lab:
    home: Path
    url: str
    model: str
    key: str

    def usage(self) -> list[sqlite3.Row]:
        return usage_rows(self.home)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """`cluster up` on the agent-ready model with a 32k context, and a key for the team `dev`."""
    home = tmp_path_factory.mktemp("agents-home")
    model = str(tool_model(home / "smollm2-agent", context=32768, one_sentence=True))
    try:
        up = run_cli(
            [
                "up",
                "--detach",
                "--port",
                str(free_port()),
                "--model",
                model,
                "--max-model-len",
                "32768",
                "--kv-cache-gib",
                "2",
                # The agents' prompts are 4-5k tokens, prefilled in one step: minutes on a CPU without AVX-512.
                "--stall-timeout",
                "900",
            ],
            home,
        )
        assert up.returncode == 0, up.stdout + up.stderr
        made = run_cli(["keys", "create", "--team", "dev"], home, timeout_s=60)
        assert made.returncode == 0, made.stderr
        state = local.read_state(home)
        assert state is not None
        yield Lab(home, state.url, model, made.stdout.strip())
    finally:
        run_cli(["down"], home, timeout_s=120)


def _run(argv: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    shell = {"PATH": os.environ["PATH"], "SHELL": os.environ.get("SHELL", "/bin/sh")}
    return subprocess.run(
        argv,
        cwd=cwd,
        env={**shell, **OFFLINE, **env},
        capture_output=True,
        text=True,
        timeout=900,
        stdin=subprocess.DEVNULL,
    )


def test_claude_code_completes_a_prompt(lab: Lab, agent_bin: Path, tmp_path: Path) -> None:
    env = {
        "HOME": str(tmp_path),
        "ANTHROPIC_BASE_URL": lab.url,
        "ANTHROPIC_API_KEY": lab.key,
        "CLAUDE_CODE_MAX_OUTPUT_TOKENS": "512",
    }  # a rambling answer fails in a minute, not in ten
    done = _run(
        [
            str(agent_bin / "claude"),
            "-p",
            PROMPT,
            "--model",
            lab.model,
            "--output-format",
            "json",
            "--max-turns",
            "2",
            "--tools",
            "Read,Glob,Grep",
        ],
        tmp_path,
        env,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert result["is_error"] is False and result["subtype"] == "success" and result["result"].strip()
    assert result["usage"]["input_tokens"] > 2000  # its system prompt and tools went through (what it says is the
    # 135M model's: it ended its turn, which is what a coding agent needs from the protocol)
    rows = wait_until(lambda: [r for r in lab.usage() if r["team"] == "dev" and r["status"] == 200], 10, "usage")
    assert max(r["prompt_tokens"] for r in rows) > 2000  # billed to the key's team as the engine counted


def test_codex_completes_a_prompt(lab: Lab, agent_bin: Path, tmp_path: Path) -> None:
    codex_home = tmp_path / "codex"
    codex_home.mkdir()
    (codex_home / "config.toml").write_text(f"""
model = "{lab.model}"
model_provider = "orchard"
check_for_update_on_startup = false

[model_providers.orchard]
name = "Orchard"
base_url = "{lab.url}/v1"
env_key = "ORCHARD_API_KEY"
wire_api = "responses"

[analytics]
enabled = false
""")
    env = {"HOME": str(tmp_path), "CODEX_HOME": str(codex_home), "ORCHARD_API_KEY": lab.key}
    done = _run([str(agent_bin / "codex"), "exec", "--skip-git-repo-check", "--json", PROMPT], tmp_path, env)
    events = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    kinds = [event["type"] for event in events]
    assert "turn.completed" in kinds and "turn.failed" not in kinds and "error" not in kinds, kinds
    said = [e["item"]["text"] for e in events if e["type"] == "item.completed" and e["item"]["type"] == "agent_message"]
    assert said and said[-1].strip()
    usage = next(e["usage"] for e in events if e["type"] == "turn.completed")
    assert usage["input_tokens"] > 5000  # its instructions and tools went through
    wait_until(lambda: any(r["team"] == "dev" and r["prompt_tokens"] > 5000 for r in lab.usage()), 10, "usage")
