"""Progressive space shrinking towards a device (paper III-C), deciding only what it can tell apart.

Stage 1 scores layers 20, 19, 18, 17 in that order. For each op still allowed in the current layer, the
subspace with that op fixed is scored by Q = mean F(arch, T) over N archs sampled uniformly from it (N = 100
in the paper). The ops of one layer are scored on common random numbers: the same N archs of the current
subspace, differing only in that layer's op (each keeps its sample's channel factor), so the other layers do
not differ between the ops compared. The best op is fixed only where its Q beats the second's by more than two
standard errors of their paired difference; otherwise the layer stays free, and the file says by what margin.
The next layer is scored with the decisions so far. The supernet is then fine-tuned within the shrunk space
(lr 0.01 in the paper), and stage 2 scores layers 16..13 the same way, followed by a second fine-tuning (lr
0.0035). Channel factors stay free.

Everything is written to the run folder as it happens (the state after every Q, the fine-tuning checkpoints,
the evaluations), so an interrupted shrink resumes without redoing any of it. The result is the shrunk-space
file: the subspace, every Q with its standard error, each layer's decision and margin, the space size after
each stage, the fine-tuned supernet.
"""

from __future__ import annotations

import math
import random
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from hsconas_cli.checkpoint import checkpoint_space, load_supernet
from hsconas_cli.data import DataBundle, check_data_fits, load_data
from hsconas_cli.drift import profile_for_run
from hsconas_cli.errors import Interrupted
from hsconas_cli.evaluate import Evaluator, supernet_tag
from hsconas_cli.fileio import folder_lock, resumable_state, write_json
from hsconas_cli.objective import Objective, resolve_target
from hsconas_cli.profiles import Profile
from hsconas_cli.space import Arch, SearchSpace, Subspace, format_count
from hsconas_cli.train import FINETUNE_LRS, preset, train_supernet
from hsconas_cli.ui import ProgressFn


