"""Rich progress for long work, on stderr so that --json output on stdout stays clean."""

from __future__ import annotations

import contextlib
import sys
from typing import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

ProgressFn = Callable[[str, int, int], None]

stderr = Console(stderr=True, width=None if sys.stderr.isatty() else 120)


@contextlib.contextmanager
def progress(title: str) -> Iterator[ProgressFn]:
    """Yield ``update(phase, done, total)``; one bar whose label shows the current phase.

    The bar appears at the first update, so a command that fails its checks prints its one-line error alone.
    """
    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=stderr,
        transient=False,
        refresh_per_second=4,
    )
    task = bar.add_task(title, total=None)

    def update(phase: str, done: int, total: int) -> None:
        if not bar.live.is_started:
            bar.start()
        bar.update(task, description=f"{title}: {phase}", completed=done, total=total)

    try:
        yield update
    finally:
        if bar.live.is_started:
            bar.stop()
