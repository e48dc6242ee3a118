"""ONNX export of a network of the space: an HSCoNet for deployment, or one block for the latency table."""

from __future__ import annotations

import inspect
import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from exporters import PRECISIONS
from exporters.files import ExportError, ExportRequest, atomic_path

OPSET = 17  # TensorRT 8.5 (JetPack 5) parses up to opset 17
INPUT_NAME, OUTPUT_NAME = "input", "logits"
# torch 2.5+ defaults to the dynamo exporter; older torch (2.0 on JetPack 5) has only the TorchScript one
_TORCHSCRIPT = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}


def to_onnx_bytes(
    model: nn.Module,
    input_shape: tuple[int, ...],
    *,
    opset: int = OPSET,
    dynamic_batch: bool = False,
    input_name: str = INPUT_NAME,
    output_name: str = OUTPUT_NAME,
) -> bytes:
    """Trace ``model`` in eval mode into an ONNX model (BN folded, constants folded) and return its bytes.

    The TorchScript exporter is used: it is an order of magnitude faster than the dynamo exporter on these
    small graphs (the latency table exports hundreds of blocks) and emits opset 17 directly.
    """
    was_training = model.training
    model.eval()
    buf = io.BytesIO()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (torch.zeros(input_shape),),
                buf,
                **_TORCHSCRIPT,
                opset_version=opset,
                input_names=[input_name],
                output_names=[output_name],
                dynamic_axes={input_name: {0: "batch"}, output_name: {0: "batch"}} if dynamic_batch else None,
                do_constant_folding=True,
            )
    finally:
        model.train(was_training)
    return buf.getvalue()


def chain(models: list[bytes]) -> bytes:
    """One ONNX model that runs ``models`` one after another (each model's single output feeds the next).

    The latency calibration uses it to assemble whole networks from the block models it already exported,
    instead of tracing every sampled network again; a test holds the chain of an HSCoNet's parts equal to
    the HSCoNet's own export.
    """
    import onnx
    from onnx import compose

    protos = [onnx.load_from_string(m) for m in models]
    graph = onnx.GraphProto(name="chain")
    prev = None
    for i, proto in enumerate(protos):
        g = compose.add_prefix_graph(proto.graph, f"p{i}_")
        inp, out = g.input[0].name, g.output[0].name
        if prev is None:
            graph.input.extend(g.input)
        else:
            for node in g.node:
                for j, name in enumerate(node.input):
                    if name == inp:
                        node.input[j] = prev
        graph.node.extend(g.node)
        graph.initializer.extend(g.initializer)
        prev = out if out != inp else prev
    last = protos[-1].graph.output[0]
    graph.output.extend([onnx.helper.make_tensor_value_info(prev, last.type.tensor_type.elem_type, None)])
    model = onnx.helper.make_model(graph, opset_imports=protos[0].opset_import)
    model.ir_version = protos[0].ir_version
    return model.SerializeToString()


# Op types TensorRT 8.5's ONNX parser (onnx-tensorrt 8.5, JetPack 5) imports; an exported graph must stay inside.
TRT85_OPS = frozenset({
    "Add", "AveragePool", "BatchNormalization", "Cast", "Clip", "Concat", "Constant", "ConstantOfShape", "Conv",
    "DequantizeLinear", "Div", "Flatten", "Gather", "Gemm", "GlobalAveragePool", "Identity", "MatMul", "MaxPool", "Mul",
    "QuantizeLinear", "Relu", "Reshape", "Shape", "Slice", "Split", "Squeeze", "Sub", "Transpose", "Unsqueeze",
})

# ---- precisions ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tolerance:
    """What a network computed at one precision must reach against PyTorch in fp32 on real images: the largest
    output difference relative to the largest PyTorch logit, and the share of images whose top-1 class agrees."""

    max_rel: float
    min_agreement: float


