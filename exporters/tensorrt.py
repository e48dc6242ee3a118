"""TensorRT engines from ONNX, and timing them on the GPU.

Two TensorRT API generations are supported, chosen by the installed version (``tensorrt_api``):

* **8.5-8.6** (8.5.2 on JetPack 5.1.x, Jetson AGX Xavier and Orin; 8.6.2 on JetPack 6.0): weakly typed
  networks. The network is created with the explicit-batch flag; fp16 comes from ``BuilderFlag.FP16`` on the
  fp32 ONNX; INT8 from ``BuilderFlag.INT8`` on a Q/DQ ONNX (explicit quantization, no calibrator object).
* **10.x and 11.x** (10.3 on JetPack 6.1-6.2; on x86 the pip wheel of the CUDA major torch was built for,
  ``tensorrt-cu12`` or ``tensorrt-cu13``): strongly typed networks. TensorRT 11 removed the precision flags,
  ``platform_has_fast_fp16``, ``int8_calibrator`` and ``set_calibration_profile``; the precision is in the ONNX
  itself: the half-precision ONNX for fp16, the Q/DQ ONNX for INT8 (``exporters.onnx.to_fp16`` /
  ``quantize_int8``). 10.x is driven the same way, so one path serves both, except DLA engines on 10.x: they are
  built weakly typed (the fp32 ONNX with ``BuilderFlag.FP16``), as 10.x's DLA documentation builds them.

DLA (``dla_core``) is allowed only where the installed version has it (NVIDIA's "Working with DLA"): 8.5-8.6,
10.0-10.7 (10.7 was the last 10.x release with DLA), and from 11.4.1 on Jetson AGX Orin only (11.0-11.3 have
none; 11.4.0 only on Windows on ARM).

Other versions (7.x, 8.0-8.4, 9.x, 12+) are refused in one line. Every call that TensorRT documents as able to
fail for a machine reason (no CUDA device, a container started without the NVIDIA runtime) is turned into a
one-line error. One TensorRT logger serves the whole process (TensorRT warns when another is made), quiet by
default: ``HSCONAS_TRT_LOG=warning`` (or info, verbose) shows more.

CUDA memory, streams, events and CUDA graphs come from PyTorch, which the product already needs and which JetPack
and the GPU wheels ship built for CUDA: no pycuda or cuda-python, so no second CUDA context to push and pop
beside the one torch trains in. An engine is timed over replays of a CUDA graph holding several enqueues, so a
small block on a 2-core Jetson measures the GPU, not Python's launch cost.

The engine file is the plan exactly as TensorRT serialised it: trtexec and DeepStream load it as it is. The
metadata lives in a JSON file beside it (see ``export_engine``).
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from exporters.files import ExportError, ExportRequest, atomic_path, time_runs, write_json

SUPPORTED = "TensorRT 8.5-8.6 (JetPack 5.1-6.0) or 10.x-11.x"
NVIDIA_DRIVER_VERSION = Path("/proc/driver/nvidia/version")  # "NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.104.05 ..."
# TensorRT 11.x's CUDA 13 packages need driver r580+ and a Turing or later GPU; CUDA 12 pip wheels need r535+.
MIN_DRIVER = {12: 535, 13: 580}


def install_hint(torch_cuda: str | None = None) -> str:
    """The pip command for the TensorRT wheel of the CUDA major version torch was built for (plain ``tensorrt``
    installs the CUDA 13 build from 10.13.2 on, which needs driver r580+)."""
    if torch_cuda is None:
        try:
            import torch

            torch_cuda = torch.version.cuda
        except Exception:
            torch_cuda = None
    major = _version(torch_cuda or "")[0]
    if major in MIN_DRIVER:
        return f"pip install 'tensorrt-cu{major}>=10,<12' (torch here is built for CUDA {torch_cuda})"
    return "pip install 'tensorrt-cu12>=10,<12' or 'tensorrt-cu13>=10.13.2,<12', the CUDA major version your torch was built for"


def no_tensorrt_message(torch_cuda: str | None = None) -> str:
    return (f"TensorRT is not installed here: hsconas needs {SUPPORTED}; it ships with JetPack (JetPack 5.1 on Jetson AGX "
            f"Xavier: build and run Dockerfile.jetson), or on an x86 GPU machine: {install_hint(torch_cuda)}")


def no_cuda_message(why: str, driver: str | None, trt_cuda: int | None, capability: tuple[int, int] | None) -> str:
    """TensorRT could not start CUDA: the driver, the CUDA major version the TensorRT wheel was built for, and the
    GPU's compute capability, where they can be read, and what they must be."""
    facts = [f"driver {driver}" if driver else "no NVIDIA driver found",
             f"TensorRT built for CUDA {trt_cuda}" if trt_cuda else None,
             f"GPU compute capability {capability[0]}.{capability[1]}" if capability else None]
    needs = []
    if trt_cuda in MIN_DRIVER and driver and _version(driver)[0] < MIN_DRIVER[trt_cuda]:
        needs.append(f"CUDA {trt_cuda} needs driver r{MIN_DRIVER[trt_cuda]}+: install tensorrt-cu12 instead, or update the driver")
    if trt_cuda == 13 and capability and capability < (7, 5):
        needs.append("the CUDA 13 build needs a Turing or later GPU (7.5+): install tensorrt-cu12")
    if not needs:
        needs.append("in a container, run it with '--runtime nvidia' (Jetson) or '--gpus all' (x86)")
    return f"TensorRT could not start CUDA ({why}; {', '.join(f for f in facts if f)}): {'; '.join(needs)}"


