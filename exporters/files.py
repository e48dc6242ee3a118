"""What every exporter shares: its one error type and atomic file writes.

``exporters`` is the lowest layer of the product: it imports nothing of ``hsconas_cli`` (which imports it), so
the two packages do not import each other. ``hsconas_cli.fileio`` writes through ``atomic_path`` too, and the
CLI reports an ``ExportError`` as it reports its own errors: one line, exit code 2.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator


class ExportError(Exception):
    """An export that cannot be done or would not be right (bad options, a failed check, a missing runtime)."""


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, exclusive: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; it replaces ``path`` only if the block succeeds. ``exclusive``: it
    is linked into place only where ``path`` does not exist yet (FileExistsError otherwise, nothing written)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the permissions a plain open() would
        if exclusive:
            os.link(tmp, path)  # fails where path exists: never replaces another writer's file
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_json(path: str | os.PathLike, doc: dict[str, Any]) -> Path:
    return write_bytes(path, (json.dumps(doc, indent=2) + "\n").encode())


def time_runs(runner, runs: int, warmup: int = 20) -> dict[str, Any]:
    """A written model's timing for its sidecar: ``warmup`` single runs, then the median and percentiles of ``runs``
    single runs of ``runner`` (any object with ``time(k)`` in milliseconds and a ``timer`` name)."""
    import numpy as np

    for _ in range(warmup):
        runner.time(1)
    t = np.array([runner.time(1) for _ in range(runs)])
    return {"runs": runs, "median_ms": float(np.median(t)), "p90_ms": float(np.percentile(t, 90)),
            "p99_ms": float(np.percentile(t, 99)), "min_ms": float(t.min()), "timer": runner.timer}