# One table for both checks: the ONNX of each precision through onnxruntime here, and the TensorRT engine on the
# device. fp16 rounds weights and activations to 11 significant bits; INT8 (8-bit, per-channel weights, per-tensor
# activations calibrated on real images) moves logits by a few percent and flips the odd close call.
TOLERANCE = {
    "fp32": Tolerance(max_rel=1e-3, min_agreement=0.99),
    "fp16": Tolerance(max_rel=2e-2, min_agreement=0.98),
    "int8": Tolerance(max_rel=0.25, min_agreement=0.90),
}


def parity(got: np.ndarray, want: np.ndarray) -> dict:
    """How far outputs ``got`` are from PyTorch's ``want`` (both N x classes)."""
    diff = np.abs(np.asarray(got, np.float64) - np.asarray(want, np.float64))
    scale = max(float(np.abs(want).max()), 1e-12)
    return {"images": int(len(want)), "max_abs_diff": float(diff.max()), "max_rel_diff": float(diff.max() / scale),
            "top1_agreement": float((np.argmax(got, 1) == np.argmax(want, 1)).mean())}


def check_parity(precision: str, stats: dict, what: str) -> None:
    """Refuse ``what`` (one line) where its parity with PyTorch is outside the precision's tolerance."""
    tol = TOLERANCE[precision]
    if stats["max_rel_diff"] > tol.max_rel or stats["top1_agreement"] < tol.min_agreement:
        raise ExportError(
            f"{what} ({precision}) differs from PyTorch on {stats['images']} real images: relative difference "
            f"{stats['max_rel_diff']:.2e} (limit {tol.max_rel:g}), top-1 agreement {stats['top1_agreement']:.3f} "
            f"(limit {tol.min_agreement:g}); not writing it"
        )


def onnx_precision(model) -> str | None:
    """The precision an ONNX model computes in: int8 (Q/DQ nodes), fp16 (half-precision weights), fp32, or None
    for a graph without weights (an identity: the same at every precision)."""
    import onnx

    if isinstance(model, (bytes, bytearray)):
        model = onnx.load_from_string(bytes(model))
    if any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node):
        return "int8"
    floats = [t.data_type for t in model.graph.initializer
              if t.data_type in (onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT)]
    if onnx.TensorProto.FLOAT16 in floats:
        return "fp16"
    return "fp32" if floats else None


def to_fp16(model):
    """The model in half precision, inputs and outputs kept in fp32 (a Cast at each end): what a strongly typed
    TensorRT network (10.x, 11.x) needs to build an FP16 engine. onnxruntime's converter does the conversion; it
    appends the input Casts after the nodes that read them, so the graph is sorted again."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    half = convert_float_to_float16(model, keep_io_types=True)
    _toposort(half.graph)
    return half


def _toposort(graph) -> None:
    """Order ``graph``'s nodes so that every input is produced before it is read (the checker requires it)."""
    ready = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        rest = []
        for node in pending:
            if all(name in ready for name in node.input):
                ordered.append(node)
                ready.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            raise ValueError(f"the graph has a cycle or a missing input at node {rest[0].name}")
        pending = rest
    copies = [type(n)() for n in ordered]
    for c, n in zip(copies, ordered):
        c.CopyFrom(n)
    del graph.node[:]
    graph.node.extend(copies)


def quantize_int8(model, calib_images: np.ndarray, batch_size: int):
    """The model with explicit INT8 quantization (Q/DQ nodes), calibrated on real images: onnxruntime's static
    quantization in QDQ format, symmetric INT8 (zero points 0, as TensorRT requires), per-channel weights kept in
    fp32 behind a Quantize/Dequantize pair (the form TensorRT 8.x documents for explicit quantization), Q/DQ on
    the convolutions only: the classifier and the logits stay in floating point; biases stay in fp32. The scales
    belong to this network alone: they are computed from its own activations at every export, so no calibration
    cache can leak between archs."""
    import contextlib
    import logging
    import tempfile

    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)

    x = np.ascontiguousarray(calib_images, dtype=np.float32)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    step = dims[0].dim_value or batch_size  # a static batch is fed at its size
    feeds = [{INPUT_NAME: x[i : i + step]} for i in range(0, len(x) - step + 1, step)]
    if not feeds:
        raise ExportError(f"INT8 calibration needs at least {step} images")

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(feeds)

        def get_next(self):
            return next(self.it, None)

    level = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)  # onnxruntime logs advice through the root logger, and prints
    try:
        with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):
            src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
            onnx.save(model, src)
            quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax, op_types_to_quantize=["Conv"],
                            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False,
                                           "AddQDQPairToWeight": True})
            q = onnx.load(dst)
    finally:
        logging.getLogger().setLevel(level)
    _float_biases(q)
    return q


