"""The keeper's rules: what ends it, and how many restarts it allows."""

from __future__ import annotations

import signal
import sys

from worker.keeper import Restarts, run, should_restart


def test_a_crash_or_a_kill_restarts_a_clean_stop_or_a_usage_error_does_not() -> None:
    assert should_restart(-signal.SIGKILL, stopping=False) and should_restart(1, stopping=False)
    assert not should_restart(0, stopping=False) and not should_restart(2, stopping=False)
    assert not should_restart(-signal.SIGTERM, stopping=True)  # we passed a stop on


def test_the_budget_is_so_many_restarts_per_window() -> None:
    budget = Restarts(limit=2, window_s=10)
    assert budget.allow(0) and budget.allow(1) and not budget.allow(2)
    assert budget.allow(11.5)  # the first two are out of the window
    assert len(budget.recent) <= 2


def test_a_child_that_keeps_dying_is_given_up_on() -> None:
    crash = [sys.executable, "-c", "raise SystemExit(3)"]
    assert run("crasher", crash, Restarts(limit=2, window_s=60), delay_s=0.01) == 1
