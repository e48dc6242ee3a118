"""Export of HSCoNets: ONNX parity and metadata for both layouts and input sizes, the TensorRT path and its
error without TensorRT, and the Jetson Dockerfile's structure (no Docker engine runs here)."""

import json
import random
import re

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from conftest import ROOT, TINY28, assert_one_line_error, run_cli, run_cli_all
from timing_checks import MEASURED_OVER_PLAIN, require_quiet, skip_if_measured_under_load
from exporters import FORMATS
from exporters.files import ExportRequest
from exporters.onnx import TOLERANCE, TRT85_OPS, check_parity, export_model, onnx_precision
from exporters.tensorrt import tensorrt_available
from exporters.files import ExportError
from hsconas_cli.export import export
from hsconas_cli.fileio import write_json
from hsconas_cli.space import SPACES, arch_to_json, load_arch
from hsconas_cli.supernet import Supernet, build_subnet


def test_formats_table():
    assert set(FORMATS) == {"onnx", "trt", "openvino", "pte"}


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
    rep = export_model(ExportRequest(net, tmp_path, "m", 2, meta, images))
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
    export_model(ExportRequest(net, tmp_path, "d", 2, {}, images, dynamic_batch=True))
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
    """The exported ONNX is measured with the profile beside its prediction (the arch's, from the profile), within
    MEASURED_OVER_PLAIN of a plain median of its runs (tests/timing_checks.py; skipped on a busy machine)."""
    require_quiet()
    rep = export("onnx", result_file, tmp_path / "m", batch_size=1, profile=tiny_profile)
    lat = rep["latency"]
    skip_if_measured_under_load(lat["verdict"]["status"], "the exported network")
    assert lat["predicted_ms"] == tiny_profile.predict(load_arch(result_file)[1])
    assert MEASURED_OVER_PLAIN[0] < lat["measured_ms"] / lat["raw_median_ms"] < MEASURED_OVER_PLAIN[1], lat


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
    assert rep["check"]["batches"] >= 2 and rep["check"]["top1_agreement"] >= TOLERANCE["fp16"].min_agreement
    rep8 = export("trt", result_file, tmp_path / "e8", precision="int8")
    assert rep8["check"]["top1_agreement"] >= TOLERANCE["int8"].min_agreement and (tmp_path / "e8" / "hsconet.int8.onnx").exists()


@pytest.fixture(scope="module")
def trained_result(tmp_path_factory, fmnist):
    """A result whose supernet saw 6400 images twice (12 s here): INT8 is judged on a network with real margins
    between its classes, as deployed networks have; tiny_supernet's 640 images leave near-ties that any
    rounding flips."""
    from hsconas_cli.train import TrainConfig, train_supernet

    out = tmp_path_factory.mktemp("trained")
    train_supernet("fashion-mnist", TINY28, out, cfg=TrainConfig(epochs=2, batch_size=64, lr=0.2, limit=6400, workers=0), data=fmnist)
    write_json(out / "result.json", {**arch_to_json(TINY28, TINY28.full().sample(random.Random(3))),
                                     "supernet": str(out / "checkpoint.pt"), "data": {"name": "fashion-mnist"}})
    return out / "result.json"


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_onnx_of_each_precision_checked_with_onnxruntime(precision, trained_result, tmp_path):
    """The fp16 and Q/DQ INT8 ONNX that TensorRT 10.x/11.x builds from (and that onnxruntime users deploy): onnx's
    full checker, ops TensorRT 8.5 parses, and onnxruntime's outputs on real images within the precision's
    tolerance. On this CPU, onnxruntime runs the fp16 graph's ops in fp32 after casting (its CPU provider has no
    fp16 kernels for most of them), so what is checked is the graph and its fp16-rounded weights."""
    rep = export("onnx", trained_result, tmp_path, precision=precision)
    f = rep["files"][precision]
    assert rep["path"] == f["path"] == str(tmp_path / f"hsconet.{precision}.onnx") and (tmp_path / "hsconet.onnx").exists()
    model = onnx.load(f["path"])
    onnx.checker.check_model(model, full_check=True)
    assert set(f["ops"]) <= TRT85_OPS and onnx_precision(model) == precision
    props = {p.key: p.value for p in model.metadata_props}
    assert props["precision"] == precision and props["fp32_onnx_sha256"] == rep["files"]["fp32"]["sha256"]
    io_types = {v.type.tensor_type.elem_type for v in [*model.graph.input, *model.graph.output]}
    assert io_types == {onnx.TensorProto.FLOAT}  # users feed and read fp32 whatever the precision inside
    tol = TOLERANCE[precision]
    assert f["parity"]["images"] >= 256 and f["parity"]["max_rel_diff"] <= tol.max_rel
    assert f["parity"]["top1_agreement"] >= tol.min_agreement
    if precision == "int8":
        zero_points = [onnx.numpy_helper.to_array(t) for t in model.graph.initializer if t.name.endswith("zero_point")]
        assert zero_points and all((z == 0).all() and z.dtype == np.int8 for z in zero_points)  # symmetric, as TensorRT needs
        dequantized = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
        convs = [n for n in model.graph.node if n.op_type == "Conv"]
        assert convs and all(n.input[0] in dequantized and n.input[1] in dequantized for n in convs)  # explicit quantization


