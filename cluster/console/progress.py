"""Long work on several hosts, as it goes (`cluster install`, `cluster up HOSTS`): every step is printed as a
line ("• host: step"), and on a terminal a live line per host shows its latest step, a spinner and the time
it has taken, with a bar of the hosts that are ready."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn

DONE_STEPS = ("ready", "installed", "unchanged")  # a host's step that ends its line


class HostSteps:
    def __init__(self, console: Console, hosts: list[str], goal: str) -> None:
        self.console, self.hosts, self.goal = console, hosts, goal
        self.progress: Progress | None = None
        self.lines: dict[str, TaskID] = {}
        self.overall: TaskID | None = None

    def report(self, message: str) -> None:
        self.console.print(f"  • {escape(message)}")
        host, _, step = message.partition(": ")
        if self.progress is None or host not in self.lines:
            return
        done = step.startswith(DONE_STEPS)
        self.progress.update(self.lines[host], description=f"{host}: {step}", completed=1 if done else 0)
        if done and self.overall is not None:
            ready = sum(1 for line in self.lines.values() if self.progress.tasks[line].completed)
            self.progress.update(self.overall, completed=ready)

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """The live lines stopped while the terminal is used for something else (a password prompt)."""
        progress = self.progress
        if progress is None:
            yield
            return
        progress.stop()
        try:
            yield
        finally:
            progress.start()

    @contextlib.contextmanager
    def live(self) -> Iterator[HostSteps]:
        if not self.console.is_terminal:
            yield self
            return
        columns = (
            SpinnerColumn(finished_text="✓"),
            TextColumn("{task.description}"),
            BarColumn(bar_width=20),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=self.console, transient=True) as progress:
            self.progress = progress
            self.overall = progress.add_task(f"hosts {self.goal}", total=len(self.hosts))
            self.lines = {host: progress.add_task(f"{host}: waiting", total=1) for host in self.hosts}
            try:
                yield self
            finally:
                self.progress = None
