"""The measurement protocol: how one latency is measured robustly on a shared, noisy machine.

What the protocol does, and why (figures from this project's 2-core cloud CPU, onnxruntime, one thread):

* Each timed *chunk* runs the model back to back for at least ``chunk_ms`` and divides, so timer resolution
  and the per-run Python cost stay small against the chunk.
* The machine's speed is not steady: a 224x224 network ran at 7.1 ms for a few seconds, then at 10.3 ms,
  back and forth; two passes of plain medians over 16 networks differed by 5 to 38% RMS. The slow state
  also slows different networks by different factors (a reference network 1.2x, another 1.46x), so even a
  ratio to a reference does not cancel it (9% RMS).
* So every chunk of the model is bracketed by chunks of one fixed *reference network*, and the pair is kept
  only when both reference chunks ran within ``gate`` of the reference's 10th-percentile time seen so far,
  i.e. when the machine was in its fast state. The latency is the median over kept pairs of (model chunk /
  mean of the two reference chunks), times the reference's fast-state time. Two passes then agreed to
  1.3-2.7% RMS on the same 16 networks (224x224, when the fast state came often enough).
* When the fast state does not come within ``pairs_max`` pairs, the median ratio of all pairs is used and
  the measurement is marked as not settled. On the 28x28 networks (about 1 ms) the noise is not two-state
  but continuous, and the median over all pairs is as good as the gate (5-7% RMS between passes).

Devices that are steady (CUDA-graph replay, TensorRT on an idle Jetson) can set ``reference: false``: the
latency is then the median of plain chunks.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # the backends import torch; the protocol itself needs none of it (profiles read it cheaply)
    from hsconas_cli.backends import Runner
    from hsconas_cli.devices import Device


@dataclass(frozen=True)
class Protocol:
    warmup_ms: float = 30.0
    chunk_ms: float = 2.0
    pairs_min: int = 10
    pairs_max: int = 40
    fast_pairs: int = 8
    gate: float = 1.06
    baseline_pct: float = 10.0
    reference: bool = True

    @property
    def statistic(self) -> str:
        if self.reference:
            return (f"median over fast-state pairs of chunk / mean of its two reference chunks (both reference "
                    f"chunks within {self.gate:.2f}x of the reference's {self.baseline_pct:g}th percentile; all pairs "
                    "where fewer came), x the reference's fast-state ms")
        return "median of chunk times"

    def to_dict(self) -> dict:
        return {**asdict(self), "statistic": self.statistic}

    @classmethod
    def from_dict(cls, d: dict) -> "Protocol":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    @classmethod
    def for_device(cls, device: "Device") -> "Protocol":
        """The protocol a device is measured with: against the reference network, except where the timing is
        steady by itself (TensorRT; torch replaying CUDA graphs); the preset's ``protocol`` options override."""
        opts = device.backend_options
        steady = device.backend == "tensorrt" or (device.backend == "torch" and opts.get("device") == "cuda"
                                                  and opts.get("graphs", True))
        return cls(**{"reference": not steady, **opts.get("protocol", {})})


@dataclass
class Measurement:
    """A latency relative to the reference (``ratio``) or absolute (``ms``, where no reference is used)."""

    value: float  # ratio to the reference, or ms without one
    spread: float  # interquartile range / median of the kept samples
    pairs: int
    fast: int  # pairs kept in the fast state (== pairs without a reference)

    @property
    def settled(self) -> bool:
        return self.fast > 0

    def to_list(self) -> list:
        return [round(self.value, 7), round(self.spread, 5), self.pairs, self.fast]

    @classmethod
    def from_list(cls, v: list) -> "Measurement":
        return cls(float(v[0]), float(v[1]), int(v[2]), int(v[3]))


def _iqr_over_median(x: np.ndarray) -> float:
    med = float(np.median(x))
    return float(np.subtract(*np.percentile(x, [75, 25])) / med) if med > 0 else 0.0


