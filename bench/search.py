"""Search benchmark (issue 6): landing on T, and the EA against baselines at the same evaluation budget.

For each target T (percentiles of the space's random archs on the device, so the figures carry to any
machine): the EA with the default objective; the EA with the paper's symmetric objective (one beta on both
sides of T); the EA with a small reward below T (beta below -0.02, hsconas's first default); random search with as many evaluations as the EA made; and uniform channel scaling of a fixed
arch (the EA winner's ops, one factor c for every layer: the paper's Fig. 4 top). Prints F, ACC and LAT of
each, and for the default EA winner its latency measured on this machine against T.

    python bench/search.py --supernet runs/bench-train-quality/supernet/checkpoint.pt --targets @0.12,25%,50%,75%,@0.55
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import result_path  # noqa: E402

from hsconas_cli.meter import measure_arch  # noqa: E402
from hsconas_cli.data import load_data  # noqa: E402
from hsconas_cli.evaluate import Evaluator, supernet_tag  # noqa: E402
from hsconas_cli.objective import Objective, resolve_target  # noqa: E402
from hsconas_cli.profiles import find_profile  # noqa: E402
from hsconas_cli.search import SearchConfig, search  # noqa: E402
from hsconas_cli.space import Arch, arch_key, load_subspace  # noqa: E402
from hsconas_cli.checkpoint import load_supernet  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--supernet", default=str(ROOT / "runs" / "bench-train-quality" / "supernet" / "checkpoint.pt"))
    ap.add_argument("--space", help="a shrunk-space file to search in (default: the whole space)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--targets", default="@0.12,25%,50%,75%,@0.55",
                    help="ms, percentiles of random archs (25%%), or positions in the reachable range (@0.55)")
    ap.add_argument("--generations", type=int, default=20)
    ap.add_argument("--population", type=int, default=20)
    ap.add_argument("--parents", type=int, default=8)
    ap.add_argument("--paper-beta", type=float, default=-0.5, help="beta of the symmetric (paper's) objective")
    ap.add_argument("--small-below", type=float, default=-0.02, help="beta below T of the third EA run")
    ap.add_argument("--calib-images", type=int, default=500)
    ap.add_argument("--val-images", type=int, default=1000)
    ap.add_argument("--work", default=str(ROOT / "runs" / "bench-search"))
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args()

    data = load_data("fashion-mnist")
    net, _ = load_supernet(args.supernet)
    sub = load_subspace(args.space) if args.space else net.space.full()
    profile = find_profile(args.device, net.space)
    cfg = SearchConfig(generations=args.generations, population=args.population, parents=args.parents,
                       calib_images=args.calib_images, val_images=args.val_images)
    work = Path(args.work)
    ev = Evaluator(net, data, calib_images=args.calib_images, val_images=args.val_images,
                   cache_file=work / "evaluations.jsonl", tag=supernet_tag(args.supernet))
    rows = []
    for t in args.targets.split(","):
        if t.startswith("@"):  # a position in the reachable range, 0 = the fastest network, 1 = the slowest
            lo, hi = profile.reachable(sub)
            t = f"{lo + float(t[1:]) * (hi - lo):.4f}"
        target_ms, where = resolve_target(t, profile, sub)
        obj = Objective(target_ms)
        tag = t.replace("%", "pct")
        ea = search(args.supernet, data, profile, t, work / f"ea-{tag}", subspace=sub, cfg=cfg)
        paper = search(args.supernet, data, profile, t, work / f"paper-{tag}", subspace=sub, cfg=cfg,
                       beta=args.paper_beta, beta_below=args.paper_beta)
        small = search(args.supernet, data, profile, t, work / f"small-{tag}", subspace=sub, cfg=cfg,
                       beta_below=args.small_below)
        budget = ea["evaluated"]
        rng, seen, best = random.Random(1), set(), None
        while len(seen) < budget:  # random search, same number of distinct networks evaluated
            a = sub.sample(rng)
            k = json.dumps(arch_key(net.space, a))
            if k in seen:
                continue
            seen.add(k)
            acc, lat = ev.accuracy(a), profile.predict(a)
            if best is None or obj(acc, lat) > best[0]:
                best = (obj(acc, lat), acc, lat)
        winner = Arch.from_list(ea["arch"])
        uniform = None
        for c in net.space.factors:  # uniform channel scaling of the winner's ops
            a = Arch(tuple((op, None if op == "skip" else c) for op, _ in winner))
            if not sub.contains(a):
                continue
            acc, lat = ev.accuracy(a), profile.predict(a)
            if uniform is None or obj(acc, lat) > uniform[0]:
                uniform = (obj(acc, lat), acc, lat, c)
        measured = measure_arch(profile, winner, repeats=5)
        row = {
            "target": t, "T_ms": target_ms, "position": where["position"], "evaluations": budget,
            "ea": {"F": ea["F"], "acc": ea["acc"], "lat_ms": ea["predicted_ms"], "pred_vs_T_pct": 100 * (ea["predicted_ms"] / target_ms - 1),
                   "measured_ms": measured["measured_ms"], "measured_vs_T_pct": 100 * (measured["measured_ms"] / target_ms - 1)},
            "ea_paper_beta": {"F_own": paper["F"], "F": obj(paper["acc"], paper["predicted_ms"]), "acc": paper["acc"],
                              "lat_ms": paper["predicted_ms"], "pred_vs_T_pct": 100 * (paper["predicted_ms"] / target_ms - 1)},
            "ea_small_below": {"F_own": small["F"], "F": obj(small["acc"], small["predicted_ms"]), "acc": small["acc"],
                               "lat_ms": small["predicted_ms"], "pred_vs_T_pct": 100 * (small["predicted_ms"] / target_ms - 1)},
            "random": {"F": best[0], "acc": best[1], "lat_ms": best[2]},
            "uniform_scaling": None if uniform is None else {"F": uniform[0], "acc": uniform[1], "lat_ms": uniform[2], "c": uniform[3]},
        }
        rows.append(row)
        print(f"\nT = {t} = {target_ms:.4f} ms ({100 * where['position']:.0f}% of the reachable range), {budget} evaluations each")
        print(f"  {'method':26s} {'F':>8s} {'ACC %':>7s} {'LAT ms':>8s} {'vs T':>7s}")
        for name, r in (("EA (default F)", row["ea"]), ("EA (paper's symmetric F)", row["ea_paper_beta"]),
                        (f"EA (beta below {args.small_below:+g})", row["ea_small_below"]),
                        ("random search", row["random"]), ("uniform scaling of winner", row["uniform_scaling"])):
            if r:
                print(f"  {name:26s} {r['F']:8.4f} {100 * r['acc']:7.2f} {r['lat_ms']:8.4f} {100 * (r['lat_ms'] / target_ms - 1):+6.1f}%")
        print(f"  EA winner measured here: {measured['measured_ms']:.4f} ms ({row['ea']['measured_vs_T_pct']:+.1f}% vs T)")
    print("\ntargets: predicted within 3% of T, measured within 5% of T, EA's F >= random search's")
    for r in rows:
        p, m = r["ea"]["pred_vs_T_pct"], r["ea"]["measured_vs_T_pct"]
        print(f"  T = {r['target']:>4s}: predicted {p:+5.1f}% {'ok' if abs(p) <= 3 else 'MISSED'}, measured {m:+5.1f}% "
              f"{'ok' if abs(m) <= 5 else 'MISSED'}, F {r['ea']['F']:.4f} vs {r['random']['F']:.4f} "
              f"{'ok' if r['ea']['F'] >= r['random']['F'] else 'MISSED'}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result_path(out, f"search-{net.space.name}").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
