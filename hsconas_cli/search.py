"""Evolutionary architecture search under a latency target (paper III-D).

Genes are the op and the channel factor of every layer, drawn only from what the (shrunk) space allows. Each
generation keeps the ``parents`` best archs by F(arch, T) seen so far and fills the population with
children: half by crossover of two parents (each layer's op and factor taken from the second parent with
probability ``crossover_prob``), half by mutation of one parent (each op and each factor re-drawn with
probability ``mutation_prob``). A child that is a network already evaluated is drawn again, so no arch is
evaluated twice. LAT comes from the device profile, ACC from the evaluator (inherited weights, exact BN
recalibration). The state is saved after every generation; an interrupted search resumes from the last
finished one.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable

from hsconas_cli.search_value import search_value
from hsconas_cli.data import DataBundle, check_data_fits
from hsconas_cli.errors import HsconasError, Interrupted
from hsconas_cli.evaluate import Evaluator, supernet_tag
from hsconas_cli.fileio import random_state_from_json, random_state_to_json, read_json, resumable_state, write_json, write_text
from hsconas_cli.objective import Objective, resolve_target, target_note
from hsconas_cli.profiles import Profile
from hsconas_cli.space import Arch, SearchSpace, Subspace, arch_key, arch_to_json, load_subspace, space_ref
from hsconas_cli.train import load_supernet
from hsconas_cli.ui import ProgressFn



@dataclass
class SearchConfig:
    generations: int = 20
    population: int = 50
    parents: int = 20
    crossover_prob: float = 0.25
    mutation_prob: float = 0.25
    seed: int = 0
    calib_images: int = 2000
    val_images: int = 5000

    def check(self) -> None:
        if self.generations < 1 or self.population < 2:
            raise HsconasError("--generations must be at least 1 and --population at least 2")
        if not 1 <= self.parents < self.population:
            raise HsconasError("--parents must be at least 1 and below --population")
        for name in ("crossover_prob", "mutation_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise HsconasError(f"--{name.replace('_', '-')} must lie in [0, 1]")


def mutate(parent: Arch, sub: Subspace, rng: random.Random, p: float) -> Arch:
    genes = []
    for (op, c), ops, facs in zip(parent, sub.ops, sub.factors):
        if rng.random() < p:
            op = rng.choice(ops)
        if op == "skip":
            c = None
        elif c is None or rng.random() < p:
            c = rng.choice(facs)
        genes.append((op, c))
    return Arch(tuple(genes))


def crossover(a: Arch, b: Arch, rng: random.Random, p: float) -> Arch:
    genes = []
    for (op_a, c_a), (op_b, c_b) in zip(a, b):
        op = op_b if rng.random() < p else op_a
        c = c_b if rng.random() < p else c_a
        if op == "skip":
            c = None
        elif c is None:  # the factor came from a skip: take the other parent's
            c = c_a if c_b is None else c_b
        genes.append((op, c))
    return Arch(tuple(genes))


def pareto_front(rows: list[dict]) -> list[dict]:
    """Archs no other arch beats on both accuracy (higher) and latency (lower)."""
    front, best_acc = [], -1.0
    for r in sorted(rows, key=lambda r: (r["lat_ms"], -r["acc"])):
        if r["acc"] > best_acc:
            front.append(r)
            best_acc = r["acc"]
    return front


def search_inputs(space_file: str | Path | None, supernet: str | Path | None) -> tuple[Subspace | None, Path, SearchSpace, dict | None]:
    """What a search runs on: the subspace (a shrunk-space file, which also names its fine-tuned supernet and the
    target its shrink used; None: the whole space), the supernet checkpoint (given, else the shrunk space's,
    else runs/supernet/checkpoint.pt), its search space, and the shrink's target (None without one)."""
    from hsconas_cli.train import checkpoint_space

    sub, ckpt, shrunk_target = None, supernet, None
    if space_file is not None:
        sub = load_subspace(space_file)
        doc = read_json(space_file, "space file")
        ckpt = ckpt or doc.get("supernet")
        shrunk_target = doc.get("target") if isinstance(doc.get("target"), dict) else None
    ckpt = Path(ckpt or "runs/supernet/checkpoint.pt")
    return sub, ckpt, checkpoint_space(ckpt), shrunk_target


