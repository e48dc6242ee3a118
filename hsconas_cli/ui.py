"""Rich progress for long work, on stderr so that --json output on stdout stays clean."""

from __future__ import annotations

import contextlib
import sys
import time
from typing import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

ProgressFn = Callable[[str, int, int], None]

stderr = Console(stderr=True, width=None if sys.stderr.isatty() else 120)


@contextlib.contextmanager
def progress(title: str) -> Iterator[ProgressFn]:
    """Yield ``update(phase, done, total)``; one bar whose label shows the current phase.

    The bar appears at the first update, so a command that fails its checks prints its one-line error alone.
    Where stderr is not a terminal (a log file, CI), a plain line is printed at each new phase and at most
    every 15 seconds instead.
    """
    if not stderr.is_terminal:
        yield _plain_progress(title)
        return
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


def _plain_progress(title: str) -> ProgressFn:
    state = {"phase": None, "last": 0.0, "start": time.perf_counter()}

    def update(phase: str, done: int, total: int) -> None:
        now = time.perf_counter()
        head = phase.split(":")[0]
        if head != state["phase"] or now - state["last"] >= 15:
            state["phase"], state["last"] = head, now
            pct = f" {100 * done / total:3.0f}%" if total else ""
            print(f"[{now - state['start']:7.1f}s] {title}: {phase}{pct}", file=sys.stderr, flush=True)

    return update
