"""The distribution behind tests/test_ranking.py's bounds: the test's own run (tests/ranking_check.py) over many
seeds, for the shipped recipe and for hsconas 0.1's supernet, which the test must reject.

A seed changes the supernet's initialisation, the order of its training images and the paths it samples; seeds
stand in for what differs between machines (another CPU model computes other rounding, and from there another
training run). Each finished run is kept in --out and skipped when the script runs again, so an interrupted
benchmark resumes where it stopped.

    python bench/ranking_test_bounds.py --steps 200 --steps 400 --seeds 10
    python bench/ranking_test_bounds.py --report        # the table from what is kept, nothing trained

For every statistic of ``ranking_check.figures`` it prints, per recipe and budget, the mean, standard deviation,
minimum and maximum over the seeds, and the bound mean - 3 sd with where hsconas 0.1's runs fall against it.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import ranking_check  # noqa: E402
from hsconas_cli.data import load_data  # noqa: E402
from hsconas_cli.fileio import read_json, write_json  # noqa: E402

DEFAULT_OUT = ROOT / "bench" / "results" / "ranking_test_bounds.json"


def load(out: Path) -> dict:
    return read_json(out, "ranking test bounds") if out.exists() else {"kind": "ranking-test-bounds", "runs": []}


def run_all(out: Path, steps: list[int], seeds: int, recipes: list[str], calib: int, val: int) -> None:
    doc = load(out)
    done = {(r["recipe"], r["steps"], r["seed"], *_eval_of(r)) for r in doc["runs"]}
    data = load_data("fashion-mnist", download=False)
    todo = [(rec, st, s) for st in steps for rec in recipes for s in range(seeds) if (rec, st, s, calib, val) not in done]
    for i, (recipe, st, seed) in enumerate(todo):
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            accs = ranking_check.short_run(data, Path(tmp) / "supernet", seed=seed, steps=st, recipe=recipe,
                                           calib_images=calib, val_images=val)
        row = {"recipe": recipe, "steps": st, "seed": seed, "calib_images": calib, "val_images": val, "accs": accs,
               "figures": ranking_check.figures(accs), "seconds": round(time.perf_counter() - t0, 1),
               "threads": ranking_check.THREADS}
        doc["runs"].append(row)
        write_json(out, doc)
        f = row["figures"]
        print(f"[{i + 1}/{len(todo)}] {recipe} {st} steps seed {seed} ({calib}/{val} images): " +
              " ".join(f"{k} {v:.3f}" for k, v in f.items()) + f" ({row['seconds']:.0f} s)", flush=True)


def _eval_of(row: dict) -> tuple[int, int]:
    """The (BN-calibration, validation) images a run was scored on; runs kept before the sizes were recorded used
    the test's first sizes, 1,000 and 2,000."""
    return row.get("calib_images", 1000), row.get("val_images", 2000)


def report(out: Path) -> None:
    doc = load(out)
    groups: dict = {}
    for r in doc["runs"]:  # the statistics recomputed from the kept accuracies: a new one applies to every run
        r = {**r, "figures": {**ranking_check.figures(r["accs"]), "log_narrow_rung_gap": None}}
        gap = r["figures"]["narrow_rung_gap"]
        r["figures"]["log_narrow_rung_gap"] = math.log(gap) if gap > 0 else float("-inf")
        groups.setdefault((r["steps"], *_eval_of(r)), {}).setdefault(r["recipe"], []).append(r)
    for st in sorted(groups):
        print(f"\n{st[0]} steps, scored on {st[1]} calibration and {st[2]} validation images")
        print("| statistic | recipe | seeds | mean | sd | min | max | mean - 3 sd |")
        print("|---|---|---|---|---|---|---|---|")
        for stat in next(iter(groups[st].values()))[0]["figures"]:
            for recipe, rows in sorted(groups[st].items()):
                xs = [r["figures"][stat] for r in rows]
                if not all(math.isfinite(x) for x in xs):
                    print(f"| {stat} | {recipe} | {len(xs)} | (not finite: a gap of 0 or less) | | | | |")
                    continue
                sd = statistics.stdev(xs) if len(xs) > 1 else float("nan")
                mean = statistics.fmean(xs)
                print(f"| {stat} | {recipe} | {len(xs)} | {mean:.3f} | {sd:.3f} | {min(xs):.3f} | {max(xs):.3f} | "
                      f"{mean - 3 * sd:.3f} |")
        secs = [r["seconds"] for rows in groups[st].values() for r in rows]
        print(f"seconds per run: median {statistics.median(secs):.0f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, action="append", help="supernet training steps (repeatable)")
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--recipe", action="append", choices=list(ranking_check.RECIPES))
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--calib-images", type=int, default=ranking_check.CALIB_IMAGES, help="BN-calibration images per arch")
    ap.add_argument("--val-images", type=int, default=ranking_check.VAL_IMAGES, help="validation images per arch")
    ap.add_argument("--report", action="store_true", help="only print the table from the kept runs")
    args = ap.parse_args()
    if not args.report:
        run_all(args.out, args.steps or [ranking_check.STEPS], args.seeds, args.recipe or list(ranking_check.RECIPES),
                args.calib_images, args.val_images)
    report(args.out)


if __name__ == "__main__":
    main()
