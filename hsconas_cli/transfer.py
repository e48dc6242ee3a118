"""Calibration by transfer: a new device's profile from a measured profile of another device, plus N whole
networks measured on the new one (``hsconas calibrate --device NEW --from DEVICE[/vN] --networks N``).

A full calibration times every LUT entry on the device (320 blocks for fmnist-A; about 480 TensorRT engine builds
for imagenet-A on a Jetson). Transfer times only whole networks:

1. **N fit networks**, drawn uniformly from the space (``--design random``, the default), or designed
   (``--design spread``: spread evenly over the source profile's latency range, and within each latency bin the
   network that adds most to the fit's information, greedy D-optimal over the per-op mapping's features). The
   design was the first default; measured on three device pairs at N = 5-40 against the mean of 16 measurements
   of each held-out network, uniform draws gave the lower held-out error in 10 of 12 paired comparisons
   (two-sided sign test p = 0.04; docs/BENCHMARKS.md "Calibration by transfer"): the design's extreme networks
   fit the mapping where few users' networks lie.
2. **H held-out networks**, drawn uniformly (the distribution a search draws from), never used in the fit, each
   measured twice: the two passes give the noise floor, as in a full calibration.
3. **The mapping** from the source profile to the new device, every candidate fitted on the N networks
   (``fit_mappings``):

   * ``scale``: t = a x LAT_src(arch) + b: the source's own model rescaled (what the drift check's rescale does,
     plus a new intercept);
   * ``linear``: each block's new cost k x (its source LUT ms) + o + f x (its MFLOPs), summed, plus c: one scale,
     a cost per block (a runtime's per-node overhead, which the source may not have) and a cost per FLOP (what
     its kernels spend on arithmetic), shrunk toward one scale k0 by a ridge penalty whose strength is chosen by
     leave-one-out cross-validation on the N networks;
   * ``linear-per-op``: the same with k, o and f per op (kernel libraries favour different ops).

   As a full calibration chooses its model, the candidate with the lowest RMSE on the held-out networks' first
   pass becomes the profile's, and its figures are scored on the second pass, which the choice never saw.
4. **The profile**: a normal versioned profile (a LUT, a model, a validation) that everything downstream reads
   unchanged. Its LUT is the source's entries mapped one by one; its ``transfer`` section records the
   source profile, N, the design, every candidate's held-out figures and the wall time.
5. **The gate**: a profile whose held-out RMSE (second pass) exceeds ``max_rmse`` times its noise floor is refused
   (not written), with its figures and what to do.

Why not a scale alone: measured here, OpenVINO's LUT entries correlate with onnxruntime's at R^2 0.09, and its
per-block overhead and per-FLOP cost explain more of them (R^2 0.36); ExecuTorch's differ by op (op alone: R^2
0.55). Why not free coefficients: with N = 5-20 networks and up to 12 of them they overfit, hence the shrinkage,
whose strength the data choose. Per-stage groups (16 scales) did worse than per-op on the full calibrations'
networks, so they are not offered (docs/BENCHMARKS.md, "Calibration by transfer").
"""

from __future__ import annotations

import copy
import random
from pathlib import Path
from typing import Any, Callable

import numpy as np

from hsconas_cli.calibrate import JobsRun, Parts, Setup, finish_profile, measure_jobs, timers_of
from hsconas_cli.devices import Device
from hsconas_cli.errors import HsconasError
from hsconas_cli.profiles import Profile, find_profile, validation_figures
from hsconas_cli.space import Arch, arch_key
from hsconas_cli.ui import ProgressFn

MAPPINGS = ("scale", "linear", "linear-per-op")
DESIGNS = ("spread", "random")
MAX_RMSE_OVER_FLOOR = 1.5  # the gate's default (--max-rmse)
HOLDOUT = 20  # held-out networks of a transfer, each measured twice (--holdout)
POOL = 2000  # candidate networks the design chooses from
LAMBDAS = (0.0, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 1e6)  # ridge strengths tried, relative to N
TERMS = ("scale", "per_block_ms", "per_mflop_ms")  # an entry's new cost: scale x its source ms + per block + per MFLOP


# ---- what a network is made of, in the source profile's terms ------------------------------------------
def entry_terms(source: Profile, layer: int, op: str, mid: int) -> tuple[float, float, float]:
    """A block's (source LUT ms, 1, MFLOPs): what a mapped entry is a linear function of."""
    from hsconas_cli.supernet import cost_table

    return source.table[(layer, op, mid)], 1.0, cost_table(source.space)[(layer, op, mid)][0] / 1e6


