"""Training quality on Fashion-MNIST (issue 4's figures).

1. Trains the supernet at the demo's budget (or takes --supernet CHECKPOINT), then scores K random subnets with
   inherited weights after exact BN recalibration (2,000 calibration images, the 5,000 validation images):
   median, mean, min and max top-1.
2. Retrains one HSCoNet from scratch for at most 15 epochs (the retrain preset) and reports its top-1 on the
   Fashion-MNIST test set (target >= 92%).

    python bench/train_quality.py                              # both parts
    python bench/train_quality.py --skip-retrain --subnets 20
    python bench/train_quality.py --skip-supernet --arch runs/demo/search/result.json
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

from hsconas_cli.data import load_data  # noqa: E402
from hsconas_cli.evaluate import recalibrate_bn, top1  # noqa: E402
from hsconas_cli.fileio import write_json  # noqa: E402
from hsconas_cli.space import get_space, load_arch  # noqa: E402
from hsconas_cli.supernet import build_subnet  # noqa: E402
from hsconas_cli.train import preset, retrain, train_supernet  # noqa: E402
from hsconas_cli.checkpoint import load_supernet  # noqa: E402

DEMO_SUPERNET = dict(epochs=2)  # the demo's budget: two epochs of the training split, about 5 minutes on 2 CPU cores


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--space", default="fmnist-A")
    ap.add_argument("--supernet", help="an existing supernet checkpoint (skips training it)")
    ap.add_argument("--subnets", type=int, default=20)
    ap.add_argument("--arch", help="arch to retrain (default: sampled with seed 0)")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--weight-decay", type=float, help="retraining weight decay (default: the preset's)")
    ap.add_argument("--skip-supernet", action="store_true")
    ap.add_argument("--skip-retrain", action="store_true")
    ap.add_argument("--work", default=str(ROOT / "runs" / "bench-train-quality"))
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args()

    space = get_space(args.space)
    data = load_data("fashion-mnist")
    work = Path(args.work)
    out = Path(args.out)
    out_file = out / f"train_quality-{space.name}.json"
    res: dict = json.loads(out_file.read_text()) if out_file.exists() else {}  # a partial run keeps the other figures
    res.update(space=space.name, threads=torch.get_num_threads())

    if not args.skip_supernet:
        ckpt = Path(args.supernet) if args.supernet else work / "supernet" / "checkpoint.pt"
        if not ckpt.exists():
            cfg = preset("supernet", "fashion-mnist", **DEMO_SUPERNET)
            t0 = time.perf_counter()
            train_supernet("fashion-mnist", space, ckpt.parent, cfg=cfg, data=data)
            res["supernet_train_seconds"] = time.perf_counter() - t0
            res["supernet_budget"] = DEMO_SUPERNET
        net, _ = load_supernet(ckpt)
        calib = list(data.loader("calib", 500))
        val = list(data.loader("val", 500))
        rng = random.Random(1)
        accs = []
        for _ in range(args.subnets):
            sub = build_subnet(net, space.full().sample(rng))
            recalibrate_bn(sub, calib)
            accs.append(top1(sub, val))
        res["subnets"] = {"count": len(accs), "median": statistics.median(accs), "mean": statistics.mean(accs),
                          "min": min(accs), "max": max(accs), "all": accs}
        print(flush=True); print(f"random subnets ({len(accs)}) of the supernet {ckpt}: top-1 median {100 * statistics.median(accs):.2f}%, "
              f"mean {100 * statistics.mean(accs):.2f}%, min {100 * min(accs):.2f}%, max {100 * max(accs):.2f}% "
              "(validation split, after BN recalibration)")

    if not args.skip_retrain:
        if args.arch:
            _, arch = load_arch(args.arch, space)
        else:
            arch = space.full().sample(random.Random(0))
        cfg = preset("retrain", "fashion-mnist", epochs=args.epochs, weight_decay=args.weight_decay)
        out = work / f"retrain-{int(time.time())}"
        t0 = time.perf_counter()
        r = retrain("fashion-mnist", space, arch, out, cfg=cfg, data=data)
        res["retrain"] = {"epochs": cfg.epochs, "test_top1": r["test_top1"], "val_top1": r["val_top1"],
                          "seconds": time.perf_counter() - t0, "arch": arch.to_list(), "config": cfg.to_dict()}
        res.setdefault("retrain_runs", []).append(res["retrain"])
        print(f"HSCoNet retrained from scratch for {cfg.epochs} epochs: test top-1 {100 * r['test_top1']:.2f}% "
              f"(target >= 92%), validation {100 * r['val_top1']:.2f}%, {res['retrain']['seconds'] / 60:.1f} min")

    out.mkdir(parents=True, exist_ok=True)
    write_json(out_file, res)


if __name__ == "__main__":
    main()
