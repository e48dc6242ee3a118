import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run the installed ``hsconas`` console script for real."""
    exe = Path(sys.executable).with_name("hsconas")
    return subprocess.run(
        [str(exe), *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("hsconas: error:"), lines
    assert "Traceback" not in proc.stderr + proc.stdout
    for n in needles:
        assert n in lines[0], (n, lines[0])


@pytest.fixture(scope="session")
def fmnist():
    from hsconas_cli.data import load_data

    return load_data("fashion-mnist", download=False)


# A tiny space on Fashion-MNIST's 28x28x1 input: five layers, two widths; the pipeline's stages run on it in seconds.
from hsconas_cli.space import SearchSpace  # noqa: E402

TINY28 = SearchSpace("tiny28", (8, 16, 24, 32), 28, 1, 10, depths=(1, 1, 2, 1), factors=(0.5, 1.0), head_channels=64)
FAST_PROTOCOL = {"chunk_ms": 0.3, "pairs_min": 4, "pairs_max": 8, "fast_pairs": 3, "warmup_ms": 5}


@pytest.fixture(scope="session")
def tiny_supernet(tmp_path_factory, fmnist):
    """A supernet of TINY28 trained for a few hundred images (real data, real training)."""
    from hsconas_cli.train import TrainConfig, train_supernet

    out = tmp_path_factory.mktemp("tiny-supernet")
    train_supernet("fashion-mnist", TINY28, out, cfg=TrainConfig(epochs=2, batch_size=64, lr=0.2, limit=640, workers=0), data=fmnist)
    return out / "checkpoint.pt"


@pytest.fixture(scope="session")
def tiny_profile(tmp_path_factory):
    """A real onnxruntime calibration of TINY28 on this CPU, with a short protocol."""
    from hsconas_cli.calibrate import calibrate
    from hsconas_cli.devices import Device
    from hsconas_cli.fileio import write_json
    from hsconas_cli.profiles import load_profile

    root = tmp_path_factory.mktemp("tiny-profiles")
    dev = Device("tinycpu", 1, "onnxruntime", {"provider": "cpu", "threads": 1, "protocol": FAST_PROTOCOL})
    write_json(root / "tinycpu.json", dev.to_dict())
    return load_profile(calibrate(dev, TINY28, archs=6, holdout=4, root=root))
