"""Inference backends a latency is measured with: onnxruntime, torch, tensorrt, openvino, executorch.

A backend turns a module and an input shape into a ``Runner``, whose ``time(k)`` runs the model ``k`` times
back to back and returns milliseconds per run. Inputs and outputs are bound once, so a run measures the
inference and the backend's fixed cost of one call, not data copies.

* ``onnxruntime``: exported to ONNX, one InferenceSession per model with fixed thread counts, I/O binding;
  providers CPU (default), CUDA or TensorRT where installed. Timed with the wall clock (CPU) or by
  synchronising the device.
* ``torch``: the module itself under ``inference_mode``. On CPU, wall clock with a fixed thread count. On
  CUDA, CUDA events around CUDA-graph replays (the default; ``graphs: false`` times eager launches).
* ``tensorrt``: an engine built from the ONNX (FP16 by default), timed with CUDA events over CUDA-graph
  replays. TensorRT 8.5-8.6 (JetPack 5) and 10.x-11.x; see ``exporters.tensorrt``.
* ``openvino``: the ONNX read by OpenVINO's own frontend and compiled for its CPU device with a performance
  hint, a thread count and a stated inference precision; one infer request on a bound input, wall clock. See
  ``exporters.openvino`` (extra ``hsconas[openvino]``).
* ``executorch``: ``torch.export`` of the module lowered to the XNNPACK delegate and run in ExecuTorch's
  runtime on a threadpool of a fixed size, wall clock. Lowering costs seconds per network, so programs are
  lowered ahead of timing (``lower_ahead``) into a cache folder keyed by content. See ``exporters.executorch``
  (extra ``hsconas[executorch]``).

Every backend also runs the files its format is deployed as (``prepare_file``): an ONNX, an OpenVINO IR, a
``.pte`` program, so an export is measured as written.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from typing import TYPE_CHECKING

import numpy as np

from exporters.tensorrt import cuda_graph_capture_mode
from hsconas_cli.errors import HsconasError

if TYPE_CHECKING:  # torch is imported where a backend is made, not with the registry (the schema reads it)
    import torch
    from torch import nn


def _torch():
    import torch

    return torch


class Runner:
    """A model ready to run on fixed, pre-bound inputs. ``timer``: how ``time`` times it (stored with every LUT
    entry, so that a profile whose entries were timed differently says so)."""

    timer = "wall clock"

    def time(self, k: int) -> float:  # milliseconds per run over k back-to-back runs
        raise NotImplementedError

    def close(self) -> None:
        pass


@dataclass
class Backend:
    name: str
    options: dict[str, Any] = field(default_factory=dict)
    consumes_onnx = False  # True: prepare_onnx(bytes, shape) is the native entry point
    lowers_ahead = False  # True: preparing a module is slow; lower_ahead(items) does it before any timing

    def prepare(self, model: nn.Module, input_shape: tuple[int, ...]) -> Runner:
        raise NotImplementedError

    def prepare_file(self, path: Path, input_shape: tuple[int, ...]) -> Runner:
        """A runner of an exported file of this backend's format."""
        if self.consumes_onnx and Path(path).suffix == ".onnx":
            return self.prepare_onnx(Path(path).read_bytes(), input_shape)
        raise HsconasError(f"the {self.name} backend does not run {Path(path).name}")

    def versions(self) -> dict[str, str]:
        return {"torch": _torch().__version__}


# ---- onnxruntime -----------------------------------------------------------------------------------
ORT_PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}