def test_int8_scales_are_each_networks_own(trained_result, tmp_path):
    """Two archs exported into one folder under one name: the second gets scales from its own activations (no
    calibration cache carries the first one's over), and each passes its own parity check."""
    scales = []
    for seed in (3, 4):
        arch_file = tmp_path / f"arch{seed}.json"
        write_json(arch_file, {**arch_to_json(TINY28, TINY28.full().sample(random.Random(seed))), "supernet": json.loads(trained_result.read_text())["supernet"],
                               "data": {"name": "fashion-mnist"}})
        rep = export("onnx", arch_file, tmp_path / "same", precision="int8")
        assert rep["files"]["int8"]["parity"]["top1_agreement"] >= TOLERANCE["int8"].min_agreement
        model = onnx.load(tmp_path / "same" / "hsconet.int8.onnx")
        scales.append({t.name: onnx.numpy_helper.to_array(t).tolist() for t in model.graph.initializer if t.name.endswith("_scale")})
    assert scales[0] != scales[1]


def test_parity_tolerance_refuses():
    check_parity("fp16", {"images": 8, "max_rel_diff": 1e-3, "top1_agreement": 1.0}, "x")
    with pytest.raises(ExportError, match=r"x \(int8\) differs from PyTorch on 8 real images.*top-1 agreement 0.500"):
        check_parity("int8", {"images": 8, "max_rel_diff": 0.01, "top1_agreement": 0.5}, "x")
    with pytest.raises(ExportError, match="relative difference 5.00e-02"):
        check_parity("fp16", {"images": 8, "max_rel_diff": 0.05, "top1_agreement": 1.0}, "x")


def test_cli_export_errors(result_file, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**json.loads(result_file.read_text()), "supernet": str(tmp_path / "gone.pt")}))
    cases = [
        (("export", "--format", "tflite", "--result", result_file), "unknown format"),
        (("export", "--result", tmp_path / "nope.json"), "not found"),
        (("export", "--result", result_file, "--arch", result_file), "not both"),
        (("export", "--result", bad, "--out", tmp_path / "x"), "checkpoint not found"),
    ]
    for (_, needle), p in zip(cases, run_cli_all(*(args for args, _ in cases))):
        assert_one_line_error(p, needle)
    assert not (tmp_path / "x").exists()


