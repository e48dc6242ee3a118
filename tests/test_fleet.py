"""One network for a fleet (issue 26): the fleet objective, the closed loop's choice across devices, and a real
fleet search of TINY28 over three device profiles: onnxruntime (measured here), OpenVINO (transferred and
measured here) and a board this machine is not (predicted only)."""

import copy
import shutil

import pytest

from conftest import assert_one_line_error, run_cli
from hsconas_cli.errors import HsconasError
from hsconas_cli.fileio import write_json
from hsconas_cli.fleet import fleet_search, parse_fleet_targets, resolve_fleet
from hsconas_cli.closed_loop import choose_fleet_candidate
from hsconas_cli.objective import FleetObjective, Objective
from hsconas_cli.profiles import save_profile
from hsconas_cli.search import SearchConfig

CFG = SearchConfig(generations=2, population=6, parents=2, calib_images=64, val_images=128)


def test_fleet_objective_charges_each_devices_overshoot_as_a_share_of_its_own_target():
    obj = FleetObjective({"a": Objective(1.0), "b": Objective(30.0)})
    assert obj(0.8, {"a": 0.9, "b": 20.0}) == pytest.approx(0.8)  # under both: F is the accuracy
    one = obj(0.8, {"a": 1.03, "b": 20.0})
    two = obj(0.8, {"a": 1.03, "b": 30.9})  # 3% over on each
    assert one == pytest.approx(0.8 - 0.03) and two == pytest.approx(0.8 - 0.06)
    assert obj(0.8, {"a": 0.5, "b": 30.9}) == pytest.approx(one)  # a device far under buys nothing for another's miss
    below = FleetObjective({"a": Objective(1.0, beta_below=-0.5), "b": Objective(2.0, beta_below=-0.5)})
    assert below(0.8, {"a": 0.9, "b": 2.0}) == pytest.approx(0.8 + 0.05)  # beta_below < 0 rewards running under T


def test_bad_fleet_targets_are_refused_in_one_line():
    for specs, needle in ((["cpu"], "DEVICE=TARGET"), (["cpu=1ms", "cpu=2ms"], "twice"), (["cpu=1ms"], "at least two"),
                          (["cpu=fast", "gpu=1"], "neither milliseconds")):
        with pytest.raises(HsconasError, match=needle):
            parse_fleet_targets(specs)
    assert parse_fleet_targets(["cpu=0.9ms", " gpu = 40% "]) == [("cpu", "0.9ms"), ("gpu", "40%")]
    p = run_cli("search", "--target", "cpu=0.9ms", "--target", "cpu-openvino")
    assert_one_line_error(p, "--target", "DEVICE=TARGET")


def _cand(acc, **devices):
    return {"acc": acc, "F": acc, "trusted": True,
            "devices": {d: {"measured_ms": m, "uncertainty_pct": 2.0, "target_ms": t} for d, (m, t) in devices.items()}}


def test_fleet_closed_loop_keeps_a_winner_that_meets_every_target_and_replaces_one_that_misses():
    keep = [_cand(0.9, a=(0.99, 1.0), b=(1.9, 2.0)), _cand(0.95, a=(0.8, 1.0), b=(1.5, 2.0))]
    assert choose_fleet_candidate(keep)[0] == 0
    miss = [_cand(0.9, a=(1.2, 1.0), b=(1.9, 2.0)),  # 20% over on a
            _cand(0.85, a=(0.9, 1.0), b=(2.5, 2.0)),  # fixes a, misses b
            _cand(0.80, a=(0.9, 1.0), b=(1.8, 2.0)),  # meets both
            _cand(0.70, a=(0.8, 1.0), b=(1.5, 2.0))]  # meets both, less accurate
    chosen, why = choose_fleet_candidate(miss)
    assert chosen == 2 and "missed T on a" in why
    none = [_cand(0.9, a=(1.2, 1.0)), _cand(0.8, a=(1.19, 1.0))]  # nothing clearly faster where the winner missed
    assert choose_fleet_candidate(none)[0] == 0


@pytest.fixture(scope="module")
def fleet_root(tiny_profile, tmp_path_factory):
    """Profiles of three devices for TINY28: onnxruntime (the session's calibration), OpenVINO (transferred from it
    here, measured), and a board this machine is not: the onnxruntime profile's document renamed as a Jetson's
    (test data for "a profile of a device that cannot be measured here", never measured as one)."""
    pytest.importorskip("openvino", reason="the OpenVINO extra is not installed (pip install 'hsconas[openvino]')")
    from hsconas_cli.devices import Device
    from hsconas_cli.transfer import transfer_calibrate

    root = tmp_path_factory.mktemp("fleet-profiles")
    (root / "tinycpu" / "tiny28").mkdir(parents=True)
    shutil.copy(tiny_profile.path, root / "tinycpu" / "tiny28" / "v1.json")
    fast = {"chunk_ms": 0.3, "pairs_min": 4, "pairs_max": 8, "fast_pairs": 3, "warmup_ms": 5}
    ov = Device("tinyov", 1, "openvino", {"device": "cpu", "hint": "latency", "threads": 1, "precision": "fp32", "protocol": fast})
    write_json(root / "tinyov.json", ov.to_dict())
    transfer_calibrate(ov, tiny_profile, 4, holdout=4, max_rmse=None, root=root)
    board = copy.deepcopy(tiny_profile.doc)
    for k in ("checksum", "profile_version"):
        board.pop(k)
    board["device"].update(name="tinyorin", jetson=True, description="a board this machine is not (test data)")
    save_profile(board, root)
    return root


def test_fleet_search_measures_what_it_can_and_reports_a_row_per_device(fleet_root, tiny_supernet, fmnist, tmp_path,
                                                                        monkeypatch, tiny_profile):
    monkeypatch.setenv("HSCONAS_PROFILES", str(fleet_root))
    sub = tiny_profile.space.full()
    fleet = resolve_fleet([("tinycpu", "60%"), ("tinyov", "60%"), ("tinyorin", "70%")], sub)
    res = fleet_search(tiny_supernet, fmnist, fleet, tmp_path, cfg=CFG, verify=3)
    rows = {r["device"]: r for r in res["devices"]}
    assert set(rows) == {"tinycpu", "tinyov", "tinyorin"}
    for d in ("tinycpu", "tinyov"):
        assert rows[d]["measured_ms"] > 0 and rows[d]["uncertainty_pct"] >= 0 and "vs_target_pct" in rows[d]
    assert rows["tinyorin"]["measured_ms"] is None and "Jetson" in rows["tinyorin"]["why_not_measured"]
    lats = {d: r["predicted_ms"] for d, r in rows.items()}
    obj = FleetObjective({m.device: Objective(m.target_ms) for m in fleet.members})
    assert res["F"] == pytest.approx(obj(res["acc"], lats))  # F of the arch handed out, recomputed
    assert len(res["closed_loop"]["candidates"]) == 3
    assert [r["device"] for r in res["own_winners"]] == ["tinycpu", "tinyov", "tinyorin"]
    assert all(r["price_points"] == pytest.approx(100 * (r["acc"] - res["acc"])) for r in res["own_winners"])
    assert set(res["agreement"]["spearman"]) == {"tinycpu vs tinyov", "tinycpu vs tinyorin", "tinyov vs tinyorin"}
    report = (tmp_path / "report.md").read_text()
    assert report.count("| tiny") >= 6 and "predicted only" in report
