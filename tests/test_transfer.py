"""Calibration by transfer (issue 26), on real measurements of a tiny space: onnxruntime's profile of TINY28 (the
session's ``tiny_profile``) transferred to OpenVINO on this CPU, the held-out gate, and the mappings' algebra."""

import json
import random

import numpy as np
import pytest

from conftest import assert_one_line_error, run_cli
from hsconas_cli.devices import Device
from hsconas_cli.errors import HsconasError
from hsconas_cli.fileio import write_json
from hsconas_cli.profiles import find_profile, load_profile, versions
from hsconas_cli.transfer import (choose_networks, design_networks, fit_linear, fit_mappings, mapped_lut_and_model,
                                  predict_mapped, transfer_calibrate)

pytest.importorskip("openvino", reason="the OpenVINO extra is not installed (pip install 'hsconas[openvino]')")

FAST = {"chunk_ms": 0.3, "pairs_min": 4, "pairs_max": 8, "fast_pairs": 3, "warmup_ms": 5}
TARGET = Device("tinyov", 1, "openvino", {"device": "cpu", "hint": "latency", "threads": 1, "precision": "fp32", "protocol": FAST})


@pytest.fixture(scope="module")
def transferred(tiny_profile, tmp_path_factory):
    root = tmp_path_factory.mktemp("transfer")
    write_json(root / "tinyov.json", TARGET.to_dict())
    path = transfer_calibrate(TARGET, tiny_profile, 4, holdout=5, max_rmse=None, root=root)
    return tiny_profile, load_profile(path), root


def test_transferred_profile_is_a_normal_profile_that_records_its_transfer(transferred):
    source, prof, root = transferred
    assert prof.name == "tinyov/tiny28/v1" and versions("tinyov", "tiny28", root) == [1]
    assert find_profile("tinyov", source.space, root=root).doc["checksum"] == prof.doc["checksum"]  # schema, checksum
    t = prof.doc["transfer"]
    assert t["from"] == source.name and t["networks"] == 4 and t["holdout"] == 5 and t["design"] == "random"
    assert set(t["candidates"]) == {"scale", "linear", "linear-per-op"} and t["mapping"] in t["candidates"]
    fit = {json.dumps(a) for a in prof.doc["bias"]["archs"]}
    held = {json.dumps(a) for a in prof.validation["arch_list"]}
    assert len(fit) == 4 and len(held) == 5 and not fit & held  # held-out networks never used in the fit
    assert prof.doc["backend"]["name"] == "openvino" and prof.doc["timing"]["measurements"] == 4 + 2 * 5
    lo, hi = prof.reachable()
    assert 0 < lo < hi


def test_transferred_profile_predicts_what_its_mapping_predicts(transferred):
    """The written LUT and model reproduce the chosen mapping exactly, and its validation follows from the
    stored measurements (scored on the second pass)."""
    source, prof, _ = transferred
    t = prof.doc["transfer"]
    mapping = t["mappings"][t["mapping"]]
    v = prof.validation
    from hsconas_cli.space import Arch

    archs = [Arch.from_list(a) for a in v["arch_list"]]
    assert [prof.predict(a) for a in archs] == pytest.approx([predict_mapped(source, mapping, a) for a in archs], rel=1e-9)
    p, m2 = np.array(v["predicted_ms"]), np.array(v["measured_again_ms"])
    assert v["rmse_ms"] == pytest.approx(float(np.sqrt(np.mean((p - m2) ** 2))), rel=1e-9)


def test_gate_refuses_a_transfer_whose_held_out_error_exceeds_its_bound(transferred):
    """The gate on the real held-out measurements of the transfer above: a bound under their RMSE / floor refuses
    in one line; one above it lets the profile through."""
    from hsconas_cli.transfer import check_gate

    _, prof, _ = transferred
    ratio = prof.validation["rmse_over_floor"]
    with pytest.raises(HsconasError, match=r"refused: held-out RMSE .* noise floor .*\(bound .*--networks 8"):
        check_gate(prof.doc, 0.9 * ratio)
    check_gate(prof.doc, 1.1 * ratio)
    check_gate(prof.doc, None)


def test_cli_refuses_a_transfer_over_its_bound_and_writes_nothing(tiny_profile, tmp_path):
    """The whole command on real measurements with a bound no measurement meets (--max-rmse 0): exit 2, one line,
    no profile and no partial state left."""
    _cli_root(tiny_profile, tmp_path)
    p = run_cli("calibrate", "--device", "tinyov", "--space", str(tmp_path / "tiny28.json"), "--from", "tinycpu",
                "--networks", "3", "--holdout", "3", "--max-rmse", "0", env={"HSCONAS_PROFILES": str(tmp_path)})
    # the measuring went on before the verdict (its progress and plan on stderr); the refusal is the last line, alone
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    last = [l for l in p.stderr.splitlines() if l.strip()][-1]
    assert last.startswith("hsconas: error: transfer from tinycpu/tiny28/v1 refused: held-out RMSE"), last
    assert "noise floor" in last and "--networks 6" in last
    assert versions("tinyov", "tiny28", tmp_path) == []
    assert not (tmp_path / "tinyov" / "tiny28" / ".partial.json").exists()