def test_dockerfile_jetson_structure():
    text = (ROOT / "Dockerfile.jetson").read_text()
    steps = [l.split()[0] for l in text.splitlines() if l and not l.startswith(("#", " ")) and l.split()[0].isupper()]
    assert steps[:2] == ["ARG", "FROM"] and steps[-2:] == ["ENTRYPOINT", "CMD"]
    base = re.search(r"ARG BASE_IMAGE=(\S+)", text).group(1)
    assert base.startswith("nvcr.io/nvidia/l4t-") and ":r35." in base  # JetPack 5 / L4T R35
    assert "python3-libnvinfer" in text and "pip install --no-cache-dir tensorrt" not in text  # system bindings
    run_steps = " ".join(re.findall(r"^RUN (?:.*\\\n)*.*$", text, re.M))
    # builds without a GPU: no build step imports what needs the driver (tensorrt, torch, pycuda)
    assert not re.search(r"import (tensorrt|torch|pycuda)", run_steps) and "pycuda" not in text
    assert "find_spec('tensorrt')" in run_steps
    for part in ("hsconas_cli", "exporters", "device_profiles", "pyproject.toml"):
        assert re.search(rf"^COPY .*{part}", text, re.M), part
    assert "--no-deps -e ." in text and 'ENTRYPOINT ["hsconas"]' in text
    readme = (ROOT / "README.md").read_text()
    assert "docker build -f Dockerfile.jetson" in readme and "--runtime nvidia --ipc=host" in readme
    assert "calibrate --device xavier" in readme and "export --format trt --device xavier" in readme
    assert "/etc/hsconas/board-model" in readme and "/etc/hsconas/board-model" in text


def test_export_states_the_accuracy_of_the_weights_it_exports(tiny_supernet, fmnist, tmp_path):
    """Issue 24 item 6: inherited weights get BN from the search's own calibration images, so the exported network
    scores what the search scored; a retrained checkpoint without a test top-1 carries no accuracy, not the
    search's inherited one."""
    from hsconas_cli.evaluate import Evaluator
    from hsconas_cli.train import TrainConfig, retrain
    from hsconas_cli.checkpoint import load_checkpoint, load_supernet, save_checkpoint

    arch = TINY28.full().sample(random.Random(4))
    ev = Evaluator(load_supernet(tiny_supernet)[0], fmnist, calib_images=64, val_images=256)
    result = tmp_path / "result.json"
    write_json(result, arch_to_json(TINY28, arch, kind="hsconas-search-result", supernet=str(tiny_supernet),
                                    acc=ev.accuracy(arch), settings={"calib_images": 64, "val_images": 256},
                                    data={"name": "fashion-mnist"}, device={"batch_size": 1}))
    rep = export("onnx", result, tmp_path / "inherited", profile=None, batch_size=256)
    meta = json.loads({p.key: p.value for p in onnx.load(rep["path"]).metadata_props}["hsconas"])
    assert "BN recalibrated on 64 calibration images, as the search's evaluator did" in meta["weights"]
    x, y = next(iter(fmnist.loader("val", 256, limit=256)))
    logits = ort.InferenceSession(rep["path"], providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]
    assert (logits.argmax(1) == y.numpy()).mean() == pytest.approx(meta["accuracy"], abs=1 / 256)  # at most one near-tie

    retrain("fashion-mnist", TINY28, arch, tmp_path / "net", cfg=TrainConfig(epochs=1, batch_size=64, lr=0.1, limit=128, workers=0),
            data=fmnist)
    ckpt = load_checkpoint(tmp_path / "net" / "checkpoint.pt", cached=False)
    del ckpt["test_top1"], ckpt["val_top1"]  # as a retraining that was cut off leaves it
    save_checkpoint(ckpt, tmp_path / "cut" / "checkpoint.pt")
    rep = export("onnx", result, tmp_path / "retrained", profile=None, checkpoint=tmp_path / "cut" / "checkpoint.pt")
    meta = json.loads({p.key: p.value for p in onnx.load(rep["path"]).metadata_props}["hsconas"])
    assert meta["accuracy"] is None and meta["accuracy_kind"].startswith("retrained, not scored")
