"""API-contract tests of hsconas's TensorRT code against stand-ins of the ``tensorrt`` module (tests/standin).

These are NOT tests that an engine builds or runs: no TensorRT exists on this machine. Each stand-in has exactly
the names NVIDIA documents for TensorRT 8.5 (JetPack 5), 10.x and 11.x and lacks what each removed, so these
tests show that hsconas drives each version only through names that version has, takes the right version
branch (weakly typed 8.5, strongly typed 10.x/11.x), refuses unsupported versions, and turns the documented
failures (CUDA that cannot start, an ONNX of the wrong precision) into one-line errors. The ONNX files fed to
them are real exports of real networks. The real-engine test is tests/test_export.py's, skipped here.
"""

import importlib.util
import json
import os
import random
import re
import sys
from pathlib import Path

import pytest
import torch

from conftest import TINY28, assert_one_line_error, run_cli, run_cli_all
from exporters.files import ExportError
from hsconas_cli.errors import HsconasError
from hsconas_cli.supernet import Supernet, build_subnet

STANDIN = Path(__file__).parent / "standin"
# loaded by path: tests/standin must never be on sys.path, or its ``tensorrt`` would be importable by other tests
_spec = importlib.util.spec_from_file_location("trt_contract", STANDIN / "trt_contract.py")
trt_contract = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(trt_contract)
make_module = trt_contract.make_module

VERSIONS = ["8.5.2", "10.3.0", "11.0.0"]


@pytest.fixture
def standin(monkeypatch):
    """Install a stand-in ``tensorrt`` of a version for the test's duration."""
    import exporters.tensorrt as T

    def install(version: str, **kw):
        mod = make_module(version, **kw)
        monkeypatch.setitem(sys.modules, "tensorrt", mod)
        monkeypatch.setattr(T, "_LOGGERS", {})
        return mod

    return install


@pytest.fixture(scope="module")
def onnx_of(tmp_path_factory, fmnist):
    """Real ONNX exports of one network of TINY28 at each precision (fp32, fp16, Q/DQ INT8), as the exporter
    writes them for TensorRT."""
    from exporters.files import ExportRequest
    from exporters.onnx import export_model

    torch.manual_seed(0)
    net = build_subnet(Supernet(TINY28), TINY28.full().sample(random.Random(0))).eval()
    images = torch.cat([x for x, _ in fmnist.loader("val", 64, limit=64)]).numpy()
    calib = torch.cat([x for x, _ in fmnist.loader("calib", 64, limit=128)]).numpy()
    out, models = tmp_path_factory.mktemp("onnx"), {}
    for prec in ("fp16", "int8"):
        rep = export_model(ExportRequest(net, out, "m", 4, {}, images, precision=prec, calib_images=calib))
        models["fp32"], models[prec] = rep["onnx"], rep["onnx_of_precision"]
    return models


def _built(mod) -> dict:
    return mod._record["builds"][-1]


