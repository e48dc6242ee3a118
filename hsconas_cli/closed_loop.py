"""The closed loop: a finished search's best candidates measured on the device, and the winner kept or replaced.

The search ranks archs by predicted latency; the user is promised a measured one. ``verify_on_device`` measures
the candidates ``loop_candidates`` picks (the best by F, and the most accurate ones a few percent under T as
fallbacks) with the profile's ``LatencyMeter``, and ``choose_candidate`` keeps the winner unless its measurement
misses T beyond its uncertainty while another candidate clearly meets it. ``close_fleet_loop`` does the same over
the devices of a fleet (``fleet.Fleet``, or anything with its ``members`` and ``worst_ratio``) that this machine
can measure, with ``choose_fleet_candidate``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable

from hsconas_cli.fileio import read_json, write_json
from hsconas_cli.meter import LatencyMeter
from hsconas_cli.objective import best_by_f
from hsconas_cli.space import Arch
from hsconas_cli.ui import ProgressFn

FALLBACK_BAND = 0.03  # width of the predicted-latency bands below T that fallback candidates come from
REPEATS, BUDGET_S = 3, 10.0  # each candidate's measurement: quiet repeats, and seconds to re-measure a busy one


def misses_target(measured_ms: float, uncertainty_pct: float, target_ms: float) -> bool:
    """Whether a measured latency misses T beyond its uncertainty: its lower end, measured x (1 - u), is above T."""
    return measured_ms * (1 - uncertainty_pct / 100) > target_ms


def meets_target(measured_ms: float, uncertainty_pct: float, target_ms: float) -> bool:
    """Whether a measured latency meets T whatever its uncertainty: its upper end, measured x (1 + u), is at most T."""
    return measured_ms * (1 + uncertainty_pct / 100) <= target_ms


def clearly_faster(a: dict, b: dict) -> bool:
    """Whether measurement ``a`` is faster than ``b`` by more than their combined uncertainty (the two +- in ms,
    added in quadrature)."""
    margin = math.hypot(a["measured_ms"] * a["uncertainty_pct"] / 100, b["measured_ms"] * b["uncertainty_pct"] / 100)
    return b["measured_ms"] - a["measured_ms"] > margin


def loop_candidates(rows: list[dict], target_ms: float, n: int, first: dict | None = None) -> list[dict]:
    """What the closed loop measures: the best half of ``n`` by F (the winner first: ``first`` where given), then,
    as fallbacks for a winner that measures slower than predicted, the most accurate arch of each band of predicted
    latency 3%, 6%, 9%, ... below T. The EA's best archs all sit within a percent of T, so without the fallbacks a
    miss of a few percent leaves nothing that meets T."""
    by_f = best_by_f(rows, len(rows))
    if first is not None:
        by_f = [first] + [r for r in by_f if r["key"] != first["key"]]
    chosen = by_f[: max(1, n - n // 2)]
    keys = {json.dumps(r["key"]) for r in chosen}
    k = 1
    while len(chosen) < n and k <= 10:
        lo, hi = target_ms * (1 - FALLBACK_BAND * k), target_ms * (1 - FALLBACK_BAND * (k - 1))
        band = [r for r in rows if lo <= r["lat_ms"] < hi and json.dumps(r["key"]) not in keys]
        if band:
            best = max(band, key=lambda r: (r["acc"], r["F"]))
            chosen.append(best)
            keys.add(json.dumps(best["key"]))
        k += 1
    for r in by_f:  # too few archs below T: the next best by F
        if len(chosen) >= n:
            break
        if json.dumps(r["key"]) not in keys:
            chosen.append(r)
            keys.add(json.dumps(r["key"]))
    return chosen


CANDIDATE_COLUMNS = ("#", "accuracy (inherited)", "predicted ms", "measured ms", "vs T", "status", "chosen")


def candidate_rows(loop: dict) -> list[tuple[str, ...]]:
    """The measured candidates of a closed loop (``result["closed_loop"]``) as table rows, in ``CANDIDATE_COLUMNS``:
    what report.md and the command line both show."""
    return [(str(i + 1), f"{100 * c['acc']:.2f}%", f"{c['predicted_ms']:.4f}", f"{c['measured_ms']:.4f} +-{c['uncertainty_pct']:.1f}%",
             f"{c['vs_target_pct']:+.1f}%", c["status"], "yes" if i == loop["chosen"] else "") for i, c in enumerate(loop["candidates"])]


# ---- one device ---------------------------------------------------------------------------------------
def choose_candidate(cands: list[dict], target_ms: float) -> tuple[int, str]:
    """Which of the measured candidates (the searched winner first) the user gets, and why.

    Each candidate holds ``measured_ms``, ``uncertainty_pct``, ``acc``, ``F`` and ``trusted`` (not measured under
    load). The winner stays unless all of these hold: its trusted measurement misses T beyond its uncertainty
    (``misses_target``), and another trusted candidate meets T by its upper bound (``meets_target``; failing any,
    by its measured value) and is faster than the winner by more than their combined uncertainty
    (``clearly_faster``). Of those, the most accurate takes the winner's place. A wider uncertainty never
    helps a candidate in: it raises the upper bound and the margin to beat."""
    winner = cands[0]
    vs_t = 100 * (winner["measured_ms"] / target_ms - 1)
    said = f"{winner['measured_ms']:.4f} ms +-{winner['uncertainty_pct']:.1f}% ({vs_t:+.1f}% vs T)"
    if not winner["trusted"]:
        return 0, f"the winner was measured under load at {said}: kept, unconfirmed"
    if not misses_target(winner["measured_ms"], winner["uncertainty_pct"], target_ms):
        return 0, f"the winner meets T within its uncertainty: measured {said}"
    faster = [i for i, c in enumerate(cands[1:], 1) if c["trusted"] and clearly_faster(c, winner)]
    by_upper_bound = [i for i in faster if meets_target(cands[i]["measured_ms"], cands[i]["uncertainty_pct"], target_ms)]
    by_value = [i for i in faster if cands[i]["measured_ms"] <= target_ms]
    for how, ok in (("by its upper bound", by_upper_bound), ("by its measured value", by_value)):
        if ok:
            chosen = max(ok, key=lambda i: (cands[i]["acc"], cands[i]["F"]))
            return chosen, (f"the winner measured {said}, missing T beyond its uncertainty: replaced by candidate "
                            f"{chosen + 1}, the most accurate that meets T {how} and is faster than the winner by more "
                            "than their combined uncertainty")
    return 0, (f"the winner measured {said}, missing T beyond its uncertainty, and none of the other {len(cands) - 1} "
               "candidates both meets T and is faster by more than their combined uncertainty: kept; try a lower --latency")


def _measured(meter: LatencyMeter, row: dict, target_ms: float) -> dict:
    """A candidate row of the search, measured here: its prediction, measurement, uncertainty and standing vs T."""
    m = meter.measure_arch(Arch.from_list(row["arch"]), repeats=REPEATS, budget_s=BUDGET_S)
    v = m["verdict"]
    return {"arch": row["arch"], "acc": row["acc"], "screen_acc": row.get("screen_acc"), "baseline": row.get("baseline"),
            "F": row["F"], "predicted_ms": row["lat_ms"],
            "measured_ms": m["measured_ms"], "uncertainty_pct": v["uncertainty_pct"], "status": v["status"],
            "vs_target_pct": 100 * (m["measured_ms"] / target_ms - 1),
            "meets_target": meets_target(m["measured_ms"], v["uncertainty_pct"], target_ms),
            "trusted": v["status"] != "busy", "measurement": m}


def loop_rows(result: dict, folder: Path) -> tuple[list[dict], dict | None]:
    """The rows the closed loop picks its candidates from, and the winner: the selection's candidates with their
    held-out accuracy as ``acc`` (and as F: they all fit T, or none did), where the search made one; else the
    screen's rows of evaluated.jsonl, the winner the best by F."""
    sel = result.get("selection")
    if not sel:
        return [json.loads(l) for l in (folder / "evaluated.jsonl").read_text().splitlines() if l.strip()], None
    rows = [{**c, "F": c["acc"]} for c in sel["candidates"]]
    return rows, rows[sel["winner"]]


