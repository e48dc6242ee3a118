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
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable

from hsconas_cli.data import DataBundle, check_data_fits
from hsconas_cli.errors import HsconasError, Interrupted
from hsconas_cli.evaluate import Evaluator, supernet_tag
from hsconas_cli.fileio import random_state_from_json, random_state_to_json, read_json, resumable_state, write_json, write_text
from hsconas_cli.objective import Objective, resolve_target
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


def search_inputs(space_file: str | Path | None, supernet: str | Path | None) -> tuple[Subspace | None, Path, SearchSpace]:
    """What a search runs on: the subspace (a shrunk-space file, which also names its fine-tuned supernet; None:
    the whole space), the supernet checkpoint (given, else the shrunk space's, else runs/supernet/checkpoint.pt)
    and its search space."""
    from hsconas_cli.train import checkpoint_space

    sub, ckpt = None, supernet
    if space_file is not None:
        sub = load_subspace(space_file)
        named = read_json(space_file, "space file").get("supernet")
        ckpt = ckpt or named
    ckpt = Path(ckpt or "runs/supernet/checkpoint.pt")
    return sub, ckpt, checkpoint_space(ckpt)


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
    progress: ProgressFn | None = None,
) -> dict:
    """Run the EA; write result.json, evaluated.jsonl, pareto.json and the Fig. 6 plots; return the result.
    ``verify`` > 0: then measure that many of the best candidates here (``verify_on_device``)."""
    if verify:
        search(supernet_path, data, profile, target, out_dir, subspace=subspace, cfg=cfg, beta=beta,
                        beta_below=beta_below, progress=progress)
        return verify_on_device(Path(out_dir) / "result.json", profile, candidates=verify, progress=progress)
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
    obj = Objective.with_options(target_ms, beta, beta_below)
    settings = {"supernet": str(Path(supernet_path).resolve()), "profile": profile.name, "objective": obj.to_dict(),
                "config": asdict(cfg), "subspace": sub.to_dict()}
    state_path = out_dir / "search-state.json"
    state = resumable_state(state_path, settings, "a search", "use another --out or delete it")
    if not state:
        state = {"settings": settings, "generation": 0, "population": [], "evaluated": [], "rng": None, "history": []}
    evaluator = Evaluator(supernet, data, calib_images=cfg.calib_images, val_images=cfg.val_images,
                          cache_file=out_dir / "evaluations.jsonl", tag=supernet_tag(supernet_path))
    try:
        _evolve(state, state_path, sub, evaluator, profile, obj, cfg, progress)
    except KeyboardInterrupt:
        raise Interrupted(f"search interrupted after generation {state['generation']}; rerun the same command to "
                          "resume") from None
    return _write_results(state, out_dir, space, sub, profile, obj, where, cfg, supernet_path, data)


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
def choose_candidate(cands: list[dict]) -> tuple[int, str]:
    """Which of the measured candidates (the searched winner first) the user gets, and why: the winner, unless
    its trusted measurement misses T beyond its uncertainty; then the most accurate candidate whose trusted
    measurement meets T and is faster than the winner's. A winner measured under load is kept, said to be unconfirmed."""
    winner = cands[0]
    if not winner["trusted"]:
        return 0, "the winner was measured under load: kept, unconfirmed"
    if winner["meets_target"]:
        return 0, "the winner meets T by measurement"
    ok = [i for i, c in enumerate(cands)
          if c["meets_target"] and c["trusted"] and c["vs_target_pct"] < winner["vs_target_pct"]]
    if not ok:
        return 0, (f"the winner measured {winner['vs_target_pct']:+.1f}% vs T and none of the {len(cands)} candidates "
                   "meets T by measurement: kept; try a lower --latency")
    chosen = max(ok, key=lambda i: (cands[i]["acc"], cands[i]["F"]))
    return chosen, (f"the winner measured {winner['vs_target_pct']:+.1f}% vs T (uncertainty +-{winner['uncertainty_pct']:.1f}%): "
                    f"replaced by candidate {chosen + 1}, the most accurate that meets T by measurement")


def meets_target(measured_ms: float, uncertainty_pct: float, target_ms: float) -> bool:
    """Whether a measured latency meets T within its uncertainty: its lower end, measured x (1 - u), is at most T."""
    return measured_ms * (1 - uncertainty_pct / 100) <= target_ms


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
    and the most accurate ones a few percent below T as fallbacks). Where the winner's measured latency misses T by more than its uncertainty, the most accurate
    candidate that meets T by measurement (a trusted verdict) takes its place. Rewrites result.json with
    ``closed_loop`` (every candidate's prediction and measurement, and the choice) and ``verify`` (the chosen
    arch's measurement); the searched winner is kept as ``searched_best`` when it was replaced."""
    from hsconas_cli.calibrate import LatencyMeter

    result_path = Path(result_path)
    result = read_json(result_path, "search result")
    target_ms = result["target"]["target_ms"]
    rows = [json.loads(l) for l in (result_path.parent / "evaluated.jsonl").read_text().splitlines() if l.strip()]
    top = loop_candidates(rows, target_ms, candidates)
    meter = LatencyMeter(profile)
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
    chosen, reason = choose_candidate(cands)
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
