"""ONNX export of a network of the space: an HSCoNet for deployment, or one block for the latency table."""

from __future__ import annotations

import inspect
import io
import warnings
from pathlib import Path

import torch
from torch import nn

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


def export_onnx(model: nn.Module, path: str | Path, input_shape: tuple[int, ...], **kwargs) -> Path:
    """Export to ``path`` atomically (see ``to_onnx_bytes`` for the options)."""
    from hsconas_cli.fileio import atomic_path

    data = to_onnx_bytes(model, input_shape, **kwargs)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


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
    "Div", "Flatten", "Gather", "Gemm", "GlobalAveragePool", "Identity", "MatMul", "MaxPool", "Mul", "Relu",
    "Reshape", "Shape", "Slice", "Split", "Squeeze", "Sub", "Transpose", "Unsqueeze",
})


def export_model(
    net,
    out_dir: str | Path,
    *,
    name: str,
    batch_size: int,
    dynamic_batch: bool = False,
    metadata: dict,
    check_images,
    opset: int = OPSET,
    **_unused,
) -> dict:
    """Export ``net`` to ``out_dir/name.onnx``: opset 17, static batch unless ``dynamic_batch``, BN folded,
    simplified with onnxslim where it is installed, ``onnx.checker`` clean, metadata in the model's
    metadata props, ops inside TensorRT 8.5's parser, and outputs through onnxruntime checked against PyTorch
    on ``check_images`` (max abs difference <= 1e-4)."""
    import json

    import numpy as np
    import onnx
    import onnxruntime as ort

    from hsconas_cli.errors import HsconasError
    from hsconas_cli.fileio import atomic_path

    net = net.eval()
    c, h, w = check_images.shape[1:]
    model = onnx.load_from_string(to_onnx_bytes(net, (batch_size, c, h, w), opset=opset, dynamic_batch=dynamic_batch))
    slimmed = False
    try:
        import onnxslim

        model = onnxslim.slim(model)
        slimmed = True
    except ImportError:
        pass
    onnx.checker.check_model(model, full_check=True)
    ops = sorted({n.op_type for n in model.graph.node})
    outside = [op for op in ops if op not in TRT85_OPS]
    if outside:
        raise HsconasError(f"the exported graph holds ops TensorRT 8.5 does not parse: {', '.join(outside)}")
    meta = {"hsconas": json.dumps(metadata, sort_keys=True)}
    meta.update({k: (v if isinstance(v, str) else json.dumps(v)) for k, v in metadata.items()})
    del model.metadata_props[:]
    for k, v in meta.items():
        model.metadata_props.add(key=k, value=v)
    data = model.SerializeToString()
    # parity on real images, in batches of the exported shape
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    worst = 0.0
    x = np.asarray(check_images, dtype=np.float32)
    with torch.no_grad():
        for s in range(0, len(x) - batch_size + 1 if not dynamic_batch else len(x), batch_size):
            xb = x[s : s + batch_size]
            if len(xb) < batch_size and not dynamic_batch:
                break
            got = session.run(None, {INPUT_NAME: xb})[0]
            want = net(torch.from_numpy(xb)).numpy()
            worst = max(worst, float(np.abs(got - want).max()))
    if worst > 1e-4:
        raise HsconasError(f"onnxruntime's outputs differ from PyTorch's by {worst:.2e} (> 1e-4); not writing the model")
    path = Path(out_dir) / f"{name}.onnx"
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return {
        "format": "onnx", "path": str(path), "bytes": len(data), "opset": model.opset_import[0].version,
        "ops": ops, "slimmed": slimmed, "max_abs_diff": worst, "checked_images": int(len(x)),
        "input": {"name": INPUT_NAME, "shape": ["batch" if dynamic_batch else batch_size, c, h, w]},
        "output": {"name": OUTPUT_NAME}, "onnx": data,
    }
