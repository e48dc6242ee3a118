"""Evolutionary architecture search under a latency target (paper III-D).

Genes are the op and the channel factor of every layer, drawn only from what the (shrunk) space allows. Each
generation keeps the ``parents`` best archs by F(arch, T) seen so far and fills the population with
children: half by crossover of two parents (each layer's op and factor taken from the second parent with
probability ``crossover_prob``), half by mutation of one parent (each op and each factor re-drawn with
probability ``mutation_prob``). A child that is a network already evaluated is drawn again, so no arch is
evaluated twice. LAT comes from the device profile, ACC from the evaluator (inherited weights, exact BN
recalibration). The state is saved after every generation; an interrupted search resumes from the last
finished one.

The first generation starts from the uniform networks that fit T, and the EA only screens: when it ends, its
best archs that fit T and those baselines are scored again on held-out images and the winner is chosen there
(``hsconas_cli.selection``), so the screen's luckiest arch does not win by its luck.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from hsconas_cli.checkpoint import checkpoint_space, load_supernet
from hsconas_cli.closed_loop import verify_on_device
from hsconas_cli.data import DataBundle, check_data_fits, load_data
from hsconas_cli.drift import profile_for_run
from hsconas_cli.errors import HsconasError, Interrupted
from hsconas_cli.evaluate import Evaluator, supernet_tag
from hsconas_cli.fileio import (atomic_path, folder_lock, random_state_from_json, random_state_to_json, read_json, resumable_state,
                                write_json, write_text)
from hsconas_cli.objective import LatencyPredictor, Objective, best_by_f, resolve_target, target_note
from hsconas_cli.profiles import Profile
from hsconas_cli.search_value import search_value
from hsconas_cli.selection import PREFER, TOP_K, baselines, select
from hsconas_cli.space import Arch, SearchSpace, Subspace, arch_key, arch_to_json, load_subspace, space_ref
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
    top_k: int = TOP_K  # the screen's best archs that fit T, re-scored on the selection split with the baselines
    select_images: int = 10_000  # of the selection split (all of it where it holds fewer)
    prefer: str = "accurate"  # the selection's rule: the most accurate, or the fastest within 2 paired SE of it

    def check(self) -> None:
        if self.generations < 1 or self.population < 2:
            raise HsconasError("--generations must be at least 1 and --population at least 2")
        if not 1 <= self.parents < self.population:
            raise HsconasError("--parents must be at least 1 and below --population")
        for name in ("crossover_prob", "mutation_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise HsconasError(f"--{name.replace('_', '-')} must lie in [0, 1]")
        if self.prefer not in PREFER:
            raise HsconasError(f"--prefer must be one of {', '.join(PREFER)}")
        if self.top_k < 1 or self.select_images < 1:
            raise HsconasError("--top-k and the selection images must be at least 1")


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
    sub, ckpt, shrunk_target = None, supernet, None
    if space_file is not None:
        sub = load_subspace(space_file)
        doc = read_json(space_file, "space file")
        ckpt = ckpt or doc.get("supernet")
        shrunk_target = doc.get("target") if isinstance(doc.get("target"), dict) else None
    ckpt = Path(ckpt or "runs/supernet/checkpoint.pt")
    return sub, ckpt, checkpoint_space(ckpt), shrunk_target


@dataclass
class Evolution:
    """One evolutionary search's inputs: the supernet (loaded, and its file), the data, the subspace it draws from,
    the latency predictor it scores with (a profile, or a fleet) under its objective, its budget, and the folder it
    saves its state in."""

    supernet: object
    supernet_path: Path
    data: DataBundle
    sub: Subspace
    predictor: LatencyPredictor
    obj: object  # Objective, or FleetObjective for a fleet
    cfg: SearchConfig
    out_dir: Path
    seeds: list = field(default_factory=list)  # archs the first generation holds before its random draws

    def settings(self, **extra) -> dict:
        """What a resumed search must share with the interrupted one (``extra``: the profile or the fleet's)."""
        return {"supernet": str(Path(self.supernet_path).resolve()), "supernet_id": supernet_tag(self.supernet_path),
                "data_id": self.data.split["data_sha256"], **extra, "objective": self.obj.to_dict(),
                "config": asdict(self.cfg), "subspace": self.sub.to_dict()}

    def run(self, settings: dict, what: str, progress: ProgressFn | None) -> tuple[dict, Evaluator]:
        """Run (or resume, from ``out_dir/search-state.json`` started with ``settings``) the EA; returns the state
        and the evaluator (its accuracy cache)."""
        state_path = self.out_dir / "search-state.json"
        state = resumable_state(state_path, settings, f"a {what}", "use another --out or delete it") or {
            "settings": settings, "generation": 0, "population": [], "evaluated": [], "rng": None, "history": []}
        evaluator = Evaluator(self.supernet, self.data, calib_images=self.cfg.calib_images, val_images=self.cfg.val_images,
                              cache_file=self.out_dir / "evaluations.jsonl", tag=supernet_tag(self.supernet_path))
        try:
            _evolve(state, state_path, self, evaluator, progress)
        except KeyboardInterrupt:
            raise Interrupted(f"{what} interrupted after generation {state['generation']}; rerun the same command to "
                              "resume") from None
        return state, evaluator


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
    ``verify`` > 0: then measure that many of the best candidates here (``closed_loop.verify_on_device``).
    ``shrunk_target``: the target of the shrink that wrote ``subspace``, which the result's target compares itself
    with (``note``). The run folder is locked while the search writes it (``fileio.folder_lock``)."""
    if verify:
        search(supernet_path, data, profile, target, out_dir, subspace=subspace, cfg=cfg, beta=beta,
               beta_below=beta_below, shrunk_target=shrunk_target, progress=progress)
        with folder_lock(out_dir, "search"):
            verify_on_device(Path(out_dir) / "result.json", profile, candidates=verify, progress=progress)
            return record_search_value(Path(out_dir) / "result.json", data, profile, cfg or SearchConfig(), progress=progress)
    ev = evolution(supernet_path, data, subspace, cfg, out_dir)
    profile.check_space(ev.sub.space)
    check_data_fits(ev.sub.space, data)
    target_ms, where = resolve_target(target, profile, ev.sub)
    note = target_note(where, shrunk_target)
    if note:
        where["note"] = note
    ev.predictor, ev.obj = profile, Objective.with_options(target_ms, beta, beta_below)
    named = baselines(profile, ev.sub, target_ms)
    ev.seeds = [a for _, a in named]
    with folder_lock(out_dir, "search"):
        state, _ = ev.run(ev.settings(profile=profile.name), "search", progress)
        sel_ev = selection_evaluator(ev.supernet, ev.supernet_path, data, ev.cfg, ev.out_dir)
        chosen = select(state["evaluated"], named, sel_ev, target_ms, top_k=ev.cfg.top_k, prefer=ev.cfg.prefer,
                        progress=progress)
        _write_results(state, ev, where, chosen)
        return record_search_value(ev.out_dir / "result.json", data, profile, ev.cfg, evaluator=sel_ev, progress=progress)


def selection_evaluator(supernet, supernet_path: Path, data: DataBundle, cfg: SearchConfig, out_dir: Path) -> Evaluator:
    """The evaluator of the selection split (``hsconas_cli.selection``): the screen's BN-calibration images, and
    up to ``cfg.select_images`` held-out images scored per image; cached in ``out_dir/selection-scores.jsonl``."""
    n = min(cfg.select_images, int(data.split["sizes"].get("select", 0)))
    if n < 1:
        raise HsconasError("the data's split has no selection images: re-run with this version's split")
    return Evaluator(supernet, data, calib_images=cfg.calib_images, val_images=n, subset="select", per_image=True,
                     cache_file=out_dir / "selection-scores.jsonl", tag=supernet_tag(supernet_path))


def search_on_device(device: str, latency: str, out_dir: str | Path, *, space_file: str | Path | None = None,
                     supernet: str | Path | None = None, data_spec: str = "fashion-mnist", cfg: SearchConfig | None = None,
                     beta: float | None = None, beta_below: float | None = None, verify: int = 0,
                     version: int | None = None, force: bool = False, check: bool = True,
                     log: Callable[[str], None] = print, progress: ProgressFn | None = None) -> dict:
    """``hsconas search --device``: ``search`` on the inputs as the command names them (``search_inputs``), with the
    device's profile chosen as every run chooses it (``drift.profile_for_run``: checked here, or the version a
    resumed search started with)."""
    sub, ckpt, space, shrunk_target = search_inputs(space_file, supernet)
    profile, _ = profile_for_run(device, space, version=version, state_file=Path(out_dir) / "search-state.json",
                                 check=check, force=force, log=log, progress=progress)
    return search(ckpt, load_data(data_spec), profile, latency, out_dir, subspace=sub, cfg=cfg, beta=beta,
                  beta_below=beta_below, verify=verify, shrunk_target=shrunk_target, progress=progress)


def evolution(supernet_path: str | Path, data: DataBundle, subspace: Subspace | None, cfg: SearchConfig | None,
              out_dir: str | Path) -> Evolution:
    """An ``Evolution`` of the supernet's (sub)space, its predictor and objective still to be set."""
    cfg = cfg or SearchConfig()
    cfg.check()
    supernet, _ = load_supernet(supernet_path)
    space = supernet.space
    sub = subspace or space.full()
    if sub.space.fingerprint != space.fingerprint:
        raise HsconasError(f"the search space belongs to {sub.space.name}, the supernet to {space.name}")
    return Evolution(supernet, Path(supernet_path), data, sub, None, None, cfg, Path(out_dir))


