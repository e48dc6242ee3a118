"""Does a supernet rank archs of equal latency as training them does? The yardstick of issue 35, item 4.

Draws --archs random archs of fmnist-A whose predicted latency lies within +-10% of T (--target, the demo's 40th
percentile by default, on the shipped `cpu` profile), and trains each from scratch for --epochs epochs of the whole
training split, with each of --seeds (the retraining preset otherwise). The standalone runs are kept in
--standalone-work under the arch, budget and seed, so every supernet recipe is scored against the same networks
and an interrupted run resumes where it stopped (`--phase standalone` trains only).

For each --supernet given, the archs' inherited accuracy on the held-out selection split (10,000 images the screen
and BN recalibration never see; exact BN recalibration on 2,000 calibration images) is set against the standalone
test top-1 (mean of the seeds): Spearman and Kendall correlation, beside the seed-to-seed ceiling (one seed's
standalone accuracies against the other's). --finetuned DIR adds, where given, the archs' accuracies after the
product's own fine-tune (as bench/search_value.py caches them).

    python bench/ranking_band.py --phase standalone                     # about 95 min on 2 cores
    python bench/ranking_band.py --supernet runs/demo/supernet/checkpoint.pt --supernet OTHER.pt
    python bench/ranking_band.py --recipe today --recipe sandwich --recipe sandwich-kd --recipe band --recipe longer
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import result_path, train_standalone  # noqa: E402
from hsconas_cli.data import load_data  # noqa: E402
from hsconas_cli.fileio import write_json  # noqa: E402
from hsconas_cli.evaluate import kendall_tau as kendall  # noqa: E402
from hsconas_cli.objective import resolve_target  # noqa: E402
from hsconas_cli.profiles import find_profile, spearman  # noqa: E402
from hsconas_cli.space import Arch, arch_key, get_space  # noqa: E402

BAND = 0.10
# Supernet recipes scored against the same standalone networks (issue 35, item 4), each the demo's supernet preset
# (2 epochs of batch 64, lr 0.05, skip ramped in over the first half) with these changes, at about the demo's wall
# time: the sandwich rule trains 4 paths a step, each on the whole batch, so it sees a quarter of the images per
# epoch; "longer" doubles the demo's time, to show what more minutes would buy.
RECIPES = {
    "today": ("the demo's recipe: one random path per step", {}),
    "sandwich": ("largest + smallest + 2 random paths per step, each on the whole batch", {"sandwich": 2, "limit": 10_750}),
    "sandwich-kd": ("the sandwich rule with in-place distillation from the largest path",
                    {"sandwich": 2, "distill": True, "limit": 10_750}),
    "band": ("one random path per step, drawn inside the 25th-55th percentile of random archs' FLOPs (T sits at the "
             "40th percentile of their latency)", {"path_band": (25.0, 55.0)}),
    "longer": ("the demo's recipe for 4 epochs (twice its time)", {"epochs": 4}),
}


def train_recipe(name: str, work: Path, data) -> tuple[str, float]:
    """The supernet of recipe ``name`` (trained once into ``work/name``, resumed where cut short) and its seconds."""
    from hsconas_cli.checkpoint import load_checkpoint
    from hsconas_cli.train import preset, train_supernet

    out = work / name
    ckpt = out / "checkpoint.pt"
    cfg = preset("supernet", "fashion-mnist", workers=0, epochs=2, **RECIPES[name][1])
    done = ckpt.exists() and load_checkpoint(ckpt)["state"]["epoch"] >= cfg.epochs
    if not done:
        print(f"training the {name} supernet: {RECIPES[name][0]}", flush=True)
        train_supernet("fashion-mnist", get_space("fmnist-A"), out, cfg=cfg, data=data, resume=ckpt.exists())
    history = load_checkpoint(ckpt)["state"]["history"]
    return str(ckpt), sum(h["seconds"] for h in history)


def band_archs(space, profile, target_ms: float, n: int, seed: int = 0) -> list[Arch]:
    """``n`` distinct uniformly drawn archs whose predicted latency is within BAND of ``target_ms``."""
    rng, found, seen = random.Random(seed), [], set()
    while len(found) < n:
        a = space.full().sample(rng)
        k = str(arch_key(space, a))
        if k not in seen and abs(profile.predict(a) / target_ms - 1) <= BAND:
            seen.add(k)
            found.append(a)
    return found


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--phase", choices=["standalone", "all"], default="all")
    ap.add_argument("--supernet", action="append", default=[], help="a supernet checkpoint to score (repeatable)")
    ap.add_argument("--recipe", action="append", default=[], choices=list(RECIPES),
                    help="train this recipe's supernet (kept in --recipe-work) and score it (repeatable)")
    ap.add_argument("--recipe-work", default=str(ROOT / "runs" / "bench-recipes"))
    ap.add_argument("--target", default="40%")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--archs", type=int, default=12)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--standalone-work", default=str(ROOT / "runs" / "bench-standalone-band"))
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args()

    space, data = get_space("fmnist-A"), load_data("fashion-mnist")
    profile = find_profile(args.device, space)
    target_ms, _ = resolve_target(args.target, profile)
    archs = band_archs(space, profile, target_ms, args.archs)
    seeds = [int(s) for s in args.seeds.split(",")]
    budget = {"epochs": args.epochs}
    print(f"{len(archs)} archs within +-{100 * BAND:.0f}% of T = {target_ms:.4f} ms ({args.target} on {profile.name}); "
          f"standalone {args.epochs} epochs of {data.split['sizes']['train']} images, seeds {seeds}", flush=True)
    rows = []
    for i, arch in enumerate(archs):
        print(f"[{i + 1}/{len(archs)}] predicted {profile.predict(arch):.4f} ms", flush=True)
        runs = [train_standalone(space, arch, s, Path(args.standalone_work), data, budget) for s in seeds]
        rows.append({"arch": arch.to_list(), "predicted_ms": profile.predict(arch),
                     "standalone": {str(s): r["test_top1"] for s, r in zip(seeds, runs)}, "inherited": {}})
    if args.phase == "standalone":
        return
    seconds = {}
    for name in args.recipe:
        path, seconds[path] = train_recipe(name, Path(args.recipe_work), data)
        args.supernet.append(path)
    from hsconas_cli.checkpoint import load_supernet
    from hsconas_cli.evaluate import Evaluator

    for path in args.supernet:
        ev = Evaluator(load_supernet(path)[0], data, calib_images=2000, val_images=data.split["sizes"]["select"], subset="select")
        for r in rows:
            r["inherited"][path] = ev.accuracy(Arch.from_list(r["arch"]))
    mean_sa = [statistics.mean(r["standalone"].values()) for r in rows]
    s0, s1 = ([r["standalone"][str(s)] for r in rows] for s in seeds[:2])
    figures = {"archs": len(rows), "target_ms": target_ms, "profile": profile.name, "budget": budget,
               "ceiling": {"spearman": spearman(s0, s1), "kendall": kendall(s0, s1)},
               "seed_sd_pts": statistics.mean(abs(a - b) for a, b in zip(s0, s1)) * 100 / 2 ** 0.5,
               "standalone_range_pct": [100 * min(mean_sa), 100 * max(mean_sa)], "supernets": {}}
    print(f"standalone test top-1 {figures['standalone_range_pct'][0]:.2f}..{figures['standalone_range_pct'][1]:.2f}%; "
          f"ceiling (seed vs seed): Spearman {figures['ceiling']['spearman']:+.3f}, Kendall {figures['ceiling']['kendall']:+.3f}")
    for path in args.supernet:
        inh = [r["inherited"][path] for r in rows]
        f = {"spearman": spearman(inh, mean_sa), "kendall": kendall(inh, mean_sa), "median_inherited_pct": 100 * statistics.median(inh),
             "train_seconds": seconds.get(path)}
        figures["supernets"][path] = f
        print(f"  {path}: Spearman {f['spearman']:+.3f}, Kendall {f['kendall']:+.3f} (median inherited {f['median_inherited_pct']:.1f}%)")
    out = result_path(args.out, "ranking-band")
    write_json(out, {"kind": "ranking-band", "figures": figures, "rows": rows})
    print(f"raw: {out}")


if __name__ == "__main__":
    main()