def verify_on_device(result_path: str | Path, profile, *, candidates: int = 8, log: Callable[[str], None] = lambda s: None,
                     progress: ProgressFn | None = None) -> dict:
    """Measure ``candidates`` archs of a finished search on this machine (``loop_candidates``), and keep the winner
    unless ``choose_candidate`` finds one that clearly meets T where the winner clearly misses it. Rewrites
    result.json with ``closed_loop`` (every candidate's prediction and measurement, and the choice) and ``verify``
    (the chosen arch's measurement); the searched winner is kept as ``searched_best`` when it was replaced."""
    result_path = Path(result_path)
    result = read_json(result_path, "search result")
    target_ms = result["target"]["target_ms"]
    rows, first = loop_rows(result, result_path.parent)
    top = loop_candidates(rows, target_ms, candidates, first)
    meter = LatencyMeter(profile)
    meter.lower_ahead([Arch.from_list(r["arch"]) for r in top])  # ExecuTorch: every program before any timing
    cands = []
    for i, r in enumerate(top):
        if progress:
            progress(f"measuring the best candidates on the device: {i + 1}/{len(top)}", i, len(top))
        cands.append(_measured(meter, r, target_ms))
    chosen, reason = choose_candidate(cands, target_ms)
    log(reason)
    c = cands[chosen]
    if chosen:
        result["searched_best"] = {k: result[k] for k in ("arch", "acc", "predicted_ms", "F")}
        result.update(arch=c["arch"], acc=c["acc"], predicted_ms=c["predicted_ms"], F=c["F"],
                      screen_acc=c["screen_acc"] if c["screen_acc"] is not None else c["acc"])
    result["closed_loop"] = {"candidates": [{k: v for k, v in x.items() if k != "measurement"} for x in cands],
                             "chosen": chosen, "replaced": bool(chosen), "reason": reason, "profile": profile.name}
    result["verify"] = {**c["measurement"], "error_vs_target_pct": c["vs_target_pct"]}
    write_json(result_path, result)
    if progress:
        progress("measured", len(top), len(top))
    return result


