"""Rich progress bars shared by every long-running stage."""

from __future__ import annotations

import os
import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True)


def progress_bar() -> Progress:
    """A progress bar on stderr; silent when `RLHF_LENS_QUIET=1` or stderr is not a terminal under pytest."""
    quiet = os.environ.get("RLHF_LENS_QUIET") == "1" or ("pytest" in sys.modules and not sys.stderr.isatty())
    return Progress(
        TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), TimeRemainingColumn(), console=console, disable=quiet, transient=False,
    )
