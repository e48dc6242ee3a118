"""OpenVINO: the IR (``.xml`` graph, ``.bin`` weights) converted from the ONNX hsconas exports, and the compiled
model both the exporter and the ``openvino`` latency backend run.

OpenVINO reads the ONNX itself (its ONNX frontend), so the IR computes what the ONNX computes. On the CPU device
the inference precision is a compile-time hint: OpenVINO computes in bf16 on CPUs with AVX512-BF16 or AMX unless
told otherwise, so hsconas always states it (``fp32`` by default, which is what an edge CPU without bf16 runs and
what the parity gate holds to PyTorch's fp32 tolerance). Installed with ``pip install 'hsconas[openvino]'``.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from exporters.files import ExportError, ExportRequest, atomic_path, time_runs, write_json

EXTRA = "pip install 'hsconas[openvino]'"
HINTS = {"latency": "LATENCY", "throughput": "THROUGHPUT", "cumulative_throughput": "CUMULATIVE_THROUGHPUT"}
PRECISIONS = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}  # INFERENCE_PRECISION_HINT


def openvino_module():
    """The ``openvino`` package, or a one-line refusal naming the extra that installs it."""
    try:
        import openvino
    except ImportError:
        raise ExportError(f"OpenVINO is not installed here: {EXTRA}") from None
    return openvino


def compile_config(*, hint: str = "latency", threads: int | None = 1, precision: str = "fp32") -> dict[str, Any]:
    """The properties a model is compiled with: the performance hint, the thread count, the inference precision."""
    if hint not in HINTS and hint != "none":
        raise ExportError(f"unknown OpenVINO performance hint {hint!r}; use {', '.join(HINTS)} or none")
    if precision not in PRECISIONS:
        raise ExportError(f"OpenVINO inference precision must be {', '.join(PRECISIONS)}, not {precision!r}")
    cfg: dict[str, Any] = {"INFERENCE_PRECISION_HINT": PRECISIONS[precision]}
    if hint != "none":
        cfg["PERFORMANCE_HINT"] = HINTS[hint]
    if threads is not None:
        cfg["INFERENCE_NUM_THREADS"] = int(threads)
    return cfg


def compile_model(model, *, device: str = "CPU", core=None, **config: Any):
    """``model`` (ONNX bytes, a path to .onnx or .xml, or an ``ov.Model``) compiled for ``device``."""
    ov = openvino_module()
    core = core or ov.Core()
    if device not in core.available_devices:
        raise ExportError(f"OpenVINO sees no {device} device here (it sees {', '.join(core.available_devices)})")
    if isinstance(model, (str, os.PathLike)):
        model = core.read_model(str(model))
    elif isinstance(model, (bytes, bytearray)):
        model = core.read_model(bytes(model))
    return core.compile_model(model, device, compile_config(**config))


class CompiledRunner:
    """One infer request of a compiled model on a fixed input; ``time(k)``: milliseconds per run over k runs."""

    timer = "wall clock"

    def __init__(self, compiled, input_shape: tuple[int, ...]):
        ov = openvino_module()
        self.request = compiled.create_infer_request()
        self._x = np.random.default_rng(0).standard_normal(input_shape, dtype=np.float32)
        self.request.set_input_tensor(ov.Tensor(self._x))
        self.request.infer(share_outputs=True)  # the first call allocates

    def infer(self, x: np.ndarray) -> np.ndarray:
        return np.array(self.request.infer({0: np.ascontiguousarray(x, np.float32)})[0])

    def time(self, k: int) -> float:
        infer = self.request.infer
        t0 = time.perf_counter()
        for _ in range(k):
            infer(share_outputs=True)
        return (time.perf_counter() - t0) * 1e3 / k

    def close(self) -> None:
        self.request = None


def _save_ir(model, out_dir: Path, name: str, compress_to_fp16: bool) -> tuple[Path, Path]:
    """Write ``name.xml`` and ``name.bin`` atomically: saved in a scratch folder, each moved into place (the
    weights first, so an .xml is never found beside a stale .bin of another model)."""
    ov = openvino_module()
    xml, bin_ = out_dir / f"{name}.xml", out_dir / f"{name}.bin"
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".openvino-") as tmp:
        ov.save_model(model, str(Path(tmp) / f"{name}.xml"), compress_to_fp16=compress_to_fp16)
        for src, dst in ((Path(tmp) / f"{name}.bin", bin_), (Path(tmp) / f"{name}.xml", xml)):
            with atomic_path(dst) as t:
                t.write_bytes(src.read_bytes())
    return xml, bin_


def _without_metadata(onnx_model: bytes) -> bytes:
    """The ONNX without its metadata props: OpenVINO's frontend would copy them into the IR's rt_info, and the
    metadata belongs in the sidecar."""
    import onnx

    proto = onnx.load_from_string(onnx_model)
    del proto.metadata_props[:]
    return proto.SerializeToString()


def export_openvino(req: ExportRequest) -> dict:
    """Write the ONNX (fp32, checked by ``exporters.onnx.export_model``), then convert it to OpenVINO IR
    ``name.xml``/``name.bin``: fp32 weights, or fp16 weights for ``precision`` fp16. The IR, read back from disk
    and compiled for the CPU at the matching inference precision, must agree with PyTorch on the real images
    within ``exporters.onnx.TOLERANCE``, or no IR is written. ``name.openvino.json`` beside it holds the
    metadata, the check, the OpenVINO version, a timing of the IR here and, where ``measure`` is given (a
    function of the .xml path), the latency measured under the device profile's protocol."""
    from exporters import FORMATS
    from exporters.onnx import export_model

    FORMATS["openvino"].check(req.precision, req.dla_core, req.dynamic_batch)
    compile_config(hint=req.hint, threads=req.threads, precision=req.precision)  # refuse bad options before writing
    ov = openvino_module()
    onnx_res = export_model(req.but(precision="fp32"))
    onnx_res.pop("onnx_of_precision", None)
    core = ov.Core()
    model = core.read_model(_without_metadata(onnx_res.pop("onnx")))
    check, timing = _checked_ir(core, model, req)
    xml, bin_ = _save_ir(model, req.out_dir, req.name, req.precision == "fp16")
    latency = req.measure(xml) if req.measure is not None else None
    sidecar = {
        "kind": "hsconas-openvino-ir",
        "xml": xml.name,
        "bin": bin_.name,
        "onnx": Path(onnx_res["path"]).name,
        "openvino": ov.get_version(),
        "weights_precision": req.precision,
        "check": check,
        "timing": timing,
        "latency": latency,
        "metadata": req.metadata,
    }
    side = req.out_dir / f"{req.name}.openvino.json"
    write_json(side, sidecar)
    return {"format": "openvino", "path": str(xml), "max_abs_diff": check["max_abs_diff"], "bin": str(bin_),
            "sidecar": str(side), "onnx": onnx_res, "check": check, "timing": timing, "latency": latency,
            "openvino": ov.get_version(), "precision": req.precision}


