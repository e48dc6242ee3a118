"""The declared schema of every file a user may edit or hand over: device presets, device profiles and space
definitions. Each is checked here before any code reads it, strictly: an unknown key or a missing one, or a value
of the wrong type, is one line naming the file and the key (``check``).

pydantic (v2) declares them: a model per file states every key with its type and default, ``extra="forbid"``
makes unknown keys errors, and its error locations give the key path the message names. It was chosen over hand
checks (what hsconas had: a TypeError traceback for an unknown key) and over jsonschema (a second language for
the same declarations, and weaker error locations). The models validate only; the code keeps reading the
documents as they are, so a stored file and its checksum never change by being read.

Descriptive sections that differ by machine (a profile's ``machine`` facts, backend versions) are open
mappings; every section that a computation reads is closed.
"""

from __future__ import annotations

from typing import Any, Dict, List, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hsconas_cli.backends import BACKENDS
from hsconas_cli.errors import HsconasError


class _Closed(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=False)


# ---- device presets ---------------------------------------------------------------------------------
class ProtocolSchema(_Closed):
    """The measurement protocol (hsconas_cli.measure.Protocol): every key optional in a preset."""

    warmup_ms: Optional[float] = Field(None, ge=0)
    chunk_ms: Optional[float] = Field(None, gt=0)
    pairs_min: Optional[int] = Field(None, ge=1)
    pairs_max: Optional[int] = Field(None, ge=1)
    fast_pairs: Optional[int] = Field(None, ge=1)
    gate: Optional[float] = Field(None, ge=1)
    baseline_pct: Optional[float] = Field(None, gt=0, le=100)
    reference: Optional[bool] = None
    statistic: Optional[str] = None  # written into profiles, read by nobody


class BackendOptionsSchema(_Closed):
    """Options of the five backends (hsconas_cli.backends); each backend reads its own."""

    provider: Optional[Literal["cpu", "cuda", "tensorrt"]] = None  # onnxruntime
    threads: Optional[int] = Field(None, ge=1)  # onnxruntime, torch on CPU, openvino, executorch
    device: Optional[Literal["cpu", "cuda", "gpu", "npu"]] = None  # torch (cpu, cuda), openvino (cpu, gpu, npu)
    graphs: Optional[bool] = None  # torch on CUDA
    dtype: Optional[Literal["float32", "float16", "bfloat16"]] = None  # torch
    channels_last: Optional[bool] = None  # torch on CUDA
    precision: Optional[Literal["fp32", "fp16", "bf16", "int8"]] = None  # tensorrt (fp32, fp16), openvino (fp32, bf16, fp16)
    workspace_mb: Optional[int] = Field(None, ge=1)  # tensorrt
    dla_core: Optional[int] = Field(None, ge=0)  # tensorrt
    optimization_level: Optional[int] = Field(None, ge=0, le=5)  # tensorrt 8.6+
    hint: Optional[Literal["latency", "throughput", "cumulative_throughput", "none"]] = None  # openvino
    delegate: Optional[Literal["xnnpack"]] = None  # executorch
    protocol: Optional[ProtocolSchema] = None


class CalibrationSizesSchema(_Closed):
    """A device's default calibration sizes, where preparing a network is slow (ExecuTorch's lowering)."""

    archs: int = Field(ge=2)
    holdout: int = Field(ge=2)


class DeviceSchema(_Closed):
    hsconas_version: Optional[str] = None  # where hsconas wrote the file (every JSON it writes is stamped)
    name: str
    description: str = ""
    batch_size: int = Field(ge=1)
    backend: Literal[tuple(BACKENDS)]  # the registry's names (backends.BACKENDS)
    backend_options: BackendOptionsSchema = BackendOptionsSchema()
    jetson: bool = False
    power_mode: Optional[int] = Field(None, ge=0)
    board: Optional[str] = None
    power_mode_name: Optional[str] = None
    calibration: Optional[CalibrationSizesSchema] = None


