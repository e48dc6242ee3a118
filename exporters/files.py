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
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator


class ExportError(Exception):
    """An export that cannot be done or would not be right (bad options, a failed check, a missing runtime)."""


@dataclass
class ExportRequest:
    """What an exporter is asked to write: the network (eval mode, weights and BN statistics final) as
    ``out_dir/name.*``, at ``batch_size`` (or a dynamic batch), with ``metadata`` in the file or its sidecar, checked
    against PyTorch on ``check_images`` (real, normalised images, N x C x H x W). The rest applies to some formats:
    ``precision`` and ``calib_images`` (INT8 calibration, never the checked images); TensorRT's builder settings;
    OpenVINO's and ExecuTorch's thread count and hint; ``measure``, a function of the written file's path that
    returns its latency under the device profile's protocol."""

    net: Any
    out_dir: Path
    name: str
    batch_size: int
    metadata: dict
    check_images: Any
    dynamic_batch: bool = False
    precision: str = "fp32"
    calib_images: Any = None
    opset: int | None = None  # ONNX opset (None: exporters.onnx.OPSET)
    workspace_mb: int = 1024  # tensorrt
    dla_core: int | None = None  # tensorrt
    optimization_level: int | None = None  # tensorrt 8.6+
    board: str | None = None  # tensorrt: this Jetson's family (where DLA depends on it)
    timing_runs: int = 200  # tensorrt, openvino, executorch: runs of the sidecar's timing
    threads: int | None = 1  # openvino, executorch
    hint: str = "latency"  # openvino
    measure: Callable[[Path], dict] | None = None  # openvino, executorch

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        c, h, w = self.check_images.shape[1:]
        return (self.batch_size, int(c), int(h), int(w))

    def but(self, **changes: Any) -> "ExportRequest":
        """This request with ``changes`` (the ONNX a TensorRT or OpenVINO export writes first, say)."""
        return replace(self, **changes)


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