class OrtRunner(Runner):
    def __init__(self, session, input_shape, device: str):
        import onnxruntime as ort

        self.session = session
        dev = "cuda" if device in ("cuda", "tensorrt") else "cpu"
        x = np.random.default_rng(0).standard_normal(input_shape, dtype=np.float32)
        self._x = ort.OrtValue.ortvalue_from_numpy(x, dev, 0)
        out = session.get_outputs()[0]
        self._y = ort.OrtValue.ortvalue_from_shape_and_type(_static_shape(out.shape, input_shape[0]), np.float32, dev, 0)
        self.binding = session.io_binding()
        self.binding.bind_ortvalue_input(session.get_inputs()[0].name, self._x)
        self.binding.bind_ortvalue_output(out.name, self._y)
        self._sync = self.binding.synchronize_outputs if dev == "cuda" else (lambda: None)

    def time(self, k: int) -> float:
        run, binding, sync = self.session.run_with_iobinding, self.binding, self._sync
        t0 = time.perf_counter()
        for _ in range(k):
            run(binding)
        sync()
        return (time.perf_counter() - t0) * 1e3 / k


def _static_shape(shape, batch: int) -> list[int]:
    return [batch if not isinstance(d, int) else d for d in shape]


class OnnxruntimeBackend(Backend):
    """Options: ``provider`` (cpu | cuda | tensorrt), ``threads`` (intra-op, default 1)."""

    consumes_onnx = True

    def __init__(self, options: dict[str, Any] | None = None):
        super().__init__("onnxruntime", {"provider": "cpu", "threads": 1, **(options or {})})
        import onnxruntime as ort

        provider = ORT_PROVIDERS.get(self.options["provider"])
        if provider is None:
            raise HsconasError(f"unknown onnxruntime provider {self.options['provider']!r}; use cpu, cuda or tensorrt")
        if provider not in ort.get_available_providers():
            raise HsconasError(
                f"onnxruntime here has no {provider} (available: {', '.join(ort.get_available_providers())}); "
                "install onnxruntime-gpu for cuda/tensorrt"
            )
        self.provider = provider

    def session_options(self):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = int(self.options["threads"])
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        return so

    def prepare(self, model: nn.Module, input_shape: tuple[int, ...]) -> Runner:
        from exporters.onnx import to_onnx_bytes

        return self.prepare_onnx(to_onnx_bytes(model, input_shape), input_shape)

    def prepare_onnx(self, onnx_model: bytes | str, input_shape: tuple[int, ...]) -> Runner:
        import onnxruntime as ort

        providers = [self.provider] + (["CPUExecutionProvider"] if self.provider != "CPUExecutionProvider" else [])
        session = ort.InferenceSession(onnx_model, self.session_options(), providers=providers)
        return OrtRunner(session, input_shape, self.options["provider"])

    def versions(self) -> dict[str, str]:
        import onnxruntime as ort

        return {"onnxruntime": ort.__version__, "torch": _torch().__version__}


# ---- torch -----------------------------------------------------------------------------------------
class TorchCpuRunner(Runner):
    """Times on ``threads`` intra-op threads and gives the process its own count back after each call, so that a
    measurement never changes what runs after it (training in the same process, say)."""

    def __init__(self, model: nn.Module, x: torch.Tensor, threads: int):
        self.model, self.x, self.threads = model, x, threads

    def time(self, k: int) -> float:
        torch = _torch()
        model, x = self.model, self.x
        before = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            with torch.inference_mode():
                t0 = time.perf_counter()
                for _ in range(k):
                    model(x)
                return (time.perf_counter() - t0) * 1e3 / k
        finally:
            torch.set_num_threads(before)


class TorchCudaRunner(Runner):
    """CUDA events around k replays of a captured CUDA graph (or k eager calls)."""

    def __init__(self, model: nn.Module, x: torch.Tensor, graphs: bool):
        torch = _torch()
        self.model, self.x, self.graph = model, x, None
        self.timer = "cuda events, cuda-graph replays" if graphs else "cuda events, eager launches"
        if graphs:
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream), torch.inference_mode():
                for _ in range(3):  # warm-up on a side stream before capture, as the CUDA-graph docs ask
                    model(x)
            torch.cuda.current_stream().wait_stream(stream)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph, **cuda_graph_capture_mode(torch.cuda.graph)), torch.inference_mode():
                self.out = model(x)  # a capture that fails raises: never a silent fall-back to eager timing
        self.start, self.end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def time(self, k: int) -> float:
        with _torch().inference_mode():
            self.start.record()
            if self.graph is not None:
                for _ in range(k):
                    self.graph.replay()
            else:
                for _ in range(k):
                    self.model(self.x)
            self.end.record()
            self.end.synchronize()
        return self.start.elapsed_time(self.end) / k


