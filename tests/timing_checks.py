"""The tests' timing procedures and what they need from the machine, shared with bench/timing_test_bounds.py,
which runs each procedure many times to measure the distributions the tests' bounds come from.

A test that times something needs a quiet machine: ``require_quiet`` waits a bounded time for one and skips the
test, saying why, when none comes. Whether the machine is quiet is read here from /proc/stat, independently of
the product's own load detection (hsconas_cli.measure), so that a broken detector cannot vouch for itself.
"""

from __future__ import annotations

import copy
import os
import random
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from hsconas_cli.calibrate import calibrate
from hsconas_cli.meter import LatencyMeter
from hsconas_cli.devices import Device
from hsconas_cli.drift import _scaled, measure_drift
from hsconas_cli.fileio import write_json
from hsconas_cli.profiles import Profile, load_profile, save_profile
from hsconas_cli.space import Arch, SearchSpace

# A tiny space on Fashion-MNIST's 28x28x1 input: five layers, two widths; the pipeline's stages run on it in seconds.
TINY28 = SearchSpace("tiny28", (8, 16, 24, 32), 28, 1, 10, depths=(1, 1, 2, 1), factors=(0.5, 1.0), head_channels=64)
FAST_PROTOCOL = {"chunk_ms": 0.3, "pairs_min": 4, "pairs_max": 8, "fast_pairs": 3, "warmup_ms": 5}
TINY_DEVICE = Device("tinycpu", 1, "onnxruntime", {"provider": "cpu", "threads": 1, "protocol": FAST_PROTOCOL})

QUIET_CORES = 0.25  # other processes (and the hypervisor's steal) using less than this over a second: quiet
QUIET_WAIT_S = 60.0  # how long a timing test waits for a quiet machine before it skips
RECHECK_S = 5.0  # once a wait has run out, later tests look this long only: a busy machine skips them quickly
_state = {"gave_up": False}

# ---- the bounds of the timing tests ----------------------------------------------------------------------------
# Each from its distribution over 60 repetitions on a quiet machine here (bench/timing_test_bounds.py, two runs of
# 30; docs/BENCHMARKS.md, "Timing test bounds"): mean, sd and the extremes seen, and how far the bound sits.
TINY_NOISE_FLOOR_BOUND_PCT = 30.0  # floor 8.0 +- 5.1%, max 24.7%: mean + 4.4 sd; noisier, the profile is skipped
MEASURED_OVER_PLAIN = (0.2, 3.0)  # measured / plain median of runs: 0.88 +- 0.22 (0.38..1.75 over 480): -3.1 / +9.6 sd
TORCH_BLOCK_RATIO = 8.0  # the torch backend's time of a block of 8,300x the FLOPs over the small one's: 19.6 +- 2.5
PREDICTOR_MEDIAN_ERROR, PREDICTOR_SPEARMAN = 0.25, 0.5  # 0.048 +- 0.029 (max 0.141); 0.966 +- 0.043 (min 0.833)
UNIFORM_FACTOR = (0.35, 2.5)  # the check's factor / the planted one: 0.99 +- 0.16 (0.50..1.69): -4 / +9 sd


