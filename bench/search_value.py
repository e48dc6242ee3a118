"""Does the search pay? The searched winner against what a user gets without it, at the same latency (issue 23).

From a finished `hsconas run` folder (the demo's by default) takes:

* the searched winner, the network the run handed out;
* --random archs of the profile's whole (unshrunk) space whose predicted latency lies within +-3% of the winner's;
* two uniform-scaling baselines at T: ShuffleNetV2 (shuffle3 in every layer) and the winner's own ops, each at the
  one channel factor, the widest whose predicted latency fits T (the networks hsconas's own "what the search
  bought" scores, hsconas_cli/search_value.py).

Every network is fine-tuned from the run's supernet with the run's own fine-tune recipe (the demo's: 5 epochs of
the whole training split, lr 0.1, no warm-up), once per seed, and scored on the test set. Prints each network's
test top-1 per seed, the winner minus the random median and minus each uniform baseline, with a bootstrap 90%
interval over archs and seeds, and the regret: the best network of the whole fine-tuned pool minus the winner
(issue 35's target: at most 0.15 points).

Each fine-tune is kept in --work (one folder per arch, seed and budget) and reused, and an interrupted one resumes,
so the benchmark runs across sessions. It goes seed by seed: after the first seed every network has one figure.
About 10 minutes per fine-tune on a 2-core VM. --epochs/--limit give the short-budget check: a shorter budget may
stand in for the demo's only where it orders the winner and 2 random archs as the demo's budget does.

    python bench/search_value.py --run runs/demo
    python bench/search_value.py --run runs/demo --epochs 1 --limit 20000 --only winner,random-1,random-2
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import fine_tune_inherited, result_path  # noqa: E402
from hsconas_cli.data import load_data  # noqa: E402
from hsconas_cli.fileio import read_json, write_json  # noqa: E402
from hsconas_cli.profiles import load_profile  # noqa: E402
from hsconas_cli.search_value import one_factor, random_at_latency  # noqa: E402
from hsconas_cli.space import Arch, load_arch  # noqa: E402


def networks(run_dir: Path, n_random: int) -> tuple[dict, list[tuple[str, Arch]]]:
    """The run's facts (profile, supernet, T, fine-tune recipe) and the networks to compare, winner first."""
    run = read_json(run_dir / "run.json", "run record")
    st = {k: v.get("result", {}) for k, v in run["stages"].items()}
    if not all(st.get(k) for k in ("profile", "shrink", "search", "finetune")):
        sys.exit(f"{run_dir} has no finished fine-tune: run `hsconas run` (make demo) first")
    profile = load_profile(st["profile"]["path"])
    space, winner = load_arch(st["search"]["result"])
    target_ms = st["profile"]["target"]["target_ms"]
    rand = random_at_latency(profile, profile.predict(winner), n_random, random.Random(0))
    nets = [("winner", winner)] + [(f"random-{i + 1}", a) for i, a in enumerate(rand)]
    nets.append(("uniform-shufflenetv2", one_factor(profile, ["shuffle3"] * len(winner), target_ms)))
    nets.append(("uniform-winner-ops", one_factor(profile, [op for op, _ in winner], target_ms)))
    facts = {"profile": profile, "space": space, "target_ms": target_ms, "supernet": st["shrink"]["supernet"],
             "recipe": st["finetune"]["config"], "run_test_top1": st["finetune"]["test_top1"]}
    return facts, nets


