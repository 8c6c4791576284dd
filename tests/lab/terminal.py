"""The CLI on a terminal of its own (a pseudo-terminal), answered as a person would at its prompts."""

from __future__ import annotations

import fcntl
import os
import select
import subprocess
import sys
import termios
import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Session:
    returncode: int
    output: str
    prompts: list[str] = field(default_factory=list)


def run_cli_on_terminal(args: list[str], home: Path, answers: dict[str, str], timeout_s: float = 900) -> Session:
    """Run `cluster ARGS` with a terminal as stdin/stdout; each time its output ends with a prompt containing a
    key of `answers`, type that answer and Enter. The output is what the terminal showed."""
    leader, follower = os.openpty()

    def controlling_terminal() -> None:
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)  # getpass reads the controlling terminal, as on a person's

    env = {**os.environ, "ORCHARD_HOME": str(home), "COLUMNS": "160", "TERM": "dumb"}
    child = subprocess.Popen(
        [sys.executable, "-m", "cluster.cli", *args],
        stdin=follower,
        stdout=follower,
        stderr=follower,
        env=env,
        start_new_session=True,
        preexec_fn=controlling_terminal,
    )
    os.close(follower)
    shown, prompts, pending = b"", [], ""
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(leader, 65536)
                except OSError:  # the child closed its terminal: it has ended
                    break
                if not chunk:
                    break
                shown += chunk
                pending += chunk.decode(errors="replace")
                for key, answer in answers.items():
                    if key in pending:
                        prompts.append(pending[pending.rindex("\n") + 1 :] if "\n" in pending else pending)
                        os.write(leader, answer.encode() + b"\n")
                        pending = ""
                        break
                else:
                    pending = pending[-500:]
            elif child.poll() is not None:
                break
        else:
            child.kill()
            raise TimeoutError(f"cluster {' '.join(args)} did not end within {timeout_s:.0f}s:\n{shown.decode()}")
        code = child.wait(timeout=30)
    finally:
        os.close(leader)
    return Session(code, shown.decode(errors="replace").replace("\r\n", "\n"), prompts)
