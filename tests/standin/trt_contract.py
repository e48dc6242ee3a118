"""API-contract stand-ins for TensorRT's Python module. They are NOT TensorRT and build no engine.

Each stand-in carries exactly the names hsconas may touch as NVIDIA documents them for one TensorRT release
(8.5 as on JetPack 5, 10.x, 11.x), and lacks the names that release removed (11.x: ``BuilderFlag.FP16`` and
``INT8``, ``Builder.platform_has_fast_fp16``, ``IBuilderConfig.int8_calibrator`` and ``set_calibration_profile``,
the IInt8 calibrators, ``NetworkDefinitionCreationFlag.EXPLICIT_BATCH``; 8.5: ``builder_optimization_level``,
``STRONGLY_TYPED``). Touching any other attribute raises AttributeError, as pybind11 objects do.

The rules the documentation states are enforced where they decide a build: a strongly typed network refuses the
precision flags; a Q/DQ network on 8.5 needs ``BuilderFlag.INT8``. ``build_serialized_network`` returns a JSON
record of how it was driven (network flags, builder flags, the precision the parsed ONNX carries, the timing
cache it was seeded with) in place of a plan. ``cuda=False`` makes ``Builder`` and ``Runtime`` fail as the real
bindings do where CUDA cannot start: a TypeError from a factory that returned nullptr.

Sources: the TensorRT Python API references for 8.5.x, 10.x and 11.x, and NVIDIA's "Migrating from TensorRT 10.x
to 11.x" Python API reference (removed APIs and replacements).
"""

from __future__ import annotations

import json
import types

import onnx

# Builder and builder-config names 8.5 and 10.x share (10.x adds to the config what 8.6 and 10.0 brought).
BUILDER_WEAK = ["platform_has_tf32", "platform_has_fast_fp16", "platform_has_fast_int8", "max_DLA_batch_size",
                "num_DLA_cores", "create_network", "create_builder_config", "create_optimization_profile",
                "build_serialized_network", "is_network_supported"]
CONFIG_85 = ["set_memory_pool_limit", "get_memory_pool_limit", "set_flag", "clear_flag", "get_flag", "flags",
             "add_optimization_profile", "default_device_type", "DLA_core", "create_timing_cache", "set_timing_cache",
             "get_timing_cache", "int8_calibrator", "set_calibration_profile", "get_calibration_profile",
             "avg_timing_iterations", "profiling_verbosity"]