def cuda_facts() -> tuple[str | None, int | None, tuple[int, int] | None]:
    """(the NVIDIA driver's version, the CUDA major version of the installed TensorRT wheel, the GPU's compute
    capability), each None where it cannot be read."""
    import importlib.metadata as md

    text = ""
    try:
        text = NVIDIA_DRIVER_VERSION.read_text()
    except OSError:
        pass
    m = re.search(r"Kernel Module(?: for \S+)?\s+(\d+\.\d+(?:\.\d+)?)", text)
    trt_cuda = None
    for major in (13, 12):
        for name in (f"tensorrt-cu{major}-libs", f"tensorrt_cu{major}_libs", f"tensorrt-cu{major}"):
            try:
                md.version(name)
                trt_cuda = trt_cuda or major
            except md.PackageNotFoundError:
                pass
    capability = None
    try:
        import torch

        if torch.cuda.is_available():
            capability = tuple(torch.cuda.get_device_capability(0))
    except Exception:
        pass
    return (m.group(1) if m else None), trt_cuda, capability
ENQUEUES_PER_LAUNCH = 10  # enqueues captured in one CUDA graph: one Python launch per 10 runs


# ---- the installed TensorRT -------------------------------------------------------------------------
@dataclass(frozen=True)
class TrtApi:
    """The installed ``tensorrt`` module and the API generation hsconas drives it with."""

    trt: Any
    version: tuple[int, int]

    @property
    def strongly_typed(self) -> bool:
        return self.version[0] >= 10

    def typed_strongly(self, dla_core: int | None = None) -> bool:
        """Whether a build is strongly typed (the precision in the ONNX): on 10.x and 11.x, except DLA builds on
        10.x, which are weakly typed (fp32 ONNX and ``BuilderFlag.FP16``) as 10.x's DLA documentation builds them."""
        return self.strongly_typed and not (dla_core is not None and self.version[0] == 10)

    def dla_problem(self, board: str | None = None) -> str | None:
        """Why this TensorRT cannot build for DLA (NVIDIA's "Working with DLA"), or None. ``board``: the Jetson
        family of this machine (DLA from 11.4.1 is on Jetson AGX Orin only)."""
        v = _version3(self.name)
        if (8, 5) <= v[:2] < (9, 0) or (10, 0) <= v[:2] <= (10, 7):
            return None
        if v < (11, 4, 1):
            return (f"TensorRT {self.name} has no DLA (NVIDIA's 'Working with DLA': 10.7 was the last 10.x release with "
                    "DLA, 11.0-11.3 have none, 11.4.0 has it on Windows on ARM only): use TensorRT 8.5-8.6 or 10.0-10.7, "
                    "or build for the GPU without --dla-core")
        if board != "Jetson AGX Orin":
            return (f"TensorRT {self.name} runs DLA on Jetson AGX Orin only (NVIDIA's 'Working with DLA'), and this is "
                    f"{board or 'no Jetson'}: build for the GPU without --dla-core")
        return None

    @property
    def name(self) -> str:
        return self.trt.__version__


