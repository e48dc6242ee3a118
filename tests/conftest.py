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