def test_contract_standins_lack_what_each_version_removed():
    """The stand-ins themselves: 11.x has none of the weak-typing API the issue lists; 8.5 has no strong typing."""
    v11, v10, v85 = make_module("11.0.0"), make_module("10.3.0"), make_module("8.5.2")
    b11, c11 = v11.Builder(v11.Logger()), v11.Builder(v11.Logger()).create_builder_config()
    for name in ("FP16", "INT8"):
        assert not hasattr(v11.BuilderFlag, name) and hasattr(v10.BuilderFlag, name) and hasattr(v85.BuilderFlag, name)
    assert not hasattr(b11, "platform_has_fast_fp16") and not hasattr(c11, "set_calibration_profile")
    with pytest.raises(AttributeError):
        c11.int8_calibrator = object()
    assert not hasattr(v11, "IInt8EntropyCalibrator2") and hasattr(v85, "IInt8EntropyCalibrator2")
    assert not hasattr(v11.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH")
    assert not hasattr(v85.NetworkDefinitionCreationFlag, "STRONGLY_TYPED")
    with pytest.raises(AttributeError):
        v85.Builder(v85.Logger()).create_builder_config().builder_optimization_level = 2


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_contract_each_version_is_driven_through_its_own_api(version, precision, standin, onnx_of, tmp_path):
    from exporters.tensorrt import build_engine, tensorrt_api

    mod = standin(version)
    api = tensorrt_api()
    source = onnx_of[precision] if (api.strongly_typed or precision == "int8") else onnx_of["fp32"]
    plan = build_engine(source, precision=precision, timing_cache=tmp_path / "timing.cache")
    rec = _built(mod)
    assert json.loads(bytes(plan)) == rec
    if version.startswith("8."):  # weakly typed: explicit batch, precision by builder flags, Q/DQ with INT8 on
        assert rec["network_flags"] == ["EXPLICIT_BATCH"] and not rec["strongly_typed"]
        assert ("FP16" in rec["builder_flags"]) == (precision != "fp32")
        assert ("INT8" in rec["builder_flags"]) == (precision == "int8")
        assert rec["onnx_precision"] == ("int8" if precision == "int8" else "fp32")
    else:  # strongly typed: no precision flag at all, the ONNX carries the precision
        assert rec["strongly_typed"] and not {"FP16", "INT8"} & set(rec["builder_flags"])
        assert rec["onnx_precision"] == precision
    assert ("TF32" in rec["builder_flags"]) == (precision != "fp32")  # fp32 means fp32
    assert rec["values"].get("int8_calibrator") is None and "calibration_profile" not in rec["values"]
    assert (tmp_path / "timing.cache").is_file()


@pytest.mark.parametrize("version", ["7.2.3", "8.4.3", "9.2.0", "12.0.0"])
def test_contract_unsupported_versions_are_refused(version, standin, onnx_of):
    from exporters.tensorrt import build_engine

    standin(version)
    with pytest.raises(ExportError, match=r"TensorRT .* is not supported: .*8\.5-8\.6 .*10\.x-11\.x.*tensorrt-cu1[23]>=10,<12"):
        build_engine(onnx_of["fp32"], precision="fp32")


def test_contract_wrong_precision_onnx_is_refused_not_built(standin, onnx_of):
    from exporters.tensorrt import build_engine

    mod = standin("11.0.0")
    with pytest.raises(ExportError, match="builds fp16 from a fp16 ONNX, but this one is fp32"):
        build_engine(onnx_of["fp32"], precision="fp16")
    standin("8.5.2")
    with pytest.raises(ExportError, match="builds int8 from a int8 ONNX, but this one is fp32"):
        build_engine(onnx_of["fp32"], precision="int8")
    assert not mod._record["builds"]


def test_contract_cuda_that_cannot_start_is_one_line(standin, onnx_of):
    from exporters.tensorrt import EngineRunner, build_engine

    standin("10.3.0", cuda=False)
    with pytest.raises(ExportError, match=r"could not start CUDA \(trt.Builder: pybind11::init\(\): factory function "
                                           r"returned nullptr.*--runtime nvidia.*--gpus all"):
        build_engine(onnx_of["fp16"], precision="fp16")
    with pytest.raises(ExportError, match="could not start CUDA|PyTorch with CUDA"):
        EngineRunner(b"plan")


def test_contract_fp16_needs_fast_fp16_on_85_and_dla_needs_reduced_precision(standin, onnx_of):
    from exporters.tensorrt import build_engine

    standin("8.5.2", fast_fp16=False)
    with pytest.raises(ExportError, match="no fast FP16"):
        build_engine(onnx_of["fp32"], precision="fp16")
    with pytest.raises(ExportError, match="DLA cores run fp16 or int8 only"):
        build_engine(onnx_of["fp32"], precision="fp32", dla_core=0)
    mod = standin("8.5.2", dla_cores=2)
    with pytest.raises(ExportError, match="explicit \\(Q/DQ\\) INT8 on the GPU only"):  # 8.x DLA: no explicit quantization
        build_engine(onnx_of["int8"], precision="int8", dla_core=1)
    build_engine(onnx_of["fp32"], precision="fp16", dla_core=1)
    rec = _built(mod)
    assert rec["values"]["DLA_core"] == 1 and rec["values"]["default_device_type"] == "DLA" and "GPU_FALLBACK" in rec["builder_flags"]


@pytest.mark.parametrize("version", VERSIONS)
def test_contract_a_graph_without_weights_builds_at_every_precision(version, standin, tmp_path):
    """The calibration's per-shape call overheads are identity graphs: no weights to carry a precision."""
    import onnx

    from exporters.onnx import onnx_precision, to_fp16, to_onnx_bytes
    from exporters.tensorrt import build_engine, tensorrt_api
    from hsconas_cli.blocks import SkipBlock

    mod = standin(version)
    fp32 = to_onnx_bytes(SkipBlock(), (4, 8, 14, 14))
    half = to_fp16(onnx.load_from_string(fp32)).SerializeToString()
    assert onnx_precision(fp32) is None and onnx_precision(half) is None
    build_engine(half if tensorrt_api().strongly_typed else fp32, precision="fp16")
    assert _built(mod)["onnx_precision"] in ("fp32", "fp16")


def test_contract_optimization_level_only_where_it_exists(standin, onnx_of):
    from exporters.tensorrt import build_engine

    standin("8.5.2")
    with pytest.raises(ExportError, match="no builder optimization level"):
        build_engine(onnx_of["fp32"], precision="fp16", optimization_level=1)
    mod = standin("10.3.0")
    build_engine(onnx_of["fp16"], precision="fp16", optimization_level=1)
    assert _built(mod)["values"]["builder_optimization_level"] == 1


def test_contract_one_quiet_logger_per_process(standin, onnx_of, monkeypatch):
    from exporters.tensorrt import build_engine

    mod = standin("11.0.0")
    for _ in range(3):
        build_engine(onnx_of["fp16"], precision="fp16")
    assert mod._record["loggers"] == 1 and len(mod._record["builds"]) == 3
    from exporters.tensorrt import _LOGGERS

    assert next(iter(_LOGGERS.values())).min_severity == mod.Logger.ERROR


def test_contract_calibration_builds_each_network_once_with_one_timing_cache(standin, onnx_of, tmp_path):
    """The TensorRT backend keeps plans under their ONNX's hash and seeds every build with the timing cache the
    builds before it wrote; fp16 ONNX is converted for strongly typed versions."""
    from hsconas_cli.backends import make_backend

    mod = standin("11.0.0")
    backend = make_backend("tensorrt", {"precision": "fp16"})
    backend.timing_cache, backend.plan_dir = tmp_path / "timing.cache", tmp_path / "plans"
    first = backend.plan(onnx_of["fp32"])
    again = backend.plan(onnx_of["fp32"])
    assert first == again and backend.builds == 1 and len(mod._record["builds"]) == 1
    assert _built(mod)["onnx_precision"] == "fp16" and _built(mod)["timing_cache_seed"] == 0
    other = TINY28.full().sample(random.Random(5))
    from exporters.onnx import to_onnx_bytes

    backend.plan(to_onnx_bytes(build_subnet(Supernet(TINY28), other).eval(), (4, 1, 28, 28)))
    assert backend.builds == 2 and _built(mod)["timing_cache_seed"] > 0  # the second build read the first's timings
    with pytest.raises(HsconasError, match="latency tables are measured at fp16 or fp32"):
        make_backend("tensorrt", {"precision": "int8"})


def _standin_env(version: str, cuda: bool = True) -> dict:
    return {"PYTHONPATH": os.pathsep.join([str(STANDIN), os.environ.get("PYTHONPATH", "")]),
            "HSCONAS_STANDIN_TRT": version, "HSCONAS_STANDIN_TRT_CUDA": "1" if cuda else "0"}


@pytest.fixture(scope="module")
def result_file(tmp_path_factory, tiny_supernet):
    from hsconas_cli.fileio import write_json
    from hsconas_cli.space import arch_to_json

    out = tmp_path_factory.mktemp("result")
    doc = {**arch_to_json(TINY28, TINY28.full().sample(random.Random(3))), "supernet": str(tiny_supernet),
           "data": {"name": "fashion-mnist"}}
    write_json(out / "result.json", doc)
    return out / "result.json"


def test_contract_cli_export_trt_without_cuda_is_one_line_and_writes_no_engine(result_file, tmp_path):
    """``hsconas export --format trt`` through the real CLI, with a stand-in TensorRT whose CUDA cannot start
    (a container without the NVIDIA runtime), then with one that builds: this machine's torch has no CUDA, so
    the engine cannot be run and checked, and none is written."""
    p = run_cli("export", "--format", "trt", "--result", result_file, "--out", tmp_path / "a", "--batch-size", "4",
                env=_standin_env("11.0.0", cuda=False), process=True)
    assert_one_line_error(p, "could not start CUDA", "--runtime nvidia")
    assert (tmp_path / "a" / "hsconet.onnx").exists() and (tmp_path / "a" / "hsconet.fp16.onnx").exists()
    assert not (tmp_path / "a" / "hsconet.engine").exists()
    if not torch.cuda.is_available():
        p = run_cli("export", "--format", "trt", "--result", result_file, "--out", tmp_path / "b", "--batch-size", "4",
                    "--precision", "fp16", env=_standin_env("8.5.2"), process=True)
        assert_one_line_error(p, "needs PyTorch with CUDA")
        assert (tmp_path / "b" / "hsconet.fp16.onnx").exists() and not (tmp_path / "b" / "hsconet.engine").exists()


def test_cli_refuses_bad_trt_options_before_writing(result_file, tmp_path):
    """Not a contract test: these refusals need no TensorRT, and nothing is written."""
    refused = run_cli_all(
        ("export", "--format", "trt", "--result", result_file, "--out", tmp_path / "c", "--precision", "fp32", "--dla-core", "0"),
        ("export", "--format", "onnx", "--result", result_file, "--out", tmp_path / "c", "--dla-core", "0"),
        ("export", "--result", result_file, "--out", tmp_path / "c", "--precision", "fp8"))
    needles = ["DLA cores run fp16 or int8 only", "--dla-core applies to TensorRT engines", "unknown precision 'fp8'"]
    assert len(refused) == len(needles)
    for p, needle in zip(refused, needles):
        assert_one_line_error(p, needle)
    assert not (tmp_path / "c").exists()


def test_contract_the_wheel_named_is_the_one_of_torchs_cuda_and_a_refusal_names_driver_cuda_and_gpu(monkeypatch):
    """Issue 24 item 9 (not an engine test): plain ``tensorrt`` installs the CUDA 13 build from 10.13.2 on, which
    needs driver r580+ and a Turing or later GPU; the hint names the wheel of torch's CUDA major version, and a
    CUDA that cannot start is reported with the driver (read from transcribed /proc/driver/nvidia/version files),
    the wheel's CUDA major version and the GPU's compute capability."""
    import exporters.tensorrt as T

    assert T.install_hint("12.1") == "pip install 'tensorrt-cu12>=10,<12' (torch here is built for CUDA 12.1)"
    assert T.install_hint("13.0").startswith("pip install 'tensorrt-cu13>=10,<12'")
    assert "tensorrt-cu12" in T.install_hint("") and "tensorrt-cu13" in T.install_hint("")  # a CPU-only torch
    data = Path(__file__).parent / "data"
    for name, driver in (("proc-driver-nvidia-version-535.txt", "535.104.05"), ("proc-driver-nvidia-version-580-open.txt", "580.65.06")):
        monkeypatch.setattr(T, "NVIDIA_DRIVER_VERSION", data / name)
        assert T.cuda_facts()[0] == driver
    msg = T.no_cuda_message("trt.Builder: pybind11::init(): factory function returned nullptr", "535.104.05", 13, (7, 0))
    assert msg == ("TensorRT could not start CUDA (trt.Builder: pybind11::init(): factory function returned nullptr; driver "
                   "535.104.05, TensorRT built for CUDA 13, GPU compute capability 7.0): CUDA 13 needs driver r580+: install "
                   "tensorrt-cu12 instead, or update the driver; the CUDA 13 build needs a Turing or later GPU (7.5+): "
                   "install tensorrt-cu12")
    assert "'--gpus all'" in T.no_cuda_message("x", "580.65.06", 13, (8, 9))  # the driver fits: the container is the suspect
    assert "no NVIDIA driver found" in T.no_cuda_message("x", None, None, None)


@pytest.mark.parametrize("version, board, allowed", [
    ("8.5.2", "Jetson AGX Xavier", True), ("10.3.0", "Jetson AGX Orin", True), ("10.7.0", "Jetson AGX Orin", True),
    ("10.8.0", "Jetson AGX Orin", False), ("11.0.0", "Jetson AGX Orin", False), ("11.3.0", "Jetson AGX Orin", False),
    ("11.4.0", "Jetson AGX Orin", False), ("11.4.1", "Jetson AGX Xavier", False), ("11.4.1", "Jetson AGX Orin", True),
])
def test_contract_dla_only_where_the_version_has_it(version, board, allowed, standin, onnx_of):
    """Issue 24 item 10 (not an engine test): NVIDIA's "Working with DLA": 10.7 was the last 10.x release with DLA,
    11.0-11.3 have none, 11.4.0 only on Windows on ARM, 11.4.1 on Jetson AGX Orin only. On 10.x a DLA engine is
    built weakly typed: the fp32 ONNX with BuilderFlag.FP16, as 10.x's DLA documentation builds it."""
    from exporters.tensorrt import build_engine, tensorrt_api

    mod = standin(version, dla_cores=2)
    strong = tensorrt_api().typed_strongly(0)
    onnx_model = onnx_of["fp16"] if strong else onnx_of["fp32"]
    if not allowed:
        with pytest.raises(ExportError, match=f"TensorRT {re.escape(version)} (has no DLA|runs DLA on Jetson AGX Orin only)"):
            build_engine(onnx_model, precision="fp16", dla_core=0, board=board)
        return
    build_engine(onnx_model, precision="fp16", dla_core=0, board=board)
    rec = _built(mod)
    assert rec["values"]["default_device_type"] == "DLA" and rec["values"]["DLA_core"] == 0
    if version.startswith("10."):
        assert not strong and not rec["strongly_typed"] and "FP16" in rec["builder_flags"] and rec["onnx_precision"] == "fp32"
    assert tensorrt_api().typed_strongly(None) == (not version.startswith("8."))  # without DLA, 10.x builds strongly typed
