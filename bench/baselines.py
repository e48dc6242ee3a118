"""The CPU column of the paper's Table I on this machine (issue 7).

Times, in one run with the cpu device's protocol (onnxruntime, batch 1, one thread, ratio to the reference
network): the torchvision models of Table I (MobileNetV2 1.0, ShuffleNetV2 1.5, MobileNetV3-Large, MnasNet
1.0) and archs of layouts A and B at 224x224x3 (the fastest and slowest of the space, the median of 200
random archs, and the demo's winner's genes placed in that space), measured and predicted.

    python bench/baselines.py                     # calibrates cpu/imagenet-B first if it has no profile yet
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import torch
import torchvision
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import result_path  # noqa: E402

from hsconas_cli.calibrate import calibrate  # noqa: E402
from hsconas_cli.meter import measure_model, network  # noqa: E402
from hsconas_cli.devices import load_device  # noqa: E402
from hsconas_cli.errors import HsconasError  # noqa: E402
from hsconas_cli.profiles import find_profile  # noqa: E402
from hsconas_cli.space import SPACES, Arch, load_arch  # noqa: E402

PAPER_CPU_MS = {"MobileNetV2 1.0": 25.2, "ShuffleNetV2 1.5": 34.3, "MobileNetV3-Large": 31.8, "MnasNet 1.0": 26.4,
                "HSCoNet-CPU-A": 22.8, "HSCoNet-CPU-B": 26.4}


def extreme(profile, fastest: bool) -> Arch:
    sp = profile.space
    genes = []
    for l in sp.layers:
        options = [(op, c) for op in l.ops for c in ([None] if op == "skip" else sp.factors)]
        key = lambda g: profile.table[(l.index, g[0], None if g[0] == "skip" else sp.mid(l.index, g[1]))]
        genes.append(min(options, key=key) if fastest else max(options, key=key))
    return Arch(tuple(genes))


def mflops(model, shape) -> float:
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model.eval()(torch.zeros(shape))
    return fc.get_total_flops() / 2e6  # multiply-adds, as Table I's sources count


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--demo-result", default=str(ROOT / "runs" / "demo" / "search" / "result.json"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args()

    profiles = {}
    for name in ("imagenet-A", "imagenet-B"):
        try:
            profiles[name] = find_profile("cpu", name, check_mode=False)
        except HsconasError:
            print(f"calibrating cpu for {name} first ...", flush=True)
            calibrate(load_device("cpu"), SPACES[name])
            profiles[name] = find_profile("cpu", name, check_mode=False)
    ref = profiles["imagenet-A"]
    rows = []
    tv = {"MobileNetV2 1.0": torchvision.models.mobilenet_v2(), "ShuffleNetV2 1.5": torchvision.models.shufflenet_v2_x1_5(),
          "MobileNetV3-Large": torchvision.models.mobilenet_v3_large(), "MnasNet 1.0": torchvision.models.mnasnet1_0()}
    shape = (1, 3, 224, 224)
    for name, model in tv.items():
        m = measure_model(ref, model, repeats=args.repeats)
        rows.append({"model": name, "mflops": mflops(model, shape), "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
                     "measured_ms": m["measured_ms"], "predicted_ms": None, "paper_cpu_ms": PAPER_CPU_MS.get(name)})
    demo = None
    if Path(args.demo_result).exists():
        _, demo = load_arch(args.demo_result)
    for name, prof in profiles.items():
        sp = prof.space
        rng = random.Random(0)
        sample = sorted((sp.full().sample(rng) for _ in range(200)), key=prof.predict)
        archs = {"fastest": extreme(prof, True), "median": sample[100], "slowest": extreme(prof, False)}
        if demo is not None:
            archs["demo winner's genes"] = demo
        for label, arch in archs.items():
            net = network(sp, arch)
            m = measure_model(prof, net, repeats=args.repeats)
            rows.append({"model": f"HSCoNAS-{name[-1]} {sp.layout}, {label}", "mflops": mflops(net, shape),
                         "params_m": sum(p.numel() for p in net.parameters()) / 1e6, "measured_ms": m["measured_ms"],
                         "predicted_ms": prof.predict(arch), "paper_cpu_ms": None, "arch": arch.to_list()})
    cpu = ref.doc["machine"]["cpu"]
    print(f"\nTable I, CPU column, on this machine ({cpu} x{ref.doc['machine']['cpu_count']}): onnxruntime, batch 1, one thread")
    print(f"{'model':58s} {'MFLOPs':>8s} {'params M':>9s} {'measured ms':>12s} {'predicted ms':>13s} {'paper (Xeon) ms':>16s}")
    for r in rows:
        pred = f"{r['predicted_ms']:.2f}" if r["predicted_ms"] is not None else "-"
        paper = f"{r['paper_cpu_ms']:.1f}" if r["paper_cpu_ms"] is not None else "-"
        print(f"{r['model']:58s} {r['mflops']:8.0f} {r['params_m']:9.2f} {r['measured_ms']:12.2f} {pred:>13s} {paper:>16s}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result_path(out, "baselines").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
