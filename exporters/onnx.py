"""ONNX export of a network of the space (an HSCoNet, or one block for the latency table)."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import torch
from torch import nn

OPSET = 17  # TensorRT 8.5 (JetPack 5) parses up to opset 17
INPUT_NAME, OUTPUT_NAME = "input", "logits"


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
                dynamo=False,
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
