import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: int = 600,
            process: bool = False) -> subprocess.CompletedProcess:
    """Run ``hsconas`` with ``args``: its ``main()`` in this process (``cli_here``), or, with ``process``, the installed
    console script for real, as a new process."""
    if not process:
        return cli_here(*args, cwd=cwd, env=env)
    exe = Path(sys.executable).with_name("hsconas")
    return subprocess.run(
        [str(exe), *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def cli_here(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """``hsconas ARGS`` through the command line's own ``main()`` in this process, as the console script calls it:
    the same parsing, library calls, output and exit code, without a new process's seconds of importing torch. Its
    stdout and stderr are captured (rich and the progress lines write to whatever sys.stdout and sys.stderr are), and
    ``env`` and ``cwd`` hold for the call only. Anything but SystemExit escaping main() is a traceback the product
    would have shown: it fails the test. The console script itself runs for real in test_cli_basics, the pipeline's
    tests, DDP and the TensorRT stand-in tests (``process=True``)."""
    from hsconas_cli.cli import main

    out, err = io.StringIO(), io.StringIO()
    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    try:
        os.environ.update({k: str(v) for k, v in (env or {}).items()})
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main([str(a) for a in args])
                code = 0
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        os.chdir(saved_cwd)
    return subprocess.CompletedProcess(["hsconas", *map(str, args)], code, out.getvalue(), err.getvalue())


def run_cli_all(*commands: tuple, env: dict | None = None, at_once: int = 4,
                process: bool = False) -> list[subprocess.CompletedProcess]:
    """Run several ``hsconas`` commands and return their results in order: one after another in this process, or,
    with ``process``, as real processes ``at_once`` at a time (each spends most of its time importing torch). For
    error paths that are independent of each other, never for timings."""
    if not process:
        return [cli_here(*args, env=env) for args in commands]
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


# Fast unit tests of the maths, the layout and the file formats run first, so that a broken formula or format fails
# in seconds; then the integration runs, which share the session's tiny supernet, profile and search.
FIRST = ("test_maths.py", "test_layout.py", "test_schema.py", "test_space.py", "test_devices.py", "test_data.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(FIRST)}
    items.sort(key=lambda item: rank.get(Path(str(item.fspath)).name, len(FIRST)))  # stable: the rest keep their order


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


# The session's one search (test_search.py reads it whole): a tiny budget, and an objective led by latency
# (F = ACC - 10 |LAT / T - 1|): a few hundred training images leave the tiny supernet's subnets within a few points
# of each other, and with the default objective the best archs by F and by accuracy are then mostly the same ones.
# Here they mostly differ (selection by F itself: test_search.test_best_by_f).
TINY_SEARCH_OBJ = {"beta": -10.0, "beta_below": 10.0}


def _tiny_search_cfg():
    from hsconas_cli.search import SearchConfig

    return SearchConfig(generations=3, population=8, parents=3, calib_images=128, val_images=256, select_images=512, top_k=4)


TINY_SEARCH_CFG = _tiny_search_cfg()


@pytest.fixture(scope="session")
def tiny_search(tiny_supernet, tiny_profile, fmnist, tmp_path_factory):
    """One search of TINY28 at 50% with the tiny supernet and profile: its folder and result, built once."""
    from hsconas_cli.search import search

    out = tmp_path_factory.mktemp("search")
    return out, search(tiny_supernet, fmnist, tiny_profile, "50%", out, cfg=TINY_SEARCH_CFG, **TINY_SEARCH_OBJ)


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
