"""TensorRT engines from ONNX, and timing them with CUDA events.

Written against the TensorRT Python API shared by TensorRT 8.5 (JetPack 5) and TensorRT 10:
``build_serialized_network``, ``set_memory_pool_limit`` and the named-tensor execution API
(``num_io_tensors`` / ``set_tensor_address`` / ``execute_async_v3``, all present since 8.5). An explicit-batch
network flag is passed where the installed TensorRT still has it (8.x); TensorRT 10 networks are always
explicit-batch. CUDA memory and events come from pycuda, or from cuda-python where pycuda is missing.

The engine file is the plan exactly as TensorRT serialised it: trtexec and DeepStream load it as it is. The
metadata lives in a JSON file beside it (see ``hsconas_cli.export``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np

from hsconas_cli.errors import HsconasError

NO_TENSORRT = (
    "TensorRT is not installed here: it ships with JetPack (JetPack 5.1 / L4T R35 on Jetson AGX Xavier) or as the "
    "'tensorrt' wheel on x86 GPU machines; build and run Dockerfile.jetson on the device"
)


def tensorrt_available() -> bool:
    try:
        import tensorrt  # noqa: F401
    except Exception:
        return False
    return True


def require_tensorrt():
    try:
        import tensorrt as trt
    except Exception:
        raise HsconasError(NO_TENSORRT) from None
    return trt


def _cuda():
    """pycuda (with a context made current), or cuda-python's runtime API; a clear error without either."""
    try:
        import pycuda.autoinit  # noqa: F401
        import pycuda.driver as cuda

        return "pycuda", cuda
    except Exception:
        pass
    try:
        from cuda import cudart  # cuda-python

        return "cuda-python", cudart
    except Exception:
        raise HsconasError("timing a TensorRT engine needs pycuda or cuda-python (pip install pycuda)") from None


def _check(result):
    """cuda-python returns (error, value...) tuples."""
    err, *rest = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise HsconasError(f"CUDA call failed with error {int(err)}")
    return rest[0] if len(rest) == 1 else rest


