"""Does the search pay? The searched winner against what a user would get without it, at the same latency.

From a finished `hsconas run` folder (the demo's by default) takes the winner of the search, --random archs of
the same (shrunk) space whose predicted latency lies within +-3% of the winner's, and two uniform-scaling
baselines (the paper's): ShuffleNetV2 (shuffle3 in every layer) and the winner's own ops, each with the one
channel factor c for all layers whose predicted latency is nearest the winner's. Trains every one from scratch
with the same short budget and the same seeds, and prints each one's test top-1 with the seed-to-seed spread
beside it. Standalone runs are kept in --work and reused (also by bench/ranking.py's budget).

    python bench/search_value.py --run runs/demo
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
from hsconas_cli.fileio import read_json, write_json  # noqa: E402
from hsconas_cli.profiles import load_profile  # noqa: E402
from hsconas_cli.space import Arch, arch_key, load_arch, load_subspace  # noqa: E402


def uniform(space, ops: list[str], profile, target_ms: float) -> tuple[Arch, float]:
    """``ops`` with one factor c in every layer, c chosen so the predicted latency is nearest ``target_ms``."""
    best = None
    for c in space.factors:
        a = Arch(tuple((op, None if op == "skip" else c) for op in ops))
        lat = profile.predict(a)
        if best is None or abs(lat - target_ms) < abs(best[1] - target_ms):
            best = (a, lat)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default=str(ROOT / "runs" / "demo"), help="a finished hsconas run folder")
    ap.add_argument("--random", type=int, default=8, help="random archs within +-3%% of the winner's latency")
    ap.add_argument("--band", type=float, default=0.03)
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--epochs", type=int, default=SHORT_BUDGET["epochs"])
    ap.add_argument("--limit", type=int, default=SHORT_BUDGET["limit"])
    ap.add_argument("--work", default=str(ROOT / "runs" / "bench-standalone"))
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "search_value.json"))
    args = ap.parse_args()

    run = read_json(Path(args.run) / "run.json", "run record")
    stages = {k: v.get("result", {}) for k, v in run["stages"].items()}
    if not all(stages.get(k) for k in ("profile", "shrink", "search")):
        sys.exit(f"{args.run} has no finished search: run `hsconas run` (make demo) first")
    profile = load_profile(stages["profile"]["path"])
    sub = load_subspace(stages["shrink"]["file"])
    space, winner = load_arch(stages["search"]["result"])
    target_ms = stages["profile"]["target"]["target_ms"]
    win_ms = profile.predict(winner)

    rng, picked, seen = random.Random(0), [], {arch_key(space, winner)}
    for _ in range(200_000):
        if len(picked) == args.random:
            break
        a = sub.sample(rng)
        k = arch_key(space, a)
        if k not in seen and abs(profile.predict(a) / win_ms - 1) <= args.band:
            seen.add(k)
            picked.append(a)
    candidates = [("searched winner", winner)]
    candidates += [(f"random {i + 1}", a) for i, a in enumerate(picked)]
    candidates.append(("uniform: ShuffleNetV2 (shuffle3)", uniform(space, ["shuffle3"] * len(space.layers), profile, win_ms)[0]))
    candidates.append(("uniform: the winner's ops", uniform(space, [op for op, _ in winner], profile, win_ms)[0]))

    data = load_data("fashion-mnist")
    seeds = [int(s) for s in args.seeds.split(",")]
    budget = {**SHORT_BUDGET, "epochs": args.epochs, "limit": args.limit}
    rows = []
    for name, arch in candidates:
        lat = profile.predict(arch)
        print(f"{name}: predicted {lat:.4f} ms ({100 * (lat / win_ms - 1):+.1f}% vs the winner)", flush=True)
        accs = [train_standalone(space, arch, s, Path(args.work), data, budget)["test_top1"] for s in seeds]
        rows.append({"name": name, "arch": arch.to_list(), "predicted_ms": lat, "test_top1": accs,
                     "mean": statistics.mean(accs), "seed_spread": max(accs) - min(accs)})

    win = rows[0]
    rand = [r for r in rows if r["name"].startswith("random")]
    uni = [r for r in rows if r["name"].startswith("uniform")]
    rand_median = statistics.median(r["mean"] for r in rand)
    spread = statistics.mean(r["seed_spread"] for r in rows)
    print(f"\nT = {target_ms:.4f} ms; winner predicted {win_ms:.4f} ms; budget {budget}, seeds {seeds}")
    print(f"  {'network':34s} {'pred ms':>8s} {'test top-1 (mean)':>18s} {'seeds':>16s} {'spread':>7s}")
    for r in rows:
        print(f"  {r['name']:34s} {r['predicted_ms']:8.4f} {100 * r['mean']:17.2f}% "
              f"{' / '.join(f'{100 * a:.2f}' for a in r['test_top1']):>16s} {100 * r['seed_spread']:6.2f}")
    print(f"\n  random archs at equal latency: median {100 * rand_median:.2f}% (min {100 * min(r['mean'] for r in rand):.2f}, "
          f"max {100 * max(r['mean'] for r in rand):.2f}); mean seed-to-seed spread {100 * spread:.2f} points")
    margin = win["mean"] - rand_median
    print(f"  winner - random median: {100 * margin:+.2f} points ({'beats' if margin > spread else 'does not beat'} "
          f"the seed-to-seed spread of {100 * spread:.2f})")
    for r in uni:
        print(f"  winner - {r['name']}: {100 * (win['mean'] - r['mean']):+.2f} points")
    write_json(result_path(args.out, "search_value"), {"kind": "search-value", "run": str(args.run), "target_ms": target_ms, "winner_ms": win_ms,
                                "budget": budget, "seeds": seeds, "rows": rows, "random_median": rand_median,
                                "mean_seed_spread": spread, "winner_minus_random_median": margin})


if __name__ == "__main__":
    main()
