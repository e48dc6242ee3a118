"""One network for a fleet: the arch that meets a latency target on each of several devices (``hsconas search
--target cpu=0.9ms --target cpu-openvino=0.7ms --target cpu-xnnpack=40%``).

1. Each device's target is resolved on its own profile (milliseconds, or a percentile of its own latencies).
2. The evolutionary search of ``search.py`` runs unchanged on a ``Fleet``, whose prediction of an arch is one
   latency per device, under ``objective.FleetObjective`` (F charges each device's overshoot, as a share of its
   own T; see its docstring for why a sum).
3. The closed loop (``closed_loop.close_fleet_loop``) measures the best candidates on every device this machine
   can measure (a Jetson profile on a workstation cannot be, and is reported as predicted only), and keeps the
   winner unless it misses some measurable T beyond its uncertainty and another candidate meets every measurable
   T; the most accurate such candidate then takes its place.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from hsconas_cli.closed_loop import close_fleet_loop
from hsconas_cli.data import check_data_fits, load_data
from hsconas_cli.drift import not_its_device, profile_for_run
from hsconas_cli.errors import HsconasError
from hsconas_cli.fileio import folder_lock, write_json, write_text
from hsconas_cli.objective import FleetObjective, Objective, best_by_f, parse_target, resolve_target
from hsconas_cli.profiles import Profile, spearman
from hsconas_cli.search import Evolution, SearchConfig, evolution, search, search_inputs
from hsconas_cli.space import Arch, Subspace, arch_to_json
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
    """The devices of a fleet search, a ``LatencyPredictor`` (objective.py) of one latency per device; the closed
    loop also reads its ``members`` and ``worst_ratio``."""

    def __init__(self, members: list[Member]):
        self.members = members

    def predict(self, arch: Arch) -> dict[str, float]:
        return {m.device: m.profile.predict(arch) for m in self.members}

    def worst_ratio(self, lats: dict[str, float]) -> float:
        """The largest LAT_d / T_d: at most 1 where the arch meets every target by prediction."""
        return max(lats[m.device] / m.target_ms for m in self.members)


def resolve_fleet(targets: list[tuple[str, str]], sub: Subspace, *, force: bool = False, check: bool = True,
                  log: Callable[[str], None] = print, progress: ProgressFn | None = None) -> Fleet:
    """The fleet's members: each device's newest profile, confirmed by the drift check here where ``check``
    (``drift.profile_for_run``; a device this machine is not is used as calibrated), and its target resolved on
    that profile. A Jetson's profile is not refused for the power mode of a board that is not here."""
    members = []
    for device, spec in targets:
        prof, _ = profile_for_run(device, sub.space, check=check, check_mode=False, force=force, log=log, progress=progress)
        target_ms, where = resolve_target(spec, prof, sub)
        members.append(Member(device, prof, target_ms, where, not_its_device(prof)))
    return Fleet(members)


def search_for_fleet(targets: list[str], out_dir: str | Path, *, space_file: str | Path | None = None,
                     supernet: str | Path | None = None, data_spec: str = "fashion-mnist", cfg: SearchConfig | None = None,
                     beta: float | None = None, beta_below: float | None = None, verify: int = 0, force: bool = False,
                     check: bool = True, log: Callable[[str], None] = print, progress: ProgressFn | None = None) -> dict:
    """``hsconas search --target DEVICE=T ...``: ``fleet_search`` on the inputs as the command names them (a bad
    --target is refused before anything is loaded), each profile checked here (``resolve_fleet``)."""
    parsed = parse_fleet_targets(targets)
    sub, ckpt, space, _ = search_inputs(space_file, supernet)
    fleet = resolve_fleet(parsed, sub or space.full(), force=force, check=check, log=log, progress=progress)
    return fleet_search(ckpt, load_data(data_spec), fleet, out_dir, subspace=sub, cfg=cfg, beta=beta,
                        beta_below=beta_below, verify=verify, progress=progress)


def fleet_search(supernet_path: str | Path, data, fleet: Fleet, out_dir: str | Path, *, subspace: Subspace | None = None,
                 cfg: SearchConfig | None = None, beta: float | None = None, beta_below: float | None = None,
                 verify: int = 8, own: bool = True, progress: ProgressFn | None = None) -> dict:
    """Search for one arch for the whole fleet; measure its best candidates on the devices here (``verify``
    of them, 0: none); search each device alone for the price of one network (``own``); write the results."""
    ev = evolution(supernet_path, data, subspace, cfg, out_dir)
    check_data_fits(ev.sub.space, data)
    ev.predictor = fleet
    ev.obj = FleetObjective({m.device: Objective.with_options(m.target_ms, beta, beta_below) for m in fleet.members})
    with folder_lock(out_dir, "fleet search"):
        state, _ = ev.run(ev.settings(profiles=[m.profile.name for m in fleet.members]), "fleet search", progress)
        rows = state["evaluated"]
        write_text(ev.out_dir / "evaluated.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
        best = best_by_f(rows, 1)[0]
        result = arch_to_json(ev.sub.space, Arch.from_list(best["arch"]), kind="hsconas-fleet-result", acc=best["acc"],
                              F=best["F"], evaluated=len(rows), objective=ev.obj.to_dict(), supernet=str(supernet_path),
                              devices=[device_row(m, best["lat_ms"][m.device]) for m in fleet.members])
        if verify:
            result = close_fleet_loop(result, rows, fleet, verify, progress)
        result["agreement"] = agreement(fleet)
        if own:
            result["own_winners"] = own_winners(ev, fleet, beta, beta_below, result["acc"], progress)
        write_json(ev.out_dir / "result.json", result)
        write_text(ev.out_dir / "report.md", report(result))
        return result


def device_row(m: Member, predicted_ms: float) -> dict[str, Any]:
    return {"device": m.device, "profile": m.profile.name, "target_ms": m.target_ms, "spec": m.where["spec"],
            "predicted_ms": predicted_ms, "measured_ms": None, "uncertainty_pct": None,
            "measurable": m.unmeasurable is None, "why_not_measured": m.unmeasurable}


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


def own_winners(ev: Evolution, fleet: Fleet, beta, beta_below, fleet_acc: float,
                progress: ProgressFn | None) -> list[dict[str, Any]]:
    """Each device searched alone at its own T (ms), with the fleet search's supernet, space and budget (``ev``):
    the price of one network. Each own winner is chosen on the selection split, but compared by its screened
    accuracy, as the fleet's winner is scored."""
    import shutil

    rows = []
    for m in fleet.members:
        own_dir = ev.out_dir / f"own-{m.device}"
        if not (own_dir / "evaluations.jsonl").exists():  # an arch's accuracy is the same whatever the target
            own_dir.mkdir(parents=True, exist_ok=True)
            shutil.copy(ev.out_dir / "evaluations.jsonl", own_dir / "evaluations.jsonl")
        res = search(ev.supernet_path, ev.data, m.profile, f"{m.target_ms:.6g}", own_dir, subspace=ev.sub,
                     cfg=ev.cfg, beta=beta, beta_below=beta_below, progress=progress)
        acc = res["screen_acc"]  # the fleet's winner is scored on the screen only: compare like with like
        se = 100 * (acc * (1 - acc) / ev.cfg.val_images) ** 0.5
        rows.append({"device": m.device, "acc": acc, "predicted_ms": res["predicted_ms"], "fleet_acc": fleet_acc,
                     "price_points": 100 * (acc - fleet_acc), "se_points": se})
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