@dataclass
class ProtocolTimer:
    """Times runners under a protocol, against a reference runner when the protocol uses one (the measurement
    protocol's machinery; ``hsconas_cli.meter.LatencyMeter`` is what measures a network with a profile).

    ``reference_times`` keeps every reference chunk seen, for the fast-state baseline; ``pair_reference_times``
    the reference time of every pair measured, and ``fast_reference_times`` of the pairs kept in the fast state,
    for the reference's own latency (``reference_ms``).
    """

    protocol: Protocol
    reference: Runner | None = None
    reference_times: list[float] = field(default_factory=list)
    fast_reference_times: list[float] = field(default_factory=list)
    pair_reference_times: list[float] = field(default_factory=list)
    _ref_k: int = 1

    def __post_init__(self) -> None:
        if self.protocol.reference:
            if self.reference is None:
                raise ValueError("this protocol needs a reference runner")
            self._ref_k = self._chunk_size(self.reference)

    def _chunk_size(self, runner: Runner) -> int:
        """Runs per chunk so that a chunk lasts at least chunk_ms; warms the runner up on the way."""
        deadline = time.perf_counter() + self.protocol.warmup_ms / 1e3
        ms = runner.time(1)
        while time.perf_counter() < deadline:
            ms = runner.time(1)
        return max(1, int(np.ceil(self.protocol.chunk_ms / max(ms, 1e-4))))

    def _ref_chunk(self) -> float:
        t = self.reference.time(self._ref_k)
        self.reference_times.append(t)
        return t

    def _baseline(self) -> float:
        return float(np.percentile(self.reference_times[-4000:], self.protocol.baseline_pct))

    def warm_up(self, pairs: int = 40) -> None:
        """Fill the fast-state baseline with reference chunks taken in alternation, as measurements take them."""
        if self.protocol.reference:
            for _ in range(pairs):
                self._ref_chunk()

    def measure(self, runner: Runner) -> Measurement:
        p = self.protocol
        k = self._chunk_size(runner)
        if not p.reference:
            chunks = np.array([runner.time(k) for _ in range(p.pairs_min * 2)])
            return Measurement(float(np.median(chunks)), _iqr_over_median(chunks), len(chunks), len(chunks))
        before = self._ref_chunk()
        pairs, fast = [], []
        while len(pairs) < p.pairs_max and not (len(pairs) >= p.pairs_min and len(fast) >= p.fast_pairs):
            t = runner.time(k)
            after = self._ref_chunk()
            ref = (before + after) / 2
            pairs.append((t / ref, max(before, after)))
            self.pair_reference_times.append(ref)
            if max(before, after) <= p.gate * self._baseline():
                fast.append(t / ref)
                self.fast_reference_times.append(ref)
            before = after
        if len(fast) >= max(3, p.fast_pairs // 2):
            used, n_fast = np.array(fast), len(fast)
        else:  # the fast state did not come: the median of all pairs, flagged as not settled
            used, n_fast = np.array([r for r, _ in pairs]), 0
        return Measurement(float(np.median(used)), _iqr_over_median(used), len(pairs), n_fast)

    def reference_ms(self) -> float:
        """The reference's fast-state latency: the median of reference chunks of kept pairs; where no pair was kept,
        of every pair's (never of the warm-up chunks alone: a new session's first chunks ran 1.7x slower here)."""
        src = self.fast_reference_times or self.pair_reference_times or self.reference_times
        return float(np.median(src)) if src else float("nan")


# ---- is the machine busy? ------------------------------------------------------------------------------
# Other processes' CPU use while a measurement ran, from the kernel's counters (/proc/stat, and this process's
# own CPU time from os.times()). Linux only; elsewhere the load is reported as unknown.
PROC_STAT = "/proc/stat"
BUSY_OTHER_CORES = 0.25  # other processes used at least a quarter of a core on average: busy
BUSY_STEAL_CORES = 0.10  # the hypervisor took a tenth of a core: busy (neighbouring VMs)
LOAD_WINDOW_S = 0.3  # the load of a repeat is read over at least this long


@dataclass(frozen=True)
class CpuSample:
    wall: float
    busy_s: float  # every CPU's non-idle time, all processes, seconds
    steal_s: float
    own_s: float  # this process's CPU time (all its threads)


def cpu_sample() -> CpuSample | None:
    try:
        with open(PROC_STAT) as f:
            fields_ = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    user, nice, system, idle, iowait, irq, softirq, steal = (fields_ + [0] * 8)[:8]
    t = os.times()
    return CpuSample(time.perf_counter(), (user + nice + system + irq + softirq) / hz, steal / hz, t.user + t.system)


@dataclass(frozen=True)
class Load:
    """CPU use by others between two samples, in cores (1.0 = one core busy all the time)."""

    other_cores: float
    steal_cores: float
    seconds: float

    @property
    def busy(self) -> bool:
        return self.other_cores >= BUSY_OTHER_CORES or self.steal_cores >= BUSY_STEAL_CORES

    def describe(self) -> str:
        return f"other processes used {self.other_cores:.2f} cores" + (f", steal {self.steal_cores:.2f}" if self.steal_cores >= 0.01 else "")

    def to_dict(self) -> dict:
        return {"other_cores": round(self.other_cores, 3), "steal_cores": round(self.steal_cores, 3),
                "seconds": round(self.seconds, 3), "busy": self.busy}


def load_between(a: CpuSample | None, b: CpuSample | None) -> Load | None:
    if a is None or b is None or b.wall <= a.wall:
        return None
    wall = b.wall - a.wall
    other = max(0.0, (b.busy_s - a.busy_s) - (b.own_s - a.own_s))
    return Load(other / wall, max(0.0, b.steal_s - a.steal_s) / wall, wall)


# ---- the verdict: repeated measurements, with their spread, gate and load ------------------------------
@dataclass
class Verdict:
    """A latency as hsconas reports it: the median of the kept repeats, with what stands behind it.

    A repeat is *kept* when the machine was quiet while it ran (``Load.busy`` false, or unknown) and, while
    time allows, when the fast-state gate settled. ``uncertainty_pct`` is about two standard errors of that
    median, and never less than the profile's noise floor.
    ``status`` says how far the verdict can be trusted: quiet, re-measured (busy or unsettled repeats were
    dropped), unsettled (quiet, but the gate never settled: the median of all pairs, as on small networks),
    busy (no quiet repeat came within the budget: not a verdict).
    """

    ms: float
    repeats_ms: list[float]
    kept: int
    settled: int
    busy: int
    spread_pct: float
    uncertainty_pct: float
    max_other_cores: float | None
    seconds: float
    status: str

    def note(self) -> str:
        n = len(self.repeats_ms)
        load = f"; other processes used up to {self.max_other_cores:.2f} cores" if self.max_other_cores is not None else ""
        return {
            "quiet": f"{self.kept} of {n} repeats kept, machine quiet{load}",
            "re-measured": f"re-measured: {self.kept} of {n} repeats kept ({self.busy} taken while the machine was busy, "
                           f"{n - self.settled} with the fast-state gate unsettled){load}",
            "unsettled": f"the fast-state gate did not settle in {n} repeats (median of all pairs); machine quiet{load}",
            "busy": f"measured under load: all {n} repeats were taken while other processes were busy{load}; not a "
                    "verdict, measure again on a quiet machine",
        }[self.status]

    def to_dict(self) -> dict:
        return {"ms": self.ms, "repeats_ms": self.repeats_ms, "kept": self.kept, "settled": self.settled,
                "busy": self.busy, "spread_pct": self.spread_pct, "uncertainty_pct": self.uncertainty_pct,
                "max_other_cores": self.max_other_cores, "seconds": round(self.seconds, 2), "status": self.status,
                "note": self.note()}


@dataclass(frozen=True)
class Repeat:
    """One repeated measurement: its latency, whether the fast-state gate settled, whether the machine was busy."""

    ms: float
    settled: bool
    busy: bool
    other_cores: float | None = None


def take_verdict(measure_once, *, repeats: int, budget_s: float, floor_pct: float = 0.0) -> Verdict:
    """Call ``measure_once() -> (ms, settled)`` until ``repeats`` quiet, settled repeats are in, twice
    ``repeats`` quiet ones are, or ``budget_s`` has passed (at least ``repeats`` calls in any case), watching
    the machine's load around each call; then ``verdict_of`` the repeats."""
    t0, rows = time.perf_counter(), []
    samples = [cpu_sample()]
    while True:
        ms, settled = measure_once()
        now = cpu_sample()
        # the load over at least LOAD_WINDOW_S before now: the kernel counts in 10 ms ticks, too coarse for one
        # short repeat alone
        start = next((a for a in reversed(samples) if a is None or now is None or now.wall - a.wall >= LOAD_WINDOW_S), samples[0])
        samples.append(now)
        load = load_between(start, now)
        rows.append(Repeat(ms, settled, bool(load and load.busy), load.other_cores if load else None))
        quiet = [r for r in rows if not r.busy]
        good = [r for r in quiet if r.settled]
        if (len(good) >= repeats or len(quiet) >= 2 * repeats  # unsettled but quiet: one more round, then accept
                or (len(rows) >= repeats and time.perf_counter() - t0 >= budget_s)):
            break
    return verdict_of(rows, repeats=repeats, floor_pct=floor_pct, seconds=time.perf_counter() - t0)


def verdict_of(rows: list[Repeat], *, repeats: int, floor_pct: float = 0.0, seconds: float = 0.0) -> Verdict:
    """The verdict of a list of repeats: which are kept (quiet and settled where at least min(repeats, 3) are;
    else quiet ones; all where none is quiet), their median, and the uncertainty: the larger of
    2 x 1.2533 x sd / sqrt(kept) (two standard errors of a median of normal samples, sd the kept repeats' relative
    one) and ``floor_pct``, the profile's noise floor (the RMS difference of two passes over the same networks).
    The floor bounds the final figure and is not divided by sqrt(kept): this machine's speed swings are common to
    the repeats taken in one sitting, so more repeats do not average them out (drift.py)."""
    quiet = [r for r in rows if not r.busy]
    good = [r for r in quiet if r.settled]
    busy = len(rows) - len(quiet)
    if not quiet:
        kept, status = rows, "busy"
    elif len(good) >= max(1, min(repeats, 3)):
        kept, status = good, ("quiet" if len(good) == len(rows) else "re-measured")
    else:
        kept, status = quiet, ("re-measured" if busy else "unsettled")
    vals = np.array([r.ms for r in kept])
    med = float(np.median(vals))
    sd = float(np.std(vals, ddof=1) / med) if len(vals) > 1 else 0.0
    uncertainty_pct = max(100 * 2 * 1.2533 * sd / np.sqrt(len(vals)), floor_pct)
    loads = [r.other_cores for r in rows if r.other_cores is not None]
    return Verdict(
        ms=med, repeats_ms=[r.ms for r in rows], kept=len(kept), settled=sum(r.settled for r in rows), busy=busy,
        spread_pct=float(100 * (vals.max() - vals.min()) / med), uncertainty_pct=float(uncertainty_pct),
        max_other_cores=max(loads) if loads else None, seconds=seconds, status=status)


def describe_measurement(res: dict, target_ms: float | None = None) -> str:
    """A latency measured beside its prediction (``meter.LatencyMeter.measure_arch``'s result) as one line: the value
    with its uncertainty, the prediction, how far from T where given, and the verdict's note."""
    v = res.get("verdict")
    line = f"measured {res['measured_ms']:.4f} ms"
    if v:
        line += f" +-{v['uncertainty_pct']:.1f}% (spread {v['spread_pct']:.1f}% over {v['kept']} kept repeats)"
    line += f", predicted {res['predicted_ms']:.4f} ms ({res['error_pct']:+.1f}%)"
    if target_ms:
        line += f", {100 * (res['measured_ms'] / target_ms - 1):+.1f}% vs T"
    return line + (f"; {v['note']}" if v else "")
