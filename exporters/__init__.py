"""Exporters of HSCoNets: one module per format, one table of formats (``FORMATS``), as Ultralytics'
``export_formats()`` keeps one.

Every exporter takes one ``ExportRequest`` (exporters.files): the standalone network (weights in place, BN
statistics final), an output folder, a file stem, the batch shape, the metadata to carry, and real, normalised
images to check the result with; it writes its files atomically and returns what it wrote and checked. A
format's row says what it is written as, at which precisions, whether it takes a DLA core or a dynamic batch,
which optional runtime it needs, and which latency backend runs its file as written. An exporter's module is
imported when its format is asked for (the ONNX one needs torch and onnx; the TensorRT one, TensorRT; the
OpenVINO and ExecuTorch ones, the optional extras ``hsconas[openvino]`` and ``hsconas[executorch]``). Errors are
``exporters.files.ExportError``. This package imports nothing of ``hsconas_cli``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

from exporters.files import ExportError, ExportRequest

PRECISIONS = ("fp32", "fp16", "int8")


def _resolve(target: str) -> Callable:
    module, function = target.split(":")
    return getattr(importlib.import_module(module), function)


@dataclass(frozen=True)
class Format:
    """One export format: its name (``--format``), what it writes, and the rules a request must meet."""

    name: str
    title: str  # what the file is, for people
    exporter: str  # "module:function" taking an ExportRequest
    suffix: str  # the main file's suffix
    precisions: tuple[str, ...] = PRECISIONS
    default_precision: str = "fp32"
    precision_words: str = ""  # how the precisions are said where they are fewer than all
    dla: bool = False  # takes --dla-core (a TensorRT engine on a Jetson's DLA)
    dynamic_batch: bool = True
    runtime: str | None = None  # "module:function" refusing in one line where the optional runtime is missing
    runs_on: str | None = None  # the latency backend that runs the file as written: the export is measured with it
    checked_with: str = ""  # what runs it for the parity check here

    def check(self, precision: str, dla_core: int | None = None, dynamic_batch: bool = False) -> None:
        """Refuse, in one line and before anything is written, options this format cannot meet (precision, DLA core,
        dynamic batch), or the format where its optional runtime is not installed."""
        if precision not in self.precisions:
            if self.precisions == PRECISIONS:
                raise ExportError(f"unknown precision {precision!r}; use {', '.join(PRECISIONS)}")
            raise ExportError(f"--format {self.name} is exported at {self.precision_words}, not {precision!r}")
        if dla_core is not None and not self.dla:
            raise ExportError("--dla-core applies to TensorRT engines (--format trt)")
        if self.dla:
            _resolve("exporters.tensorrt:check_build_options")(precision, dla_core)
        if dynamic_batch and not self.dynamic_batch:
            *rest, last = [f for f, x in FORMATS.items() if x.dynamic_batch]
            raise ExportError(f"--dynamic-batch applies to {', '.join(rest)} and {last}; a {self.suffix} program has a "
                              "static batch")
        if self.runtime:
            _resolve(self.runtime)()

    def export(self, req: ExportRequest) -> dict:
        """Write the format's files (its ``exporter``, which checks ``req`` against this row first); the report."""
        return _resolve(self.exporter)(req)


FORMATS: dict[str, Format] = {f.name: f for f in (
    Format("onnx", "ONNX", "exporters.onnx:export_model", ".onnx", runs_on="onnxruntime", checked_with="onnxruntime"),
    Format("trt", "TensorRT engine", "exporters.tensorrt:export_engine", ".engine", default_precision="fp16", dla=True,
           checked_with="TensorRT"),
    Format("openvino", "OpenVINO IR", "exporters.openvino:export_openvino", ".xml", precisions=("fp32", "fp16"),
           precision_words="fp32 or fp16 (weights)", runtime="exporters.openvino:openvino_module", runs_on="openvino",
           checked_with="OpenVINO (CPU)"),
    Format("pte", "ExecuTorch program", "exporters.executorch:export_pte", ".pte", precisions=("fp32",),
           precision_words="fp32 (XNNPACK's quantized flow is not wired)", dynamic_batch=False,
           runtime="exporters.executorch:executorch_version", runs_on="executorch", checked_with="ExecuTorch's runtime"),
)}


def get_format(name: str) -> Format:
    """The row of format ``name``; one line naming the formats where there is none."""
    if name not in FORMATS:
        raise ExportError(f"unknown format {name!r}; formats: {', '.join(FORMATS)}")
    return FORMATS[name]


def deployed_format(backend: str) -> str:
    """The format a device whose latency backend is ``backend`` deploys: the one that backend runs as written; ONNX
    for the others (a TensorRT device gets the ONNX its engines are built from)."""
    return next((f.name for f in FORMATS.values() if f.runs_on == backend), "onnx")
