"""Progressive space shrinking towards a device (paper III-C).

Stage 1 fixes layers 20, 19, 18, 17 in that order. For each op still allowed in the current layer, the
subspace with that op fixed is scored by Q = mean F(arch, T) over N archs sampled uniformly from it (N = 100
in the paper), and the best op is kept, so the next layer is scored with this one already fixed. The
supernet is then fine-tuned within the shrunk space (lr 0.01 in the paper), and stage 2 fixes layers
16..13 the same way, followed by a second fine-tuning (lr 0.0035). Channel factors stay free.

Everything is written to the run folder as it happens (the state after every Q, the fine-tuning checkpoints,
the evaluations), so an interrupted shrink resumes without redoing any of it. The result is the shrunk-space
file: the subspace, every Q score, the space size after each stage, the fine-tuned supernet.
"""

from __future__ import annotations

import random
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path

from hsconas_cli.data import DataBundle, check_data_fits
from hsconas_cli.errors import Interrupted
from hsconas_cli.evaluate import Evaluator, supernet_tag
from hsconas_cli.fileio import resumable_state, write_json
from hsconas_cli.objective import Objective, resolve_target
from hsconas_cli.profiles import Profile
from hsconas_cli.space import OPS, Subspace, format_count
from hsconas_cli.train import FINETUNE_LRS, load_supernet, preset, train_supernet
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
    shrunk-space document (also written to ``out_dir/shrunk-space.json``)."""
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
        "profile": profile.name,
        "objective": obj.to_dict(),
        "config": {**asdict(cfg), "finetune_lrs": list(cfg.finetune_lrs)},
        "initial": sub0.to_dict(),
    }
    state_path = out_dir / "shrink-state.json"
    state = resumable_state(state_path, settings, "a shrink", "use another --out or delete it")
    if not state:
        state = {"settings": settings, "subspace": sub0.to_dict(), "stages": [], "supernet": settings["supernet"]}
    try:
        return _run(state, state_path, settings, sub0, space, data, profile, obj, where, cfg, out_dir, progress)
    except (KeyboardInterrupt, Interrupted):
        raise Interrupted(f"shrinking interrupted; progress is kept in {out_dir}: rerun the same command to resume") from None


def _run(state, state_path, settings, sub0, space, data, profile, obj, where, cfg, out_dir, progress) -> dict:
    sub = Subspace.from_dict(state["subspace"])
    current = state["supernet"]
    stages = stages_for(space.num_layers)
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
        evaluator = Evaluator(net, data, calib_images=cfg.calib_images, val_images=cfg.val_images,
                              cache_file=out_dir / "evaluations.jsonl", tag=supernet_tag(current))
        for layer in layers:
            name = str(layer + 1)
            if name in stage["chosen"]:
                done_layers += 1
                continue
            scores = stage["scores"].setdefault(name, {})
            for op in sub.ops[layer]:
                if op in scores:
                    continue
                rng = random.Random(cfg.seed * 1_000_003 + layer * 101 + OPS.index(op))
                cand = sub.fix_op(layer, op)
                fs, accs, lats, drawn = [], [], [], []
                for i in range(cfg.samples):
                    if progress:
                        progress(f"stage {k + 1}, layer {layer + 1}: scoring {op} ({i + 1}/{cfg.samples})",
                                 done_layers, total)
                    arch = cand.sample(rng)
                    drawn.append(arch.to_list())
                    acc, lat = evaluator.accuracy(arch), profile.predict(arch)
                    fs.append(obj(acc, lat))
                    accs.append(acc)
                    lats.append(lat)
                scores[op] = {"Q": statistics.fmean(fs), "mean_acc": statistics.fmean(accs),
                              "mean_lat_ms": statistics.fmean(lats), "n": cfg.samples}
                stage.setdefault("samples", {}).setdefault(name, {})[op] = drawn  # kept in the state file only
                write_json(state_path, state)
            best = max(scores, key=lambda o: scores[o]["Q"])
            stage["chosen"][name] = best
            sub = sub.fix_op(layer, best)
            state["subspace"] = sub.to_dict()
            done_layers += 1
            write_json(state_path, state)
        stage["size_after"] = _sizes(sub)
        # fine-tune the supernet within the shrunk space
        ft_dir = out_dir / f"finetune-stage{k + 1}"
        lr = cfg.finetune_lrs[min(k, len(cfg.finetune_lrs) - 1)]
        tcfg = preset("supernet", data.name, epochs=cfg.finetune_epochs, lr=lr, limit=cfg.finetune_limit, seed=cfg.seed + k + 1)
        if progress:
            progress(f"stage {k + 1}: fine-tuning within the shrunk space (lr {lr})", done_layers, total)
        resume = (ft_dir / "checkpoint.pt").exists()
        ft_progress = (lambda desc, d, t: progress(f"stage {k + 1} fine-tuning: {desc}", done_layers, total)) if progress else None
        train_supernet(data.name, space, ft_dir, cfg=tcfg, subspace=sub, init=current, resume=resume,
                       progress=ft_progress, data=data)
        current = str((ft_dir / "checkpoint.pt").resolve())
        stage.update(finetuned=True, supernet=current, finetune={"epochs": tcfg.epochs, "lr": lr, "limit": tcfg.limit})
        state["supernet"] = current
        write_json(state_path, state)

    doc = {
        "kind": "hsconas-shrunk-space",
        "space": space.name,
        "space_fingerprint": space.fingerprint,
        "subspace": sub.to_dict(),
        "target": where,
        "objective": obj.to_dict(),
        "profile": profile.name,
        "samples_per_subspace": cfg.samples,
        "initial_size": _sizes(sub0),
        "stages": [{k: v for k, v in st.items() if k != "samples"} for st in state["stages"]],
        "final_size": _sizes(sub),
        "supernet": current,
        "base_supernet": settings["supernet"],
        "evaluations": _count_lines(out_dir / "evaluations.jsonl"),
    }
    write_json(out_dir / "shrunk-space.json", doc)
    return doc


def _count_lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0