DOCUMENTED = {
    "8.5": {
        "network_flags": {"EXPLICIT_BATCH": 0, "EXPLICIT_PRECISION": 1},
        "builder_flags": ["FP16", "INT8", "DEBUG", "GPU_FALLBACK", "STRICT_TYPES", "REFIT", "DISABLE_TIMING_CACHE", "TF32",
                          "SPARSE_WEIGHTS", "SAFETY_SCOPE", "OBEY_PRECISION_CONSTRAINTS", "PREFER_PRECISION_CONSTRAINTS",
                          "DIRECT_IO", "REJECT_EMPTY_ALGORITHMS", "ENABLE_TACTIC_HEURISTIC"],
        "builder": BUILDER_WEAK,
        "config": CONFIG_85,
        "calibrators": True,
    },
    "10": {
        "network_flags": {"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1},
        "builder_flags": ["FP16", "BF16", "INT8", "FP8", "INT4", "DEBUG", "GPU_FALLBACK", "REFIT", "DISABLE_TIMING_CACHE",
                          "TF32", "SPARSE_WEIGHTS", "SAFETY_SCOPE", "OBEY_PRECISION_CONSTRAINTS",
                          "PREFER_PRECISION_CONSTRAINTS", "DIRECT_IO", "REJECT_EMPTY_ALGORITHMS", "VERSION_COMPATIBLE",
                          "EXCLUDE_LEAN_RUNTIME", "STRIP_PLAN", "REFIT_IDENTICAL", "WEIGHT_STREAMING"],
        "builder": BUILDER_WEAK,
        "config": CONFIG_85 + ["builder_optimization_level", "hardware_compatibility_level", "tiling_optimization_level"],
        "calibrators": True,
    },
    "11": {
        "network_flags": {"STRONGLY_TYPED": 0, "PREFER_AOT_PYTHON_PLUGINS": 1, "PREFER_JIT_PYTHON_PLUGINS": 2},
        "builder_flags": ["DEBUG", "GPU_FALLBACK", "REFIT", "DISABLE_TIMING_CACHE", "TF32", "SPARSE_WEIGHTS",
                          "SAFETY_SCOPE", "REJECT_EMPTY_ALGORITHMS", "VERSION_COMPATIBLE", "EXCLUDE_LEAN_RUNTIME",
                          "STRIP_PLAN", "REFIT_IDENTICAL", "WEIGHT_STREAMING"],
        "builder": ["platform_has_tf32", "max_DLA_batch_size", "num_DLA_cores", "create_network",
                    "create_builder_config", "create_optimization_profile", "build_serialized_network",
                    "is_network_supported"],
        "config": ["set_memory_pool_limit", "get_memory_pool_limit", "set_flag", "clear_flag", "get_flag", "flags",
                   "add_optimization_profile", "default_device_type", "DLA_core", "create_timing_cache",
                   "set_timing_cache", "get_timing_cache", "avg_timing_iterations", "profiling_verbosity",
                   "builder_optimization_level", "hardware_compatibility_level", "tiling_optimization_level"],
        "calibrators": False,
    },
}


def _generation(version: str) -> str:
    major, minor = (int(x) for x in version.split(".")[:2])
    if major == 8:
        return "8.5"  # 8.6 adds builder_optimization_level; modelled as 8.5 unless asked for 10/11
    return str(major) if major in (10, 11) else "8.5"


def make_module(version: str = "11.0.0", *, cuda: bool = True, fast_fp16: bool = True, dla_cores: int = 0) -> types.ModuleType:
    """A stand-in ``tensorrt`` module of ``version`` (see the module docstring)."""
    doc = DOCUMENTED[_generation(version)]
    if version.startswith("8.6"):
        doc = {**doc, "config": doc["config"] + ["builder_optimization_level"]}
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.__doc__ = f"API-contract stand-in for TensorRT {version}; not TensorRT"
    trt._record = {"loggers": 0, "builds": []}

    class _Enum:
        def __init__(self, name, value):
            self.name, self.value = name, value

        def __int__(self):
            return self.value

        def __eq__(self, other):
            return isinstance(other, _Enum) and (self.name, self.value) == (other.name, other.value)

        def __hash__(self):
            return hash((self.name, self.value))

        def __repr__(self):
            return self.name

    def enum(name, members):
        return type(name, (), {k: _Enum(k, v) for k, v in members.items()})

    trt.NetworkDefinitionCreationFlag = enum("NetworkDefinitionCreationFlag", doc["network_flags"])
    trt.BuilderFlag = enum("BuilderFlag", {k: i for i, k in enumerate(doc["builder_flags"])})
    trt.MemoryPoolType = enum("MemoryPoolType", {"WORKSPACE": 0, "DLA_MANAGED_SRAM": 1, "DLA_LOCAL_DRAM": 2,
                                                 "DLA_GLOBAL_DRAM": 3, "TACTIC_DRAM": 4})
    trt.DeviceType = enum("DeviceType", {"GPU": 0, "DLA": 1})
    trt.TensorIOMode = enum("TensorIOMode", {"NONE": 0, "INPUT": 1, "OUTPUT": 2})

    class Logger:
        INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)

        def __init__(self, min_severity=1):
            trt._record["loggers"] += 1
            self.min_severity = min_severity

    trt.Logger = Logger

    def no_cuda(what):
        raise TypeError(f"pybind11::init(): factory function returned nullptr ({what}: CUDA initialization failure "
                        "with error: 35)")

    class Network:
        def __init__(self, flags):
            self.flags, self.inputs, self.precision = flags, [], None

        def get_input(self, i):
            return types.SimpleNamespace(name=self.inputs[i])

    class OnnxParser:
        def __init__(self, network, logger):
            self.network, self.errors = network, []

        def parse(self, model: bytes) -> bool:
            try:
                m = onnx.load_from_string(bytes(model))
            except Exception as e:  # noqa: BLE001
                self.errors.append(f"ModelImporter: {e}")
                return False
            self.network.inputs = [i.name for i in m.graph.input]
            ops = {n.op_type for n in m.graph.node}
            if ops & {"QuantizeLinear", "DequantizeLinear"}:
                self.network.precision = "int8"
            elif any(t.data_type == onnx.TensorProto.FLOAT16 for t in m.graph.initializer):
                self.network.precision = "fp16"
            else:
                self.network.precision = "fp32"
            return True

        @property
        def num_errors(self):
            return len(self.errors)

        def get_error(self, i):
            return self.errors[i]

    trt.OnnxParser = OnnxParser

    class TimingCache:
        def __init__(self, seed: bytes):
            self.data = bytes(seed)

        def serialize(self):
            return memoryview(self.data + b"+")

    settable = {"int8_calibrator", "default_device_type", "DLA_core", "avg_timing_iterations", "profiling_verbosity",
                "builder_optimization_level", "hardware_compatibility_level", "tiling_optimization_level"} & set(doc["config"])

    class IBuilderConfig:
        """Methods exist only where documented; properties outside the release's list cannot be read or set."""

        def __init__(self):
            object.__setattr__(self, "_flags", {trt.BuilderFlag.TF32})  # TF32 is on by default
            object.__setattr__(self, "_values", {"DLA_core": -1, "default_device_type": trt.DeviceType.GPU})
            object.__setattr__(self, "_profiles", [])
            object.__setattr__(self, "_cache", None)

        def __getattr__(self, name):
            if name in settable:
                return self._values.get(name)
            raise AttributeError(f"'tensorrt.IBuilderConfig' object has no attribute '{name}'")

        def __setattr__(self, name, value):
            if name not in settable:
                raise AttributeError(f"'tensorrt.IBuilderConfig' object has no attribute '{name}'")
            self._values[name] = value

        def set_memory_pool_limit(self, pool, size):
            self._values[f"pool:{pool!r}"] = size

        def set_flag(self, flag):
            self._flags.add(flag)

        def clear_flag(self, flag):
            self._flags.discard(flag)

        def get_flag(self, flag):
            return flag in self._flags

        def add_optimization_profile(self, profile):
            self._profiles.append(profile)
            return len(self._profiles) - 1

        def create_timing_cache(self, seed):
            return TimingCache(seed)

        def set_timing_cache(self, cache, ignore_mismatch):
            object.__setattr__(self, "_cache", cache)
            return True

        def get_timing_cache(self):
            return self._cache

    if "int8_calibrator" in doc["config"]:
        def set_calibration_profile(self, profile):
            self._values["calibration_profile"] = profile
        IBuilderConfig.set_calibration_profile = set_calibration_profile

    class OptimizationProfile:
        def __init__(self):
            self.shapes = {}

        def set_shape(self, name, mn, opt, mx):
            self.shapes[name] = (tuple(mn), tuple(opt), tuple(mx))

    class Builder:
        def __init__(self, logger):
            if not trt._cuda:
                no_cuda("Builder")
            self._logger = logger

        platform_has_tf32 = True
        max_DLA_batch_size = 32

        @property
        def num_DLA_cores(self):
            return trt._dla_cores

        def create_network(self, flags=0):
            return Network(flags)

        def create_builder_config(self):
            return IBuilderConfig()

        def create_optimization_profile(self):
            return OptimizationProfile()

        def build_serialized_network(self, network, config):
            named = {int(getattr(trt.NetworkDefinitionCreationFlag, n)): n for n in doc["network_flags"]}
            net_flags = sorted(n for bit, n in named.items() if network.flags & (1 << bit))
            flags = sorted(f.name for f in config._flags)
            strongly = trt._generation == "11" or "STRONGLY_TYPED" in net_flags
            record = {"version": version, "network_flags": net_flags, "builder_flags": flags,
                      "onnx_precision": network.precision, "strongly_typed": strongly,
                      "timing_cache_seed": None if config._cache is None else len(config._cache.data),
                      "values": {k: (v if isinstance(v, (int, float, str, type(None))) else repr(v))
                                 for k, v in config._values.items()}}
            trt._record["builds"].append(record)
            if strongly and set(flags) & {"FP16", "INT8", "BF16", "FP8"}:
                return None  # documented: precision flags are not allowed with a strongly typed network
            if not strongly and network.precision == "int8" and "INT8" not in flags:
                return None  # a Q/DQ network needs INT8 enabled where networks are weakly typed
            if not strongly and trt._generation == "8.5" and "EXPLICIT_BATCH" not in net_flags:
                return None  # the ONNX parser needs an explicit-batch network before 10.0
            return memoryview(json.dumps(record).encode())

    if "platform_has_fast_fp16" in doc["builder"]:
        Builder.platform_has_fast_fp16 = property(lambda self: trt._fast_fp16)
        Builder.platform_has_fast_int8 = property(lambda self: True)
    Builder.is_network_supported = lambda self, network, config: True

    class Runtime:
        __slots__ = ("DLA_core", "max_threads")

        def __init__(self, logger):
            if not trt._cuda:
                no_cuda("Runtime")
            self.DLA_core = -1

        def deserialize_cuda_engine(self, plan):
            return None  # no engine exists here

    trt.Builder, trt.Runtime = Builder, Runtime
    if doc["calibrators"]:
        trt.IInt8EntropyCalibrator2 = type("IInt8EntropyCalibrator2", (), {})
        trt.IInt8MinMaxCalibrator = type("IInt8MinMaxCalibrator", (), {})
    import numpy as np

    trt.nptype = lambda dtype: np.float32
    trt._cuda, trt._fast_fp16, trt._dla_cores, trt._generation = cuda, fast_fp16, dla_cores, _generation(version)
    return trt
