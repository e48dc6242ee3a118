"""Evaluator speed: evaluations per second against plain inference of the same subnets over the same images.

An evaluation is build_subnet + exact BN recalibration over the calibration images + top-1 over the validation
images. Plain inference is the same subnet's eval-mode forward over the same images, nothing else. The ratio
(plain time / evaluation time) says how close the evaluator runs to what the hardware allows (1.0 = no cost
beyond the forward passes). Both are timed alternately per arch, in one run.

    python bench/evaluator.py --supernet runs/bench-train-quality/supernet/checkpoint.pt
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import result_path  # noqa: E402

from hsconas_cli.data import load_data  # noqa: E402
from hsconas_cli.evaluate import Evaluator  # noqa: E402
from hsconas_cli.supernet import build_subnet  # noqa: E402
from hsconas_cli.checkpoint import load_supernet  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--supernet", default=str(ROOT / "runs" / "bench-train-quality" / "supernet" / "checkpoint.pt"))
    ap.add_argument("--archs", type=int, default=8)
    ap.add_argument("--calib-images", type=int, default=2000)
    ap.add_argument("--val-images", type=int, default=5000)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args()

    net, _ = load_supernet(args.supernet)
    ev = Evaluator(net, load_data("fashion-mnist"), calib_images=args.calib_images, val_images=args.val_images)
    images = [x for x, _ in ev.calib] + [x for x, _ in ev.val]
    rng = random.Random(0)
    archs = [net.space.full().sample(rng) for _ in range(args.archs)]
    ev.accuracy(net.space.full().sample(random.Random(99)))  # warm-up
    t_eval, t_plain, ratios = [], [], []
    for a in archs:
        t0 = time.perf_counter()
        ev.accuracy(a)
        te = time.perf_counter() - t0
        sub = build_subnet(net, a).eval().to(memory_format=torch.channels_last)
        t0 = time.perf_counter()
        with torch.inference_mode():
            for x in images:
                sub(x)
        tp = time.perf_counter() - t0
        t_eval.append(te)
        t_plain.append(tp)
        ratios.append(tp / te)
    n_img = sum(len(x) for x in images)
    res = {"archs": len(archs), "images_per_eval": n_img, "evals_per_s": len(archs) / sum(t_eval),
           "plain_inference_passes_per_s": len(archs) / sum(t_plain), "ratio_median": statistics.median(ratios),
           "eval_img_per_s": n_img * len(archs) / sum(t_eval), "threads": torch.get_num_threads()}
    print(f"{len(archs)} archs of {net.space.name}, {args.calib_images} calibration + {args.val_images} validation images each")
    print(f"  evaluator: {res['evals_per_s']:.3f} evaluations/s ({res['eval_img_per_s']:.0f} img/s)")
    print(f"  plain inference of the same subnets over the same images: {res['plain_inference_passes_per_s']:.3f} passes/s")
    print(f"  ratio plain / evaluation: median {res['ratio_median']:.3f} (1.0 = as fast as inference alone)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result_path(out, "evaluator").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
