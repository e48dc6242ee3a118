"""OpenVINO and ExecuTorch (XNNPACK): the two edge runtimes as latency backends and as export formats, tested with
the real runtimes (the extras hsconas[openvino] and hsconas[executorch], which `make test` installs), and the
one-line refusal where an extra is missing (the package hidden from the import system of a real CLI process)."""

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import ROOT, TINY28, assert_one_line_error
from timing_checks import FAST_PROTOCOL
from exporters.executorch import ProgramRunner, export_pte, lower
from exporters.files import ExportError, ExportRequest
from exporters.openvino import export_openvino
from hsconas_cli.backends import make_backend
from hsconas_cli.blocks import make_block
from hsconas_cli.calibrate import calibrate
from hsconas_cli.meter import LatencyMeter
from hsconas_cli.devices import Device, load_device
from hsconas_cli.errors import HsconasError
from hsconas_cli.export import export
from hsconas_cli.fileio import write_json
from hsconas_cli.profiles import load_profile
from hsconas_cli.space import SearchSpace, arch_to_json
from hsconas_cli.supernet import Supernet, build_subnet

# Two layers and one channel factor: the ExecuTorch calibration lowers each of its programs (a second or more each)
MICRO = SearchSpace("micro28", (8, 16), 28, 1, 10, depths=(1, 1), factors=(0.5,), head_channels=32)
# MICRO with two ops: the fewest programs a calibration with 2 + 2 distinct archs can have (lowering is seconds each)
NANO = SearchSpace("nano28", (8, 16), 28, 1, 10, depths=(1, 1), ops=("shuffle3", "xception"), factors=(0.5,),
                   head_channels=32)


def _images(fmnist, n=8):
    return torch.cat([x for x, _ in fmnist.loader("val", n, limit=n)]).numpy()


def _net(space, seed=0):
    torch.manual_seed(seed)
    return build_subnet(Supernet(space), space.full().sample(random.Random(seed))).eval()


class ExportsDifferently(torch.nn.Module):
    """A network whose exported graph computes something else than it does in PyTorch (the kind of export bug the
    parity gates exist for): while torch.export or the ONNX exporter traces it, it adds 1 to every logit."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        y = self.net(x)
        return y + 1.0 if torch.compiler.is_exporting() or torch.onnx.is_in_onnx_export() else y


def _no_hsconas_in(*paths):
    for p in paths:
        assert b"hsconas" not in p.read_bytes(), f"{p.name} carries hsconas metadata: it belongs in the sidecar"


@pytest.fixture(scope="module")
def openvino_profile(tmp_path_factory):
    """A real calibration of TINY28 through OpenVINO's CPU plugin, with a short protocol."""
    root = tmp_path_factory.mktemp("ov-profiles")
    dev = Device("tinyov", 1, "openvino", {"threads": 1, "hint": "latency", "precision": "fp32", "protocol": FAST_PROTOCOL})
    write_json(root / "tinyov.json", dev.to_dict())
    return load_profile(calibrate(dev, TINY28, archs=4, holdout=3, root=root))


# ---- OpenVINO ---------------------------------------------------------------------------------------
def test_openvino_profile_records_its_runtime_and_predicts(openvino_profile):
    prof = openvino_profile
    backend = prof.doc["backend"]
    assert backend["name"] == "openvino" and backend["versions"]["openvino"]
    assert backend["options"] == {"device": "cpu", "hint": "latency", "threads": 1, "precision": "fp32",
                                  "protocol": FAST_PROTOCOL}
    assert set(prof.doc["timers"]) == {"wall clock"} and prof.doc["lut"]["entries"]
    assert all(e["ms"] >= 0 for e in prof.doc["lut"]["entries"])
    assert prof.predict(TINY28.full().sample(random.Random(5))) > 0
    assert len(prof.validation["measured_ms"]) == 3 and prof.validation["noise_floor_ms"] >= 0