class TorchBackend(Backend):
    """Options: ``device`` (cpu | cuda), ``threads`` (CPU), ``graphs`` (CUDA graphs, default true),
    ``dtype`` (float32 | float16 | bfloat16), ``channels_last`` (default true on CUDA)."""

    def __init__(self, options: dict[str, Any] | None = None):
        opts = {"device": "cpu", **(options or {})}
        if opts["device"] == "cuda":
            opts = {"graphs": True, "dtype": "float32", "channels_last": True, **opts}
        else:
            opts = {"threads": 1, "dtype": "float32", **opts}
        super().__init__("torch", opts)
        if opts["device"] == "cuda" and not _torch().cuda.is_available():
            raise HsconasError("the torch backend was asked for CUDA, but torch sees no CUDA device here")
        if opts["device"] not in ("cpu", "cuda"):
            raise HsconasError(f"torch backend device must be cpu or cuda, not {opts['device']!r}")

    def prepare(self, model: nn.Module, input_shape: tuple[int, ...]) -> Runner:
        torch = _torch()
        dtype = getattr(torch, self.options.get("dtype", "float32"))
        model = model.eval()
        if self.options["device"] == "cpu":
            return TorchCpuRunner(model.to(dtype), torch.randn(input_shape, dtype=dtype), int(self.options["threads"]))
        fmt = torch.channels_last if self.options.get("channels_last", True) else torch.contiguous_format
        model = model.to("cuda", dtype=dtype, memory_format=fmt)
        x = torch.randn(input_shape, device="cuda", dtype=dtype).contiguous(memory_format=fmt)
        return TorchCudaRunner(model, x, bool(self.options.get("graphs", True)))

    def versions(self) -> dict[str, str]:
        torch = _torch()
        v = {"torch": torch.__version__}
        if self.options["device"] == "cuda":
            v["cuda"] = torch.version.cuda or ""
            v["cudnn"] = str(torch.backends.cudnn.version())
        return v