@pytest.fixture(scope="module")
def shipped():
    """The shipped onnxruntime profile of fmnist-A (20 layers, skips in 16): the mappings' algebra, nothing timed."""
    return find_profile("cpu", "fmnist-A", check_mode=False)


def test_linear_mappings_recover_a_per_block_cost_and_shrink_toward_one_scale(shipped):
    """Measurements made of 0.8 x the source ms + 0.01 ms per block (a runtime's per-node overhead): the linear
    mapping recovers both from 12 networks. Measurements that are one scale of the LUT sum: the per-op mapping
    stays at that scale (its per-op freedom shrunk away)."""
    from hsconas_cli.transfer import features

    rng = random.Random(5)
    archs = [shipped.space.full().sample(rng) for _ in range(12)]
    ms, blocks, _ = features(shipped, archs, per_op=False).T
    fit = fit_linear(shipped, archs, list(0.8 * ms + 0.01 * blocks + 0.1), per_op=False)
    g = fit["groups"]["all"]
    assert g["scale"] == pytest.approx(0.8, rel=0.02) and g["per_block_ms"] == pytest.approx(0.01, rel=0.05)
    assert g["per_mflop_ms"] == pytest.approx(0.0, abs=1e-4) and fit["intercept_ms"] == pytest.approx(0.1, rel=0.05)
    fit = fit_linear(shipped, archs, list(1.3 * ms + 0.2), per_op=True)
    assert fit["lambda"] > 0
    for g in fit["groups"].values():
        assert g["scale"] == pytest.approx(1.3, rel=1e-3) and abs(g["per_block_ms"]) < 1e-4


def test_every_mapping_is_written_as_an_exact_lut_and_model(shipped):
    """Each mapping's LUT-and-model form (what the profile file holds) predicts what the mapping predicts, on archs
    it was not fitted on."""
    from hsconas_cli.profiles import Profile

    rng = random.Random(3)
    archs = [shipped.space.full().sample(rng) for _ in range(30)]
    measured = [0.5 * shipped.predict(a) + 0.2 + 0.01 * sum(op == "xception" for op, _ in a) + 0.02 * (i % 3)
                for i, a in enumerate(archs)]
    for name, m in fit_mappings(shipped, archs[:20], measured[:20]).items():
        lut, model = mapped_lut_and_model(shipped, m)
        prof = Profile({**shipped.doc, "lut": lut, "model": model}, None)
        prof._index()
        for a in archs[20:]:
            assert prof.predict(a) == pytest.approx(predict_mapped(shipped, m, a), rel=1e-9), name


def test_designed_networks_spread_over_the_range_and_avoid_the_held_out_ones(shipped):
    fit, held = choose_networks(shipped, 6, 5, 0, "spread")
    keys = lambda archs: {json.dumps(a.to_list()) for a in archs}  # noqa: E731 (a one-line helper)
    assert len(keys(fit)) == 6 and not keys(fit) & keys(held)
    pool = [shipped.space.full().sample(random.Random(i)) for i in range(300)]
    p = sorted(shipped.predict(a) for a in pool)
    chosen = sorted(shipped.predict(a) for a in fit)
    lo, hi = p[len(p) // 10], p[-len(p) // 10]
    assert chosen[0] <= lo and chosen[-1] >= hi  # the design reaches both tails of the range
    again = design_networks(shipped, 6, 0, {json.dumps(a.to_list()) for a in held})
    assert keys(again) == keys(fit)  # seeded: the same networks every time


def test_cli_transfer_needs_both_from_and_networks(tmp_path):
    p = run_cli("calibrate", "--device", "cpu", "--space", "fmnist-A", "--from", "cpu", env={"HSCONAS_PROFILES": str(tmp_path)})
    assert_one_line_error(p, "--from", "--networks")
    p = run_cli("calibrate", "--device", "cpu", "--space", "fmnist-A", "--from", "nosuch/v3", "--networks", "5",
                env={"HSCONAS_PROFILES": str(tmp_path)})
    assert_one_line_error(p, "nosuch")


def _cli_root(tiny_profile, root):
    import shutil

    (root / "tinycpu" / "tiny28").mkdir(parents=True)
    shutil.copy(tiny_profile.path, root / "tinycpu" / "tiny28" / "v1.json")
    write_json(root / "tinyov.json", TARGET.to_dict())
    write_json(root / "tiny28.json", tiny_profile.space.to_dict())


def test_cli_transfer_writes_a_profile_and_prints_its_source(tiny_profile, tmp_path):
    _cli_root(tiny_profile, tmp_path)
    p = run_cli("calibrate", "--device", "tinyov", "--space", str(tmp_path / "tiny28.json"), "--from", "tinycpu/v1",
                "--networks", "3", "--holdout", "4", "--max-rmse", "100", env={"HSCONAS_PROFILES": str(tmp_path)})
    assert p.returncode == 0, p.stderr
    assert "transferred from tinycpu/tiny28/v1 with 3 random networks" in p.stdout
    assert versions("tinyov", "tiny28", tmp_path) == [1]