def test_openvino_ir_export_parity_sidecar_and_measured_as_written(openvino_profile, tmp_path, fmnist):
    net = _net(TINY28)
    meta = {"space": "tiny28", "accuracy": 0.5}
    measured = []
    rep = export_openvino(ExportRequest(net, tmp_path, "n", 1, meta, _images(fmnist),
                                        measure=lambda path: measured.append(path) or {"measured_ms": 1.0}))
    xml, bin_ = tmp_path / "n.xml", tmp_path / "n.bin"
    assert rep["check"]["max_rel_diff"] < 1e-3 and rep["check"]["top1_agreement"] == 1.0 and rep["check"]["images"] == 8
    assert measured == [xml] and (tmp_path / "n.onnx").is_file()
    side = json.loads((tmp_path / "n.openvino.json").read_text())
    assert side["metadata"] == meta and side["xml"] == "n.xml" and side["latency"] == {"measured_ms": 1.0}
    assert side["openvino"] and side["check"] == rep["check"] and side["weights_precision"] == "fp32"
    _no_hsconas_in(xml, bin_)
    import openvino as ov

    x = _images(fmnist, 1)
    got = ov.Core().compile_model(str(xml), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})(x)[0]
    np.testing.assert_allclose(got, net(torch.from_numpy(x)).detach().numpy(), atol=1e-4)
    res = LatencyMeter(openvino_profile).measure(xml, repeats=2, budget_s=5)  # the IR file itself, as written
    assert res["measured_ms"] > 0 and res["profile"] == openvino_profile.name
    fp16 = export_openvino(ExportRequest(net, tmp_path, "h", 1, meta, _images(fmnist), precision="fp16"))
    assert (tmp_path / "h.bin").stat().st_size < 0.6 * bin_.stat().st_size and fp16["check"]["max_rel_diff"] < 2e-2


def test_export_from_a_result_measures_the_ir_with_the_openvino_profile(openvino_profile, tiny_supernet, tmp_path):
    arch = TINY28.full().sample(random.Random(3))
    result = tmp_path / "result.json"
    write_json(result, arch_to_json(TINY28, arch, kind="hsconas-search-result", supernet=str(tiny_supernet), acc=0.5,
                                    data={"name": "fashion-mnist"}, predicted_ms=0.1))
    rep = export("openvino", result, tmp_path / "out", profile=openvino_profile)
    assert rep["format"] == "openvino" and rep["latency"]["predicted_ms"] == openvino_profile.predict(arch)
    side = json.loads((tmp_path / "out" / "hsconet.openvino.json").read_text())
    assert side["latency"]["measured_ms"] == rep["latency"]["measured_ms"] > 0
    assert side["metadata"]["arch"]["arch"] == arch.to_list() and side["metadata"]["profile"] == openvino_profile.name
    assert side["timing"]["threads"] == 1 and side["timing"]["hint"] == "latency"


def test_openvino_options_are_checked():
    with pytest.raises(ExportError, match="performance hint 'fast'"):
        make_backend("openvino", {"hint": "fast"})
    with pytest.raises(ExportError, match="precision must be"):
        make_backend("openvino", {"precision": "int8"})
    import openvino as ov

    if "NPU" not in ov.Core().available_devices:
        with pytest.raises(HsconasError, match="OpenVINO sees no NPU device here"):
            make_backend("openvino", {"device": "npu"})


