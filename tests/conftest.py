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


def run_cli_all(*commands: tuple, env: dict | None = None, at_once: int = 4) -> list[subprocess.CompletedProcess]:
    """Run several ``hsconas`` commands for real, ``at_once`` at a time (each spends most of its time importing torch),
    and return their results in order. For error paths that are independent of each other, never for timings."""
    exe = Path(sys.executable).with_name("hsconas")
    results: list = [None] * len(commands)
    running: list = []
    pending = list(enumerate(commands))
    while pending or running:
        while pending and len(running) < at_once:
            i, args = pending.pop(0)
            running.append((i, subprocess.Popen([str(exe), *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                                text=True, env={**os.environ, **(env or {})})))
        i, proc = running.pop(0)
        out, err = proc.communicate(timeout=600)
        results[i] = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    return results


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


from timing_checks import (FAST_PROTOCOL, TINY28, TINY_NOISE_FLOOR_BOUND_PCT, calibrate_tiny, require_quiet,  # noqa: E402,F401
                           wait_for_quiet)

@pytest.fixture(scope="session")
def tiny_supernet(tmp_path_factory, fmnist):
    """A supernet of TINY28 trained for a few hundred images (real data, real training)."""
    from hsconas_cli.train import TrainConfig, train_supernet

    out = tmp_path_factory.mktemp("tiny-supernet")
    train_supernet("fashion-mnist", TINY28, out, cfg=TrainConfig(epochs=2, batch_size=64, lr=0.2, limit=640, workers=0), data=fmnist)
    return out / "checkpoint.pt"


@pytest.fixture(scope="session")
def tiny_profile(tmp_path_factory):
    """A real onnxruntime calibration of TINY28 on this CPU, with a short protocol. It waits up to 30 s for a quiet
    machine first, and calibrates in any case: most of its users only need a valid profile (search, shrink,
    export); a test that leans on its timings takes ``timed_tiny_profile``."""
    wait_for_quiet(30)
    prof, watch = calibrate_tiny(tmp_path_factory.mktemp("tiny-profiles"))
    _TINY_PROFILE_LOAD[prof.name] = watch
    return prof


_TINY_PROFILE_LOAD: dict = {}


@pytest.fixture
def timed_tiny_profile(tiny_profile):
    """``tiny_profile`` for a test that leans on its timings, on a quiet machine: skipped, saying why, where the
    profile was calibrated under load or came out noisier than quiet calibrations are, or the machine is busy now."""
    watch = _TINY_PROFILE_LOAD[tiny_profile.name]
    if not watch.quiet:
        pytest.skip(f"the tiny profile was calibrated while other processes used {watch.cores:.2f} cores: its timings "
                    "are not what this test can lean on")
    floor = tiny_profile.validation["noise_floor_pct"]
    if floor > TINY_NOISE_FLOOR_BOUND_PCT:
        pytest.skip(f"the tiny profile's noise floor is {floor:.1f}%, above the {TINY_NOISE_FLOOR_BOUND_PCT:g}% that "
                    "quiet calibrations here stay under: its timings are not what this test can lean on")
    require_quiet()
    return tiny_profile
