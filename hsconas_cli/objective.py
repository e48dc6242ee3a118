"""The search objective F(arch, T) = ACC(arch) + beta * (LAT(arch) / T - 1), beta < 0 (paper eq. 1).

The paper applies one beta on both sides of T. Linear in latency, that objective has its optimum where the
accuracy gained per millisecond equals |beta| / T, which depends on the space and on T, so with a single beta a
search lands wherever the accuracy-latency curve happens to have that slope, not near T: on Fashion-MNIST the
paper's F with beta = -0.5 put the winners 30-70% under T (``bench/search.py``), and 32-43% under it at the
20th and 40th percentiles (``bench/beta_below.py``). hsconas therefore takes one slope above T (``beta``,
default -1: each 1% over T costs one accuracy point) and another below it (``beta_below``). A negative
``beta_below`` rewards running under T (``beta_below = beta`` is the paper's objective exactly); a positive one
charges for latency budget left unused; 0 charges and rewards nothing below T.

The default is 0: F is then the inherited accuracy of any network that runs within T, and the search hands back
the most accurate network that runs at T, as a user who states T asks. It was chosen by what the user gets
(``bench/beta_below.py``, docs/BENCHMARKS.md "beta_below: what the user gets"): searched at two targets with
0 and with +0.5 (hsconas 0.2's default, which cost half a point per 1% of T left unused), each winner
fine-tuned with the demo's recipe on two seeds and measured here, the winners of 0 led those of +0.5 by
+0.15 +- 0.20 points of test top-1 (1 SE over 4 target-seed pairs; -0.26 and -0.07 at one target, +0.67 and
+0.25 at the other): within the noise, so neither hands the user a more accurate network at T.
Within the noise the objective that says what it means is kept. +0.5 had been chosen because its winners
landed within 2% of T; that is where winners land, not what they are worth, and it could never prefer a
network well under T that is as accurate (docs/BENCHMARKS.md, "What the search bought").
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Iterable, Protocol, Union

from hsconas_cli.errors import HsconasError

if TYPE_CHECKING:
    from hsconas_cli.space import Arch

DEFAULT_BETA = -1.0
DEFAULT_BETA_BELOW = 0.0  # chosen by bench/beta_below.py: see the docstring


@dataclass(frozen=True)
class Objective:
    target_ms: float
    beta: float = DEFAULT_BETA
    beta_below: float = DEFAULT_BETA_BELOW

    def __post_init__(self) -> None:
        if self.target_ms <= 0:
            raise HsconasError("the latency target must be positive")
        if not self.beta < 0:
            raise HsconasError("beta must be negative: F penalises latency over the target")
        if not math.isfinite(self.beta_below):
            raise HsconasError("beta below T must be a finite number")

    @classmethod
    def with_options(cls, target_ms: float, beta: float | None = None, beta_below: float | None = None) -> Objective:
        """The objective for ``target_ms`` with the defaults where an option is None (as the CLI passes them)."""
        return cls(target_ms, DEFAULT_BETA if beta is None else beta, DEFAULT_BETA_BELOW if beta_below is None else beta_below)

    def __call__(self, acc: float, lat_ms: float) -> float:
        x = lat_ms / self.target_ms - 1
        return acc + (self.beta if x > 0 else self.beta_below) * x

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class FleetObjective:
    """F across a fleet: F(arch) = ACC(arch) + sum over devices d of P_d(LAT_d(arch) / T_d - 1), where P_d is the
    single-device penalty (``beta`` x above T_d, ``beta_below`` x below it) of that device's own ``Objective``.

    Each device's overshoot is charged on its own scale, as a share of its own T, so devices of 0.5 ms and 30 ms
    count alike, and it is charged on every device: a network 3% over on two devices costs twice what one 3% over
    on one device costs. The maximum of the overshoots was not taken: it leaves every device but the worst free,
    so the search could push a second device over its T at no cost. With ``beta_below`` 0 (the default) a device
    the network runs under costs nothing, and F is the inherited accuracy of any network that meets every T."""

    targets: dict  # device name -> Objective

    def __call__(self, acc: float, lats_ms: dict) -> float:
        return acc + sum(obj(0.0, lats_ms[d]) for d, obj in self.targets.items())

    def to_dict(self) -> dict:
        return {d: o.to_dict() for d, o in self.targets.items()}


class LatencyPredictor(Protocol):
    """What the search asks of a latency model: one arch's predicted latency, in ms. A device profile
    (``profiles.Profile``) gives one number; a fleet (``fleet.Fleet``) gives one per device, which its
    ``FleetObjective`` scores."""

    def predict(self, arch: "Arch") -> Union[float, dict]:
        ...


def best_by_f(rows: Iterable[dict], k: int) -> list[dict]:
    """The ``k`` evaluated archs of highest F, best first (the earlier evaluated first among equals): the parents of
    each generation, the winner, and the closed loop's first candidates."""
    return sorted(rows, key=lambda r: -r["F"])[:k]