# ---- ExecuTorch ---------------------------------------------------------------------------------------
def test_executorch_calibration_lowers_ahead_and_measures_a_pte(tmp_path, fmnist):
    """Every program is lowered before anything is timed, into a cache the calibration removes when it is done;
    the profile records the runtime; a .pte exported from a network of the space is measured as written."""
    dev = Device("tinyxnn", 1, "executorch", {"threads": 1, "protocol": FAST_PROTOCOL})
    write_json(tmp_path / "tinyxnn.json", dev.to_dict())
    logs = []
    prof = load_profile(calibrate(dev, NANO, archs=2, holdout=2, root=tmp_path, log=logs.append))
    assert prof.doc["backend"]["name"] == "executorch" and prof.doc["backend"]["versions"]["executorch"]
    assert any("ExecuTorch programs to lower first" in l for l in logs) and any(l.startswith("lowered ") for l in logs)
    assert not (tmp_path / "tinyxnn" / "nano28" / ".executorch").exists()  # the programs served; removed
    assert prof.predict(NANO.full().sample(random.Random(1))) > 0
    net = _net(NANO)
    rep = export_pte(ExportRequest(net, tmp_path / "pte", "m", 1, {"space": "nano28"}, _images(fmnist)))
    pte = tmp_path / "pte" / "m.pte"
    assert rep["check"]["max_rel_diff"] < 1e-3 and rep["check"]["top1_agreement"] == 1.0
    side = json.loads((tmp_path / "pte" / "m.pte.json").read_text())
    assert side["metadata"] == {"space": "nano28"} and side["delegate"] == "xnnpack" and side["executorch"]
    _no_hsconas_in(pte)
    res = LatencyMeter(prof).measure(pte, repeats=2, budget_s=5)
    assert res["measured_ms"] > 0


def test_a_lowering_worker_rebuilds_each_module_from_its_recipe_and_weights():
    """Workers get a recipe (a factory and plain data) and the weights as tensors, never a pickled module, and what
    they rebuild is the program the parent asked for (the same content key): a whole network, the reference network,
    and each kind of calibration part."""
    from exporters.executorch import _weights_bytes, program_key, rebuild
    from hsconas_cli.calibrate import Parts
    from hsconas_cli.meter import network_item

    shape, parts = (1, 1, 28, 28), Parts(MICRO, 1)
    items = [network_item(MICRO, MICRO.full().sample(random.Random(2)), shape),
             network_item(MICRO, MICRO.full().sample(random.Random(3)), shape, seed=7),
             parts.item(("stem",)), parts.item(("head",)), parts.item(("identity", parts.head_shape)),
             parts.item(("block", 0, "xception", MICRO.mid(0, 0.5))), parts.item(("block", 1, "skip", None))]
    for module, s, recipe in items:
        assert program_key(rebuild(recipe.factory, recipe.kwargs, _weights_bytes(module)), s) == program_key(module, s)


def test_programs_are_cached_by_content(tmp_path):
    def block(seed: int):  # one block of the space, seeded: lowering a whole network would take seconds more
        torch.manual_seed(seed)
        return make_block("shuffle3", 8, 16, 2, 4).eval()

    shape = (1, 8, 14, 14)
    first = lower(block(0), shape, tmp_path)
    assert len(list(tmp_path.glob("*.pte"))) == 1
    assert lower(block(0), shape, tmp_path) == first  # the same block again: taken from the cache
    assert len(list(tmp_path.glob("*.pte"))) == 1
    lower(block(1), shape, tmp_path)  # other weights: another program
    assert len(list(tmp_path.glob("*.pte"))) == 2


def test_pte_refusals_write_nothing(tmp_path, fmnist):
    net = _net(MICRO)
    with pytest.raises(ExportError, match="static batch"):
        export_pte(ExportRequest(net, tmp_path, "d", 1, {}, _images(fmnist), dynamic_batch=True))
    with pytest.raises(ExportError, match="exported at fp32"):
        export_pte(ExportRequest(net, tmp_path, "h", 1, {}, _images(fmnist), precision="fp16"))
    with pytest.raises(ExportError, match="the ExecuTorch program .* differs from PyTorch"):
        export_pte(ExportRequest(ExportsDifferently(net), tmp_path, "noisy", 1, {}, _images(fmnist)))
    with pytest.raises(ExportError, match="differ from PyTorch"):
        export_openvino(ExportRequest(ExportsDifferently(net), tmp_path, "noisy", 1, {}, _images(fmnist)))
    assert not [p for p in tmp_path.iterdir() if not p.name.startswith(".")]


