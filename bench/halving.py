"""Does successive halving earn its minutes? (issue 35, item 3)

From a finished `hsconas run` folder (the demo's by default) takes the selection's --finalists most accurate
candidates that the closed loop did not find missing T, and for each seed:

* fine-tunes every finalist plainly from the supernet with the run's own fine-tune recipe (as bench/search_value.py
  does, sharing its cache), and scores it on the test set: the fine-tuned pool, and how the selection's own
  winner (finalist 1) stands in it;
* runs successive halving over the finalists (hsconas_cli/halving.py: short fine-tunes of --images images, the
  better half kept on the held-out split each round), then the survivor's full fine-tune from its last short one
  with the same recipe, and scores it on the test set.

Prints, per seed and on average: the selection winner's test top-1, the survivor's, the best finalist's (the
regret of each choice), and the minutes the rounds took. Every training is cached in --work and resumes.

    python bench/halving.py --run runs/demo
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import fine_tune_inherited, result_path  # noqa: E402
from hsconas_cli.data import load_data  # noqa: E402
from hsconas_cli.fileio import read_json, write_json  # noqa: E402
from hsconas_cli.halving import HalvingConfig, finalists, successive_halving  # noqa: E402
from hsconas_cli.space import Arch, load_arch  # noqa: E402


def survivor_fine_tune(space, survivor: dict, recipe: dict, seed: int, out: Path, data) -> float:
    """The survivor's full fine-tune, from its last short one, with the run's recipe; its test top-1 (cached)."""
    from hsconas_cli.train import TrainConfig, retrain

    if not (out / "result.json").exists():
        retrain("fashion-mnist", space, Arch.from_list(survivor["arch"]), out, cfg=TrainConfig(**{**recipe, "seed": seed}),
                inherit=survivor["checkpoint"], resume=(out / "checkpoint.pt").exists(), data=data)
    return read_json(out / "result.json", "fine-tune")["test_top1"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default=str(ROOT / "runs" / "demo"))
    ap.add_argument("--finalists", type=int, default=4)
    ap.add_argument("--images", type=int, default=HalvingConfig.images)
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--work", default=str(ROOT / "runs" / "bench-search-value"), help="plain fine-tunes (shared)")
    ap.add_argument("--halving-work", default=str(ROOT / "runs" / "bench-halving"))
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args()

    run = read_json(Path(args.run) / "run.json", "run record")
    st = {k: v.get("result", {}) for k, v in run["stages"].items()}
    search = read_json(st["search"]["result"], "search result")
    (space, _), data = load_arch(st["search"]["result"]), load_data("fashion-mnist")
    recipe, supernet = st["finetune"]["config"], st["shrink"]["supernet"]
    cands = finalists(search["selection"], search.get("closed_loop"), args.finalists, search["target"]["target_ms"])
    rows = []
    for seed in (int(s) for s in args.seeds.split(",")):
        plain = [fine_tune_inherited(space, Arch.from_list(c["arch"]), seed, supernet, recipe, Path(args.work), data)["test_top1"]
                 for c in cands]
        t0 = time.perf_counter()
        doc = successive_halving(space, cands, supernet, data, Path(args.halving_work) / f"seed{seed}",
                                 HalvingConfig(finalists=args.finalists, images=args.images, seed=seed))
        rounds_s = time.perf_counter() - t0
        surv = survivor_fine_tune(space, doc["survivor"], recipe, seed, Path(args.halving_work) / f"seed{seed}" / "full", data)
        rows.append({"seed": seed, "plain": plain, "survivor_index": doc["survivor"]["index"], "survivor": surv,
                     "selection_winner": plain[0], "best_plain": max(plain), "rounds_seconds": rounds_s, "halving": doc})
        print(f"seed {seed}: finalists fine-tuned plainly {' / '.join(f'{100 * a:.2f}' for a in plain)}; halving kept "
              f"finalist {doc['survivor']['index'] + 1}, fine-tuned from its rounds {100 * surv:.2f}% "
              f"(rounds {rounds_s:.0f} s, cached runs count 0)", flush=True)
    mean = lambda k: statistics.fmean(r[k] for r in rows)  # noqa: E731
    summary = {"selection_winner": mean("selection_winner"), "survivor": mean("survivor"), "best_plain": mean("best_plain"),
               "gain": mean("survivor") - mean("selection_winner"),
               "regret_selection": mean("best_plain") - mean("selection_winner"), "regret_halving": mean("best_plain") - mean("survivor")}
    print(f"\nmean over seeds: selection's winner {100 * summary['selection_winner']:.2f}%, halving's survivor "
          f"{100 * summary['survivor']:.2f}% (gain {100 * summary['gain']:+.2f} points), best finalist "
          f"{100 * summary['best_plain']:.2f}%")
    write_json(result_path(args.out, "halving"), {"kind": "halving", "run": args.run, "finalists": cands, "rows": rows,
                                                   "summary": summary})


if __name__ == "__main__":
    main()
