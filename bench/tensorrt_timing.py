"""TensorRT on a GPU (issue 14): seconds per engine build, the timing cache's effect, and whether timing small
blocks from Python is launch-bound. Prepared for a machine with TensorRT and a CUDA build of torch (a Jetson in
Dockerfile.jetson's container, or a lent GPU); elsewhere it stops with hsconas's one-line reason.

For --blocks LUT blocks of the space (the smallest first: they are the ones a launch cost would swamp) and two
whole networks, it builds each engine twice, without and then with a timing cache the first builds filled, and
times each engine three ways in one run:

* ``graph``: CUDA events over CUDA-graph replays of 10 enqueues (what hsconas measures with);
* ``eager``: CUDA events over back-to-back ``execute_async_v3`` calls from Python;
* ``host``: the wall-clock time Python spends per eager enqueue.

A block is launch-bound where ``eager`` is well above ``graph`` and close to ``host``: there the GPU waits for
Python. The fp16 and Q/DQ INT8 ONNX are also run through onnxruntime's CUDA provider where it is installed, for
their parity with PyTorch.

    python bench/tensorrt_timing.py --space imagenet-A --batch 16 --blocks 12
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

from exporters.onnx import to_fp16, to_onnx_bytes  # noqa: E402
from exporters.tensorrt import EngineRunner, build_engine, tensorrt_api  # noqa: E402
from hsconas_cli.calibrate import Parts, _jobs, sample_archs  # noqa: E402
from hsconas_cli.meter import network  # noqa: E402
from exporters.files import ExportError  # noqa: E402
from hsconas_cli.errors import HsconasError  # noqa: E402
from hsconas_cli.space import get_space  # noqa: E402


def three_timings(runner: EngineRunner, k: int = 200) -> dict:
    for _ in range(20):
        runner.time(10)
    graph = statistics.median(runner.time(k) for _ in range(5)) if runner.graph is not None else None
    torch = runner.torch
    eager, host = [], []
    for _ in range(5):
        runner.start.record(runner.stream)
        t0 = time.perf_counter()
        for _ in range(k):
            runner._enqueue()
        host.append((time.perf_counter() - t0) * 1e3 / k)
        runner.end.record(runner.stream)
        runner.end.synchronize()
        eager.append(runner.start.elapsed_time(runner.end) / k)
    torch.cuda.synchronize()
    return {"graph_ms": graph, "eager_ms": statistics.median(eager), "host_ms_per_enqueue": statistics.median(host)}


def ort_cuda_parity(net, shape) -> dict | str:
    """The fp16 and Q/DQ INT8 ONNX of ``net`` through onnxruntime's CUDA provider, against PyTorch (random
    inputs: a speed bench has no dataset; the product's own check uses real images)."""
    import numpy as np
    import onnx
    import onnxruntime as ort

    from exporters.onnx import parity, quantize_int8

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return "not installed here (onnxruntime-gpu has it)"
    import torch

    x = np.random.default_rng(0).standard_normal((8 * shape[0], *shape[1:])).astype(np.float32)
    fp32 = onnx.load_from_string(to_onnx_bytes(net, shape))
    out = {}
    for prec, model in (("fp16", to_fp16(fp32)), ("int8", quantize_int8(fp32, x, shape[0]))):
        s = ort.InferenceSession(model.SerializeToString(), providers=["CUDAExecutionProvider"])
        got = np.concatenate([s.run(None, {"input": x[i : i + shape[0]]})[0] for i in range(0, len(x), shape[0])])
        with torch.no_grad():
            want = net(torch.from_numpy(x)).numpy()
        out[prec] = parity(got, want)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--space", default="imagenet-A")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--blocks", type=int, default=12)
    ap.add_argument("--precision", default="fp16", choices=["fp16", "fp32"])
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = ap.parse_args()
    try:
        api = tensorrt_api()
        import onnx
        import torch

        space = get_space(args.space)
        parts = Parts(space, args.batch)
        bias, _ = sample_archs(space, 2, 2, 0)
        jobs = [(k, w) for k, w in _jobs(space, bias, [], parts) if k.startswith("entry:")]
        jobs = sorted(jobs, key=lambda kw: len(parts.onnx(kw[1])))[: args.blocks]  # the smallest blocks first
        models = [(k, parts.onnx(w), parts.module(w)[1]) for k, w in jobs]
        for i, a in enumerate(bias):
            models.append((f"network:{i}", to_onnx_bytes(network(space, a), parts.input_shape), parts.input_shape))
        rows = []
        with tempfile.TemporaryDirectory() as tmp:
            cache = Path(tmp) / "timing.cache"
            for key, fp32, shape in models:
                src = to_fp16(onnx.load_from_string(fp32)).SerializeToString() \
                    if args.precision == "fp16" and api.strongly_typed else fp32
                t0 = time.perf_counter()
                build_engine(src, precision=args.precision)
                cold = time.perf_counter() - t0
                build_engine(src, precision=args.precision, timing_cache=cache)  # fills the cache
                t0 = time.perf_counter()
                plan = build_engine(src, precision=args.precision, timing_cache=cache)
                warm = time.perf_counter() - t0
                with EngineRunner(plan, shape) as runner:
                    t = three_timings(runner)
                rows.append({"model": key, "build_s": cold, "build_with_cache_s": warm, **t})
                print(f"{key:40s} build {cold:6.1f} s, with cache {warm:6.1f} s; graph {t['graph_ms']} ms, "
                      f"eager {t['eager_ms']:.4f} ms, host {t['host_ms_per_enqueue']:.4f} ms/enqueue", flush=True)
        parity = ort_cuda_parity(network(space, bias[0]), parts.input_shape)
        print(f"onnxruntime CUDA provider: {parity}")
        doc = {"tensorrt": api.name, "ort_cuda_parity": parity, "gpu": torch.cuda.get_device_name(0), "space": space.name, "batch": args.batch,
               "precision": args.precision, "rows": rows,
               "median_build_s": statistics.median(r["build_s"] for r in rows),
               "median_build_with_cache_s": statistics.median(r["build_with_cache_s"] for r in rows)}
        stamp = time.strftime("%Y%m%d-%H%M")
        path = args.out / f"tensorrt_timing-{space.name}-b{args.batch}-{args.precision}-{stamp}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc, indent=1))
        print(f"median build {doc['median_build_s']:.1f} s, with the timing cache {doc['median_build_with_cache_s']:.1f} s; "
              f"wrote {path}")
    except (HsconasError, ExportError) as e:
        sys.exit(f"tensorrt_timing: {e}")


if __name__ == "__main__":
    main()