def search(
    supernet_path: str | Path,
    data: DataBundle,
    profile: Profile,
    target: str | float,
    out_dir: str | Path,
    *,
    subspace: Subspace | None = None,
    cfg: SearchConfig | None = None,
    beta: float | None = None,
    beta_below: float | None = None,
    verify: int = 0,
    shrunk_target: dict | None = None,
    progress: ProgressFn | None = None,
) -> dict:
    """Run the EA; write result.json, evaluated.jsonl, pareto.json and the Fig. 6 plots; return the result.
    ``verify`` > 0: then measure that many of the best candidates here (``verify_on_device``). ``shrunk_target``:
    the target of the shrink that wrote ``subspace``, which the result's target compares itself with (``note``)."""
    if verify:
        search(supernet_path, data, profile, target, out_dir, subspace=subspace, cfg=cfg, beta=beta,
               beta_below=beta_below, shrunk_target=shrunk_target, progress=progress)
        verify_on_device(Path(out_dir) / "result.json", profile, candidates=verify, progress=progress)
        return record_search_value(Path(out_dir) / "result.json", data, profile, cfg or SearchConfig(), progress=progress)
    cfg = cfg or SearchConfig()
    cfg.check()
    out_dir = Path(out_dir)
    supernet, _ = load_supernet(supernet_path)
    space = supernet.space
    sub = subspace or space.full()
    if sub.space.fingerprint != space.fingerprint:
        raise HsconasError(f"the search space belongs to {sub.space.name}, the supernet to {space.name}")
    profile.check_space(space)
    check_data_fits(space, data)
    target_ms, where = resolve_target(target, profile, sub)
    note = target_note(where, shrunk_target)
    if note:
        where["note"] = note
    obj = Objective.with_options(target_ms, beta, beta_below)
    settings = {"supernet": str(Path(supernet_path).resolve()), "supernet_id": supernet_tag(supernet_path),
                "data_id": data.split["data_sha256"], "profile": profile.name, "objective": obj.to_dict(),
                "config": asdict(cfg), "subspace": sub.to_dict()}
    state, evaluator = evolve_resumably(supernet, supernet_path, data, sub, profile, obj, cfg, settings, out_dir,
                                        "search", progress)
    _write_results(state, out_dir, space, sub, profile, obj, where, cfg, supernet_path, data)
    return record_search_value(out_dir / "result.json", data, profile, cfg, evaluator=evaluator, progress=progress)


def evolve_resumably(supernet, supernet_path, data: DataBundle, sub: Subspace, latency, obj, cfg: SearchConfig,
                     settings: dict, out_dir: Path, what: str, progress: ProgressFn | None):
    """Run (or resume, from ``out_dir/search-state.json`` started with ``settings``) the EA with ``latency``'s
    predictions (a profile, or a fleet) under ``obj``; returns the state and the evaluator (its accuracy cache)."""
    state_path = out_dir / "search-state.json"
    state = resumable_state(state_path, settings, f"a {what}", "use another --out or delete it") or {
        "settings": settings, "generation": 0, "population": [], "evaluated": [], "rng": None, "history": []}
    evaluator = Evaluator(supernet, data, calib_images=cfg.calib_images, val_images=cfg.val_images,
                          cache_file=out_dir / "evaluations.jsonl", tag=supernet_tag(supernet_path))
    try:
        _evolve(state, state_path, sub, evaluator, latency, obj, cfg, progress)
    except KeyboardInterrupt:
        raise Interrupted(f"{what} interrupted after generation {state['generation']}; rerun the same command to "
                          "resume") from None
    return state, evaluator


def record_search_value(result_path: Path, data: DataBundle, profile: Profile, cfg: SearchConfig, *,
                        evaluator: Evaluator | None = None, progress: ProgressFn | None = None) -> dict:
    """Add ``search_value`` to result.json: the result's arch against random archs at its latency and uniform
    scaling (``hsconas_cli.search_value``), scored as the search scored; kept where it is there for this arch."""
    result = read_json(result_path, "search result")
    if result.get("search_value", {}).get("arch") == result["arch"]:
        return result
    if progress:
        progress("what the search bought: random archs at the same latency, uniform scaling", 0, 1)
    if evaluator is None:
        supernet_path = result["supernet"]
        evaluator = Evaluator(load_supernet(supernet_path)[0], data, calib_images=cfg.calib_images, val_images=cfg.val_images,
                              cache_file=result_path.parent / "evaluations.jsonl", tag=supernet_tag(supernet_path))
    result["search_value"] = search_value(evaluator, profile, Arch.from_list(result["arch"]), result["target"]["target_ms"],
                                          seed=cfg.seed)
    write_json(result_path, result)
    return result