def build_engine(
    onnx_model: bytes,
    *,
    fp16: bool = True,
    int8_calibrator=None,
    workspace_mb: int = 1024,
    dla_core: int | None = None,
    dynamic_shapes: tuple | None = None,
) -> bytes:
    """Parse ONNX and build a serialized engine (the plan bytes).

    ``dynamic_shapes`` = (min, opt, max) input shapes for a model exported with a dynamic batch.
    """
    trt = require_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):  # TensorRT 8.x; implied in 10
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_model):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise HsconasError(f"TensorRT's ONNX parser rejected the model: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    if dynamic_shapes is not None:
        profile = builder.create_optimization_profile()
        profile.set_shape(network.get_input(0).name, *dynamic_shapes)
        config.add_optimization_profile(profile)
        if int8_calibrator is not None:
            config.set_calibration_profile(profile)
    if fp16:
        if not builder.platform_has_fast_fp16:
            raise HsconasError("this GPU has no fast FP16; build with --precision fp32")
        config.set_flag(trt.BuilderFlag.FP16)
    if int8_calibrator is not None:
        config.set_flag(trt.BuilderFlag.INT8)
        config.int8_calibrator = int8_calibrator
    if dla_core is not None:
        if builder.num_DLA_cores == 0:
            raise HsconasError("this device has no DLA cores (DLA exists on Jetson AGX Xavier and Orin)")
        if not 0 <= dla_core < builder.num_DLA_cores:
            raise HsconasError(f"--dla-core must be below {builder.num_DLA_cores}")
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = int(dla_core)
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise HsconasError("TensorRT could not build an engine from this ONNX (see its log above)")
    return bytes(plan)


class EngineRunner:
    """An engine with device buffers bound once; ``time(k)`` = CUDA-event milliseconds per run over k runs."""

    def __init__(self, plan: bytes, input_shape: tuple | None = None):
        trt = require_tensorrt()
        self.kind, self.cuda = _cuda()
        logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(logger)
        self.engine = self.runtime.deserialize_cuda_engine(plan)
        if self.engine is None:
            raise HsconasError("TensorRT could not load the engine (built by another TensorRT version or GPU?)")
        self.context = self.engine.create_execution_context()
        self.buffers, self.shapes = [], {}
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        for name in names:  # a dynamic batch takes its shape from the caller
            if self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT and -1 in tuple(self.engine.get_tensor_shape(name)):
                if input_shape is None:
                    raise HsconasError("this engine has a dynamic batch: give the input shape to run it")
                self.context.set_input_shape(name, tuple(input_shape))
        for name in names:
            shape = tuple(self.context.get_tensor_shape(name))
            dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(name)))
            nbytes = int(np.prod(shape)) * dtype.itemsize
            ptr = self._alloc(nbytes)
            self.context.set_tensor_address(name, int(ptr))
            self.shapes[name] = (shape, dtype, self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT)
            self.buffers.append((name, ptr, nbytes))
        if self.kind == "pycuda":
            self.stream = self.cuda.Stream()
            self.start, self.end = self.cuda.Event(), self.cuda.Event()
            self.handle = self.stream.handle
        else:
            self.stream = _check(self.cuda.cudaStreamCreate())
            self.start, self.end = _check(self.cuda.cudaEventCreate()), _check(self.cuda.cudaEventCreate())
            self.handle = int(self.stream)
        rng = np.random.default_rng(0)
        for name, (shape, dtype, is_input) in self.shapes.items():
            if is_input:
                self.set_input(name, rng.standard_normal(shape).astype(dtype))

    def _alloc(self, nbytes: int):
        if self.kind == "pycuda":
            return self.cuda.mem_alloc(max(1, nbytes))
        return _check(self.cuda.cudaMalloc(max(1, nbytes)))

    def _ptr(self, name):
        return next(p for n, p, _ in self.buffers if n == name)

    def set_input(self, name: str, array: np.ndarray) -> None:
        array = np.ascontiguousarray(array)
        if self.kind == "pycuda":
            self.cuda.memcpy_htod(self._ptr(name), array)
        else:
            _check(self.cuda.cudaMemcpy(int(self._ptr(name)), array.ctypes.data, array.nbytes,
                                        self.cuda.cudaMemcpyKind.cudaMemcpyHostToDevice))

    def output(self, name: str | None = None) -> np.ndarray:
        name = name or next(n for n, (_, _, inp) in self.shapes.items() if not inp)
        shape, dtype, _ = self.shapes[name]
        out = np.empty(shape, dtype)
        self.synchronize()
        if self.kind == "pycuda":
            self.cuda.memcpy_dtoh(out, self._ptr(name))
        else:
            _check(self.cuda.cudaMemcpy(out.ctypes.data, int(self._ptr(name)), out.nbytes,
                                        self.cuda.cudaMemcpyKind.cudaMemcpyDeviceToHost))
        return out

    def run(self) -> None:
        if not self.context.execute_async_v3(self.handle):
            raise HsconasError("TensorRT failed to run the engine")

    def synchronize(self) -> None:
        if self.kind == "pycuda":
            self.stream.synchronize()
        else:
            _check(self.cuda.cudaStreamSynchronize(self.stream))

    def time(self, k: int) -> float:
        if self.kind == "pycuda":
            self.start.record(self.stream)
            for _ in range(k):
                self.run()
            self.end.record(self.stream)
            self.end.synchronize()
            return self.start.time_till(self.end) / k
        _check(self.cuda.cudaEventRecord(self.start, self.stream))
        for _ in range(k):
            self.run()
        _check(self.cuda.cudaEventRecord(self.end, self.stream))
        _check(self.cuda.cudaEventSynchronize(self.end))
        return _check(self.cuda.cudaEventElapsedTime(self.start, self.end)) / k

    def close(self) -> None:
        pass


def make_int8_calibrator(batches: Iterable[np.ndarray], cache_file: str | Path):
    """An entropy calibrator (IInt8EntropyCalibrator2) fed with real, normalised images; the cache is reused."""
    trt = require_tensorrt()
    kind, cuda = _cuda()
    cache_file = Path(cache_file)

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.batches = iter(batches)
            self.first = None
            self.device = None

        def get_batch_size(self):
            return self._peek().shape[0] if self._peek() is not None else 1

        def _peek(self):
            if self.first is None:
                self.first = next(self.batches, None)
            return self.first

        def get_batch(self, names):
            batch = self._peek()
            self.first = None
            if batch is None:
                return None
            batch = np.ascontiguousarray(batch, dtype=np.float32)
            if self.device is None:
                self.device = cuda.mem_alloc(batch.nbytes) if kind == "pycuda" else _check(cuda.cudaMalloc(batch.nbytes))
            if kind == "pycuda":
                cuda.memcpy_htod(self.device, batch)
            else:
                _check(cuda.cudaMemcpy(int(self.device), batch.ctypes.data, batch.nbytes,
                                       cuda.cudaMemcpyKind.cudaMemcpyHostToDevice))
            return [int(self.device)]

        def read_calibration_cache(self):
            return cache_file.read_bytes() if cache_file.exists() else None

        def write_calibration_cache(self, cache):
            cache_file.write_bytes(bytes(cache))

    return EntropyCalibrator()


