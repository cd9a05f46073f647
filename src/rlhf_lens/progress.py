"""Progress of long-running work, on stderr, shared by every stage: a live rich bar in a terminal, and a plain
line every few seconds otherwise (output to a log file), so no step that takes more than a few seconds is silent."""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from .errors import UserError

console = Console(stderr=True)

EVERY_ENV = "RLHF_LENS_PROGRESS_EVERY"
"""Seconds between two progress lines when stderr is not a terminal (default `EVERY`)."""
EVERY = 5.0


def progress_bar() -> Progress:
    """A progress bar on stderr: live in a terminal; elsewhere a line per unfinished task every `EVERY` seconds
    (`RLHF_LENS_PROGRESS_EVERY` overrides) and one when a task ends. Silent when `RLHF_LENS_QUIET=1`, or when
    stderr is not a terminal under pytest."""
    quiet = os.environ.get("RLHF_LENS_QUIET") == "1" or ("pytest" in sys.modules and not sys.stderr.isatty())
    if not console.is_terminal:
        return LogProgress(every=line_interval(), disable=quiet)
    return Progress(
        TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), TimeRemainingColumn(), console=console, disable=quiet, transient=False,
    )


@contextlib.contextmanager
def progress_advance(description: str, total: int) -> Iterator[Callable[[int], None]]:
    """advance(k) for a progress bar titled `description` over `total` items; a no-op when `description` is empty."""
    if not description:
        yield lambda k: None
        return
    with progress_bar() as bar:
        task = bar.add_task(description, total=total)
        yield lambda k: bar.update(task, advance=k)


def line_interval() -> float:
    """Seconds between two progress lines in a log (`RLHF_LENS_PROGRESS_EVERY`, default `EVERY`)."""
    value = os.environ.get(EVERY_ENV, "")
    if not value:
        return EVERY
    try:
        seconds = float(value)
    except ValueError:
        seconds = 0.0
    if not 0 < seconds < float("inf"):
        raise UserError(f"{EVERY_ENV} must be a number of seconds > 0 (got {value!r}); unset it for {EVERY:g}")
    return seconds


class LogProgress(Progress):
    """A `Progress` for a log file: rich draws a bar in place, which a file cannot show (it would get the final
    state only, at the end), so this prints each unfinished task as one plain line every `every` seconds,
    whether or not it moved (a long step still shows it is alive), and one line when a task completes."""

    def __init__(self, every: float, disable: bool = False):
        super().__init__(console=console, disable=disable)
        self.every = every
        self._ended: set[TaskID] = set()
        self._stopping = threading.Event()
        self._ticker: threading.Thread | None = None

    def start(self) -> None:
        if self.disable or self._ticker is not None:
            return
        self._stopping.clear()
        self._ticker = threading.Thread(target=self._tick, name="rlhf-lens-progress", daemon=True)
        self._ticker.start()

    def stop(self) -> None:
        if self._ticker is not None:
            self._stopping.set()
            self._ticker.join()
            self._ticker = None
        if not self.disable:
            for task in self.tasks:  # where each unfinished task stopped
                if task.id not in self._ended and task.visible:
                    self._ended.add(task.id)
                    self._print(task, stopped=True)

    def add_task(self, description: str, *args, **kwargs) -> TaskID:
        task_id = super().add_task(description, *args, **kwargs)
        self._end_if_finished(task_id)  # work found done (a resume): one line now, not one every few seconds
        return task_id

    def update(self, task_id: TaskID, **changes) -> None:
        super().update(task_id, **changes)
        self._end_if_finished(task_id)

    def advance(self, task_id: TaskID, advance: float = 1) -> None:
        super().advance(task_id, advance)
        self._end_if_finished(task_id)

    def _end_if_finished(self, task_id: TaskID) -> None:
        if self.disable or task_id in self._ended:
            return
        task = next(task for task in self.tasks if task.id == task_id)
        if _complete(task):
            self._ended.add(task_id)
            self._print(task)

    def _tick(self) -> None:
        while not self._stopping.wait(self.every):
            for task in self.tasks:
                if task.id not in self._ended and task.visible and task.started:
                    self._print(task)

    def _print(self, task: Task, stopped: bool = False) -> None:
        console.print(progress_line(task, stopped), markup=False, highlight=False, soft_wrap=True)


def progress_line(task: Task, stopped: bool = False) -> str:
    """One task as a plain line: `description: done/total (pct%), elapsed, left` (without a total: its count);
    `stopped`: the work ended short of its total (a run that converged before its cap, an error)."""
    elapsed = clock(task.elapsed or 0.0)
    done = _number(task.completed)
    if task.total is None:
        return f"{task.description}: {done}, " + (f"stopped after {elapsed}" if stopped else f"{elapsed} elapsed")
    total = _number(task.total)
    if _complete(task):
        return f"{task.description}: {done}/{total}, done in {elapsed}"
    if stopped:
        return f"{task.description}: {done}/{total}, stopped after {elapsed}"
    share = 100 * task.completed / task.total if task.total else 0.0
    left = task.time_remaining
    return (f"{task.description}: {done}/{total} ({share:.0f}%), {elapsed} elapsed"
            + (f", ~{clock(left)} left" if left is not None else ""))


def _complete(task: Task) -> bool:
    """All its work done (rich marks a task finished only once an update reaches the total)."""
    return task.total is not None and task.completed >= task.total


def clock(seconds: float) -> str:
    """h:mm:ss, as the bar shows times."""
    whole = int(seconds)
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"