def tensorrt_available() -> bool:
    try:
        import tensorrt  # noqa: F401
    except Exception:
        return False
    return True


def require_tensorrt():
    try:
        import tensorrt as trt
    except ModuleNotFoundError as e:
        if e.name == "tensorrt":
            raise ExportError(no_tensorrt_message()) from None
        raise ExportError(f"TensorRT is installed but does not load ({e}): {install_hint()} on x86, JetPack's bindings on a "
                          "Jetson") from None
    except Exception as e:  # the bindings are there, their libraries are not (a container without the GPU runtime)
        why = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ExportError(f"TensorRT is installed but does not load ({why}): in a container, run it with "
                          "'--runtime nvidia' (Jetson) or '--gpus all' (x86)") from None
    return trt


def _version(text: str) -> tuple[int, int]:
    m = re.match(r"(\d+)\.(\d+)", str(text))
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def _version3(text: str) -> tuple[int, int, int]:
    m = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", str(text))
    return (int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)) if m else (0, 0, 0)


def tensorrt_api() -> TrtApi:
    """The installed TensorRT, if hsconas supports its version; a one-line refusal otherwise."""
    trt = require_tensorrt()
    v = _version(getattr(trt, "__version__", ""))
    if not ((8, 5) <= v < (9, 0) or (10, 0) <= v < (12, 0)):
        raise ExportError(f"TensorRT {getattr(trt, '__version__', '?')} is not supported: hsconas builds engines with "
                           f"{SUPPORTED}; on x86: {install_hint()}")
    return TrtApi(trt, v)


_LOGGERS: dict[int, Any] = {}
_SEVERITY = {"error": "ERROR", "warning": "WARNING", "info": "INFO", "verbose": "VERBOSE"}


def trt_logger(api: TrtApi):
    """The process's one TensorRT logger: errors only, unless ``HSCONAS_TRT_LOG`` says warning, info or verbose."""
    key = id(api.trt)
    if key not in _LOGGERS:
        level = _SEVERITY.get(os.environ.get("HSCONAS_TRT_LOG", "error").lower(), "ERROR")
        _LOGGERS[key] = api.trt.Logger(getattr(api.trt.Logger, level))
    return _LOGGERS[key]


def _start(api: TrtApi, factory: str):
    """``trt.Builder`` or ``trt.Runtime``: their bindings raise TypeError (a factory returned nullptr) or return
    None when CUDA cannot start."""
    try:
        obj = getattr(api.trt, factory)(trt_logger(api))
    except (TypeError, RuntimeError) as e:
        why = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ExportError(no_cuda_message(f"trt.{factory}: {why}", *cuda_facts())) from None
    if obj is None:
        raise ExportError(no_cuda_message(f"trt.{factory} returned nothing", *cuda_facts()))
    return obj


# ---- building ---------------------------------------------------------------------------------------
def check_build_options(precision: str, dla_core: int | None) -> None:
    """What can be refused before anything is written."""
    if precision not in ("fp32", "fp16", "int8"):
        raise ExportError(f"TensorRT precision must be fp32, fp16 or int8, not {precision!r}")
    if dla_core is not None and precision == "fp32":
        raise ExportError("DLA cores run fp16 or int8 only: with --dla-core use --precision fp16 or int8")