def record_search_value(result_path: Path, data: DataBundle, profile: Profile, cfg: SearchConfig, *,
                        evaluator: Evaluator | None = None, progress: ProgressFn | None = None) -> dict:
    """Add ``search_value`` to result.json: the result's arch against random archs at its latency and uniform
    scaling (``hsconas_cli.search_value``), scored on the selection split as the winner was chosen; kept where it
    is there for this arch."""
    result = read_json(result_path, "search result")
    if result.get("search_value", {}).get("arch") == result["arch"]:
        return result
    if progress:
        progress("what the search bought: random archs at the same latency, uniform scaling", 0, 1)
    if evaluator is None:
        supernet_path = Path(result["supernet"])
        evaluator = selection_evaluator(load_supernet(supernet_path)[0], supernet_path, data, cfg, result_path.parent)
    result["search_value"] = search_value(evaluator, profile, Arch.from_list(result["arch"]), result["target"]["target_ms"],
                                          seed=cfg.seed)
    write_json(result_path, result)
    return result


def _evolve(state: dict, state_path: Path, ev: Evolution, evaluator: Evaluator, progress: ProgressFn | None) -> None:
    """The EA's generations from ``state`` on, each saved as it ends (see the module's docstring)."""
    sub, cfg = ev.sub, ev.cfg
    space = sub.space
    rng = random.Random(cfg.seed)
    if state["rng"] is not None:
        rng.setstate(random_state_from_json(state["rng"]))
    rows = {json.dumps(r["key"]): r for r in state["evaluated"]}

    def evaluate(arch: Arch, gen: int) -> dict:
        key = json.dumps(arch_key(space, arch))
        if key not in rows:
            acc, lat = evaluator.accuracy(arch), ev.predictor.predict(arch)
            rows[key] = {"key": json.loads(key), "arch": arch.to_list(), "acc": acc, "lat_ms": lat,
                         "F": ev.obj(acc, lat), "generation": gen}
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
        pop = _generation(gen, rows, sub, cfg, rng, draw_new, ev.seeds)
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


