"""How many samples per op does shrinking need to decide anything (issue 23)?

Scores the ops of each of stage 1's layers (20..17, each in the whole space, none fixed before it) the way
`hsconas shrink` does: Q = mean F over N archs, the same N archs for every op of a layer (common random numbers),
with the evaluator settings of a run's preset. Then, for N = 4, 8, 16, ... up to --samples (the first N of the
same draws), prints each layer's best and second op, the margin between their Q, two standard errors of their
paired difference, and whether the layer would be decided; and the N each layer needs, (2 sd / margin)^2.

    python bench/shrink_samples.py --run runs/demo --samples 32
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import result_path  # noqa: E402
from hsconas_cli.data import load_data  # noqa: E402
from hsconas_cli.evaluate import Evaluator  # noqa: E402
from hsconas_cli.fileio import read_json, write_json  # noqa: E402
from hsconas_cli.objective import Objective  # noqa: E402
from hsconas_cli.profiles import load_profile  # noqa: E402
from hsconas_cli.shrink import arch_with, decide, layer_samples, stages_for  # noqa: E402
from hsconas_cli.checkpoint import load_supernet  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default=str(ROOT / "runs" / "demo"), help="a run folder whose supernet and profile are used")
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--compare", type=int, default=20, help="random archs scored before and after the shrink's fine-tunings")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args()

    run = read_json(Path(args.run) / "run.json", "run record")
    st = {k: v.get("result", {}) for k, v in run["stages"].items()}
    budgets = run["settings"]["budgets"]
    profile = load_profile(st["profile"]["path"])
    net, _ = load_supernet(st["supernet"]["checkpoint"])
    obj = Objective.with_options(st["profile"]["target"]["target_ms"])
    data = load_data("fashion-mnist")
    ev = Evaluator(net, data, calib_images=budgets["eval_calib_images"], val_images=budgets["eval_val_images"])
    full = net.space.full()
    layers = {}
    for layer in stages_for(net.space.num_layers)[0]:
        samples = layer_samples(full, layer, args.samples, random.Random(args.seed * 1_000_003 + layer * 101))
        fs = {op: [obj(ev.accuracy(arch_with(a, layer, op, c)), profile.predict(arch_with(a, layer, op, c))) for a, c in samples]
              for op in full.ops[layer]}
        layers[str(layer + 1)] = fs
        print(f"layer {layer + 1} scored ({ev.evaluated} evaluations so far)", flush=True)

    rows = []
    n = 4
    while n <= args.samples:
        for name, fs in layers.items():
            scores = {op: {"Q": statistics.fmean(v[:n]), "fs": v[:n]} for op, v in fs.items()}
            d = decide(scores)
            rows.append({"layer": name, "n": n, **d})
        n *= 2
    print(f"\n{'layer':>5s} {'N':>4s} {'best':>9s} {'second':>9s} {'margin':>8s} {'2 SE':>8s} decided  N needed")
    for r in rows:
        sd = r["se"] * math.sqrt(r["n"])
        need = math.ceil((2 * sd / r["margin"]) ** 2) if r["margin"] > 0 else float("inf")
        r["n_needed"] = need
        print(f"{r['layer']:>5s} {r['n']:4d} {r['best']:>9s} {r['second']:>9s} {r['margin']:8.4f} {2 * r['se']:8.4f} "
              f"{'yes' if r['decided'] else 'no':>7s}  {need}")
    # what the shrink stage did to the supernet where it fixed nothing: its two fine-tunings, on random archs
    if st["shrink"].get("skipped"):
        print(f"\n{args.run} did not shrink: no fine-tuned supernet to compare with")
        write_json(result_path(args.out, "shrink_samples"), {"kind": "shrink-samples-bench", "run": str(args.run),
                                                            "target_ms": obj.target_ms, "samples": args.samples,
                                                            "fs": layers, "rows": rows})
        return
    rng = random.Random(1)
    archs = [full.sample(rng) for _ in range(args.compare)]
    before = [ev.accuracy(a) for a in archs]
    ev_after = Evaluator(load_supernet(st["shrink"]["supernet"])[0], data, calib_images=budgets["eval_calib_images"],
                         val_images=budgets["eval_val_images"])
    after = [ev_after.accuracy(a) for a in archs]
    diffs = [b - a for a, b in zip(before, after)]
    se = statistics.stdev(diffs) / math.sqrt(len(diffs))
    print(f"\n{len(archs)} random archs of the whole space, inherited top-1: the supernet {100 * statistics.median(before):.2f}% "
          f"(median), after the shrink stage's fine-tunings {100 * statistics.median(after):.2f}%; mean paired difference "
          f"{100 * statistics.fmean(diffs):+.2f} +-{100 * se:.2f} points (1 SE)")
    write_json(result_path(args.out, "shrink_samples"), {"kind": "shrink-samples-bench", "run": str(args.run),
                                                        "target_ms": obj.target_ms, "samples": args.samples,
                                                        "fs": layers, "rows": rows,
                                                        "finetuned": {"archs": [a.to_list() for a in archs], "before": before,
                                                                      "after": after, "mean_diff": statistics.fmean(diffs), "se": se}})


if __name__ == "__main__":
    main()