def groups(source: Profile, per_op: bool) -> list[str]:
    """The groups whose blocks share one set of terms: each op of the space, or all blocks together."""
    if not per_op:
        return ["all"]
    return list(dict.fromkeys(op for l in source.space.layers for op in l.ops if op != "skip"))


def features(source: Profile, archs: list[Arch], per_op: bool) -> np.ndarray:
    """One row per arch: for each group, the sums over its non-skip blocks of the source ms, of 1 (the block count)
    and of MFLOPs, in ``groups`` order and term-major (all source ms sums first)."""
    keys = groups(source, per_op)
    out = np.zeros((len(archs), len(TERMS) * len(keys)))
    for r, arch in enumerate(archs):
        for i, (op, c) in enumerate(arch):
            if op != "skip":
                g = keys.index(op if per_op else "all")
                for t, v in enumerate(entry_terms(source, i, op, source.space.mid(i, c))):
                    out[r, t * len(keys) + g] += v
    return out


# ---- which networks to measure -------------------------------------------------------------------------
def distinct_archs(source: Profile, n: int, rng: random.Random, exclude: set) -> list[Arch]:
    out, seen = [], set(exclude)
    for _ in range(100 * n + 1000):
        if len(out) == n:
            break
        a = source.space.full().sample(rng)
        if (k := arch_key(source.space, a)) not in seen:
            seen.add(k)
            out.append(a)
    return out


def design_networks(source: Profile, n: int, seed: int, exclude: set, pool: int = POOL) -> list[Arch]:
    """``n`` networks spread over the source profile's latency range (equal-width bins between the pool's 1st and
    99th percentile) and, within each bin, the one that adds most to log det of the richest mapping's information
    matrix (its per-op features standardized, with an intercept): the op and width mix covered as well as the
    range."""
    cands = distinct_archs(source, pool, random.Random(seed + 7919), exclude)
    pred = np.array([source.predict(a) for a in cands])
    x = features(source, cands, per_op=True)
    x = (x - x.mean(0)) / np.where(x.std(0) > 0, x.std(0), 1.0)
    x = np.hstack([x, np.ones((len(x), 1))])
    lo, hi = np.percentile(pred, 1), np.percentile(pred, 99)
    edges = np.linspace(lo, hi, n + 1)
    info = 1e-3 * np.eye(x.shape[1])
    chosen: list[int] = []
    for b in sorted(range(n), key=lambda b: abs(b - (n - 1) / 2), reverse=True):  # the extremes first
        inside = [i for i in range(len(cands)) if edges[b] <= pred[i] <= edges[b + 1] and i not in chosen]
        if not inside:  # an empty bin: the networks nearest its middle
            mid = (edges[b] + edges[b + 1]) / 2
            inside = sorted((i for i in range(len(cands)) if i not in chosen), key=lambda i: abs(pred[i] - mid))[:20]
        best = max(inside, key=lambda i: np.linalg.slogdet(info + np.outer(x[i], x[i]))[1])
        chosen.append(best)
        info += np.outer(x[best], x[best])
    return [cands[i] for i in sorted(chosen, key=lambda i: pred[i])]


def choose_networks(source: Profile, networks: int, holdout: int, seed: int, design: str) -> tuple[list[Arch], list[Arch]]:
    """(fit networks, held-out networks): the held-out ones uniform from ``seed`` (the same for every N and
    design, so their figures compare), the fit ones designed or uniform, distinct from them."""
    held = distinct_archs(source, holdout, random.Random(seed), set())
    taken = {arch_key(source.space, a) for a in held}
    if design == "spread":
        return design_networks(source, networks, seed, taken), held
    return distinct_archs(source, networks, random.Random(seed + 104729), taken), held


# ---- the mappings --------------------------------------------------------------------------------------
def _ridge_toward(x: np.ndarray, y: np.ndarray, base: np.ndarray, lam: float) -> tuple[np.ndarray, float]:
    """Coefficients w and an intercept c minimizing |y - x w - c|^2 + lam N sum_j m_j (w_j - base_j)^2, m_j the
    mean square of column j (so lam is free of units); the intercept is not penalized."""
    xm, ym = x.mean(0), y.mean()
    xc = x - xm
    yc = y - ym - xc @ base
    m = np.mean(x**2, 0) + 1e-12
    d = np.linalg.lstsq(xc.T @ xc + lam * len(y) * np.diag(m) + 1e-12 * np.eye(x.shape[1]), xc.T @ yc, rcond=None)[0]
    w = base + d
    return w, float(ym - xm @ w)


