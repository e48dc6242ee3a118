"""Exporters of HSCoNets: one module per format, one table from format name to exporter.

Every exporter takes the standalone network (weights in place, BN statistics final), an output folder, a
file stem, the batch shape, the metadata to carry, and real, normalised images to check the result with; it
writes its files atomically and returns what it wrote and checked. An exporter's module is imported when its
format is asked for (the ONNX one needs torch and onnx; the TensorRT one, TensorRT; the OpenVINO and ExecuTorch
ones, the optional extras ``hsconas[openvino]`` and ``hsconas[executorch]``). Errors are
``exporters.files.ExportError``. This package imports nothing of ``hsconas_cli``.
"""

from __future__ import annotations

import importlib
from typing import Callable

FORMATS: dict[str, str] = {
    "onnx": "exporters.onnx:export_model",
    "trt": "exporters.tensorrt:export_engine",
    "openvino": "exporters.openvino:export_openvino",
    "pte": "exporters.executorch:export_pte",
}


def exporter(fmt: str) -> Callable[..., dict]:
    """The export function of format ``fmt`` (a key of FORMATS)."""
    module, function = FORMATS[fmt].split(":")
    return getattr(importlib.import_module(module), function)
