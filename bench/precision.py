"""What fp16 and INT8 cost in accuracy (issue 14): a trained HSCoNet exported at each precision by hsconas's
own exporter, each ONNX scored by onnxruntime (CPU) on the whole test set, beside the fp32 network.

INT8 is calibrated on --calib-images real images of the calibration split; --seeds different calibration subsets
give the spread that calibration alone causes. On this CPU, onnxruntime runs the fp16 graph's ops in fp32 after
casting (its CPU provider has few fp16 kernels): the fp16 row shows what rounding the weights to fp16 costs,
not fp16 arithmetic. INT8 runs as INT8 (onnxruntime fuses the Q/DQ pairs into integer kernels).

    python bench/precision.py --checkpoint runs/demo-i13/hsconet/checkpoint.pt --result runs/demo-i13/search/result.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402

from exporters.files import ExportRequest  # noqa: E402
from exporters.onnx import export_model  # noqa: E402
from hsconas_cli.data import load_data  # noqa: E402
from hsconas_cli.space import arch_from_json  # noqa: E402
from hsconas_cli.supernet import HSCoNet  # noqa: E402
from hsconas_cli.checkpoint import load_checkpoint, load_weights  # noqa: E402


def top1(path: Path, x: np.ndarray, y: np.ndarray, batch: int) -> tuple[float, np.ndarray]:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    pred = np.concatenate([s.run(None, {"input": x[i : i + batch]})[0].argmax(1) for i in range(0, len(x), batch)])
    return float((pred == y).mean()), pred


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", type=Path, required=True, help="A retrained HSCoNet (hsconas retrain / run).")
    ap.add_argument("--result", type=Path, required=True, help="Its search result or arch file.")
    ap.add_argument("--calib-images", type=int, default=512)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = ap.parse_args()
    space, arch = arch_from_json(json.loads(args.result.read_text()))
    ckpt = load_checkpoint(args.checkpoint)
    net = HSCoNet(space, arch)
    load_weights(net, ckpt["model"], args.checkpoint)
    net.eval()
    data = load_data("fashion-mnist")
    test = [(x, y) for x, y in data.loader("test", 500)]
    x, y = torch.cat([a for a, _ in test]).numpy(), torch.cat([b for _, b in test]).numpy()
    with torch.no_grad():
        torch_pred = np.concatenate([net(torch.from_numpy(x[i : i + 500])).argmax(1).numpy() for i in range(0, len(x), 500)])
    check = x[:256]
    pool = torch.cat([a for a, _ in data.loader("calib", 500, limit=args.calib_images * args.seeds)]).numpy()
    rows = {"torch fp32": {"top1": float((torch_pred == y).mean())}}
    with tempfile.TemporaryDirectory() as tmp:
        for prec in ("fp32", "fp16"):
            rep = export_model(ExportRequest(net, tmp, "m", 1, {}, check, dynamic_batch=True, precision=prec))
            acc, pred = top1(Path(rep["path"]), x, y, 500)
            rows[f"onnx {prec}"] = {"top1": acc, "agreement_with_torch": float((pred == torch_pred).mean())}
        int8 = []
        for seed in range(args.seeds):
            calib = pool[seed * args.calib_images : (seed + 1) * args.calib_images]
            t0 = time.perf_counter()
            rep = export_model(ExportRequest(net, tmp, "m", 1, {}, check, dynamic_batch=True, precision="int8",
                                             calib_images=calib))
            acc, pred = top1(Path(rep["path"]), x, y, 500)
            int8.append({"top1": acc, "agreement_with_torch": float((pred == torch_pred).mean()),
                         "seconds": time.perf_counter() - t0, "qdq_nodes": sum(n.op_type.endswith("QuantizeLinear") or
                                                                                  n.op_type == "DequantizeLinear"
                                                                                  for n in onnx.load(rep["path"]).graph.node)})
        rows["onnx int8"] = {"top1": statistics.mean(r["top1"] for r in int8),
                             "top1_range": [min(r["top1"] for r in int8), max(r["top1"] for r in int8)],
                             "agreement_with_torch": statistics.mean(r["agreement_with_torch"] for r in int8),
                             "per_calibration_subset": int8}
    for k, r in rows.items():
        extra = f", agreement with torch {100 * r['agreement_with_torch']:.2f}%" if "agreement_with_torch" in r else ""
        rng = f" (calibration subsets: {100 * r['top1_range'][0]:.2f}-{100 * r['top1_range'][1]:.2f}%)" if "top1_range" in r else ""
        print(f"{k:12s} top-1 {100 * r['top1']:.2f}%{rng}{extra}")
    stamp = time.strftime("%Y%m%d-%H%M")
    path = args.out / f"precision-{space.name}-c{args.calib_images}-s{args.seeds}-{stamp}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"checkpoint": str(args.checkpoint), "space": space.name, "test_images": int(len(y)),
                                "calib_images": args.calib_images, "rows": rows}, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