def _loo_rmse(x: np.ndarray, y: np.ndarray, base: np.ndarray, lam: float) -> float:
    errs = []
    for i in range(len(y)):
        keep = np.arange(len(y)) != i
        w, c = _ridge_toward(x[keep], y[keep], base, lam)
        errs.append(y[i] - x[i] @ w - c)
    return float(np.sqrt(np.mean(np.square(errs))))


def fit_scale(source: Profile, archs: list[Arch], measured: list[float]) -> dict[str, Any]:
    """t = a x LAT_src + b, least squares (a > 0; with fewer than 2 distinct predictions, b = 0)."""
    p, t = np.array([source.predict(a) for a in archs]), np.asarray(measured, dtype=float)
    a, b = np.polyfit(p, t, 1) if len(p) >= 2 and np.ptp(p) > 0 else (0.0, 0.0)
    if a <= 0:  # no positive slope in the data: a pure ratio
        a, b = float(np.mean(t / p)), 0.0
    return {"kind": "scale", "a": float(a), "b": float(b)}


def fit_linear(source: Profile, archs: list[Arch], measured: list[float], per_op: bool) -> dict[str, Any]:
    """t = sum over the arch's blocks of (k_g x source ms + o_g + f_g x MFLOPs) + c, g the block's group (its op,
    or one group). Shrunk toward k_g = k0 (the global least-squares scale of the source LUT sum), o_g = f_g = 0:
    one scale, where the data cannot tell more; the strength by leave-one-out over the fit networks."""
    x, t = features(source, archs, per_op), np.asarray(measured, dtype=float)
    keys = groups(source, per_op)
    s = x[:, : len(keys)].sum(1)
    k0 = float(np.polyfit(s, t, 1)[0]) if len(s) >= 2 and np.ptp(s) > 0 else float(np.mean(t) / max(np.mean(s), 1e-9))
    k0 = max(k0, 1e-3)
    base = np.r_[np.full(len(keys), k0), np.zeros(2 * len(keys))]
    scores = {lam: _loo_rmse(x, t, base, lam) for lam in LAMBDAS} if len(t) >= 3 else {}
    lam = min(scores, key=lambda l: (scores[l], -l)) if scores else LAMBDAS[-1]  # ties to the stronger shrinkage
    w, c = _ridge_toward(x, t, base, lam)
    w = w.reshape(len(TERMS), len(keys))
    return {"kind": "linear-per-op" if per_op else "linear", "k0": k0, "lambda": lam, "intercept_ms": c,
            "groups": {g: dict(zip(TERMS, map(float, w[:, j]))) for j, g in enumerate(keys)},
            "loo_rmse_ms": {str(l): v for l, v in scores.items()}}


def fit_mappings(source: Profile, archs: list[Arch], measured: list[float]) -> dict[str, dict[str, Any]]:
    return {"scale": fit_scale(source, archs, measured), "linear": fit_linear(source, archs, measured, False),
            "linear-per-op": fit_linear(source, archs, measured, True)}


def mapped_entry(source: Profile, mapping: dict[str, Any], layer: int, op: str, mid: int) -> float:
    """A block's cost under a linear mapping, at least 0 (a LUT entry is a time)."""
    g = mapping["groups"][op if mapping["kind"] == "linear-per-op" else "all"]
    return max(0.0, sum(g[t] * v for t, v in zip(TERMS, entry_terms(source, layer, op, mid))))


def predict_mapped(source: Profile, mapping: dict[str, Any], arch: Arch) -> float:
    """The new device's latency of ``arch`` under a fitted mapping (what the written profile predicts)."""
    if mapping["kind"] == "scale":
        return mapping["a"] * source.predict(arch) + mapping["b"]
    blocks = [mapped_entry(source, mapping, i, op, source.space.mid(i, c)) for i, (op, c) in enumerate(arch) if op != "skip"]
    return sum(blocks) + mapping["intercept_ms"]


# ---- the profile ---------------------------------------------------------------------------------------
def mapped_lut_and_model(source: Profile, mapping: dict[str, Any]) -> tuple[dict, dict]:
    """The LUT and model of a profile that predicts exactly ``predict_mapped``: for ``scale`` the source's LUT
    with its model's scale and bias mapped; for the linear mappings each entry mapped, stem and head times k0,
    and an additive model whose bias is the intercept less those."""
    lut = copy.deepcopy(source.doc["lut"])
    if mapping["kind"] == "scale":
        a, b = mapping["a"], mapping["b"]
        model = {"kind": "scaled", "scale": a * source.scale, "power": source.power, "bias_ms": a * source.bias_ms + b}
        return lut, model
    for e in lut["entries"]:  # layers of one signature share the entry, its FLOPs and its source ms
        e["ms"] = e["raw_ms"] = mapped_entry(source, mapping, e["layers"][0] - 1, e["op"], e["mid"])
    k0 = mapping["k0"]
    lut["stem"]["ms"] *= k0
    lut["head"]["ms"] *= k0
    model = {"kind": "additive", "scale": 1.0, "power": 1.0,
             "bias_ms": mapping["intercept_ms"] - k0 * source.fixed_ms}
    return lut, model


