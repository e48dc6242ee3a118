"""Supernet training speed against training the standalone network of the same archs.

Samples K archs; for each, times steps of the supernet on that path (weight slicing, SlicedSGD updating only
the used slices, as ``hsconas train`` does) and steps of the standalone HSCoNet of the same arch with
torch.optim.SGD, same batch, same loss, same clipping, same device, on real Fashion-MNIST batches (or random
data of the space's input shape). The two alternate in short rounds so that the machine's drift cancels; the
figure is the median over rounds of the per-round speed ratio.

    python bench/train_speed.py --space fmnist-A --batch-size 256
    python bench/train_speed.py --space imagenet-A --batch-size 64 --synthetic      # on a GPU: batch 256
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import result_path  # noqa: E402

from hsconas_cli.space import get_space  # noqa: E402
from hsconas_cli.supernet import HSCoNet, Supernet  # noqa: E402
from hsconas_cli.train import SlicedSGD  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--space", default="fmnist-A")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--archs", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=3, help="steps per timed chunk")
    ap.add_argument("--synthetic", action="store_true", help="random inputs instead of Fashion-MNIST")
    ap.add_argument("--amp", choices=["bf16", "off"], default="bf16", help="autocast on CUDA")
    ap.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args()

    device = "cuda" if torch.cuda.is_available() else "cpu"
    space = get_space(args.space)
    torch.manual_seed(0)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    if args.synthetic or space.in_channels != 1:
        xs = [torch.randn(args.batch_size, space.in_channels, space.input_size, space.input_size) for _ in range(4)]
        ys = [torch.randint(0, space.num_classes, (args.batch_size,)) for _ in range(4)]
    else:
        from hsconas_cli.data import load_data

        batches = list(zip(range(4), load_data("fashion-mnist").loader("train", args.batch_size, train=True)))
        xs, ys = [b[1][0] for b in batches], [b[1][1] for b in batches]
    xs = [x.to(device).contiguous(memory_format=fmt) for x in xs]
    ys = [y.to(device) for y in ys]
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if device == "cuda" and args.amp == "bf16" else None

    rng = random.Random(0)
    archs = [space.full().sample(rng) for _ in range(args.archs)]
    supernet = Supernet(space).to(device, memory_format=fmt).train()
    sliced = SlicedSGD(supernet.named_parameters(), 0.9, 3e-5)
    standalone = [HSCoNet(space, a).to(device, memory_format=fmt).train() for a in archs]
    opts = [torch.optim.SGD(
        [{"params": [p for p in n.parameters() if p.ndim > 1], "weight_decay": 3e-5},
         {"params": [p for p in n.parameters() if p.ndim <= 1], "weight_decay": 0.0}], lr=0.01, momentum=0.9)
        for n in standalone]

    def loss_of(logits, y):
        return F.cross_entropy(logits, y, label_smoothing=0.1)

    def super_step(i: int, k: int) -> None:
        arch = archs[i]
        sliced.zero_grad()
        if autocast:
            with autocast():
                loss = loss_of(supernet(xs[k % 4], arch), ys[k % 4])
        else:
            loss = loss_of(supernet(xs[k % 4], arch), ys[k % 4])
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in supernet.parameters() if p.grad is not None], 5.0)
        sliced.step(supernet.active_slices(arch), 0.01)

    def static_step(i: int, k: int) -> None:
        net, opt = standalone[i], opts[i]
        opt.zero_grad(set_to_none=True)
        if autocast:
            with autocast():
                loss = loss_of(net(xs[k % 4]), ys[k % 4])
        else:
            loss = loss_of(net(xs[k % 4]), ys[k % 4])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
        opt.step()

    def timed(step, i: int) -> float:
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for k in range(args.steps):
            step(i, k)
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    for i in range(len(archs)):  # warm-up: allocator, cuDNN algorithm choice, first-touch of momentum buffers
        timed(super_step, i)
        timed(static_step, i)
    ratios, t_super, t_static = [], 0.0, 0.0
    for r in range(args.rounds):
        for i in range(len(archs)):
            a, b = (timed(super_step, i), timed(static_step, i)) if r % 2 == 0 else tuple(reversed((timed(static_step, i), timed(super_step, i))))
            ratios.append(b / a)  # supernet speed / standalone speed
            t_super, t_static = t_super + a, t_static + b
    n_img = args.rounds * len(archs) * args.steps * args.batch_size
    res = {
        "space": space.name, "device": device,
        "device_name": torch.cuda.get_device_name(0) if device == "cuda" else _cpu(),
        "batch_size": args.batch_size, "archs": args.archs, "rounds": args.rounds, "amp": args.amp if device == "cuda" else "off",
        "channels_last": args.channels_last, "threads": torch.get_num_threads(),
        "supernet_img_per_s": n_img / t_super, "standalone_img_per_s": n_img / t_static,
        "ratio_median": float(np.median(ratios)), "ratio_p25": float(np.percentile(ratios, 25)),
        "ratio_p75": float(np.percentile(ratios, 75)),
    }
    print(f"{space.name} on {res['device_name']} ({device}), batch {args.batch_size}, {args.archs} archs x {args.rounds} rounds:")
    print(f"  supernet (sliced) {res['supernet_img_per_s']:.0f} img/s, standalone {res['standalone_img_per_s']:.0f} img/s")
    print(f"  speed ratio supernet / standalone: median {res['ratio_median']:.3f} "
          f"(p25 {res['ratio_p25']:.3f}, p75 {res['ratio_p75']:.3f}); target >= 0.85")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result_path(out, f"train_speed-{space.name}-{device}-b{args.batch_size}").write_text(json.dumps(res, indent=1))


def _cpu() -> str:
    from hsconas_cli.devices import machine_facts

    f = machine_facts()
    return f"{f['cpu']} x{f['cpu_count']}"


if __name__ == "__main__":
    main()