# ---- search spaces ----------------------------------------------------------------------------------
class SpaceSchema(_Closed):
    hsconas_version: Optional[str] = None
    name: str
    layout: List[int] = Field(min_length=1)
    depths: Optional[List[int]] = None
    input_size: int = Field(ge=1)
    in_channels: int = Field(ge=1)
    num_classes: int = Field(ge=2)
    stem_channels: Optional[int] = Field(None, ge=1)
    head_channels: Optional[int] = Field(None, ge=1)
    ops: Optional[List[str]] = None
    factors: Optional[List[float]] = None
    description: str = ""


# ---- device profiles --------------------------------------------------------------------------------
class _Ms(_Closed):
    ms: float


class LutEntrySchema(_Closed):
    signature: str
    op: str
    mid: int
    layers: List[int]
    ms: float = Field(ge=0)
    raw_ms: float
    spread: float
    settled: bool
    timer: Optional[str] = None  # how it was timed (the backend runner's timer); absent before 0.3


class LutSchema(_Closed):
    stem: _Ms
    head: _Ms
    entries: List[LutEntrySchema]


class ReferenceSchema(_Closed):
    arch: List[Any]
    seed: int
    ms: Optional[float] = None


class BiasSchema(_Closed):
    ms: float
    archs: List[Any]
    measured_ms: List[float]
    lut_sum_ms: List[float]
    seed: int


class ModelSchema(_Closed):
    kind: Literal["additive", "power", "scaled"]
    scale: float = Field(gt=0)
    power: float = Field(gt=0)
    bias_ms: float
    chosen_by: Optional[str] = None
    held_out: Optional[Dict[str, Any]] = None


class ValidationSchema(_Closed):
    archs: int
    mean_measured_ms: Optional[float] = None
    rmse_ms: Optional[float] = None
    mape_pct: Optional[float] = None
    within_5_pct: Optional[float] = None
    within_10_pct: Optional[float] = None
    noise_floor_ms: Optional[float] = None
    noise_floor_pct: Optional[float] = None
    rmse_over_floor: Optional[float] = None
    spearman: Optional[float] = None  # rank correlation of predicted and measured (absent before 0.3)
    scored_on: Optional[str] = None  # "second pass": the pass the model choice did not see (absent: the first, before 0.3)
    arch_list: List[Any]
    predicted_ms: List[float]
    measured_ms: List[float]
    measured_again_ms: List[float]


class PowerModeSchema(_Closed):
    id: int
    name: Optional[str] = None
    source: Optional[str] = None


class ProfileSchema(_Closed):
    hsconas_version: str
    kind: str
    schema_version: int
    created: str
    device: DeviceSchema
    power_mode: Optional[PowerModeSchema] = None
    machine: Dict[str, Any]  # facts of the machine measured on: they differ by machine (gpu, l4t, board, ...)
    backend: Dict[str, Any]
    space: Dict[str, Any]
    protocol: ProtocolSchema
    reference: ReferenceSchema
    overhead_ms: Dict[str, float]
    lut: LutSchema
    bias: BiasSchema
    model: Optional[ModelSchema] = None
    validation: ValidationSchema
    timing: Dict[str, Union[float, int]]
    timers: Optional[Dict[str, int]] = None  # measurements per timer: more than one means a mixed profile
    profile_version: int
    checksum: str
    refit_of: Optional[Any] = None
    rescaled: Optional[Dict[str, Any]] = None
    transfer: Optional[Dict[str, Any]] = None  # calibrated by transfer: from which profile, N, the mapping's figures


SCHEMAS = {"device preset": DeviceSchema, "device profile": ProfileSchema, "space definition": SpaceSchema}


def check(kind: str, doc: Any, source: str = "") -> None:
    """Refuse ``doc`` (a ``kind`` of SCHEMAS read from ``source``) in one line naming the first bad key."""
    try:
        SCHEMAS[kind].model_validate(doc)
    except ValidationError as e:
        problems = []
        for err in e.errors():
            where = ".".join(str(p) for p in err["loc"]) or "(the document)"
            problems.append(f"{where}: " + {"extra_forbidden": "unknown key", "missing": "missing key"}.get(err["type"], err["msg"]))
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise HsconasError(f"{kind} {source or ''}".rstrip() + ": " + "; ".join(problems[:3]) + more) from None