def build_engine(
    onnx_model: bytes,
    *,
    precision: str = "fp16",
    workspace_mb: int = 1024,
    dla_core: int | None = None,
    dynamic_shapes: tuple | None = None,
    timing_cache: str | Path | None = None,
    optimization_level: int | None = None,
    board: str | None = None,
) -> bytes:
    """Parse ONNX and build a serialized engine (the plan bytes).

    ``onnx_model`` must already carry the precision where the network is strongly typed (10.x, 11.x): the fp16
    ONNX for fp16, the Q/DQ ONNX for int8; on 8.5 the fp32 ONNX for fp32 and fp16, the Q/DQ ONNX for int8.
    ``dynamic_shapes`` = (min, opt, max) input shapes for a model exported with a dynamic batch.
    ``timing_cache``: a file of kernel timings kept across builds (and runs), which TensorRT reads before and
    extends after each build: a calibration's many small networks share most of their layers.
    ``optimization_level`` (8.6+): lower builds faster and may pick slower kernels (TensorRT's default is 3).
    ``board``: this machine's Jetson family, where DLA depends on it (``TrtApi.dla_problem``).
    """
    check_build_options(precision, dla_core)
    api = tensorrt_api()
    if dla_core is not None and (problem := api.dla_problem(board)):
        raise ExportError(problem)
    strong = api.typed_strongly(dla_core)
    _check_onnx_precision(api, onnx_model, precision, strong)
    builder = _start(api, "Builder")
    network = builder.create_network(_network_flags(api, strong))
    parser = api.trt.OnnxParser(network, trt_logger(api))
    if not parser.parse(onnx_model):
        errors = "; ".join(str(parser.get_error(i)).replace("\n", " ") for i in range(parser.num_errors))
        raise ExportError(f"TensorRT's ONNX parser rejected the model: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(api.trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    if dynamic_shapes is not None:
        profile = builder.create_optimization_profile()
        profile.set_shape(network.get_input(0).name, *dynamic_shapes)
        config.add_optimization_profile(profile)
    _set_precision(api, builder, config, precision, strong)
    if optimization_level is not None:
        if not hasattr(config, "builder_optimization_level"):
            raise ExportError(f"TensorRT {api.name} has no builder optimization level (TensorRT 8.6 and later)")
        config.builder_optimization_level = int(optimization_level)
    if dla_core is not None:
        _use_dla(api, builder, config, precision, dla_core)
    cache = _load_timing_cache(config, timing_cache)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise ExportError("TensorRT could not build an engine from this ONNX (HSCONAS_TRT_LOG=warning shows why)")
    if cache is not None:
        try:
            with atomic_path(Path(timing_cache)) as tmp:
                tmp.write_bytes(bytes(cache.serialize()))
        except OSError:
            pass  # the cache only saves time (a read-only profiles folder, say); the engine is built
    return bytes(plan)


def _check_onnx_precision(api: TrtApi, onnx_model: bytes, precision: str, strong: bool) -> None:
    """Refuse an ONNX whose own precision is not the one this build reads it at (``build_engine``'s docstring)."""
    from exporters.onnx import onnx_precision

    carried = onnx_precision(onnx_model)
    wanted = precision if strong else ("int8" if precision == "int8" else "fp32")
    if carried is not None and carried != wanted:  # None: no weights (an identity), the same at every precision
        raise ExportError(f"TensorRT {api.name} builds {precision} from a {wanted} ONNX, but this one is {carried}")


def _network_flags(api: TrtApi, strong: bool) -> int:
    """The network's creation flags: strongly typed on 10.x (11.x is always strongly typed and ignores, or lacks,
    the flag); explicit batch on 8.5, and on 10.x for DLA, where explicit batch is the only mode."""
    trt = api.trt
    if strong:
        flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
        return 0 if flag is None else 1 << int(flag)
    return 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)