def _float_biases(model) -> None:
    """Older onnxruntime quantizes biases to int32 whatever it is told; TensorRT dequantizes only 8-bit tensors.
    Replace each int32 DequantizeLinear of an initializer by the fp32 values it stands for."""
    import onnx
    from onnx import numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    keep = []
    for node in model.graph.node:
        src = inits.get(node.input[0]) if node.op_type == "DequantizeLinear" else None
        if src is None or src.data_type != onnx.TensorProto.INT32:
            keep.append(node)
            continue
        q = numpy_helper.to_array(src).astype(np.float64)
        scale = numpy_helper.to_array(inits[node.input[1]]).astype(np.float64)
        zero = numpy_helper.to_array(inits[node.input[2]]).astype(np.float64) if len(node.input) > 2 and node.input[2] else 0.0
        model.graph.initializer.append(numpy_helper.from_array(((q - zero) * scale).astype(np.float32), node.output[0]))
    del model.graph.node[:]
    model.graph.node.extend(keep)
    used = {name for n in model.graph.node for name in n.input}
    stale = [t for t in model.graph.initializer if t.name not in used]
    for t in stale:
        model.graph.initializer.remove(t)


def _check_with_onnxruntime(data: bytes, net, images: np.ndarray, batch_size: int, dynamic_batch: bool) -> dict:
    """Outputs through onnxruntime (CPU) against PyTorch's, in batches of the exported shape."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    session = ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])
    got, want = [], []
    with torch.no_grad():
        for s in range(0, len(images), batch_size):
            xb = images[s : s + batch_size]
            if len(xb) < batch_size and not dynamic_batch:
                break
            got.append(session.run(None, {INPUT_NAME: xb})[0])
            want.append(net(torch.from_numpy(xb)).numpy())
    return parity(np.concatenate(got), np.concatenate(want))


def _with_metadata(model, metadata: dict) -> bytes:
    import json

    meta = {"hsconas": json.dumps(metadata, sort_keys=True)}
    meta.update({k: (v if isinstance(v, str) else json.dumps(v)) for k, v in metadata.items()})
    del model.metadata_props[:]
    for k, v in meta.items():
        model.metadata_props.add(key=k, value=v)
    return model.SerializeToString()


def export_model(req: ExportRequest) -> dict:
    """Export ``req.net`` to ``out_dir/name.onnx``: opset 17, static batch unless ``dynamic_batch``, BN folded,
    simplified with onnxslim where it is installed, ``onnx.checker`` clean, metadata in the model's metadata
    props, ops inside TensorRT 8.5's parser, and outputs through onnxruntime checked against PyTorch on
    ``check_images`` (max abs difference <= 1e-4).

    ``precision`` fp16 or int8 also writes ``name.fp16.onnx`` (half precision, fp32 inputs and outputs) or
    ``name.int8.onnx`` (Q/DQ, calibrated on ``calib_images``), each checked the same way within its
    ``TOLERANCE``; nothing of a precision that fails is written. The report holds the fp32 model's bytes
    (``onnx``) and those of the precision asked for (``onnx_of_precision``), for the exporters built on it."""
    import onnx

    if req.precision not in PRECISIONS:  # the other rules of its row are the caller's (a TensorRT export's DLA core)
        raise ExportError(f"unknown precision {req.precision!r}; use {', '.join(PRECISIONS)}")
    if req.precision == "int8" and req.calib_images is None:
        raise ExportError("INT8 needs calibration images")
    net = req.net.eval()
    model = onnx.load_from_string(to_onnx_bytes(net, req.input_shape, opset=req.opset or OPSET,
                                                dynamic_batch=req.dynamic_batch))
    model, slimmed = _slimmed(model)
    variants = {"fp32": model}
    if req.precision == "fp16":
        variants["fp16"] = to_fp16(model)
    elif req.precision == "int8":
        variants["int8"] = quantize_int8(model, req.calib_images, req.batch_size)
    written = _checked_variants(req, variants)
    files = {prec: _write_onnx(req, prec, item) for prec, item in written.items()}
    main = written["fp32"]
    return {
        "format": "onnx", "path": files[req.precision]["path"], "precision": req.precision, "bytes": len(main["data"]),
        "opset": model.opset_import[0].version, "ops": main["ops"], "slimmed": slimmed,
        "max_abs_diff": main["parity"]["max_abs_diff"], "checked_images": main["parity"]["images"],
        "input": {"name": INPUT_NAME, "shape": ["batch" if req.dynamic_batch else req.batch_size, *req.input_shape[1:]]},
        "output": {"name": OUTPUT_NAME}, "files": files, "onnx": main["data"],
        "onnx_of_precision": written[req.precision]["data"],
    }


def _slimmed(model) -> tuple[object, bool]:
    """The model simplified with onnxslim where it is installed (the extra ``hsconas[slim]``), and whether it was."""
    try:
        import onnxslim
    except ImportError:
        return model, False
    return onnxslim.slim(model), True


def _checked_variants(req: ExportRequest, variants: dict) -> dict[str, dict]:
    """Each precision's model with its metadata, checked (``onnx.checker``, TensorRT 8.5's op set, parity with
    PyTorch through onnxruntime), as {precision: {data, ops, parity}}; the first that fails refuses the export."""
    import hashlib

    import onnx

    x = np.ascontiguousarray(req.check_images, dtype=np.float32)
    written, fp32_sha = {}, None
    for prec, proto in variants.items():
        onnx.checker.check_model(proto, full_check=True)
        ops = sorted({n.op_type for n in proto.graph.node})
        outside = [op for op in ops if op not in TRT85_OPS]
        if outside:
            raise ExportError(f"the exported {prec} graph holds ops TensorRT 8.5 does not parse: {', '.join(outside)}")
        meta = dict(req.metadata) if prec == "fp32" else {**req.metadata, "precision": prec, "fp32_onnx_sha256": fp32_sha}
        data = _with_metadata(proto, meta)
        stats = _check_with_onnxruntime(data, req.net, x, req.batch_size, req.dynamic_batch)
        if prec == "fp32":
            fp32_sha = hashlib.sha256(data).hexdigest()
            if stats["max_abs_diff"] > 1e-4:
                raise ExportError(f"onnxruntime's outputs differ from PyTorch's by {stats['max_abs_diff']:.2e} (> 1e-4); "
                                  "not writing the model")
        else:
            check_parity(prec, stats, f"the {prec} ONNX through onnxruntime")
        written[prec] = {"data": data, "ops": ops, "parity": stats}
    return written


def _write_onnx(req: ExportRequest, prec: str, item: dict) -> dict:
    """Write one precision's checked model (``name.onnx``, or ``name.PREC.onnx``) atomically; what was written."""
    import hashlib

    path = req.out_dir / (f"{req.name}.onnx" if prec == "fp32" else f"{req.name}.{prec}.onnx")
    with atomic_path(path) as tmp:
        tmp.write_bytes(item["data"])
    return {"path": str(path), "bytes": len(item["data"]), "parity": item["parity"], "ops": item["ops"],
            "sha256": hashlib.sha256(item["data"]).hexdigest()}