def _generation(gen: int, rows: dict, sub: Subspace, cfg: SearchConfig, rng: random.Random, draw_new,
                seeds: list[Arch] = ()) -> list[Arch]:
    """Generation ``gen``'s population: ``seeds`` (the uniform baselines) and uniform draws first; then the
    ``parents`` best by F so far, and children, half by crossover of two parents and half by mutation of one, none
    a network evaluated before."""
    taken: set = set()
    if gen == 0:
        first = [a for a in (draw_new(lambda a=a: a, taken) for a in seeds[: cfg.population]) if a]
        return first + [a for a in (draw_new(lambda: sub.sample(rng), taken) for _ in range(cfg.population - len(first))) if a]
    parents = [Arch.from_list(r["arch"]) for r in best_by_f(rows.values(), cfg.parents)]
    children = []
    for i in range(cfg.population - len(parents)):
        if i % 2 == 0:
            make = lambda: crossover(rng.choice(parents), rng.choice(parents), rng, cfg.crossover_prob)  # noqa: E731
        else:
            make = lambda: mutate(rng.choice(parents), sub, rng, cfg.mutation_prob)  # noqa: E731
        child = draw_new(make, taken)
        if child is not None:
            children.append(child)
    return parents + children


def _write_results(state: dict, ev: Evolution, where: dict, chosen: dict) -> dict:
    """result.json (the selection's winner, ``chosen`` by ``selection.select``, with everything a later stage
    reads), evaluated.jsonl, pareto.json and the Fig. 6 plot of a finished single-device search."""
    rows, space, profile, out_dir = state["evaluated"], ev.sub.space, ev.predictor, ev.out_dir
    best = chosen["candidates"][chosen["winner"]]
    write_text(out_dir / "evaluated.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    write_json(out_dir / "pareto.json", {"kind": "hsconas-pareto-front", **space_ref(space), "front": pareto_front(rows)})
    result = arch_to_json(
        space, Arch.from_list(best["arch"]),
        kind="hsconas-search-result",
        acc=best["acc"],
        screen_acc=best["screen_acc"],
        predicted_ms=best["lat_ms"],
        F=ev.obj(best["acc"], best["lat_ms"]),
        selection=chosen,
        screened_best=best_by_f(rows, 1)[0],
        target=where,
        objective=ev.obj.to_dict(),
        profile=profile.name,
        profile_version=profile.version,
        device=profile.device.to_dict(),
        subspace=ev.sub.to_dict(),
        supernet=str(ev.supernet_path.resolve()),
        data=ev.data.describe(),
        settings=asdict(ev.cfg),
        evaluated=len(rows),
        history=state["history"],
    )
    write_json(out_dir / "result.json", result)
    plot_search(state, ev.obj, out_dir)
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
    with atomic_path(out_dir / "fig6-search.png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