# ---- a fleet -------------------------------------------------------------------------------------------
def choose_fleet_candidate(cands: list[dict]) -> tuple[int, str]:
    """Which measured candidate (the searched winner first) the user gets. Each holds ``acc``, ``F``, ``trusted``
    and ``devices``: {device: {measured_ms, uncertainty_pct, target_ms}} for the devices measured here. The
    winner stays unless its trusted measurement misses some T beyond its uncertainty and another trusted
    candidate meets every T (by its upper bound; failing any, by its measured values) and is clearly faster than
    the winner on each device the winner missed. Of those, the most accurate takes its place."""
    win = cands[0]
    missed = [d for d, x in win["devices"].items() if misses_target(x["measured_ms"], x["uncertainty_pct"], x["target_ms"])]
    said = "; ".join(f"{d} {x['measured_ms']:.4f} ms +-{x['uncertainty_pct']:.1f}% ({100 * (x['measured_ms'] / x['target_ms'] - 1):+.1f}% vs T)"
                     for d, x in win["devices"].items())
    if not win["devices"]:
        return 0, "no device of the fleet can be measured here: the winner is kept by prediction"
    if not win["trusted"]:
        return 0, f"the winner was measured under load ({said}): kept, unconfirmed"
    if not missed:
        return 0, f"the winner meets every measurable T within its uncertainty: {said}"

    def faster_where_missed(c: dict) -> bool:
        return all(clearly_faster(c["devices"][d], win["devices"][d]) for d in missed)

    ok = [i for i, c in enumerate(cands[1:], 1) if c["trusted"] and faster_where_missed(c)]
    by_bound = [i for i in ok if all(meets_target(x["measured_ms"], x["uncertainty_pct"], x["target_ms"]) for x in cands[i]["devices"].values())]
    by_value = [i for i in ok if all(x["measured_ms"] <= x["target_ms"] for x in cands[i]["devices"].values())]
    for how, pick in (("by its upper bounds", by_bound), ("by its measured values", by_value)):
        if pick:
            chosen = max(pick, key=lambda i: (cands[i]["acc"], cands[i]["F"]))
            return chosen, (f"the winner missed T on {', '.join(missed)} beyond its uncertainty ({said}): replaced by "
                            f"candidate {chosen + 1}, the most accurate that meets every measurable T {how}")
    return 0, (f"the winner missed T on {', '.join(missed)} beyond its uncertainty ({said}), and no other candidate meets "
               "every measurable T and is clearly faster there: kept; try lower targets")