def bootstrap_lead(win: list[float], others: list[list[float]], reps: int = 10_000, seed: int = 0) -> tuple[float, float, float]:
    """The winner's mean minus the median of the others' means, and its bootstrap 90% interval: archs resampled
    with replacement, and each network's seeds resampled within it."""
    rng = random.Random(seed)

    def mean_of(accs):
        return statistics.fmean(rng.choice(accs) for _ in accs)

    point = statistics.fmean(win) - statistics.median(statistics.fmean(a) for a in others)
    diffs = sorted(mean_of(win) - statistics.median(mean_of(rng.choice(others)) for _ in others) for _ in range(reps))
    return point, diffs[int(0.05 * reps)], diffs[int(0.95 * reps) - 1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default=str(ROOT / "runs" / "demo"), help="a finished hsconas run folder")
    ap.add_argument("--random", type=int, default=8, help="random archs within +-3%% of the winner's latency")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--epochs", type=int, help="fine-tune epochs (default: the run's recipe)")
    ap.add_argument("--limit", type=int, help="training images per epoch (default: the run's recipe)")
    ap.add_argument("--only", help="comma-separated network names (winner, random-N, uniform-...)")
    ap.add_argument("--work", default=str(ROOT / "runs" / "bench-search-value"))
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    ap.add_argument("--cached-only", action="store_true", help="report the fine-tunes that have finished; train none")
    args = ap.parse_args()

    facts, nets = networks(Path(args.run), args.random)
    if args.only:
        nets = [(n, a) for n, a in nets if n in args.only.split(",")]
    budget = {k: v for k, v in (("epochs", args.epochs), ("limit", args.limit)) if v is not None}
    seeds = [int(s) for s in args.seeds.split(",")]
    data = load_data("fashion-mnist")
    prof, win_ms = facts["profile"], facts["profile"].predict(nets[0][1])
    accs: dict[str, list[float]] = {n: [] for n, _ in nets}
    for seed in seeds:
        for name, arch in nets:
            if not args.cached_only:
                print(f"seed {seed}: fine-tuning {name} ({prof.predict(arch):.4f} ms predicted)", flush=True)
            res = fine_tune_inherited(facts["space"], arch, seed, facts["supernet"], {**facts["recipe"], **budget},
                                      Path(args.work), data, cached_only=args.cached_only)
            if res is not None:
                accs[name].append(res["test_top1"])
                print(f"  {name}, seed {seed}: test top-1 {100 * accs[name][-1]:.2f}%", flush=True)

    nets = [(n, a) for n, a in nets if accs[n]]
    accs = {n: v for n, v in accs.items() if v}
    rows = [{"name": n, "arch": a.to_list(), "predicted_ms": prof.predict(a), "test_top1": accs[n],
             "mean": statistics.fmean(accs[n])} for n, a in nets]
    print(f"\nT = {facts['target_ms']:.4f} ms, winner predicted {win_ms:.4f} ms; recipe {facts['recipe']} with {budget or 'no change'}; seeds {seeds}")
    print(f"  {'network':22s} {'pred ms':>8s} {'mean top-1':>11s}  per seed")
    for r in rows:
        print(f"  {r['name']:22s} {r['predicted_ms']:8.4f} {100 * r['mean']:10.2f}%  {' / '.join(f'{100 * a:.2f}' for a in r['test_top1'])}")
    summary = {}
    if "winner" in accs:
        rand = [accs[n] for n in accs if n.startswith("random")]
        groups = {"random median": rand} if len(rand) >= 2 else {}
        groups.update({n: [accs[n]] for n in accs if n.startswith("uniform")})
        for label, others in groups.items():
            point, lo, hi = bootstrap_lead(accs["winner"], others)
            summary[label] = {"lead": point, "interval_90": [lo, hi], "beats": lo > 0}
            print(f"  winner - {label}: {100 * point:+.2f} points, 90% interval [{100 * lo:+.2f}, {100 * hi:+.2f}]"
                  f"{' (beats it)' if lo > 0 else ' (not beyond the interval)'}")
        best = max(rows, key=lambda r: r["mean"])
        summary["regret"] = {"points": 100 * (best["mean"] - statistics.fmean(accs["winner"])), "best": best["name"]}
        print(f"  regret (the best of the fine-tuned pool minus the winner): {summary['regret']['points']:.2f} points "
              f"({best['name']}; target <= 0.15)")
    write_json(result_path(args.out, "search_value"), {
        "kind": "search-value", "run": str(args.run), "target_ms": facts["target_ms"], "winner_ms": win_ms,
        "recipe": facts["recipe"], "budget": budget, "seeds": seeds, "supernet": facts["supernet"],
        "run_test_top1": facts["run_test_top1"], "rows": rows, "summary": summary,
        "complete": all(len(r["test_top1"]) == len(seeds) for r in rows) and len(rows) == 3 + args.random})


if __name__ == "__main__":
    main()
