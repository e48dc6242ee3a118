"""Exporters of HSCoNets: one module per format, one table from format name to exporter.

Every exporter takes the standalone network (weights in place, BN statistics final), an output folder, a
file stem, the batch shape, the metadata to carry, and real, normalised images to check the result with; it
writes its files atomically and returns what it wrote and checked.
"""

from __future__ import annotations

from typing import Callable

from exporters import onnx as _onnx
from exporters import tensorrt as _tensorrt

FORMATS: dict[str, Callable[..., dict]] = {
    "onnx": _onnx.export_model,
    "trt": _tensorrt.export_engine,
}
