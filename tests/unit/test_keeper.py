"""The keeper's rules: what ends it, and how many restarts it allows."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import psutil

from tests.conftest import wait_until
from worker.keeper import Restarts, run, should_restart
from worker.shared.procs import kept as wrap


def test_a_crash_or_a_kill_restarts_a_clean_stop_or_a_usage_error_does_not() -> None:
    assert should_restart(-signal.SIGKILL, stopping=False) and should_restart(1, stopping=False)
    assert not should_restart(0, stopping=False) and not should_restart(2, stopping=False)
    assert not should_restart(-signal.SIGTERM, stopping=True)  # we passed a stop on


def test_the_budget_is_so_many_restarts_per_window() -> None:
    budget = Restarts(limit=2, window_s=10)
    assert budget.allow(0) and budget.allow(1) and not budget.allow(2)
    assert budget.allow(11.5)  # the first two are out of the window
    assert len(budget.recent) <= 2


def test_a_child_that_keeps_dying_is_given_up_on(tmp_path: Path) -> None:
    counter = tmp_path / "starts"
    crash = [sys.executable, "-c", f"open({str(counter)!r}, 'a').write('x'); raise SystemExit(3)"]
    assert run("crasher", crash, Restarts(limit=2, window_s=60), delay_s=0.01, startup_s=0) == 1
    assert counter.read_text() == "xxx"  # the first start and two restarts


def test_a_first_start_that_dies_at_once_is_reported_not_retried(tmp_path: Path) -> None:
    counter = tmp_path / "starts"
    crash = [sys.executable, "-c", f"open({str(counter)!r}, 'a').write('x'); raise SystemExit(3)"]
    assert run("bad-config", crash, Restarts(), delay_s=0.01) == 1 and counter.read_text() == "x"


def test_sigterm_to_the_keeper_stops_its_child_and_restarts_nothing() -> None:
    keeper = subprocess.Popen(wrap("sleeper", [sys.executable, "-c", "import time; time.sleep(60)"]))
    child = wait_until(lambda: next(iter(psutil.Process(keeper.pid).children()), None), 10, "the child")
    keeper.send_signal(signal.SIGTERM)
    assert keeper.wait(timeout=10) == 128 + signal.SIGTERM
    assert not psutil.pid_exists(child.pid) or child.status() == psutil.STATUS_ZOMBIE
