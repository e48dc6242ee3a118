"""The distributions behind the timing tests' bounds: each timing procedure of the tests (tests/timing_checks.py)
run many times on this machine, every repetition on a freshly calibrated tiny profile.

Per repetition: the tiny profile's calibration (its noise floor, and whether the machine was quiet through it);
the predictor test's median error and Spearman over its 8 networks, and each network's measured latency over a
plain median of runs; the drift check on a profile 5x (PLANTED) faster than the machine is now (its factor, shape and
outcome), on one whose archs alone are 5x faster (outcome), and on one as of now (drift, outcome); the torch
CPU backend's time of a large block over a small one (8,300 times the FLOPs). Run it alone: two heavy jobs at once distort every timing.
Each repetition is kept in --out as it finishes; a rerun resumes.

    python bench/timing_test_bounds.py --reps 30
    python bench/timing_test_bounds.py --reps 10 --out bench/results/timing_test_bounds-busy.json --busy 1
    python bench/timing_test_bounds.py --report
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import timing_checks as tc  # noqa: E402
from hsconas_cli.fileio import read_json, write_json  # noqa: E402

DEFAULT_OUT = ROOT / "bench" / "results" / "timing_test_bounds.json"


def torch_block_ratio() -> float:
    return tc.torch_block_ratio()[0]


def one_rep() -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        prof, watch = tc.calibrate_tiny(root / "profiles")
        pred = tc.measure_predictor(prof)
        uniform = tc.run_drift_check(prof, root / "profiles", faster=tc.PLANTED)
        changed = tc.run_drift_check(prof, root / "profiles", archs_faster=tc.PLANTED)
        holds = tc.run_drift_check(prof, root / "profiles")
    return {
        "calibration": {"noise_floor_pct": prof.validation["noise_floor_pct"], "other_cores": watch.cores,
                        "quiet": watch.quiet, "seconds": prof.doc["timing"]["calibration_seconds"]},
        "predictor": {k: pred[k] for k in ("median_error", "spearman", "predicted", "measured", "plain_medians", "statuses")},
        "uniform": uniform, "changed": changed, "holds": holds,
        "torch_block_ratio": torch_block_ratio(),
    }


def report(doc: dict) -> None:
    reps = doc["reps"]
    if not reps:
        print("no repetitions kept yet")
        return
    print(f"{len(reps)} repetitions ({doc.get('busy', 0)} busy processes beside them)")
    rows = {
        "tiny profile noise floor (%)": [r["calibration"]["noise_floor_pct"] for r in reps],
        "predictor median error": [r["predictor"]["median_error"] for r in reps],
        "predictor Spearman": [r["predictor"]["spearman"] for r in reps],
        "measured / plain median of runs": [m / p for r in reps for m, p in zip(r["predictor"]["measured"], r["predictor"]["plain_medians"])],
        "uniform drift: factor / planted": [r["uniform"]["factor"] / tc.PLANTED for r in reps],
        "uniform drift: |shape| (%)": [abs(r["uniform"]["shape_pct"]) for r in reps],
        "archs planted faster: shape (%)": [r["changed"]["shape_pct"] for r in reps],
        "archs planted faster: drift (%)": [r["changed"]["drift_pct"] for r in reps],
        "as of now: |drift| (%)": [abs(r["holds"]["drift_pct"]) for r in reps],
        "as of now: |shape| (%)": [abs(r["holds"]["shape_pct"]) for r in reps],
        "torch block ratio (8,300x FLOPs)": [r["torch_block_ratio"] for r in reps],
    }
    print("| quantity | n | mean | sd | min | max |")
    print("|---|---|---|---|---|---|")
    for name, xs in rows.items():
        s = tc.spread(xs)
        print(f"| {name} | {s['n']} | {s['mean']:.3f} | {s['sd']:.3f} | {s['min']:.3f} | {s['max']:.3f} |")
    for case, want in (("uniform", "uniform"), ("changed", "changed"), ("holds", "holds")):
        got = [r[case]["outcome"] for r in reps]
        print(f"{case}: {sum(g == want for g in got)}/{len(got)} {want}; others: "
              + ", ".join(sorted({g for g in got if g != want})) or "none")
    print("calibrations under load:", sum(not r["calibration"]["quiet"] for r in reps),
          "| predictor verdicts not quiet:", sum(s != "quiet" for r in reps for s in r["predictor"]["statuses"]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--busy", type=int, default=0, help="spinning processes kept running beside the measurements")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--report", action="store_true")
    args = ap.parse_args()
    doc = read_json(args.out, "timing bounds") if args.out.exists() else {"kind": "timing-test-bounds", "reps": []}
    if not args.report:
        doc["busy"] = args.busy
        spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy)]
        try:
            while len(doc["reps"]) < args.reps:
                t0 = time.perf_counter()
                doc["reps"].append(one_rep())
                write_json(args.out, doc)
                r = doc["reps"][-1]
                print(f"[{len(doc['reps'])}/{args.reps}] floor {r['calibration']['noise_floor_pct']:.1f}% "
                      f"predictor {r['predictor']['median_error']:.3f}/{r['predictor']['spearman']:.2f} "
                      f"uniform {r['uniform']['outcome']} x{r['uniform']['factor']:.3f} "
                      f"changed {r['changed']['outcome']} holds {r['holds']['outcome']} {r['holds']['drift_pct']:+.1f}% "
                      f"({time.perf_counter() - t0:.0f} s)", flush=True)
        finally:
            for p in spinners:
                p.kill()
    report(doc)


if __name__ == "__main__":
    main()
