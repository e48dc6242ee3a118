"""One network for a fleet: the arch that meets a latency target on each of several devices (``hsconas search
--target cpu=0.9ms --target cpu-openvino=0.7ms --target cpu-xnnpack=40%``).

1. Each device's target is resolved on its own profile (milliseconds, or a percentile of its own latencies).
2. The evolutionary search of ``search.py`` runs unchanged on a ``Fleet``, whose prediction of an arch is one
   latency per device, under ``objective.FleetObjective`` (F charges each device's overshoot, as a share of its
   own T; see its docstring for why a sum).
3. The closed loop measures the best candidates on every device this machine can measure (a Jetson profile on a
   workstation cannot be, and is reported as predicted only), and keeps the winner unless it misses some
   measurable T beyond its uncertainty and another candidate meets every measurable T; the most accurate such
   candidate then takes its place.
4. The price of one network for all: each device's own single-device winner, searched at the same target with
   the same supernet and budget, beside the fleet winner's inherited accuracy.
5. How alike the devices are (One Proxy Device, Lu et al. 2021): the Spearman correlation between the devices'
   predicted latencies over random archs. Near 1, one device's constraint decides the fleet's winner (the
   tightest T), and the fleet costs little; well below 1, the devices disagree on which networks are fast, and
   the fleet winner must compromise.

Writes result.json (``hsconas-fleet-result``), evaluated.jsonl and report.md in the run folder.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from hsconas_cli.errors import HsconasError
from hsconas_cli.evaluate import supernet_tag
from hsconas_cli.fileio import write_json, write_text
from hsconas_cli.objective import FleetObjective, Objective, parse_target, resolve_target
from hsconas_cli.profiles import Profile, spearman
from hsconas_cli.search import (SearchConfig, best_by_f, clearly_faster, evolve_resumably, loop_candidates, meets_target,
                                misses_target)
from hsconas_cli.space import Arch, Subspace, arch_to_json
from hsconas_cli.train import load_supernet
from hsconas_cli.ui import ProgressFn


def parse_fleet_targets(specs: list[str]) -> list[tuple[str, str]]:
    """[(device, target)] from ``DEVICE=TARGET`` strings, refused in one line where one is malformed or a device
    is named twice."""
    out: list[tuple[str, str]] = []
    for spec in specs:
        device, sep, target = spec.partition("=")
        device, target = device.strip(), target.strip()
        if not sep or not device or not target:
            raise HsconasError(f"--target {spec!r}: write DEVICE=TARGET, e.g. cpu=0.9ms or cpu-openvino=40%")
        parse_target(target)  # a bad target is refused before anything is loaded
        if device in (d for d, _ in out):
            raise HsconasError(f"--target names device {device!r} twice")
        out.append((device, target))
    if len(out) < 2:
        raise HsconasError("a fleet search takes --target DEVICE=TARGET for at least two devices (one device: --device "
                           "and --latency)")
    return out


@dataclass
class Member:
    device: str
    profile: Profile
    target_ms: float
    where: dict
    unmeasurable: str | None  # why this machine cannot measure the device, or None


class Fleet:
    """The devices of a fleet search; ``predict`` gives an arch's latency on each (what ``_evolve`` calls)."""

    def __init__(self, members: list[Member]):
        self.members = members

    def predict(self, arch: Arch) -> dict[str, float]:
        return {m.device: m.profile.predict(arch) for m in self.members}

    def worst_ratio(self, lats: dict[str, float]) -> float:
        """The largest LAT_d / T_d: at most 1 where the arch meets every target by prediction."""
        return max(lats[m.device] / m.target_ms for m in self.members)


def resolve_fleet(targets: list[tuple[str, str]], sub: Subspace, *, force: bool = False,
                  check: Callable[[Profile], Profile] | None = None) -> Fleet:
    """The fleet's members: each device's newest profile (passed through ``check``, the CLI's drift check, where
    given) and its target resolved on that profile."""
    from hsconas_cli.drift import not_its_device
    from hsconas_cli.profiles import find_profile

    members = []
    for device, spec in targets:
        prof = find_profile(device, sub.space, check_mode=False, force=force)
        prof = check(prof) if check else prof
        target_ms, where = resolve_target(spec, prof, sub)
        members.append(Member(device, prof, target_ms, where, not_its_device(prof)))
    return Fleet(members)


