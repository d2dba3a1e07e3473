"""One progress bar for long work (generation, training, attacks): rich, on stderr, gone when done.

Shown only on a terminal: a transient rich bar writes blank lines into logs and pipes, where it is noise.
"""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeRemainingColumn


def progress_bar(enabled: bool = True, *extra: ProgressColumn) -> Progress:
    """``description | bar | done/total | time left`` plus ``extra`` columns; a no-op unless enabled on a terminal."""
    console = Console(stderr=True)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), *extra)
    return Progress(*columns, console=console, transient=True, disable=not (enabled and console.is_terminal))
