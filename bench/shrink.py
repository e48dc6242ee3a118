"""Shrinking benchmark (issue 5): Q per op per layer, and the accuracy of the subspace's archs with and
without shrinking (the paper's Fig. 6 left, at three points: the base supernet, after stage 1, after stage 2).

"With shrinking" is ``hsconas shrink`` (fix layers, fine-tune within the shrunk space, twice). "Without" fine-
tunes the same base supernet in the whole space with the same epochs and learning rates. Both are scored on
the same K archs sampled from the final shrunk space, and on K archs sampled from the whole space.

    python bench/shrink.py --supernet runs/bench-train-quality/supernet/checkpoint.pt --latency 50%
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import result_path  # noqa: E402

from hsconas_cli.data import load_data  # noqa: E402
from hsconas_cli.evaluate import Evaluator  # noqa: E402
from hsconas_cli.profiles import find_profile  # noqa: E402
from hsconas_cli.report import plot_q_scores  # noqa: E402
from hsconas_cli.shrink import ShrinkConfig, shrink  # noqa: E402
from hsconas_cli.space import Subspace  # noqa: E402
from hsconas_cli.train import FINETUNE_LRS, preset, train_supernet  # noqa: E402
from hsconas_cli.checkpoint import load_supernet  # noqa: E402


def mean_acc(ckpt, data, archs, calib, val) -> float:
    net, _ = load_supernet(ckpt)
    ev = Evaluator(net, data, calib_images=calib, val_images=val)
    return statistics.fmean(ev.accuracy(a) for a in archs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--supernet", default=str(ROOT / "runs" / "bench-train-quality" / "supernet" / "checkpoint.pt"))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--latency", default="50%")
    ap.add_argument("--samples", type=int, default=8, help="N archs per subspace (paper: 100)")
    ap.add_argument("--finetune-epochs", type=int, default=1)
    ap.add_argument("--finetune-limit", type=int, default=20000)
    ap.add_argument("--archs", type=int, default=12, help="K archs scored at each point")
    ap.add_argument("--calib-images", type=int, default=500)
    ap.add_argument("--val-images", type=int, default=1000)
    ap.add_argument("--work", default=str(ROOT / "runs" / "bench-shrink"))
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args()

    data = load_data("fashion-mnist")
    base, _ = load_supernet(args.supernet)
    space = base.space
    profile = find_profile(args.device, space)
    work = Path(args.work)
    cfg = ShrinkConfig(samples=args.samples, finetune_epochs=args.finetune_epochs, finetune_limit=args.finetune_limit,
                       calib_images=args.calib_images, val_images=args.val_images)
    doc = shrink(args.supernet, data, profile, args.latency, work / "shrink", cfg=cfg)
    final = Subspace.from_dict(doc["subspace"])
    # without shrinking: the same fine-tuning in the whole space
    naive, current = [], args.supernet
    for k, lr in enumerate(FINETUNE_LRS[: len(doc["stages"])]):
        out = work / f"naive-stage{k + 1}"
        tcfg = preset("supernet", "fashion-mnist", epochs=args.finetune_epochs, lr=lr, limit=args.finetune_limit, seed=k + 1)
        train_supernet("fashion-mnist", space, out, cfg=tcfg, init=current, resume=(out / "checkpoint.pt").exists(), data=data)
        current = str(out / "checkpoint.pt")
        naive.append(current)
    shrunk = [st["supernet"] for st in doc["stages"]]
    rng = random.Random(7)
    in_shrunk = [final.sample(rng) for _ in range(args.archs)]
    in_full = [space.full().sample(rng) for _ in range(args.archs)]
    points = []
    for label, ckpts in (("with shrinking", [args.supernet, *shrunk]), ("without shrinking", [args.supernet, *naive])):
        for i, ck in enumerate(ckpts):
            points.append({"run": label, "point": i, "supernet": ck,
                           "acc_shrunk_archs": mean_acc(ck, data, in_shrunk, args.calib_images, args.val_images),
                           "acc_full_archs": mean_acc(ck, data, in_full, args.calib_images, args.val_images)})
    print(f"\nshrinking {space.name} towards {profile.name}, T = {doc['target']['target_ms']:.4f} ms, N = {args.samples}")
    for st in doc["stages"]:
        for layer, scores in st["scores"].items():
            print(f"  stage {st['stage']} layer {layer:>2s}: " + "  ".join(f"{op} {v['Q']:.4f}" for op, v in scores.items())
                  + f"  -> {st['chosen'][layer]}")
    sizes = [doc["initial_size"]] + [st["size_after"] for st in doc["stages"]]
    print("  space size: " + " -> ".join(s["distinct_text"] for s in sizes))
    print(f"\nmean top-1 of {args.archs} archs (after BN recalibration):")
    print(f"  {'run':18s} {'point':>6s} {'archs of the shrunk space':>26s} {'archs of the whole space':>25s}")
    for p in points:
        print(f"  {p['run']:18s} {p['point']:6d} {100 * p['acc_shrunk_archs']:25.2f}% {100 * p['acc_full_archs']:24.2f}%")
    plot(doc, points, Path(args.out))
    Path(args.out).mkdir(parents=True, exist_ok=True)
    result_path(args.out, f"shrink-{space.name}").write_text(json.dumps({"shrink": doc, "points": points}, indent=1))


def plot(doc, points, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    plot_q_scores(doc, out / "shrink-q-scores.png")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.8, 3.4))
    for label in ("with shrinking", "without shrinking"):
        ps = [p for p in points if p["run"] == label]
        ax.plot([p["point"] for p in ps], [100 * p["acc_shrunk_archs"] for p in ps], marker="o", label=label)
    ax.set_xticks([0, 1, 2][: len(points) // 2])
    ax.set_xticklabels(["base", "stage 1", "stage 2"][: len(points) // 2])
    ax.set_ylabel("mean top-1 of the shrunk space's archs (%)")
    ax.set_title("supernet accuracy with and without shrinking (Fig. 6 left)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "shrink-fig6-left.png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