def close_fleet_loop(result: dict, rows: list[dict], fleet, n: int, progress: ProgressFn | None) -> dict:
    """Measure ``n`` candidates (``loop_candidates`` on the worst LAT_d / T_d, so its fallbacks are the most
    accurate archs a few percent under every T) on each device of ``fleet`` this machine can measure, choose
    (``choose_fleet_candidate``), and write the choice into ``result``'s device rows."""
    view = [{**r, "lat_ms": fleet.worst_ratio(r["lat_ms"]), "lats": r["lat_ms"]} for r in rows]
    top = loop_candidates(view, 1.0, n)
    here = [m for m in fleet.members if m.unmeasurable is None]
    cands = [{"arch": r["arch"], "acc": r["acc"], "F": r["F"], "predicted_ms": r["lats"], "devices": {}, "trusted": True}
             for r in top]
    for k, m in enumerate(here):
        meter = LatencyMeter(m.profile)
        meter.lower_ahead([Arch.from_list(r["arch"]) for r in top])
        for i, c in enumerate(cands):
            if progress:
                progress(f"measuring candidates on {m.device}: {i + 1}/{len(cands)}", k * len(cands) + i, len(here) * len(cands))
            res = meter.measure_arch(Arch.from_list(c["arch"]), repeats=REPEATS, budget_s=BUDGET_S)
            v = res["verdict"]
            c["devices"][m.device] = {"measured_ms": res["measured_ms"], "uncertainty_pct": v["uncertainty_pct"],
                                      "target_ms": m.target_ms, "status": v["status"]}
            c["trusted"] = c["trusted"] and v["status"] != "busy"
    chosen, reason = choose_fleet_candidate(cands)
    _apply_fleet_choice(result, cands[chosen], chosen)
    result["closed_loop"] = {"candidates": cands, "chosen": chosen, "replaced": bool(chosen), "reason": reason}
    return result


def _apply_fleet_choice(result: dict, c: dict, chosen: int) -> None:
    """Put the chosen candidate in ``result`` (the searched winner kept as ``searched_best`` where it was replaced),
    with its prediction and measurement in each device's row."""
    if chosen:
        result["searched_best"] = {k: result[k] for k in ("arch", "acc", "F")}
        result.update(arch=c["arch"], acc=c["acc"], F=c["F"])
    for row in result["devices"]:
        row["predicted_ms"] = c["predicted_ms"][row["device"]]
        if row["device"] in c["devices"]:
            x = c["devices"][row["device"]]
            row.update(measured_ms=x["measured_ms"], uncertainty_pct=x["uncertainty_pct"], status=x["status"],
                       vs_target_pct=100 * (x["measured_ms"] / x["target_ms"] - 1),
                       meets_target=not misses_target(x["measured_ms"], x["uncertainty_pct"], x["target_ms"]))