# ---- is the machine quiet? ---------------------------------------------------------------------------------
def _cpu_times() -> tuple[float, float, float] | None:
    """(wall clock, CPU seconds used by every process and the hypervisor's steal, this process's CPU seconds)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    own = os.times()
    return time.perf_counter(), (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK"), own.user + own.system


@dataclass
class LoadWatch:
    """Cores used by other processes between ``start()`` and ``stop()``."""

    start_at: tuple | None = None
    cores: float | None = None

    def start(self) -> "LoadWatch":
        self.start_at = _cpu_times()
        return self

    def stop(self) -> float | None:
        end = _cpu_times()
        if self.start_at is None or end is None or end[0] <= self.start_at[0]:
            return None
        a = self.start_at
        self.cores = max(0.0, (end[1] - a[1]) - (end[2] - a[2])) / (end[0] - a[0])
        return self.cores

    @property
    def quiet(self) -> bool:
        return self.cores is None or self.cores < QUIET_CORES


def others_cores(seconds: float = 1.0) -> float | None:
    watch = LoadWatch().start()
    time.sleep(seconds)
    return watch.stop()


def wait_for_quiet(seconds: float) -> tuple[bool, float]:
    """Wait up to ``seconds`` for a second in which other processes leave the machine quiet; (quiet, the most other
    processes used meanwhile)."""
    deadline = time.monotonic() + seconds
    worst = 0.0
    while True:
        used = others_cores(1.0)
        if used is None or used < QUIET_CORES:
            return True, worst
        worst = max(worst, used)
        if time.monotonic() >= deadline:
            return False, worst


def require_quiet(what: str = "this test times networks") -> None:
    """Return once the machine is quiet; skip the test, saying why, when it stays busy for QUIET_WAIT_S (RECHECK_S
    once a wait has run out in this session, so that a busy machine skips the timing tests quickly)."""
    quiet, worst = wait_for_quiet(RECHECK_S if _state["gave_up"] else QUIET_WAIT_S)
    _state["gave_up"] = not quiet
    if not quiet:
        pytest.skip(f"the machine stayed busy (other processes used up to {worst:.2f} cores, quiet is under "
                    f"{QUIET_CORES}): {what} and needs a quiet machine")


def skip_if_measured_under_load(status: str, what: str) -> None:
    """Skip when the product itself found the machine busy while it measured (a neighbour started mid-test)."""
    if status in ("busy", "inconclusive"):
        pytest.skip(f"{what} was measured while other processes kept the machine busy ({status}); the product "
                    "said so, as it must, and nothing about the timing can be asserted")


# ---- the tiny profile --------------------------------------------------------------------------------------
def calibrate_tiny(root: Path) -> tuple[Profile, LoadWatch]:
    """A real onnxruntime calibration of TINY28 on this CPU with a short protocol, and the load it ran under."""
    write_json(root / "tinycpu.json", TINY_DEVICE.to_dict())
    watch = LoadWatch().start()
    prof = load_profile(calibrate(TINY_DEVICE, TINY28, archs=6, holdout=4, root=root))
    watch.stop()
    return prof, watch


# ---- the predictor against real measurements -----------------------------------------------------------------
def predictor_archs(prof: Profile) -> list[Arch]:
    """The fastest and slowest archs the profile can reach, a skip-heavy narrow and an all-xception network, and
    its held-out archs (never used for B), in order of prediction."""
    sp = prof.space
    lo, hi = min(sp.factors), max(sp.factors)

    def gene_ms(i, g):
        return prof.table[(i, g[0], None if g[0] == "skip" else sp.mid(i, g[1]))]

    genes = [[(op, None) if op == "skip" else (op, c) for op in l.ops for c in ((None,) if op == "skip" else sp.factors)]
             for l in sp.layers]
    fastest = Arch(tuple(min(g, key=lambda x: gene_ms(i, x)) for i, g in enumerate(genes)))
    slowest = Arch(tuple(max(g, key=lambda x: gene_ms(i, x)) for i, g in enumerate(genes)))
    archs = [fastest, slowest,
             Arch(tuple(("skip", None) if "skip" in l.ops else ("shuffle3", lo) for l in sp.layers)),
             Arch(tuple(("xception", hi) for _ in sp.layers)),
             *(Arch.from_list(a) for a in prof.validation["arch_list"])]
    return sorted(archs, key=prof.predict)


def spearman(a, b) -> float:
    ranks = [np.argsort(np.argsort(np.asarray(v))) for v in (a, b)]
    return float(np.corrcoef(*ranks)[0, 1])


def median_error(predicted, measured) -> float:
    p, m = np.asarray(predicted), np.asarray(measured)
    return float(np.median(np.abs(p - m) / m))


def measure_predictor(prof: Profile) -> dict:
    """Every ``predictor_archs`` network measured with one meter (one reference), 3 repeats within 0.3 s each."""
    archs = predictor_archs(prof)
    meter = LatencyMeter(prof)
    results = [meter.measure_arch(a, repeats=3, budget_s=0.3) for a in archs]
    measured = [r["measured_ms"] for r in results]
    predicted = [prof.predict(a) for a in archs]
    return {"archs": archs, "predicted": predicted, "measured": measured,
            "plain_medians": [r["raw_median_ms"] for r in results], "statuses": [r["verdict"]["status"] for r in results],
            "median_error": median_error(predicted, measured), "spearman": spearman(predicted, measured)}


# ---- the drift check on a profile of known drift --------------------------------------------------------------
# This VM's speed swings, alike for every network, by up to 2x within seconds (docs/BENCHMARKS.md, "Timing test
# bounds"), and two timings taken seconds apart can land on either side of a swing. The drift tests are built so
# that a swing cannot change their outcome: the stored noise floor, which sets the check's threshold
# (drift._threshold_pct), is fixed at 25%, a threshold of 53.7% with 3 repeats; the drifts they plant are 5x
# (+400%), which stays beyond it after a 2x swing either way; and the shape of the archs against the reference,
# which a swing does not move, tells a uniform drift from a change.
DRIFT_TEST_FLOOR_PCT = 25.0
DRIFT_TEST_THRESHOLD_PCT = 53.66
PLANTED = 5.0


def profile_as_of_now(prof: Profile, root: Path, *, faster: float = 1.0, archs_faster: float | None = None) -> Profile:
    """A version of ``prof`` saved under ``root`` as if calibrated a moment ago on a machine ``faster`` times as
    fast as this one is now: every time scaled by (the reference network's time now / its stored time) / faster,
    the noise floor set to DRIFT_TEST_FLOOR_PCT. ``archs_faster``: the held-out archs' stored times divided by it
    on top (and the reference's not), a change that is not one speed factor."""
    meter = LatencyMeter(prof)  # the reference's time now, taken as the check takes it: around the held-out archs
    for a in prof.validation["arch_list"]:
        meter.measure(Arch.from_list(a), repeats=3, budget_s=2.0)
    ref_now = meter.reference_now_ms()
    doc = {k: v for k, v in copy.deepcopy(prof.doc).items() if k not in ("checksum", "profile_version")}
    doc = _scaled(doc, ref_now / prof.doc["reference"]["ms"] / faster)
    v = doc["validation"]
    v["noise_floor_pct"] = DRIFT_TEST_FLOOR_PCT
    if archs_faster:
        v["measured_ms"] = [x / archs_faster for x in v["measured_ms"]]
        v["measured_again_ms"] = [x / archs_faster for x in v["measured_again_ms"]]
    return load_profile(save_profile(doc, root))


def drift_figures(check) -> dict:
    return {"outcome": check.outcome, "factor": check.factor, "drift_pct": check.drift_pct,
            "shape_pct": check.shape_pct, "threshold_pct": check.threshold_pct, "busy_archs": check.busy_archs}


def run_drift_check(prof: Profile, root: Path, **scaling) -> dict:
    return drift_figures(measure_drift(profile_as_of_now(prof, root, **scaling), archs=3, budget_s=10))


def torch_block_ratio() -> tuple[float, int, int]:
    """The torch CPU backend (1 thread) timing a 256-channel 56x56 shuffle block against a 16-channel 8x8 one, with
    8,300 times fewer FLOPs: (large / small, torch's thread count before, after)."""
    import torch

    from hsconas_cli.backends import make_backend
    from hsconas_cli.blocks import make_block

    backend = make_backend("torch", {"device": "cpu", "threads": 1})
    before = torch.get_num_threads()
    small = backend.prepare(make_block("shuffle3", 16, 16, 1, 8), (1, 16, 8, 8))
    large = backend.prepare(make_block("shuffle3", 256, 256, 1, 128), (1, 256, 56, 56))
    for r in (small, large):
        r.time(5)
    ratio = min(large.time(3) for _ in range(5)) / min(small.time(10) for _ in range(5))
    return ratio, before, torch.get_num_threads()


def spread(xs) -> dict:
    xs = list(xs)
    return {"n": len(xs), "mean": statistics.fmean(xs), "sd": statistics.stdev(xs) if len(xs) > 1 else 0.0,
            "min": min(xs), "max": max(xs)}


def sample_arch(seed: int) -> Arch:
    return TINY28.full().sample(random.Random(seed))