def _set_precision(api: TrtApi, builder, config, precision: str, strong: bool) -> None:
    """fp32 means fp32 (no TF32); a weakly typed build takes fp16 and INT8 from builder flags (the Q/DQ nodes carry
    INT8's scales; the layers left unquantized run in fp16)."""
    trt = api.trt
    if precision == "fp32" and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)  # no TF32 convolutions on Ampere and later
    if strong or precision == "fp32":
        return
    if precision == "fp16" and not builder.platform_has_fast_fp16:
        raise ExportError("this GPU has no fast FP16; build with --precision fp32")
    if builder.platform_has_fast_fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    if precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)


def _use_dla(api: TrtApi, builder, config, precision: str, dla_core: int) -> None:
    """Build for DLA core ``dla_core``, falling back to the GPU for layers DLA cannot run."""
    trt = api.trt
    if precision == "int8" and api.version[0] < 10:
        raise ExportError(f"TensorRT {api.name} runs explicit (Q/DQ) INT8 on the GPU only, not on DLA: use "
                          "--precision fp16 with --dla-core")
    if builder.num_DLA_cores == 0:
        raise ExportError("this device has no DLA cores (DLA exists on Jetson AGX Xavier and Orin)")
    if not 0 <= dla_core < builder.num_DLA_cores:
        raise ExportError(f"--dla-core must be below {builder.num_DLA_cores}")
    config.default_device_type = trt.DeviceType.DLA
    config.DLA_core = int(dla_core)
    config.set_flag(trt.BuilderFlag.GPU_FALLBACK)


def _load_timing_cache(config, path: str | Path | None):
    """The builder's timing cache, seeded from ``path`` where it holds one this TensorRT and GPU accept."""
    if path is None:
        return None
    path = Path(path)
    seed = path.read_bytes() if path.is_file() else b""
    cache = config.create_timing_cache(seed)
    if cache is not None and config.set_timing_cache(cache, False):
        return cache
    cache = config.create_timing_cache(b"")  # another TensorRT or GPU wrote it: start a new one
    config.set_timing_cache(cache, False)
    return cache


def plan_key(onnx_model: bytes, settings: dict, api: TrtApi) -> str:
    """A name for the engine built from ``onnx_model`` with ``settings`` by this TensorRT."""
    h = hashlib.sha256(onnx_model)
    h.update(repr(sorted(settings.items())).encode())
    h.update(api.name.encode())
    return h.hexdigest()[:24]


# ---- running and timing -----------------------------------------------------------------------------
def cuda_graph_capture_mode(fn) -> dict[str, str]:
    """``capture_error_mode="thread_local"`` where ``fn`` (torch.cuda.graph, CUDAGraph.capture_begin) takes it
    (torch 2.0 on): only this thread's CUDA calls can break the capture, as trtexec captures; {} on older torch."""
    import inspect

    try:
        return {"capture_error_mode": "thread_local"} if "capture_error_mode" in inspect.signature(fn).parameters else {}
    except (TypeError, ValueError):
        return {}


def _torch_cuda():
    import torch

    if not torch.cuda.is_available():
        raise ExportError(f"running a TensorRT engine needs PyTorch with CUDA, and torch {torch.__version__} here "
                           "sees no CUDA device (a CPU-only torch build, or a container without the GPU)")
    return torch


