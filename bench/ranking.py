"""Ranking quality: does inherited accuracy order networks as training them does?

Takes --archs networks of fmnist-A spread over the latency range of the device profile (at evenly spaced
quantiles of 5,000 random archs' predicted latencies) and --band more inside +-10% of the 40th percentile, the
band a search at the demo's target faces. Trains each from scratch with one fixed short budget, twice (two
seeds), and scores each with weights inherited from every --supernet given (exact BN recalibration on 2,000
images, top-1 on the 5,000 validation images). Prints Kendall's tau:

* seed vs seed: the ceiling, how well one short training run ranks against another;
* inherited vs standalone (mean of the seeds): the figure; target >= 0.7 x the ceiling across the range;
* predicted latency and FLOPs vs standalone: what ranking by size alone gives, the baseline to beat;

across the range and inside the band. Standalone runs are kept in --work and reused, so an interrupted run
resumes and a second supernet costs only its evaluations.

It also scores a width ladder (one random choice of ops with the same channel factor c in every layer, for every
c of the space), the one ordering known without training: at equal ops a wider network is not worse. With
--test-reference it writes the spread archs and the ladder, with the first supernet's inherited accuracies,
for tests/test_ranking.py.

    python bench/ranking.py --supernet runs/bench-ranking/demo/checkpoint.pt --supernet runs/bench-ranking/e10/checkpoint.pt
    python bench/ranking.py --train-supernet demo    # trains the demo-budget supernet first (about 5 minutes)
    python bench/ranking.py --supernet runs/bench-ranking/demo/checkpoint.pt --epochs 3 --batch-size 64 --lr 0.05 \
        --band 0 --out bench/results/ranking-e3.json       # the 3-epoch standalone budget (75 minutes here)

At random archs' quantiles the spread archs are alike (0.65-1.17 ms of a reachable 0.21-2.57 ms), and even 3
epochs of standalone training barely tell them apart (seed-to-seed tau 0.28); ``--spread-over reachable`` picks
them over the whole reachable range instead (0.29-1.87 ms), the next run to make.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import SHORT_BUDGET, train_standalone, result_path  # noqa: E402
from hsconas_cli.data import load_data  # noqa: E402
from hsconas_cli.evaluate import Evaluator, kendall_tau  # noqa: E402
from hsconas_cli.fileio import write_json  # noqa: E402
from hsconas_cli.profiles import find_profile  # noqa: E402
from hsconas_cli.space import Arch, arch_key, get_space  # noqa: E402
from hsconas_cli.supernet import arch_cost  # noqa: E402
from hsconas_cli.train import preset, train_supernet  # noqa: E402
from hsconas_cli.checkpoint import load_supernet  # noqa: E402

SUPERNET_BUDGETS = {"demo": dict(epochs=2), "e10": dict(epochs=10)}  # demo: what `make demo` trains


def pick_archs(space, profile, n_spread: int, n_band: int, seed: int = 0) -> tuple[list[Arch], list[Arch], float]:
    """``n_spread`` archs at evenly spaced latency quantiles and ``n_band`` within +-10% of the 40th percentile."""
    rng = random.Random(seed)
    pool, seen = [], set()
    while len(pool) < 5000:
        a = space.full().sample(rng)
        k = arch_key(space, a)
        if k not in seen:
            seen.add(k)
            pool.append((profile.predict(a), a))
    pool.sort(key=lambda t: t[0])
    spread = [pool[int((i + 0.5) / n_spread * len(pool))][1] for i in range(n_spread)]
    t40 = pool[int(0.4 * len(pool))][0]
    chosen = {arch_key(space, a) for a in spread}
    band = [a for lat, a in pool if abs(lat / t40 - 1) <= 0.10 and arch_key(space, a) not in chosen]
    return spread, rng.sample(band, n_band), t40


def pick_archs_reachable(space, profile, n: int, seed: int = 0) -> list[Arch]:
    """``n`` archs at evenly spaced predicted latencies over the whole reachable range, from a pool sampled with a
    size knob s ~ U(0, 1) per arch (channel factors near s, skip more likely when s is small): uniform sampling
    covers only the middle of the range, where standalone training barely tells networks apart."""
    rng = random.Random(seed)
    pool = []
    for _ in range(20000):
        s = rng.random()
        genes = []
        for layer in space.layers:
            ops = [op for op in layer.ops if op != "skip"]
            if "skip" in layer.ops and rng.random() < 0.7 * (1 - s):
                genes.append(("skip", None))
                continue
            c = min(space.factors, key=lambda f: abs(f - (s + rng.gauss(0, 0.15))))
            genes.append((rng.choice(ops), c))
        a = Arch(tuple(genes))
        pool.append((profile.predict(a), a))
    lo, hi = min(p for p, _ in pool), max(p for p, _ in pool)
    picked = []
    for i in range(n):
        t = lo + (i + 0.5) / n * (hi - lo)
        picked.append(min(pool, key=lambda pa: abs(pa[0] - t))[1])
    return picked


def width_ladder(space, seed: int = 0) -> list[Arch]:
    """One random choice of ops (skip excluded) with one channel factor c in every layer, for each c of the space."""
    rng = random.Random(seed)
    ops = [rng.choice([op for op in layer.ops if op != "skip"]) for layer in space.layers]
    return [Arch(tuple((op, c) for op in ops)) for c in space.factors]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--supernet", action="append", default=[], help="a supernet checkpoint (repeatable)")
    ap.add_argument("--train-supernet", action="append", default=[], choices=list(SUPERNET_BUDGETS),
                    help="train a supernet with the shipped recipe at this budget first (kept in --work)")
    ap.add_argument("--space", default="fmnist-A")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--archs", type=int, default=16)
    ap.add_argument("--band", type=int, default=8)
    ap.add_argument("--spread-over", choices=["random", "reachable"], default="random",
                    help="spread archs at quantiles of random archs' latencies, or over the whole reachable range")
    ap.add_argument("--epochs", type=int, default=SHORT_BUDGET["epochs"], help="standalone budget: epochs of --limit images")
    ap.add_argument("--limit", type=int, default=SHORT_BUDGET["limit"])
    ap.add_argument("--batch-size", type=int, help="standalone batch (default: the retraining preset's)")
    ap.add_argument("--lr", type=float, help="standalone learning rate (default: the retraining preset's)")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--work", default=str(ROOT / "runs" / "bench-ranking"), help="supernets trained here")
    ap.add_argument("--standalone-work", default=str(ROOT / "runs" / "bench-standalone"), help="standalone runs, reused")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "ranking.json"))
    ap.add_argument("--test-reference", help="also write the spread archs' standalone figures here (for make test)")
    args = ap.parse_args()

    space, data = get_space(args.space), load_data("fashion-mnist")
    profile = find_profile(args.device, space)
    work = Path(args.work)
    supernets = list(args.supernet)
    for budget in args.train_supernet:
        ckpt = work / budget / "checkpoint.pt"
        cfg = preset("supernet", "fashion-mnist", workers=0, **SUPERNET_BUDGETS[budget])
        train_supernet("fashion-mnist", space, ckpt.parent, cfg=cfg, data=data, resume=ckpt.exists())
        supernets.append(str(ckpt))

    spread, band, t40 = pick_archs(space, profile, args.archs, args.band)
    if args.spread_over == "reachable":
        spread = pick_archs_reachable(space, profile, args.archs)
    seeds = [int(s) for s in args.seeds.split(",")]
    cfg_over = {**SHORT_BUDGET, "epochs": args.epochs, "limit": args.limit}
    cfg_over.update({k: v for k, v in (("batch_size", args.batch_size), ("lr", args.lr)) if v is not None})
    rows = []
    for group, archs in (("spread", spread), ("band", band)):
        for i, arch in enumerate(archs):
            lat = profile.predict(arch)
            print(f"[{group} {i + 1}/{len(archs)}] predicted {lat:.4f} ms", flush=True)
            runs = [train_standalone(space, arch, s, Path(args.standalone_work), data, cfg_over) for s in seeds]
            rows.append({"group": group, "arch": arch.to_list(), "predicted_ms": lat, "mflops": arch_cost(space, arch)["flops"] / 1e6,
                         "standalone": {str(s): r["test_top1"] for s, r in zip(seeds, runs)}, "inherited": {}})
    ladder = [{"group": "ladder", "arch": a.to_list(), "predicted_ms": profile.predict(a), "c": a.genes[0][1], "inherited": {}}
              for a in width_ladder(space)]
    for path in supernets:
        net, _ = load_supernet(path)
        ev = Evaluator(net, data, calib_images=2000, val_images=5000)
        for r in rows + ladder:
            r["inherited"][path] = ev.accuracy(Arch.from_list(r["arch"]))

    in_band = [r for r in rows if abs(r["predicted_ms"] / t40 - 1) <= 0.10]
    figures = {}
    for name, sel in (("across the range", [r for r in rows if r["group"] == "spread"]), ("in the band", in_band)):
        if len(sel) < 3:
            continue
        mean_sa = [statistics.mean(r["standalone"].values()) for r in sel]
        f = {"archs": len(sel),
             "seed_vs_seed": kendall_tau([r["standalone"][str(seeds[0])] for r in sel], [r["standalone"][str(seeds[1])] for r in sel]),
             "latency_vs_standalone": kendall_tau([r["predicted_ms"] for r in sel], mean_sa),
             "flops_vs_standalone": kendall_tau([r["mflops"] for r in sel], mean_sa),
             "seed_spread_pts": statistics.mean(abs(r["standalone"][str(seeds[0])] - r["standalone"][str(seeds[1])]) * 100 for r in sel),
             "standalone_range_pct": [100 * min(mean_sa), 100 * max(mean_sa)],
             "inherited": {p: {"tau": kendall_tau([r["inherited"][p] for r in sel], mean_sa),
                               "median_pct": 100 * statistics.median(r["inherited"][p] for r in sel)} for p in supernets}}
        figures[name] = f
        print(f"\n{name}: {len(sel)} archs, standalone test top-1 {f['standalone_range_pct'][0]:.2f}..{f['standalone_range_pct'][1]:.2f}% "
              f"(mean |seed0 - seed1| {f['seed_spread_pts']:.2f} points)")
        print(f"  Kendall tau, seed vs seed (the ceiling):     {f['seed_vs_seed']:+.3f}")
        print(f"  Kendall tau, predicted latency vs standalone: {f['latency_vs_standalone']:+.3f}")
        print(f"  Kendall tau, FLOPs vs standalone:             {f['flops_vs_standalone']:+.3f}")
        for p, v in f["inherited"].items():
            ratio = v["tau"] / f["seed_vs_seed"] if f["seed_vs_seed"] > 0 else float("nan")
            print(f"  Kendall tau, inherited vs standalone:         {v['tau']:+.3f} ({ratio:.2f} x the ceiling; "
                  f"median inherited {v['median_pct']:.1f}%) {p}")
    for p in supernets:
        f = {"tau_vs_c": kendall_tau([r["inherited"][p] for r in ladder], [r["c"] for r in ladder]),
             "inherited_pct": {str(r["c"]): 100 * r["inherited"][p] for r in ladder}}
        figures.setdefault("width ladder", {})[p] = f
        print(f"\nwidth ladder (same ops, c = {ladder[0]['c']}..{ladder[-1]['c']} in every layer), {p}:")
        print("  inherited top-1 " + ", ".join(f"c {c}: {v:.1f}%" for c, v in f["inherited_pct"].items()))
        print(f"  Kendall tau, inherited vs c: {f['tau_vs_c']:+.3f}")
    if args.test_reference and supernets:  # what tests/test_ranking.py ranks a short supernet against
        ref = supernets[0]
        write_json(Path(args.test_reference), {
            "kind": "ranking-reference", "space": space.name, "standalone_budget": cfg_over, "seeds": seeds,
            "reference_supernet": ref, "reference_supernet_budget": args.train_supernet[0] if args.train_supernet else None,
            "made_by": "python bench/ranking.py --supernet runs/bench-ranking/demo/checkpoint.pt "
                       "--test-reference tests/data/ranking_reference.json",
            "archs": [{"group": r["group"], "arch": r["arch"], "predicted_ms": r["predicted_ms"],
                       "standalone": r.get("standalone"), "inherited": r["inherited"][ref]}
                      for r in rows + ladder if r["group"] in ("spread", "ladder")]})
    write_json(result_path(args.out, "ranking"), {"kind": "ranking", "space": space.name, "profile": profile.name, "t40_ms": t40,
                                "standalone_budget": cfg_over, "seeds": seeds, "figures": figures,
                                "archs": rows + ladder})


if __name__ == "__main__":
    main()