# ---- tensorrt --------------------------------------------------------------------------------------
class TensorrtBackend(Backend):
    """Options: ``precision`` (fp16 | fp32), ``workspace_mb``, ``dla_core``, ``optimization_level`` (8.6+).

    Engines are built from each entry's ONNX (converted to half precision first for fp16 where TensorRT is
    strongly typed: 10.x, 11.x); see ``exporters.tensorrt``. ``timing_cache``: a file of kernel timings shared by
    every build (and kept between calibrations). ``plan_dir``: where built plans are kept under their ONNX's hash,
    so a network measured twice is built once and an interrupted calibration resumes without rebuilding. ``board``:
    the Jetson family DLA builds are checked against."""

    consumes_onnx = True

    def __init__(self, options: dict[str, Any] | None = None):
        super().__init__("tensorrt", {"precision": "fp16", "workspace_mb": 1024, **(options or {})})
        from exporters.tensorrt import check_build_options, tensorrt_api

        if self.options["precision"] == "int8":
            raise HsconasError("latency tables are measured at fp16 or fp32 (INT8 blocks would each need their own "
                               "calibration images); hsconas export --precision int8 builds INT8 engines")
        check_build_options(self.options["precision"], self.options.get("dla_core"))
        self.api = tensorrt_api()
        self.timing_cache: Path | None = None
        self.plan_dir: Path | None = None
        self.board: str | None = None  # this Jetson's family, where DLA depends on it (set by who measures: devices.jetson_family)
        self.builds, self.build_seconds = 0, 0.0

    def prepare(self, model: nn.Module, input_shape: tuple[int, ...]) -> Runner:
        from exporters.onnx import to_onnx_bytes

        return self.prepare_onnx(to_onnx_bytes(model, input_shape), input_shape)

    def plan(self, onnx_model: bytes) -> bytes:
        """The engine of ``onnx_model`` (fp32 ONNX), built here or taken from ``plan_dir``."""
        from exporters.tensorrt import build_engine, plan_key

        precision = self.options["precision"]
        if precision == "fp16" and self.api.typed_strongly(self.options.get("dla_core")):
            import onnx

            from exporters.onnx import to_fp16

            onnx_model = to_fp16(onnx.load_from_string(onnx_model)).SerializeToString()
        settings = {k: v for k, v in self.options.items() if k != "protocol"}
        path = None if self.plan_dir is None else self.plan_dir / f"{plan_key(onnx_model, settings, self.api)}.plan"
        if path is not None and path.is_file():
            return path.read_bytes()
        t0 = time.perf_counter()
        plan = build_engine(onnx_model, precision=precision, workspace_mb=int(self.options["workspace_mb"]),
                            dla_core=self.options.get("dla_core"), optimization_level=self.options.get("optimization_level"),
                            timing_cache=self.timing_cache, board=self.board)
        self.builds, self.build_seconds = self.builds + 1, self.build_seconds + time.perf_counter() - t0
        if path is not None:
            from hsconas_cli.fileio import atomic_path

            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp:
                tmp.write_bytes(plan)
        return plan

    def prepare_onnx(self, onnx_model: bytes, input_shape: tuple[int, ...]) -> Runner:
        from exporters.tensorrt import EngineRunner

        return EngineRunner(self.plan(onnx_model), input_shape, dla_core=self.options.get("dla_core"))

    def versions(self) -> dict[str, str]:
        return {"tensorrt": self.api.name, "torch": _torch().__version__}


# ---- openvino --------------------------------------------------------------------------------------
class OpenvinoBackend(Backend):
    """Options: ``device`` (cpu, default; gpu or npu where OpenVINO sees one), ``hint`` (latency, default |
    throughput | none), ``threads`` (INFERENCE_NUM_THREADS, default 1), ``precision`` (the inference precision:
    fp32, default | bf16 | fp16)."""

    consumes_onnx = True

    def __init__(self, options: dict[str, Any] | None = None):
        super().__init__("openvino", {"device": "cpu", "hint": "latency", "threads": 1, "precision": "fp32",
                                      **(options or {})})
        from exporters.openvino import compile_config, openvino_module

        self.ov = openvino_module()
        self.config = compile_config(hint=self.options["hint"], threads=self.options["threads"],
                                     precision=self.options["precision"])
        self.core = self.ov.Core()
        self.target = str(self.options["device"]).upper()
        if self.target not in self.core.available_devices:
            raise HsconasError(f"OpenVINO sees no {self.target} device here (it sees {', '.join(self.core.available_devices)})")

    def prepare(self, model: nn.Module, input_shape: tuple[int, ...]) -> Runner:
        from exporters.onnx import to_onnx_bytes

        return self.prepare_onnx(to_onnx_bytes(model, input_shape), input_shape)

    def prepare_onnx(self, onnx_model: bytes | str, input_shape: tuple[int, ...]) -> Runner:
        return self._runner(self.core.read_model(onnx_model), input_shape)

    def prepare_file(self, path: Path, input_shape: tuple[int, ...]) -> Runner:
        if Path(path).suffix not in (".onnx", ".xml"):
            raise HsconasError(f"the openvino backend runs .onnx or .xml (IR) files, not {Path(path).name}")
        return self._runner(self.core.read_model(str(path)), input_shape)

    def _runner(self, model, input_shape: tuple[int, ...]) -> Runner:
        from exporters.openvino import CompiledRunner

        return CompiledRunner(self.core.compile_model(model, self.target, self.config), input_shape)

    def versions(self) -> dict[str, str]:
        return {"openvino": self.ov.get_version(), "torch": _torch().__version__}