def score_mappings(source: Profile, mappings: dict, held: list[Arch], first: list[float], again: list[float]):
    """Each mapping scored on the held-out first pass; the lowest RMSE chosen, its figures on the second pass."""
    scored = {}
    for name, m in mappings.items():
        pred = [predict_mapped(source, m, a) for a in held]
        scored[name] = {"predicted_ms": pred, **validation_figures(pred, first, again)}
    best = min(scored, key=lambda k: scored[k]["rmse_ms"])
    pred = scored[best]["predicted_ms"]
    on_second = validation_figures(pred, again, first)
    on_second["noise_floor_pct"] = scored[best]["noise_floor_pct"]
    return best, scored, on_second


def transfer_calibrate(device: Device, source: Profile, networks: int, *, holdout: int | None = None, seed: int = 0,
                       design: str = "random", max_rmse: float | None = MAX_RMSE_OVER_FLOOR, root: Path | None = None,
                       fresh: bool = False, set_mode: int | None = None, force: bool = False,
                       progress: ProgressFn | None = None, log: Callable[[str], None] | None = None) -> Path:
    """Measure ``networks`` fit networks and ``holdout`` held-out ones (twice; default ``HOLDOUT``) on ``device``,
    map ``source`` onto it, gate the result on its held-out error, and save it as the next version of the device's
    profile for the source's space; returns the file written. ``max_rmse`` None: no gate (the bench's baselines)."""
    holdout = holdout or HOLDOUT
    if networks < 2 or holdout < 3:
        raise HsconasError("--networks needs at least 2 networks and --holdout at least 3")
    if design not in DESIGNS:
        raise HsconasError(f"unknown --design {design!r}; choose one of: {', '.join(DESIGNS)}")
    setup = Setup.open(device, source.space, set_mode=set_mode, force=force)
    fit, held = choose_networks(source, networks, holdout, seed, design)
    how = {"from": source.name, "checksum": source.doc["checksum"], "networks": networks, "holdout": holdout,
           "seed": seed, "design": design}
    jobs = [(f"bias:{i}", a) for i, a in enumerate(fit)] + [(f"{t}:{i}", a) for t in ("val", "val2") for i, a in enumerate(held)]
    partial = setup.partial(root)
    run = measure_jobs(setup, Parts(source.space, setup.device.batch_size), jobs, partial,
                       setup.settings() | {"transfer": how}, fresh=fresh, progress=progress, log=log)
    ref_ms = run.timer.reference_ms() if setup.protocol.reference else None
    doc = {**setup.header(ref_ms), "overhead_ms": {}, **mapped_sections(source, fit, held, run, ref_ms, seed),
           "timers": timers_of(run.results),
           "timing": {"calibration_seconds": round(run.elapsed_s, 1), "measurements": len(run.results)}}
    doc["transfer"].update({"from": source.name, "from_checksum": source.doc["checksum"], "networks": networks,
                            "holdout": holdout, "design": design, "seed": seed, "max_rmse_over_floor": max_rmse})
    try:
        check_gate(doc, max_rmse)
    except HsconasError:
        partial.unlink(missing_ok=True)
        raise
    return finish_profile(doc, run, setup.backend, partial, root, log)