class EngineRunner:
    """An engine with its input and output buffers bound once, on its own CUDA stream.

    ``time(k)``: milliseconds per run, from CUDA events around k runs, launched as replays of a CUDA graph that
    holds ``ENQUEUES_PER_LAUNCH`` enqueues (eager enqueues where the engine cannot be captured). Usable as a
    context manager; ``close`` releases the engine and its memory.
    """

    def __init__(self, plan: bytes, input_shape: tuple | None = None, *, dla_core: int | None = None):
        api = tensorrt_api()
        trt = api.trt
        self.torch = torch = _torch_cuda()
        self.runtime = _start(api, "Runtime")
        if dla_core is not None:
            self.runtime.DLA_core = int(dla_core)  # before deserializing: the engine binds to this core
        self.engine = self.runtime.deserialize_cuda_engine(plan)
        if self.engine is None:
            raise ExportError("TensorRT could not load the engine (built by another TensorRT version or GPU?)")
        self.context = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream()
        self.tensors, self.inputs = {}, []
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        for name in names:  # a dynamic batch takes its shape from the caller
            if self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                self.inputs.append(name)
                if -1 in tuple(self.engine.get_tensor_shape(name)):
                    if input_shape is None:
                        raise ExportError("this engine has a dynamic batch: give the input shape to run it")
                    self.context.set_input_shape(name, tuple(input_shape))
        gen = torch.Generator().manual_seed(0)
        for name in names:
            shape = tuple(self.context.get_tensor_shape(name))
            dtype = torch.from_numpy(np.empty(0, dtype=trt.nptype(self.engine.get_tensor_dtype(name)))).dtype
            t = (torch.randn(shape, generator=gen).to(dtype) if name in self.inputs else torch.empty(shape, dtype=dtype))
            self.tensors[name] = t.to("cuda")
            self.context.set_tensor_address(name, int(self.tensors[name].data_ptr()))
        self.start, self.end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        self.graph = self._capture()
        self.timer = ("cuda events, cuda-graph replays" if self.graph is not None
                      else "cuda events, eager enqueues (the engine could not be captured in a CUDA graph)")

    def _enqueue(self) -> None:
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise ExportError("TensorRT failed to run the engine")

    def _capture(self):
        """One CUDA graph of several enqueues, after a first enqueue outside capture (TensorRT sets up there)."""
        torch = self.torch
        self._enqueue()
        self.stream.synchronize()
        graph = torch.cuda.CUDAGraph()
        try:  # by hand, not torch.cuda.graph(): its exit leaves the capture stream current when capture fails
            with torch.cuda.stream(self.stream):
                graph.capture_begin(**cuda_graph_capture_mode(graph.capture_begin))
                try:
                    for _ in range(ENQUEUES_PER_LAUNCH):
                        self._enqueue()
                finally:
                    graph.capture_end()
        except Exception:  # expected for engines that cannot be captured (DLA): time eager enqueues
            torch.cuda.synchronize()
            return None
        return graph

    def set_input(self, name: str, array: np.ndarray) -> None:
        self.tensors[name].copy_(self.torch.from_numpy(np.ascontiguousarray(array)))

    def output(self, name: str | None = None) -> np.ndarray:
        name = name or next(n for n in self.tensors if n not in self.inputs)
        self.stream.synchronize()
        return self.tensors[name].float().cpu().numpy()

    def infer(self, x: np.ndarray) -> np.ndarray:
        """Outputs for one batch of real inputs (the engine's input shape)."""
        self.torch.cuda.synchronize()
        self.set_input(self.inputs[0], x.astype(np.float32))
        self.torch.cuda.synchronize()
        self._enqueue()
        return self.output()

    def time(self, k: int) -> float:
        torch = self.torch
        reps = ENQUEUES_PER_LAUNCH if self.graph is not None else 1
        launches = max(1, math.ceil(k / reps))
        with torch.cuda.stream(self.stream):
            self.start.record(self.stream)
            for _ in range(launches):
                if self.graph is not None:
                    self.graph.replay()
                else:
                    self._enqueue()
            self.end.record(self.stream)
        self.end.synchronize()
        return self.start.elapsed_time(self.end) / (launches * reps)

    def close(self) -> None:
        self.torch.cuda.synchronize()
        self.graph = self.context = self.engine = None
        self.tensors.clear()

    def __enter__(self) -> "EngineRunner":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---- export -----------------------------------------------------------------------------------------
ENGINE_CHECK_BATCHES = 8  # real batches the engine's outputs are compared on