def _checked_ir(core, model, req: ExportRequest) -> tuple[dict, dict]:
    """The IR as it will be written (saved in a scratch folder and read back), compiled for the CPU at fp32 and run
    on the check images against PyTorch (refused outside the tolerance), and its timing here."""
    import torch

    from exporters.onnx import check_parity, parity

    ov = openvino_module()
    x = np.ascontiguousarray(req.check_images, dtype=np.float32)
    b = req.batch_size
    with tempfile.TemporaryDirectory(dir=req.out_dir, prefix=".openvino-check-") as tmp:
        xml_tmp = Path(tmp) / f"{req.name}.xml"
        ov.save_model(model, str(xml_tmp), compress_to_fp16=req.precision == "fp16")
        compiled = compile_model(xml_tmp, core=core, hint=req.hint, threads=req.threads, precision="fp32")
        runner = CompiledRunner(compiled, req.input_shape)
        n = len(x) // b * b
        if n == 0:
            raise ExportError(f"checking the IR needs at least {b} images")
        got = np.concatenate([runner.infer(x[s : s + b]) for s in range(0, n, b)])
        with torch.no_grad():
            want = req.net.eval()(torch.from_numpy(x[:n])).numpy()
        check = parity(got, want)
        check_parity(req.precision, check, "the OpenVINO IR on the CPU")
        timing = {**time_runs(runner, req.timing_runs), "threads": req.threads, "hint": req.hint,
                  "inference_precision": "fp32"}
        runner.close()
    return check, timing
