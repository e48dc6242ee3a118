"""Supernet recipes: how well a supernet trained a fixed number of steps serves the networks it stands for.

Each recipe trains a supernet of fmnist-A on Fashion-MNIST with the product's own Trainer (sliced SGD, cosine
schedule) for --steps steps of --batch-size images, then scores, after exact BN recalibration, --subnets random
subnets of the whole space and its largest and smallest paths (hsconas_cli.evaluate.subnet_quality). Every run
is appended to bench/results/supernet_recipes.json, failures included.

    python bench/supernet_recipes.py --recipe shipped --recipe separate-ops --steps 300
    python bench/supernet_recipes.py --recipe shipped --steps 1250 --seed 1   # the demo's budget
    python bench/supernet_recipes.py --list
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hsconas_cli.data import load_data  # noqa: E402
from hsconas_cli.evaluate import Evaluator, subnet_quality  # noqa: E402
from hsconas_cli.fileio import write_json  # noqa: E402
from hsconas_cli.space import Subspace, get_space  # noqa: E402
from hsconas_cli.train import preset, train_supernet  # noqa: E402
from hsconas_cli.checkpoint import load_supernet  # noqa: E402

# name -> (what it is, TrainConfig settings). Every recipe states all the knobs it sets on top of BASE, so a
# recipe keeps its meaning when the shipped preset changes; "shipped" is the preset as it stands.
BASE = {"share": "all", "init": "aligned", "lr": 0.1, "skip_ramp": 0.0, "update": "sliced", "warmup_epochs": 0.0,
        "batch_size": 64, "label_smoothing": 0.1, "weight_decay": 3e-5}
RECIPES = {
    "shipped": ("the Fashion-MNIST supernet preset as it stands", None),
    "separate-ops": ("every op its own weights, SPOS initialisation, lr 0.1 (hsconas 0.1's supernet)",
                     {"share": "none", "init": "spos"}),
    "shared-spos-init": ("ops share weights, SPOS initialisation (no aligned start), lr 0.1", {"init": "spos"}),
    "aligned": ("ops share weights, aligned initialisation, lr 0.1", {}),
    "he": ("aligned, on He (fan-in) initialisation instead of SPOS's, lr 0.1", {"init": "aligned-he"}),
    "he-lr0.3": ("aligned on He (fan-in) initialisation, lr 0.3", {"init": "aligned-he", "lr": 0.3}),
    "warmup": ("aligned, lr 0.1 after a linear warm-up over the first 10% of an epoch", {"warmup_epochs": 0.1}),
    "whole-updates": ("aligned, lr 0.1; momentum and weight decay move every channel of each parameter the path "
                      "used (as torch.optim.SGD would)", {"update": "whole"}),
    "skip-ramp": ("aligned, lr 0.1; skip's sampling weight rises from 0 to uniform over the first half",
                  {"skip_ramp": 0.5}),
    "lr0.03": ("aligned, lr 0.03", {"lr": 0.03}),
    "lr0.05": ("aligned, lr 0.05", {"lr": 0.05}),
    "lr0.05-whole": ("aligned, lr 0.05, whole-parameter updates", {"lr": 0.05, "update": "whole"}),
    "lr0.05-skip-ramp": ("aligned, lr 0.05, skip ramped in over the first half", {"lr": 0.05, "skip_ramp": 0.5}),
    "lr0.05-ramp0.7": ("aligned, lr 0.05, skip ramped in over the first 70%", {"lr": 0.05, "skip_ramp": 0.7}),
    "lr0.05-ramp1.0": ("aligned, lr 0.05, skip ramped in over the whole run", {"lr": 0.05, "skip_ramp": 1.0}),
    "lr0.0625-ramp0.5": ("aligned, the paper's lr 0.5 at batch 512 scaled linearly to batch 64 (0.0625), skip "
                         "ramped in over the first half", {"lr": 0.0625, "skip_ramp": 0.5}),
    "lr0.05-ramp-2paths": ("lr 0.05, skip ramped over the first half, each batch split between 2 sampled paths",
                           {"lr": 0.05, "skip_ramp": 0.5, "paths_per_step": 2}),
    "lr0.05-ramp-4paths": ("lr 0.05, skip ramped over the first half, each batch split between 4 sampled paths",
                           {"lr": 0.05, "skip_ramp": 0.5, "paths_per_step": 4}),
    "kernels-copy": ("lr 0.05, skip ramped; shuffle3/5/7 share, xception has weights of its own that start as a copy "
                     "of theirs", {"lr": 0.05, "skip_ramp": 0.5, "share": "kernels"}),
    "one-path": ("the ceiling of the schedule: one fixed path (the first random subnet scored) trained alone, "
                 "lr 0.05", {"lr": 0.05, "one_path": True}),
    "batch128": ("aligned, batch 128 and lr 0.2 (same images: half the steps)", {"batch_size": 128, "lr": 0.2}),
    "batch128-lr0.1": ("aligned, batch 128, lr 0.1 (lr 0.05 scaled to the batch), skip ramped over the first half",
                       {"batch_size": 128, "lr": 0.1, "skip_ramp": 0.5}),
}


def run(recipe: str, steps: int, batch: int, seed: int, subnets: int, data, space) -> dict:
    what, knobs = RECIPES[recipe]
    knobs = {} if knobs is None else {**BASE, **knobs}
    one_path = knobs.pop("one_path", False)
    sub = None
    if one_path:  # the first arch subnet_quality scores, alone: the same network every step
        arch = space.full().sample(random.Random(1))
        sub = Subspace(space, tuple((op,) for op, _ in arch),
                       tuple(space.factors if c is None else (c,) for _, c in arch))
    b = knobs.get("batch_size", batch)
    images = steps * batch
    epochs = -(-images // len(data.subsets["train"]))  # whole epochs of at most the training split each
    cfg = preset("supernet", "fashion-mnist", **{**knobs, "epochs": epochs, "limit": images // epochs, "batch_size": b,
                                                  "seed": seed, "workers": 0})
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        res = train_supernet("fashion-mnist", space, Path(tmp) / "supernet", cfg=cfg, data=data, subspace=sub)
        seconds = time.perf_counter() - t0
        net, _ = load_supernet(Path(tmp) / "supernet" / "checkpoint.pt")
    ev = Evaluator(net, data, calib_images=2000, val_images=5000)
    if one_path:
        acc = ev.accuracy(arch)
        quality = {"subnets": 1, "median": acc, "mean": acc, "min": acc, "max": acc, "all": [acc],
                   "largest": None, "smallest": None, "settings": ev.settings}
    else:
        quality = subnet_quality(ev, count=subnets)
    last = res["history"][-1]
    return {"recipe": recipe, "what": what, "config": cfg.to_dict(), "steps": res["steps"], "images": images,
            "train_seconds": seconds, "train_acc": last["train_acc"], "train_loss": last["loss"], **quality,
            "threads": torch.get_num_threads(), "time": time.time()}


def print_table(runs: list[dict]) -> None:
    """Runs grouped by recipe and steps: median of the random subnets per seed, largest and smallest paths."""
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault((r["recipe"], r["steps"]), []).append(r)
    print("| recipe | steps | random subnets, median top-1 per seed | mean | largest | smallest | train s |")
    print("|---|---|---|---|---|---|---|")
    for (recipe, steps), rs in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        rs = sorted(rs, key=lambda r: r["config"]["seed"])
        med = [100 * statistics.median(r["all"]) for r in rs]
        largest = " / ".join("-" if r["largest"] is None else f"{100 * r['largest']:.1f}" for r in rs)
        smallest = " / ".join("-" if r["smallest"] is None else f"{100 * r['smallest']:.1f}" for r in rs)
        seconds = statistics.mean(r["train_seconds"] for r in rs)
        print(f"| {recipe} | {steps} | {' / '.join(f'{m:.1f}%' for m in med)} | {statistics.mean(med):.1f}% | "
              f"{largest} | {smallest} | {seconds:.0f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", action="append", help="a recipe name (repeatable); default: shipped")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--subnets", type=int, default=20)
    ap.add_argument("--space", default="fmnist-A")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--table", action="store_true", help="print every recorded run as a markdown table and exit")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "supernet_recipes.json"))
    args = ap.parse_args()
    if args.list:
        for name, (what, overrides) in RECIPES.items():
            print(f"{name:20s} {what}  {overrides}")
        return
    out = Path(args.out)
    doc = json.loads(out.read_text()) if out.exists() else {"kind": "supernet-recipes", "runs": []}
    if args.table:
        print_table(doc["runs"])
        return
    data, space = load_data("fashion-mnist"), get_space(args.space)
    for recipe in args.recipe or ["shipped"]:
        if recipe not in RECIPES:
            sys.exit(f"unknown recipe {recipe!r}; --list shows them")
        r = run(recipe, args.steps, args.batch_size, args.seed, args.subnets, data, space)
        r["space"] = space.name
        doc["runs"].append(r)
        write_json(out, doc)
        ends = "" if r["largest"] is None else f", largest {100 * r['largest']:.1f}%, smallest {100 * r['smallest']:.1f}%"
        print(f"{recipe:20s} {r['steps']:5d} steps seed {args.seed}: random subnets median {100 * r['median']:.1f}% "
              f"(min {100 * r['min']:.1f}, max {100 * r['max']:.1f}){ends}, train acc {100 * r['train_acc']:.1f}%, "
              f"{r['train_seconds']:.0f} s", flush=True)
    print()
    print_table(doc["runs"])


if __name__ == "__main__":
    main()