def stages_for(num_layers: int) -> tuple[tuple[int, ...], ...]:
    """0-based layers of each stage: 20..17, then 16..13 (four each, as the paper's 20 layers). A smaller space
    fixes one layer per five, so that shrinking always leaves most of its layers free."""
    n = max(1, min(4, num_layers // 5))
    last = list(range(num_layers - 1, -1, -1))
    return (tuple(last[:n]), tuple(last[n : 2 * n]))


@dataclass
class ShrinkConfig:
    samples: int = 100  # N archs per subspace
    finetune_epochs: int = 15
    finetune_lrs: tuple[float, ...] = FINETUNE_LRS
    finetune_limit: int | None = None  # images per fine-tuning epoch
    calib_images: int = 2000
    val_images: int = 5000
    seed: int = 0


def _sizes(sub: Subspace) -> dict:
    return {"distinct": sub.count(), "gene_strings": sub.gene_count(),
            "distinct_text": format_count(sub.count()), "gene_strings_text": format_count(sub.gene_count())}


@dataclass
class Shrinking:
    """One shrink's fixed inputs: the space, the data, the profile and objective it scores with, its budget, the
    settings a resume must share, and the run folder with its state file."""

    space: SearchSpace
    data: DataBundle
    profile: Profile
    obj: Objective
    where: dict  # the target as resolved (objective.resolve_target)
    cfg: ShrinkConfig
    settings: dict
    out_dir: Path

    @property
    def state_path(self) -> Path:
        return self.out_dir / "shrink-state.json"

    def save(self, state: dict) -> None:
        write_json(self.state_path, state)


def shrink(
    supernet_path: str | Path,
    data: DataBundle,
    profile: Profile,
    target: str | float,
    out_dir: str | Path,
    *,
    cfg: ShrinkConfig | None = None,
    beta: float | None = None,
    beta_below: float | None = None,
    subspace: Subspace | None = None,
    progress: ProgressFn | None = None,
) -> dict:
    """Shrink the space of ``supernet_path`` towards ``profile``'s device under target ``target``; returns the
    shrunk-space document (also written to ``out_dir/shrunk-space.json``). The run folder is locked while it runs."""
    cfg = cfg or ShrinkConfig()
    out_dir = Path(out_dir)
    supernet, ckpt = load_supernet(supernet_path)
    space = supernet.space
    profile.check_space(space)
    check_data_fits(space, data)
    sub0 = subspace or space.full()
    target_ms, where = resolve_target(target, profile, sub0)
    obj = Objective.with_options(target_ms, beta, beta_below)
    settings = {
        "supernet": str(Path(supernet_path).resolve()),
        "supernet_id": supernet_tag(supernet_path),
        "data_id": data.split["data_sha256"],
        "profile": profile.name,
        "objective": obj.to_dict(),
        "config": {**asdict(cfg), "finetune_lrs": list(cfg.finetune_lrs)},
        "initial": sub0.to_dict(),
        "method": DECISION_RULE,
    }
    run = Shrinking(space, data, profile, obj, where, cfg, settings, out_dir)
    try:
        with folder_lock(out_dir, "shrink"):
            state = resumable_state(run.state_path, settings, "a shrink", "use another --out or delete it") or {
                "settings": settings, "subspace": sub0.to_dict(), "stages": [], "supernet": settings["supernet"]}
            return _run(state, run, sub0, progress)
    except (KeyboardInterrupt, Interrupted):
        raise Interrupted(f"shrinking interrupted; progress is kept in {out_dir}: rerun the same command to resume") from None


def shrink_on_device(device: str, latency: str, supernet: str | Path, out_dir: str | Path, *,
                     data_spec: str = "fashion-mnist", cfg: ShrinkConfig | None = None, beta: float | None = None,
                     beta_below: float | None = None, version: int | None = None, force: bool = False,
                     check: bool = True, log: Callable[[str], None] = print, progress: ProgressFn | None = None) -> dict:
    """``hsconas shrink``: ``shrink`` of the supernet checkpoint's space, with the device's profile chosen as every
    run chooses it (``drift.profile_for_run``: checked here, or the version a resumed shrink started with)."""
    profile, _ = profile_for_run(device, checkpoint_space(supernet), version=version,
                                 state_file=Path(out_dir) / "shrink-state.json", check=check, force=force, log=log,
                                 progress=progress)
    return shrink(supernet, load_data(data_spec), profile, latency, out_dir, cfg=cfg, beta=beta, beta_below=beta_below,
                  progress=progress)


def _run(state: dict, run: Shrinking, sub0: Subspace, progress: ProgressFn | None) -> dict:
    """Both stages from ``state`` on (each: score its layers, then fine-tune within the shrunk space), then the
    shrunk-space file."""
    sub = Subspace.from_dict(state["subspace"])
    current = state["supernet"]
    stages = stages_for(run.space.num_layers)
    total = sum(len(layers) for layers in stages)
    done_layers = 0
    for k, layers in enumerate(stages):
        if k < len(state["stages"]) and state["stages"][k].get("finetuned"):
            done_layers += len(layers)
            current = state["stages"][k]["supernet"]
            continue
        if k == len(state["stages"]):
            state["stages"].append({"stage": k + 1, "layers": [l + 1 for l in layers], "scores": {}, "chosen": {},
                                    "size_before": _sizes(sub)})
        stage = state["stages"][k]
        net, _ = load_supernet(current)
        evaluator = Evaluator(net, run.data, calib_images=run.cfg.calib_images, val_images=run.cfg.val_images,
                              cache_file=run.out_dir / "evaluations.jsonl", tag=supernet_tag(current))
        for layer in layers:
            if str(layer + 1) not in stage["chosen"]:
                say = _layer_progress(progress, f"stage {k + 1}, layer {layer + 1}", done_layers, total)
                sub = _shrink_layer(stage, state, run, sub, layer, evaluator, say)
            done_layers += 1
        stage["size_after"] = _sizes(sub)
        say = progress and (lambda desc, n=done_layers: progress(desc, n, total))
        current = _finetune(run, k, sub, current, stage, say)
        state["supernet"] = current
        run.save(state)
    return _shrunk_space(state, run, sub0, sub, current)


def _finetune(run: Shrinking, k: int, sub: Subspace, current: str, stage: dict, say) -> str:
    """Fine-tune the supernet ``current`` within the shrunk space after stage ``k`` (resuming a cut-off one);
    returns the fine-tuned checkpoint."""
    cfg = run.cfg
    ft_dir = run.out_dir / f"finetune-stage{k + 1}"
    lr = cfg.finetune_lrs[min(k, len(cfg.finetune_lrs) - 1)]
    tcfg = preset("supernet", run.data.name, epochs=cfg.finetune_epochs, lr=lr, limit=cfg.finetune_limit, seed=cfg.seed + k + 1)
    if say:
        say(f"stage {k + 1}: fine-tuning within the shrunk space (lr {lr})")
    ticks = say and (lambda desc, d, t: say(f"stage {k + 1} fine-tuning: {desc}"))
    train_supernet(run.data.name, run.space, ft_dir, cfg=tcfg, subspace=sub, init=current,
                   resume=(ft_dir / "checkpoint.pt").exists(), progress=ticks, data=run.data)
    current = str((ft_dir / "checkpoint.pt").resolve())
    stage.update(finetuned=True, supernet=current, finetune={"epochs": tcfg.epochs, "lr": lr, "limit": tcfg.limit})
    return current


def _shrunk_space(state: dict, run: Shrinking, sub0: Subspace, sub: Subspace, current: str) -> dict:
    """The shrunk-space document, written to ``shrunk-space.json``: the subspace, every Q, the decisions, the sizes."""
    doc = {
        "kind": "hsconas-shrunk-space",
        "space": run.space.name,
        "space_fingerprint": run.space.fingerprint,
        "subspace": sub.to_dict(),
        "target": run.where,
        "objective": run.obj.to_dict(),
        "profile": run.profile.name,
        "samples_per_subspace": run.cfg.samples,
        "initial_size": _sizes(sub0),
        "stages": [{k: v for k, v in st.items() if k != "samples"} for st in state["stages"]],
        "final_size": _sizes(sub),
        "supernet": current,
        "base_supernet": run.settings["supernet"],
        "evaluations": _count_lines(run.out_dir / "evaluations.jsonl"),
    }
    write_json(run.out_dir / "shrunk-space.json", doc)
    return doc


DECISION_RULE = "common random numbers; fix the best op where Q(best) - Q(second) > 2 SE of their paired difference"


def layer_samples(sub: Subspace, layer: int, n: int, rng: random.Random) -> list[tuple[Arch, float]]:
    """The common random numbers one layer's ops are scored on: ``n`` archs of ``sub``, and a channel factor for
    ``layer`` in each (used by every op but skip)."""
    return [(sub.sample(rng), rng.choice(sub.factors[layer])) for _ in range(n)]


def arch_with(arch: Arch, layer: int, op: str, c: float) -> Arch:
    """``arch`` with ``layer`` set to ``op`` at factor ``c`` (skip takes no factor)."""
    genes = list(arch.genes)
    genes[layer] = ("skip", None) if op == "skip" else (op, c)
    return Arch(tuple(genes))


def decide(scores: dict[str, dict]) -> dict:
    """Which op a layer keeps, from each op's F values on the same samples (``scores[op]["fs"]``, in sample
    order): the op of highest Q, where it beats the second by more than two standard errors of their paired
    difference (sd of the per-sample differences / sqrt(n)); otherwise none, and the layer stays free."""
    ranked = sorted(scores, key=lambda o: -scores[o]["Q"])
    if len(ranked) == 1:
        return {"best": ranked[0], "second": None, "margin": None, "se": None, "decided": True}
    best, second = ranked[:2]
    diffs = [a - b for a, b in zip(scores[best]["fs"], scores[second]["fs"])]
    margin = scores[best]["Q"] - scores[second]["Q"]
    se = statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else math.inf
    return {"best": best, "second": second, "margin": margin, "se": se, "decided": margin > 2 * se}


def _layer_progress(progress, where: str, done: int, total: int):
    return (lambda desc: progress(f"{where}: {desc}", done, total)) if progress else None


def _score_op(samples, layer, op, evaluator, profile, obj, progress) -> dict:
    fs, accs, lats = [], [], []
    for i, (arch, c) in enumerate(samples):
        if progress:
            progress(f"scoring {op} ({i + 1}/{len(samples)})")
        a = arch_with(arch, layer, op, c)
        acc, lat = evaluator.accuracy(a), profile.predict(a)
        fs.append(obj(acc, lat))
        accs.append(acc)
        lats.append(lat)
    n = len(fs)
    return {"Q": statistics.fmean(fs), "se": statistics.stdev(fs) / math.sqrt(n) if n > 1 else None,
            "mean_acc": statistics.fmean(accs), "mean_lat_ms": statistics.fmean(lats), "n": n, "fs": fs}


def _shrink_layer(stage: dict, state: dict, run: Shrinking, sub: Subspace, layer: int, evaluator: Evaluator,
                  progress) -> Subspace:
    """Score every op of ``layer`` on common samples (saving each Q as it comes), decide, and return the subspace
    with the decision applied."""
    name = str(layer + 1)
    scores = stage["scores"].setdefault(name, {})
    if len(sub.ops[layer]) == 1:  # nothing to decide
        stage.setdefault("decisions", {})[name] = decide({sub.ops[layer][0]: {"Q": 0.0}})
        stage["chosen"][name] = sub.ops[layer][0]
        run.save(state)
        return sub
    samples = layer_samples(sub, layer, run.cfg.samples, random.Random(run.cfg.seed * 1_000_003 + layer * 101))
    for op in sub.ops[layer]:
        if op not in scores:
            scores[op] = _score_op(samples, layer, op, evaluator, run.profile, run.obj, progress)
            drawn = [arch_with(a, layer, op, c).to_list() for a, c in samples]
            stage.setdefault("samples", {}).setdefault(name, {})[op] = drawn  # kept in the state file only
            run.save(state)
    decision = decide(scores)
    stage.setdefault("decisions", {})[name] = decision
    stage["chosen"][name] = decision["best"] if decision["decided"] else None
    if decision["decided"]:
        sub = sub.fix_op(layer, decision["best"])
    state["subspace"] = sub.to_dict()
    run.save(state)
    return sub


def describe_decision(d: dict) -> str:
    """One line for a layer's decision: the op kept and by what margin, or why the layer stays free."""
    if d["second"] is None:
        return f"{d['best']} (the only op allowed)"
    vs = f"Q {d['best']} - {d['second']} = {d['margin']:+.4f}, 2 SE {2 * d['se']:.4f}"
    return f"{d['best']} ({vs})" if d["decided"] else f"free: best {d['best']} not told apart ({vs})"


def _count_lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0