def export_engine(req: ExportRequest) -> dict:
    """Write the ONNX (always, first: the fp32 one, and the fp16 or Q/DQ INT8 one the precision needs), then build
    a TensorRT engine from it. The engine's outputs on up to ``ENGINE_CHECK_BATCHES`` real batches must agree with
    PyTorch within the precision's tolerance (``exporters.onnx.TOLERANCE``), or no engine is written.
    ``out_dir/name.engine`` is the plan exactly as TensorRT serialised it; ``name.engine.json`` beside it holds
    the metadata, the build settings, the check and the engine's timing (CUDA events: warm-up, then the median and
    percentiles of ``timing_runs`` samples, each the mean of the enqueues one CUDA-graph replay holds)."""
    import time

    from exporters import FORMATS
    from exporters.onnx import export_model

    FORMATS["trt"].check(req.precision, req.dla_core, req.dynamic_batch)
    onnx_res = export_model(req)
    api = tensorrt_api()  # after the ONNX is written: a machine without TensorRT still gets it
    fp32_onnx, precision_onnx = onnx_res.pop("onnx"), onnx_res.pop("onnx_of_precision")
    weak_fp16 = not api.typed_strongly(req.dla_core) and req.precision != "int8"  # fp16 by builder flag, from fp32
    shape = req.input_shape
    t0 = time.perf_counter()
    plan = build_engine(fp32_onnx if weak_fp16 else precision_onnx, precision=req.precision,
                        workspace_mb=req.workspace_mb, dla_core=req.dla_core, optimization_level=req.optimization_level,
                        board=req.board, dynamic_shapes=((1, *shape[1:]), shape, shape) if req.dynamic_batch else None)
    build_s = time.perf_counter() - t0
    with EngineRunner(plan, shape, dla_core=req.dla_core) as runner:
        check = _engine_parity(runner, req)
        timing = time_runs(runner, req.timing_runs)
    engine_path = req.out_dir / f"{req.name}.engine"
    with atomic_path(engine_path) as tmp:
        tmp.write_bytes(plan)
    sidecar = {
        "kind": "hsconas-tensorrt-engine",
        "engine": engine_path.name,
        "onnx": Path(onnx_res["path"]).name,
        "tensorrt": api.name,
        "build": {"precision": req.precision, "typing": "strong" if api.typed_strongly(req.dla_core) else "weak",
                  "workspace_mb": req.workspace_mb, "dla_core": req.dla_core, "optimization_level": req.optimization_level,
                  "batch_size": req.batch_size, "dynamic_batch": req.dynamic_batch, "seconds": build_s},
        "check": check,
        "timing": timing,
        "metadata": req.metadata,
    }
    write_json(req.out_dir / f"{req.name}.engine.json", sidecar)
    return {"format": "trt", "path": str(engine_path), "sidecar": str(req.out_dir / f"{req.name}.engine.json"),
            "onnx": onnx_res, "timing": timing, "check": check, "tensorrt": api.name, "precision": req.precision}


def _engine_parity(runner: EngineRunner, req: ExportRequest) -> dict:
    """The engine's outputs against PyTorch's on up to ``ENGINE_CHECK_BATCHES`` real batches, refused outside the
    precision's tolerance."""
    import torch

    from exporters.onnx import check_parity, parity

    x, b = np.ascontiguousarray(req.check_images, dtype=np.float32), req.batch_size
    got, want = [], []
    for s in range(0, min(len(x), ENGINE_CHECK_BATCHES * b) - b + 1, b):
        got.append(runner.infer(x[s : s + b]))
        with torch.no_grad():
            want.append(req.net.eval()(torch.from_numpy(x[s : s + b])).numpy())
    if not got:
        raise ExportError(f"checking the engine needs at least {b} images")
    check = {**parity(np.concatenate(got), np.concatenate(want)), "batches": len(got)}
    check_parity(req.precision, check, f"the TensorRT engine on {len(got)} batches")
    return check