def best_by_f(rows: Iterable[dict], k: int) -> list[dict]:
    """The ``k`` evaluated archs of highest F, best first (the earlier evaluated first among equals): the parents of
    each generation, and the winner."""
    return sorted(rows, key=lambda r: -r["F"])[:k]


def _evolve(state, state_path, sub, evaluator, profile, obj, cfg, progress) -> None:
    space = sub.space
    rng = random.Random(cfg.seed)
    if state["rng"] is not None:
        rng.setstate(random_state_from_json(state["rng"]))
    rows = {json.dumps(r["key"]): r for r in state["evaluated"]}

    def evaluate(arch: Arch, gen: int) -> dict:
        key = json.dumps(arch_key(space, arch))
        if key not in rows:
            acc, lat = evaluator.accuracy(arch), profile.predict(arch)
            rows[key] = {"key": json.loads(key), "arch": arch.to_list(), "acc": acc, "lat_ms": lat,
                         "F": obj(acc, lat), "generation": gen}
            state["evaluated"].append(rows[key])
        return rows[key]

    def draw_new(make: Callable[[], Arch], taken: set) -> Arch | None:
        for _ in range(200):
            a = make()
            k = json.dumps(arch_key(space, a))
            if k not in rows and k not in taken:
                taken.add(k)
                return a
        return None  # the (shrunk) space is nearly exhausted around the parents

    while state["generation"] < cfg.generations:
        gen = state["generation"]
        taken: set = set()
        if gen == 0:
            pop = [a for a in (draw_new(lambda: sub.sample(rng), taken) for _ in range(cfg.population)) if a]
        else:
            parents = [Arch.from_list(r["arch"]) for r in best_by_f(rows.values(), cfg.parents)]
            n_child = cfg.population - len(parents)
            children = []
            for i in range(n_child):
                if i % 2 == 0:
                    make = lambda: crossover(rng.choice(parents), rng.choice(parents), rng, cfg.crossover_prob)
                else:
                    make = lambda: mutate(rng.choice(parents), sub, rng, cfg.mutation_prob)
                child = draw_new(make, taken)
                if child is not None:
                    children.append(child)
            pop = parents + children
        for i, a in enumerate(pop):
            if progress:
                progress(f"generation {gen + 1}/{cfg.generations}: arch {i + 1}/{len(pop)}", gen, cfg.generations)
            evaluate(a, gen + 1)
        best = best_by_f(rows.values(), 1)[0]
        state["history"].append({"generation": gen + 1, "best_F": best["F"], "best_acc": best["acc"],
                                 "best_lat_ms": best["lat_ms"], "evaluated": len(rows)})
        state["population"] = [a.to_list() for a in pop]
        state["generation"] = gen + 1
        state["rng"] = random_state_to_json(rng.getstate())
        write_json(state_path, state)
    if progress:
        progress("done", cfg.generations, cfg.generations)