def test_threadpool_is_never_resized_under_a_loaded_program(tmp_path):
    """A loaded method keeps the threadpool it was loaded with: resizing the pool under it crashed the process
    (found here); a runner of another size is refused while one is loaded, and allowed once it is closed."""
    program = lower(_net(MICRO), (1, 1, 28, 28), tmp_path)
    one = ProgramRunner(program, (1, 1, 28, 28), threads=1)
    with pytest.raises(ExportError, match="cannot be resized to 2"):
        ProgramRunner(program, (1, 1, 28, 28), threads=2)
    other = ProgramRunner(program, (1, 1, 28, 28), threads=1)
    assert one.time(5) > 0 and other.time(5) > 0 and one.time(5) > 0  # two programs interleaved
    one.close(), other.close()
    two = ProgramRunner(program, (1, 1, 28, 28), threads=2)
    assert two.time(5) > 0
    two.close()


# ---- presets and the extras ---------------------------------------------------------------------------
def test_presets_of_the_two_runtimes():
    ov, xnn = load_device("cpu-openvino"), load_device("cpu-xnnpack")
    assert (ov.backend, ov.backend_options["precision"], ov.backend_options["threads"]) == ("openvino", "fp32", 1)
    assert (xnn.backend, xnn.backend_options["delegate"], xnn.batch_size) == ("executorch", "xnnpack", 1)
    assert xnn.calibration == {"archs": 40, "holdout": 30} and ov.calibration is None  # lowering costs seconds a network
    assert xnn.to_dict()["calibration"] == xnn.calibration and "calibration" not in ov.to_dict()


HIDE = "import sys; sys.modules[{mod!r}] = None; from hsconas_cli.cli import main; main({argv!r})"


@pytest.mark.parametrize("mod,argv,extra", [
    ("openvino", ["export", "--format", "openvino", "--result", "nope.json"], "hsconas[openvino]"),
    ("executorch", ["export", "--format", "pte", "--result", "nope.json"], "hsconas[executorch]"),
    ("openvino", ["calibrate", "--device", "cpu-openvino", "--space", "fmnist-A", "--archs", "2", "--holdout", "2"], "hsconas[openvino]"),
    ("executorch", ["calibrate", "--device", "cpu-xnnpack", "--space", "fmnist-A", "--archs", "2", "--holdout", "2"], "hsconas[executorch]"),
])
def test_a_missing_extra_is_one_line_naming_it(mod, argv, extra, tmp_path):
    p = subprocess.run([sys.executable, "-c", HIDE.format(mod=mod, argv=argv)], capture_output=True, text=True,
                       cwd=tmp_path, timeout=300, env={**os.environ, "HSCONAS_PROFILES": str(tmp_path)})
    assert_one_line_error(p, extra, "not installed")
    assert not list(tmp_path.rglob("*.json"))


ORPHAN_SCRIPT = """
import multiprocessing, os, time
from concurrent.futures import ProcessPoolExecutor
from exporters.executorch import die_with_parent
if __name__ == "__main__":
    pool = ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn"), initializer=die_with_parent,
                               initargs=(os.getpid(),))
    for f in [pool.submit(time.sleep, 0.1) for _ in range(4)]:
        f.result()  # both workers are up, their initializer has run
    pool.submit(time.sleep, 120)
    pool.submit(time.sleep, 120)
    print("ready", flush=True)
    time.sleep(120)
"""


def _children(pid: int) -> list[int]:
    out = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines() if ":\t" in line)
        except OSError:
            continue
        if fields.get("PPid", "").strip() == str(pid):
            out.append(int(status.parent.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text().split("State:\t", 1)[1][0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_lowering_workers_end_when_their_parent_is_killed(tmp_path):
    """A parent killed by SIGTERM (a job runner, a timeout) takes its lowering workers with it: left running, they
    slowed every timing on the machine for minutes (found here)."""
    import signal
    import subprocess
    import time

    script = tmp_path / "orphans.py"
    script.write_text(ORPHAN_SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert proc.stdout.readline().strip() == "ready"
        workers = [p for p in _children(proc.pid) if _alive(p)]
        assert len(workers) >= 2, workers  # the two workers (and the resource tracker)
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_alive(p) for p in workers):
            time.sleep(0.1)
        assert not [p for p in workers if _alive(p)]
    finally:
        proc.kill()
