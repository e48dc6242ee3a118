"""Export of HSCoNets: ONNX parity and metadata for both layouts and input sizes, the TensorRT path and its
error without TensorRT, and the Jetson Dockerfile's structure (no Docker engine runs here)."""

import json
import random
import re

import onnx
import onnxruntime as ort
import pytest
import torch

from conftest import ROOT, TINY28, assert_one_line_error, run_cli
from exporters import FORMATS
from exporters.onnx import TRT85_OPS, export_model
from exporters.tensorrt import tensorrt_available
from hsconas_cli.export import export
from hsconas_cli.fileio import write_json
from hsconas_cli.space import SPACES, arch_to_json
from hsconas_cli.supernet import Supernet, build_subnet


def test_formats_table():
    assert set(FORMATS) == {"onnx", "trt"}


@pytest.mark.parametrize("name", ["imagenet-A", "imagenet-B", "fmnist-A", "fmnist-B"])
def test_onnx_export_parity_and_ops(name, tmp_path, fmnist):
    sp = SPACES[name]
    torch.manual_seed(0)
    net = build_subnet(Supernet(sp), sp.full().sample(random.Random(len(name)))).eval()
    if sp.in_channels == 1:
        images = torch.cat([x for x, _ in fmnist.loader("val", 8, limit=8)]).numpy()
    else:  # real photographs are not on this machine: real Fashion-MNIST images, resized and tiled to 3 channels
        x = torch.cat([x for x, _ in fmnist.loader("val", 4, limit=4)])
        images = torch.nn.functional.interpolate(x, size=sp.input_size).repeat(1, 3, 1, 1).numpy()
    meta = {"space": sp.name, "accuracy": 0.5}
    rep = export_model(net, tmp_path, name="m", batch_size=2, metadata=meta, check_images=images)
    assert rep["max_abs_diff"] <= 1e-4 and rep["opset"] >= 17
    assert set(rep["ops"]) <= TRT85_OPS and "Transpose" in rep["ops"] and "Reshape" in rep["ops"]
    model = onnx.load(tmp_path / "m.onnx")
    onnx.checker.check_model(model, full_check=True)
    props = {p.key: p.value for p in model.metadata_props}
    assert json.loads(props["hsconas"]) == meta and props["space"] == sp.name
    assert [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim] == [2, sp.in_channels, sp.input_size, sp.input_size]


def test_dynamic_batch(tmp_path, fmnist):
    torch.manual_seed(0)
    net = build_subnet(Supernet(TINY28), TINY28.full().sample(random.Random(0))).eval()
    images = torch.cat([x for x, _ in fmnist.loader("val", 5, limit=5)]).numpy()
    export_model(net, tmp_path, name="d", batch_size=2, dynamic_batch=True, metadata={}, check_images=images)
    s = ort.InferenceSession(str(tmp_path / "d.onnx"))
    assert s.get_inputs()[0].shape[0] == "batch"
    assert s.run(None, {"input": images})[0].shape == (5, 10)


@pytest.fixture
def result_file(tmp_path, tiny_supernet):
    arch = TINY28.full().sample(random.Random(3))
    path = tmp_path / "result.json"
    write_json(path, arch_to_json(TINY28, arch, kind="hsconas-search-result", supernet=str(tiny_supernet), acc=0.5,
                                  data={"name": "fashion-mnist"}, device={"batch_size": 2}))
    return path


def test_export_from_result_with_metadata_round_trip(result_file, tmp_path, tiny_profile):
    rep = export("onnx", result_file, tmp_path / "out", profile=None)
    model = onnx.load(rep["path"])
    meta = json.loads({p.key: p.value for p in model.metadata_props}["hsconas"])
    assert meta["arch"]["arch"] == json.loads(result_file.read_text())["arch"]
    assert meta["input"]["normalization"]["mean"] == [0.286] and meta["accuracy"] == 0.5
    assert meta["hsconas_version"] and "BN recalibrated" in meta["weights"]
    assert rep["input"]["shape"] == [2, 1, 28, 28]


def test_export_measures_latency_with_the_profile(result_file, tmp_path, tiny_profile):
    rep = export("onnx", result_file, tmp_path / "m", batch_size=1, profile=tiny_profile)
    assert rep["latency"]["measured_ms"] > 0 and rep["latency"]["predicted_ms"] > 0


@pytest.mark.skipif(tensorrt_available(), reason="tensorrt is installed here: the error path for machines without it does not apply")
def test_trt_without_tensorrt_names_jetpack_and_still_writes_onnx(result_file, tmp_path):
    p = run_cli("export", "--format", "trt", "--result", result_file, "--out", tmp_path / "t")
    assert_one_line_error(p, "JetPack", "Dockerfile.jetson")
    assert (tmp_path / "t" / "hsconet.onnx").exists() and not (tmp_path / "t" / "hsconet.engine").exists()


@pytest.mark.skipif(not tensorrt_available(), reason="tensorrt is not importable here (it ships with JetPack or as a wheel on GPU machines)")
def test_trt_engine_on_a_machine_with_tensorrt(result_file, tmp_path):
    rep = export("trt", result_file, tmp_path / "e")
    plan = (tmp_path / "e" / "hsconet.engine").read_bytes()
    side = json.loads((tmp_path / "e" / "hsconet.engine.json").read_text())
    assert plan and side["engine"] == "hsconet.engine" and side["timing"]["median_ms"] > 0
    assert not plan.startswith(b"{")  # the plan is TensorRT's, untouched: no metadata glued in front
    assert rep["check"]["top1_agreement_with_pytorch"] >= 0.9


def test_cli_export_errors(result_file, tmp_path):
    assert_one_line_error(run_cli("export", "--format", "tflite", "--result", result_file), "unknown format")
    assert_one_line_error(run_cli("export", "--result", tmp_path / "nope.json"), "not found")
    assert_one_line_error(run_cli("export", "--result", result_file, "--arch", result_file), "not both")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**json.loads(result_file.read_text()), "supernet": str(tmp_path / "gone.pt")}))
    assert_one_line_error(run_cli("export", "--result", bad, "--out", tmp_path / "x"), "checkpoint not found")
    assert not (tmp_path / "x").exists()


def test_dockerfile_jetson_structure():
    text = (ROOT / "Dockerfile.jetson").read_text()
    steps = [l.split()[0] for l in text.splitlines() if l and not l.startswith(("#", " ")) and l.split()[0].isupper()]
    assert steps[:2] == ["ARG", "FROM"] and steps[-2:] == ["ENTRYPOINT", "CMD"]
    base = re.search(r"ARG BASE_IMAGE=(\S+)", text).group(1)
    assert base.startswith("nvcr.io/nvidia/l4t-") and ":r35." in base  # JetPack 5 / L4T R35
    assert "python3-libnvinfer" in text and "pip install --no-cache-dir tensorrt" not in text  # system bindings
    assert re.search(r"pip install .*pycuda", text) and "import pycuda.driver" in text
    for part in ("hsconas_cli", "exporters", "device_profiles", "pyproject.toml"):
        assert re.search(rf"^COPY .*{part}", text, re.M), part
    assert "--no-deps -e ." in text and 'ENTRYPOINT ["hsconas"]' in text
    readme = (ROOT / "README.md").read_text()
    assert "docker build -f Dockerfile.jetson" in readme and "--runtime nvidia --ipc=host" in readme
    assert "calibrate --device xavier --power-mode 6" in readme
