"""Latency predictor benchmark (paper Fig. 2 and Fig. 3).

Calibrates a device profile (or loads the newest one) and prints, on the held-out archs: calibration time,
noise floor, RMSE, MAPE and the share within 5% and 10% for the LUT + B predictor, and the same for a
FLOPs-only and a parameters-only linear predictor fitted on the same M archs used for B. Saves the
predicted-vs-measured scatter (Fig. 3) and FLOPs-vs-latency / params-vs-latency plots (Fig. 2) as PNG.

    python bench/predictor.py --device cpu --space fmnist-A            # load the newest profile
    python bench/predictor.py --device cpu --space imagenet-A --calibrate
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import result_path  # noqa: E402

from hsconas_cli.calibrate import calibrate  # noqa: E402
from hsconas_cli.devices import load_device  # noqa: E402
from hsconas_cli.profiles import find_profile, load_profile, validation_figures  # noqa: E402
from hsconas_cli.report import plot_predictor  # noqa: E402
from hsconas_cli.space import Arch, get_space  # noqa: E402
from hsconas_cli.supernet import arch_cost  # noqa: E402


def linear_fit(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    a, b = np.polyfit(x, y, 1)
    return float(a), float(b)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--space", default="fmnist-A")
    ap.add_argument("--calibrate", action="store_true", help="calibrate a new profile version first")
    ap.add_argument("--profile", help="a profile file to evaluate instead of the newest")
    ap.add_argument("--archs", type=int, default=100)
    ap.add_argument("--holdout", type=int, default=50)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args()

    space = get_space(args.space)
    if args.calibrate:
        t0 = time.perf_counter()
        last = [None]

        def show(phase, done, total):
            if phase != last[0]:
                print(f"  {time.perf_counter() - t0:6.1f} s  {phase} ({done}/{total})", flush=True)
                last[0] = phase

        path = calibrate(load_device(args.device), space, archs=args.archs, holdout=args.holdout, progress=show)
        prof = load_profile(path)
    elif args.profile:
        prof = load_profile(args.profile)
    else:
        prof = find_profile(args.device, space, check_mode=False)

    d = prof.doc
    bias_archs = [Arch.from_list(a) for a in d["bias"]["archs"]]
    held = [Arch.from_list(a) for a in d["validation"]["arch_list"]]
    y_fit = np.array(d["bias"]["measured_ms"])
    measured = np.array(d["validation"]["measured_ms"])
    again = np.array(d["validation"]["measured_again_ms"])
    costs_fit = [arch_cost(prof.space, a) for a in bias_archs]
    costs_held = [arch_cost(prof.space, a) for a in held]

    rows = {"LUT + B (HSCoNAS)": validation_figures(d["validation"]["predicted_ms"], measured, again)}
    for name, key in (("FLOPs-only linear", "flops"), ("params-only linear", "params")):
        a, b = linear_fit(np.array([c[key] for c in costs_fit], float), y_fit)
        pred = a * np.array([c[key] for c in costs_held], float) + b
        rows[name] = validation_figures(pred, measured, again)

    v = rows["LUT + B (HSCoNAS)"]
    print(f"\nprofile {prof.name} ({prof.path})")
    print(f"machine: {d['machine'].get('cpu')} x{d['machine'].get('cpu_count')}"
          + (f", GPU {d['machine']['gpu']}" if d["machine"].get("gpu") else "")
          + f"; backend {d['backend']['name']} {d['backend']['options']}; batch {d['device']['batch_size']}")
    print(f"calibration time: {d['timing']['calibration_seconds']:.0f} s ({d['timing']['measurements']} measurements, "
          f"{d['timing']['unsettled']} without a fast-state pair)")
    print(f"held-out archs: {v['archs']}, mean measured latency {v['mean_measured_ms']:.3f} ms; "
          f"noise floor {v['noise_floor_ms']:.4f} ms ({v['noise_floor_pct']:.1f}% RMS between two passes)")
    print(f"\n{'predictor':22s} {'RMSE ms':>9s} {'RMSE/floor':>10s} {'MAPE %':>7s} {'<=5% ':>6s} {'<=10%':>6s}")
    for name, r in rows.items():
        print(f"{name:22s} {r['rmse_ms']:9.4f} {r['rmse_over_floor']:10.2f} {r['mape_pct']:7.2f} "
              f"{r['within_5_pct']:5.0f}% {r['within_10_pct']:5.0f}%")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"predictor-{prof.device.name}-{prof.space.name}"
    result_path(out, stem).write_text(json.dumps({"profile": prof.name, "rows": rows,
                                                  "calibration_seconds": d["timing"]["calibration_seconds"]}, indent=1))
    plot_predictor(prof, out / stem)
    print(f"\nwrote {out / stem}.json, {stem}-fig3.png, {stem}-fig2.png")


if __name__ == "__main__":
    main()