def parse_target(spec: str | float) -> tuple[str, float]:
    """("ms", milliseconds > 0) or ("percentile", 0..100) from a target as the user wrote it; one line if neither.
    Needs no profile, so a command can refuse a bad target before it writes anything."""
    text = str(spec).strip().lower()
    try:
        if text.endswith("%"):
            q = float(text[:-1])
            if 0 <= q <= 100:
                return "percentile", q
        else:
            ms = float(text[:-2] if text.endswith("ms") else text)
            if ms > 0:
                return "ms", ms
    except ValueError:
        pass
    raise HsconasError(f"latency target {spec!r} is neither milliseconds above 0 (e.g. 1.2) nor a percentile "
                       "from 0% to 100% (e.g. 40%)")


def resolve_target(spec: str | float, profile, subspace=None, samples: int = 1000) -> tuple[float, dict]:
    """The latency target in ms, and where it sits in what the (sub)space reaches on the profile's device.

    ``spec`` is milliseconds ("34", "1.2ms"), or a percentile of the predicted latency of uniformly sampled
    archs of the profile's *whole* space ("40%"), which names a target on any machine without a figure that fits
    only one. A percentile never resolves against a subspace: a shrink and the search of the space it wrote then
    mean the same T by the same words. A target outside what ``subspace`` reaches is refused, naming that range.
    """
    import random

    import numpy as np

    kind, value = parse_target(spec)
    full = profile.space.full()
    sub = subspace or full
    lo, hi = profile.reachable(sub)
    rng = random.Random(0)
    lats = np.array([profile.predict(full.sample(rng)) for _ in range(samples)])
    target = float(np.percentile(lats, value)) if kind == "percentile" else value
    if not lo <= target <= hi:
        raise HsconasError(
            f"latency target {target:.4g} ms is outside what {'this subspace of ' if sub != full else ''}"
            f"{sub.space.name} reaches on {profile.name}: {lo:.4g} to {hi:.4g} ms"
        )
    where = {
        "target_ms": target,
        "spec": str(spec),
        "resolved_on": profile.name,
        "reachable_ms": [lo, hi],
        "position": (target - lo) / (hi - lo) if hi > lo else 0.0,
        "percentile_of_random_archs": float(100 * np.mean(lats <= target)),
    }
    return target, where


def target_note(where: dict, earlier: dict | None) -> str | None:
    """One line on how this run's T relates to the T an earlier stage resolved (the shrink that wrote the space
    being searched, ``earlier`` its ``target``), or None where there was no such stage."""
    if not earlier or "target_ms" not in earlier:
        return None
    t, t0 = where["target_ms"], earlier["target_ms"]
    said = f"{earlier.get('spec', f'{t0:.4g}')} on {earlier.get('resolved_on', 'its profile')}"
    if abs(t - t0) <= 1e-9 * t0:
        return f"T = {t:.4f} ms, the T the shrink that wrote this space used ({said})"
    why = ("the target was given differently" if where.get("spec") != earlier.get("spec")
           else "the profile differs" if where.get("resolved_on") != earlier.get("resolved_on")
           else "the shrink resolved its percentile against its own subspace, as hsconas did before this version")
    return (f"T = {t:.4f} ms ({where['spec']} on {where['resolved_on']}), not the {t0:.4f} ms the shrink that wrote "
            f"this space used ({said}): {why}; pass --latency {t0:.6g} for the shrink's T")