def fleet_search(supernet_path: str | Path, data, fleet: Fleet, out_dir: str | Path, *, subspace: Subspace | None = None,
                 cfg: SearchConfig | None = None, beta: float | None = None, beta_below: float | None = None,
                 verify: int = 8, own: bool = True, progress: ProgressFn | None = None) -> dict:
    """Search for one arch for the whole fleet; measure its best candidates on the devices here (``verify``
    of them, 0: none); search each device alone for the price of one network (``own``); write the results."""
    cfg = cfg or SearchConfig()
    cfg.check()
    out_dir = Path(out_dir)
    supernet, _ = load_supernet(supernet_path)
    sub = subspace or supernet.space.full()
    obj = FleetObjective({m.device: Objective.with_options(m.target_ms, beta, beta_below) for m in fleet.members})
    settings = {"supernet": str(Path(supernet_path).resolve()), "supernet_id": supernet_tag(supernet_path),
                "data_id": data.split["data_sha256"], "profiles": [m.profile.name for m in fleet.members],
                "objective": obj.to_dict(), "config": asdict(cfg), "subspace": sub.to_dict()}
    state, _ = evolve_resumably(supernet, supernet_path, data, sub, fleet, obj, cfg, settings, out_dir, "fleet search",
                                progress)
    rows = state["evaluated"]
    write_text(out_dir / "evaluated.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    best = best_by_f(rows, 1)[0]
    result = arch_to_json(sub.space, Arch.from_list(best["arch"]), kind="hsconas-fleet-result", acc=best["acc"],
                          F=best["F"], evaluated=len(rows), objective=obj.to_dict(), supernet=str(supernet_path),
                          devices=[device_row(m, best["lat_ms"][m.device]) for m in fleet.members])
    if verify:
        result = close_the_loop(result, rows, fleet, verify, progress)
    result["agreement"] = agreement(fleet)
    if own:
        result["own_winners"] = own_winners(supernet_path, data, fleet, out_dir, sub, cfg, beta, beta_below, result["acc"],
                                             progress)
    write_json(out_dir / "result.json", result)
    write_text(out_dir / "report.md", report(result))
    return result


def device_row(m: Member, predicted_ms: float) -> dict[str, Any]:
    return {"device": m.device, "profile": m.profile.name, "target_ms": m.target_ms, "spec": m.where["spec"],
            "predicted_ms": predicted_ms, "measured_ms": None, "uncertainty_pct": None,
            "measurable": m.unmeasurable is None, "why_not_measured": m.unmeasurable}


# ---- the closed loop over the fleet -------------------------------------------------------------------
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


def close_the_loop(result: dict, rows: list[dict], fleet: Fleet, n: int, progress: ProgressFn | None) -> dict:
    """Measure ``n`` candidates (``loop_candidates`` on the worst LAT_d / T_d, so its fallbacks are the most
    accurate archs a few percent under every T) on each measurable device, and choose."""
    from hsconas_cli.calibrate import LatencyMeter

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
            res = meter.measure_arch(Arch.from_list(c["arch"]), repeats=3, budget_s=10.0)
            v = res["verdict"]
            c["devices"][m.device] = {"measured_ms": res["measured_ms"], "uncertainty_pct": v["uncertainty_pct"],
                                      "target_ms": m.target_ms, "status": v["status"]}
            c["trusted"] = c["trusted"] and v["status"] != "busy"
    chosen, reason = choose_fleet_candidate(cands)
    c = cands[chosen]
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
    result["closed_loop"] = {"candidates": cands, "chosen": chosen, "replaced": bool(chosen), "reason": reason}
    return result


# ---- what the fleet costs, and how alike its devices are ----------------------------------------------
def agreement(fleet: Fleet, samples: int = 200, seed: int = 0) -> dict[str, Any]:
    """The Spearman correlation between every two devices' predicted latencies over random archs of the space."""
    rng = random.Random(seed)
    space = fleet.members[0].profile.space
    archs = [space.full().sample(rng) for _ in range(samples)]
    preds = {m.device: [m.profile.predict(a) for a in archs] for m in fleet.members}
    names = list(preds)
    pairs = {f"{a} vs {b}": spearman(preds[a], preds[b]) for i, a in enumerate(names) for b in names[i + 1:]}
    return {"archs": samples, "spearman": pairs, "min": min(pairs.values())}


def own_winners(supernet_path, data, fleet: Fleet, out_dir: Path, sub: Subspace, cfg: SearchConfig, beta, beta_below,
                fleet_acc: float, progress: ProgressFn | None) -> list[dict[str, Any]]:
    """Each device searched alone at its own T (ms), same supernet, space and budget: the price of one network."""
    from hsconas_cli.search import search

    import shutil

    rows = []
    for m in fleet.members:
        own_dir = out_dir / f"own-{m.device}"
        if not (own_dir / "evaluations.jsonl").exists():  # an arch's accuracy is the same whatever the target
            own_dir.mkdir(parents=True, exist_ok=True)
            shutil.copy(out_dir / "evaluations.jsonl", own_dir / "evaluations.jsonl")
        res = search(supernet_path, data, m.profile, f"{m.target_ms:.6g}", own_dir, subspace=sub,
                     cfg=cfg, beta=beta, beta_below=beta_below, progress=progress)
        se = 100 * (res["acc"] * (1 - res["acc"]) / cfg.val_images) ** 0.5
        rows.append({"device": m.device, "acc": res["acc"], "predicted_ms": res["predicted_ms"], "fleet_acc": fleet_acc,
                     "price_points": 100 * (res["acc"] - fleet_acc), "se_points": se})
    return rows


def report(result: dict) -> str:
    """report.md of a fleet search: one row per device, the closed loop's choice, the price, the agreement."""
    lines = ["# Fleet search", "", f"One network for {len(result['devices'])} devices: inherited accuracy "
             f"{100 * result['acc']:.2f}% ({result['evaluated']} archs evaluated). F charges each device's overshoot as a "
             "share of its own T (objective.FleetObjective).", "",
             "| device | profile | target | predicted | measured here | vs T |", "|---|---|---|---|---|---|"]
    for d in result["devices"]:
        measured = (f"{d['measured_ms']:.4f} ms ± {d['uncertainty_pct']:.1f}%" if d.get("measured_ms") is not None
                    else f"predicted only: {d['why_not_measured']}" if d.get("why_not_measured") else "not measured")
        vs = f"{d['vs_target_pct']:+.1f}%" if d.get("vs_target_pct") is not None else \
             f"{100 * (d['predicted_ms'] / d['target_ms'] - 1):+.1f}% (predicted)"
        lines.append(f"| {d['device']} | {d['profile']} | {d['target_ms']:.4f} ms ({d['spec']}) | {d['predicted_ms']:.4f} ms "
                     f"| {measured} | {vs} |")
    if "closed_loop" in result:
        lines += ["", f"Closed loop: {result['closed_loop']['reason']}."]
    if result.get("own_winners"):
        lines += ["", "The price of one network for all: each device's own winner at the same T, searched alone with "
                  "the same supernet and budget (inherited accuracy on the search's validation images; SE: one "
                  "standard error of one such accuracy, sqrt(p(1-p)/n)). A price within about two SE is not "
                  "told apart from nothing.", "",
                  "| device | own winner | fleet winner | price (points) | SE (points) |", "|---|---|---|---|---|"]
        for r in result["own_winners"]:
            lines.append(f"| {r['device']} | {100 * r['acc']:.2f}% | {100 * r['fleet_acc']:.2f}% | {r['price_points']:+.2f} "
                         f"| {r['se_points']:.2f} |")
    ag = result["agreement"]
    lines += ["", f"How alike the devices are: Spearman correlation of their predicted latencies over {ag['archs']} random "
              "archs (near 1: the tightest target decides the fleet's winner and the fleet costs little; well below 1: "
              "the devices disagree on which networks are fast and the winner must compromise).", ""]
    lines += [f"- {k}: {'n/a' if v is None else f'{v:.3f}'}" for k, v in ag["spearman"].items()]
    return "\n".join(lines) + "\n"