# ---- executorch ------------------------------------------------------------------------------------
class ExecutorchBackend(Backend):
    """Options: ``delegate`` (xnnpack, the only one), ``threads`` (ExecuTorch's threadpool, default 1).

    ``program_dir``: where lowered programs are kept under a hash of their content (``exporters.executorch.lower``);
    ``lower_ahead(items)`` lowers a list of (module, shape, recipe) into it before anything is timed, in ``workers``
    processes (two on a machine of two cores or more), so that no lowering runs beside a timing."""

    lowers_ahead = True

    def __init__(self, options: dict[str, Any] | None = None):
        super().__init__("executorch", {"delegate": "xnnpack", "threads": 1, **(options or {})})
        from exporters.executorch import executorch_version

        if self.options["delegate"] != "xnnpack":
            raise HsconasError(f"the executorch backend lowers to the xnnpack delegate, not {self.options['delegate']!r}")
        self.version = executorch_version()
        self.program_dir: Path | None = None
        self.workers = max(1, min(2, os.cpu_count() or 1))  # lowering processes (lower_ahead)
        self.lowered, self.lower_seconds = 0, 0.0  # programs lowered here, and the wall-clock time it took

    def program(self, model: nn.Module, input_shape: tuple[int, ...]) -> bytes:
        """The lowered program of ``model``, from ``program_dir`` where it is there."""
        from exporters.executorch import lower

        return lower(model, input_shape, self.program_dir)

    def prepare(self, model: nn.Module, input_shape: tuple[int, ...]) -> Runner:
        return self.prepare_program(self.program(model.eval(), input_shape), input_shape)

    def prepare_program(self, program: bytes, input_shape: tuple[int, ...]) -> Runner:
        from exporters.executorch import ProgramRunner

        return ProgramRunner(program, input_shape, int(self.options["threads"]))

    def prepare_file(self, path: Path, input_shape: tuple[int, ...]) -> Runner:
        if Path(path).suffix != ".pte":
            raise HsconasError(f"the executorch backend runs .pte programs, not {Path(path).name}")
        return self.prepare_program(Path(path).read_bytes(), input_shape)

    def lower_ahead(self, items: list[tuple], progress=None) -> None:
        """Lower every (module, shape, recipe) of ``items`` not yet in ``program_dir``, in ``workers`` processes,
        which rebuild each module from its ``exporters.executorch.Recipe`` and weights (never unpickle one)."""
        from exporters.executorch import lower_many

        if self.program_dir is None:
            raise HsconasError("lowering ahead needs a program folder (program_dir)")
        t0 = time.perf_counter()
        n = lower_many(items, self.program_dir, self.workers, progress)
        self.lowered, self.lower_seconds = self.lowered + n, self.lower_seconds + (time.perf_counter() - t0 if n else 0.0)

    def versions(self) -> dict[str, str]:
        return {"executorch": self.version, "torch": _torch().__version__}


# ---- the registry: every backend, by the name device presets and --backend use ------------------------------
BACKENDS: dict[str, type[Backend]] = {
    "onnxruntime": OnnxruntimeBackend,
    "torch": TorchBackend,
    "tensorrt": TensorrtBackend,
    "openvino": OpenvinoBackend,
    "executorch": ExecutorchBackend,
}


def make_backend(name: str, options: dict[str, Any] | None = None) -> Backend:
    """The backend ``name`` (a key of ``BACKENDS``) with ``options``; one line naming the backends where unknown."""
    if name not in BACKENDS:
        raise HsconasError(f"unknown backend {name!r}; use {', '.join(BACKENDS)}")
    return BACKENDS[name](options)