def mapped_sections(source: Profile, fit: list[Arch], held: list[Arch], run: JobsRun, ref_ms: float | None,
                    seed: int) -> dict:
    """The measured parts of a transferred profile: every mapping fitted on the fit networks, the one the held-out
    first pass chooses written as a LUT and model, its validation (second pass), the fit networks as ``bias``,
    and the ``transfer`` record (each mapping, each candidate's held-out figures, the source as it is)."""
    measured = [run.ms(f"bias:{i}", ref_ms) for i in range(len(fit))]
    first = [run.ms(f"val:{i}", ref_ms) for i in range(len(held))]
    again = [run.ms(f"val2:{i}", ref_ms) for i in range(len(held))]
    mappings = fit_mappings(source, fit, measured)
    best, scored, validation = score_mappings(source, mappings, held, first, again)
    lut, model = mapped_lut_and_model(source, mappings[best])
    chosen_by = ("lowest RMSE on the held-out networks' first pass among the transfer mappings (transfer.candidates); "
                 "validation scored on their second pass")
    return {
        "lut": lut,
        "model": {**model, "chosen_by": chosen_by},
        "validation": {**validation, "arch_list": [a.to_list() for a in held], "predicted_ms": scored[best]["predicted_ms"],
                       "measured_ms": first, "measured_again_ms": again, "scored_on": "second pass"},
        "bias": {"ms": model["bias_ms"], "archs": [a.to_list() for a in fit], "measured_ms": measured, "seed": seed,
                 "lut_sum_ms": [predict_mapped(source, mappings[best], a) - model["bias_ms"] for a in fit]},
        "transfer": {"mapping": best, "mappings": mappings, "source_as_is": _as_is(source, held, first, again),
                     "candidates": {k: {f: v[f] for f in ("rmse_ms", "rmse_over_floor", "mape_pct", "within_10_pct", "spearman")}
                                    for k, v in scored.items()}},
    }


def check_gate(doc: dict, max_rmse: float | None) -> None:
    """Refuse a transferred profile document whose held-out RMSE (second pass) exceeds ``max_rmse`` times its
    noise floor, in one line with its figures and what to do; None: no gate."""
    v, t = doc["validation"], doc["transfer"]
    ratio = v.get("rmse_over_floor")
    if max_rmse is None or ratio is None or ratio <= max_rmse:
        return
    raise HsconasError(
        f"transfer from {t['from']} refused: held-out RMSE {v['rmse_ms']:.4f} ms is {ratio:.2f}x its noise floor "
        f"{v['noise_floor_ms']:.4f} ms (bound {max_rmse:g}x; mapping {t['mapping']}, {t['networks']} networks); measure "
        f"more networks (--networks {2 * t['networks']}) or calibrate fully (omit --from)")


def _as_is(source: Profile, held: list[Arch], first: list[float], again: list[float]) -> dict[str, float]:
    """The source profile's predictions taken as they are, on the held-out networks: the naive baseline."""
    pred = [source.predict(a) for a in held]
    f = validation_figures(pred, first, again)
    return {k: f[k] for k in ("rmse_ms", "rmse_over_floor", "within_10_pct", "spearman")}


def transfer_like(profile: Profile, *, root: Path | None = None, progress: ProgressFn | None = None,
                  force: bool = False) -> Path:
    """Transfer again with a transferred profile's own settings (its source, N, hold-out, design, seed)."""
    t = profile.doc["transfer"]
    device, _, version = t["from"].rsplit("/", 2)
    source = find_profile(device, profile.space, int(version[1:]), root, check_mode=False)
    return transfer_calibrate(profile.device, source, t["networks"], holdout=t["holdout"], seed=t["seed"],
                              design=t["design"], max_rmse=t.get("max_rmse_over_floor"), root=root, force=force,
                              progress=progress)


def calibrate_or_transfer(device: Device, space, *, source: str | None = None, networks: int | None = None,
                          archs: int | None = None, max_rmse: float | None = None, design: str = "random",
                          **common) -> Path:
    """``hsconas calibrate``: a full calibration (``calibrate.calibrate``), or, with both ``source`` (``DEVICE``,
    ``DEVICE/vN`` or a profile file, for ``space``) and ``networks``, a transfer from it (``transfer_calibrate``;
    ``max_rmse`` None: its default gate). ``common``: holdout, seed, root, fresh, set_mode, force, progress, log."""
    from hsconas_cli.calibrate import calibrate

    if (source is None) != (networks is None):
        raise HsconasError("calibration by transfer takes both --from DEVICE and --networks N (a full calibration neither)")
    if source is None:
        return calibrate(device, space, archs=archs, **common)
    return transfer_calibrate(device, parse_source(source, space, common.get("root")), networks, design=design,
                              max_rmse=MAX_RMSE_OVER_FLOOR if max_rmse is None else max_rmse, **common)


def parse_source(text: str, space, root: Path | None = None) -> Profile:
    """``DEVICE``, ``DEVICE/vN`` or a profile file: the source profile of a transfer, for ``space``."""
    device, _, version = text.partition("/v")
    if text.endswith(".json") or not version:
        return find_profile(text, space, None, root, check_mode=False)
    if not version.isdigit():
        raise HsconasError(f"--from {text!r}: give DEVICE, DEVICE/vN or a profile file")
    return find_profile(device, space, int(version), root, check_mode=False)