def _write_results(state, out_dir, space, sub, profile, obj, where, cfg, supernet_path, data) -> dict:
    rows = state["evaluated"]
    best = best_by_f(rows, 1)[0]
    arch = Arch.from_list(best["arch"])
    write_text(out_dir / "evaluated.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    front = pareto_front(rows)
    write_json(out_dir / "pareto.json", {"kind": "hsconas-pareto-front", **space_ref(space), "front": front})
    result = arch_to_json(
        space, arch,
        kind="hsconas-search-result",
        acc=best["acc"],
        predicted_ms=best["lat_ms"],
        F=best["F"],
        target=where,
        objective=obj.to_dict(),
        profile=profile.name,
        profile_version=profile.version,
        device=profile.device.to_dict(),
        subspace=sub.to_dict(),
        supernet=str(Path(supernet_path).resolve()),
        data=data.describe(),
        settings=asdict(cfg),
        evaluated=len(rows),
        history=state["history"],
    )
    write_json(out_dir / "result.json", result)
    plot_search(state, obj, out_dir)
    return result


def plot_search(state: dict, obj: Objective, out_dir: Path) -> None:
    """The paper's Fig. 6: best F per generation, and a histogram of the latencies explored with T marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hist = state["history"]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.4))
    a1.plot([h["generation"] for h in hist], [h["best_F"] for h in hist], marker="o")
    a1.set_xlabel("generation")
    a1.set_ylabel("best F(arch, T)")
    a1.set_title("evolution")
    lats = [r["lat_ms"] for r in state["evaluated"]]
    a2.hist(lats, bins=30, color="tab:blue", alpha=0.8)
    a2.axvline(obj.target_ms, color="red", linestyle="--", label=f"T = {obj.target_ms:.3g} ms")
    a2.set_xlabel("predicted latency (ms)")
    a2.set_ylabel("archs evaluated")
    a2.legend(fontsize=8)
    fig.tight_layout()
    from hsconas_cli.fileio import atomic_path

    with atomic_path(out_dir / "fig6-search.png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


# ---- closing the loop: the search's best candidates measured on the device -----------------------------
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


FALLBACK_BAND = 0.03  # width of the predicted-latency bands below T that fallback candidates come from


def loop_candidates(rows: list[dict], target_ms: float, n: int) -> list[dict]:
    """What the closed loop measures: the best half of ``n`` by F (the winner first), then, as fallbacks for a
    winner that measures slower than predicted, the most accurate arch of each band of predicted latency
    3%, 6%, 9%, ... below T. The EA's best archs all sit within a percent of T, so without the fallbacks a
    miss of a few percent leaves nothing that meets T."""
    by_f = best_by_f(rows, len(rows))
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


def verify_on_device(result_path: str | Path, profile: Profile, *, candidates: int = 8, repeats: int = 3,
                     budget_s: float = 10.0, log: Callable[[str], None] = lambda s: None,
                     progress: ProgressFn | None = None) -> dict:
    """Measure ``candidates`` archs of a finished search on this machine (``loop_candidates``: the best by F,
    and the most accurate ones a few percent below T as fallbacks), and keep the winner unless ``choose_candidate``
    finds one that clearly meets T where the winner clearly misses it. Rewrites result.json with
    ``closed_loop`` (every candidate's prediction and measurement, and the choice) and ``verify`` (the chosen
    arch's measurement); the searched winner is kept as ``searched_best`` when it was replaced."""
    from hsconas_cli.calibrate import LatencyMeter

    result_path = Path(result_path)
    result = read_json(result_path, "search result")
    target_ms = result["target"]["target_ms"]
    rows = [json.loads(l) for l in (result_path.parent / "evaluated.jsonl").read_text().splitlines() if l.strip()]
    top = loop_candidates(rows, target_ms, candidates)
    meter = LatencyMeter(profile)
    meter.lower_ahead([Arch.from_list(r["arch"]) for r in top])  # ExecuTorch: every program before any timing
    cands = []
    for i, r in enumerate(top):
        if progress:
            progress(f"measuring the best candidates on the device: {i + 1}/{len(top)}", i, len(top))
        m = meter.measure_arch(Arch.from_list(r["arch"]), repeats=repeats, budget_s=budget_s)
        v = m["verdict"]
        cands.append({"arch": r["arch"], "acc": r["acc"], "F": r["F"], "predicted_ms": r["lat_ms"],
                      "measured_ms": m["measured_ms"], "uncertainty_pct": v["uncertainty_pct"], "status": v["status"],
                      "vs_target_pct": 100 * (m["measured_ms"] / target_ms - 1),
                      "meets_target": meets_target(m["measured_ms"], v["uncertainty_pct"], target_ms),
                      "trusted": v["status"] != "busy", "measurement": m})
    chosen, reason = choose_candidate(cands, target_ms)
    log(reason)
    c = cands[chosen]
    if chosen:
        result["searched_best"] = {k: result[k] for k in ("arch", "acc", "predicted_ms", "F")}
        result.update(arch=c["arch"], acc=c["acc"], predicted_ms=c["predicted_ms"], F=c["F"])
    result["closed_loop"] = {"candidates": [{k: v for k, v in x.items() if k != "measurement"} for x in cands],
                             "chosen": chosen, "replaced": bool(chosen), "reason": reason, "profile": profile.name}
    result["verify"] = {**c["measurement"], "error_vs_target_pct": c["vs_target_pct"]}
    write_json(result_path, result)
    if progress:
        progress("measured", len(top), len(top))
    return result