def export_engine(
    net,
    out_dir: str | Path,
    *,
    name: str,
    batch_size: int,
    dynamic_batch: bool = False,
    metadata: dict,
    check_images,
    precision: str = "fp16",
    int8: bool = False,
    calib_images=None,
    workspace_mb: int = 1024,
    dla_core: int | None = None,
    timing_runs: int = 200,
    **_unused,
) -> dict:
    """Write the ONNX (always, first), then build a TensorRT engine from it: ``out_dir/name.engine`` is the
    plan exactly as TensorRT serialised it, ``name.engine.json`` beside it holds the metadata, the build
    settings and the engine's timing (CUDA events: warm-up, then median and percentiles of single runs)."""
    import time

    import torch

    from exporters.onnx import export_model
    from hsconas_cli.fileio import atomic_path, write_json

    onnx_res = export_model(net, out_dir, name=name, batch_size=batch_size, dynamic_batch=dynamic_batch,
                            metadata=metadata, check_images=check_images)
    trt = require_tensorrt()  # after the ONNX is written: a machine without TensorRT still gets it
    c, h, w = check_images.shape[1:]
    shape = (batch_size, c, h, w)
    calibrator, cache = None, Path(out_dir) / f"{name}.int8.cache"
    if int8:
        if calib_images is None:
            raise HsconasError("INT8 needs calibration images")
        batches = [np.ascontiguousarray(calib_images[i : i + batch_size], dtype=np.float32)
                   for i in range(0, len(calib_images) - batch_size + 1, batch_size)]
        calibrator = make_int8_calibrator(batches, cache)
    t0 = time.perf_counter()
    plan = build_engine(onnx_res.pop("onnx"), fp16=(precision == "fp16"), int8_calibrator=calibrator,
                        workspace_mb=workspace_mb, dla_core=dla_core,
                        dynamic_shapes=((1, c, h, w), shape, shape) if dynamic_batch else None)
    build_s = time.perf_counter() - t0
    runner = EngineRunner(plan, shape)
    x = np.ascontiguousarray(check_images[:batch_size], dtype=np.float32)
    if len(x) == batch_size:
        runner.set_input(next(n for n, (_, _, inp) in runner.shapes.items() if inp), x)
        runner.run()
        got = runner.output()
        with torch.no_grad():
            want = net.eval()(torch.from_numpy(x)).numpy()
        agreement = float((got.argmax(1) == want.argmax(1)).mean())
        max_diff = float(np.abs(got - want).max())
    else:
        agreement = max_diff = None
    for _ in range(20):
        runner.time(1)
    runs = np.array([runner.time(1) for _ in range(timing_runs)])
    timing = {"runs": timing_runs, "median_ms": float(np.median(runs)), "p90_ms": float(np.percentile(runs, 90)),
              "p99_ms": float(np.percentile(runs, 99)), "min_ms": float(runs.min()), "timer": f"CUDA events ({runner.kind})"}
    engine_path = Path(out_dir) / f"{name}.engine"
    with atomic_path(engine_path) as tmp:
        tmp.write_bytes(plan)
    sidecar = {
        "kind": "hsconas-tensorrt-engine",
        "engine": engine_path.name,
        "onnx": Path(onnx_res["path"]).name,
        "tensorrt": trt.__version__,
        "build": {"precision": "int8" if int8 else precision, "workspace_mb": workspace_mb, "dla_core": dla_core,
                  "batch_size": batch_size, "dynamic_batch": dynamic_batch, "seconds": build_s,
                  "int8_cache": cache.name if int8 else None},
        "check": {"top1_agreement_with_pytorch": agreement, "max_abs_diff": max_diff},
        "timing": timing,
        "metadata": metadata,
    }
    write_json(Path(out_dir) / f"{name}.engine.json", sidecar)
    return {"format": "trt", "path": str(engine_path), "sidecar": str(Path(out_dir) / f"{name}.engine.json"),
            "onnx": onnx_res, "timing": timing, "check": sidecar["check"], "tensorrt": trt.__version__}
