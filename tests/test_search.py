"""Evolutionary search on a tiny space with a real supernet, a real profile and real data."""

import json
import random

import pytest

from conftest import TINY28, assert_one_line_error, run_cli
from hsconas_cli.errors import HsconasError
from hsconas_cli.search import SearchConfig, crossover, mutate, pareto_front, search
from hsconas_cli.space import load_arch

CFG = SearchConfig(generations=3, population=8, parents=3, calib_images=128, val_images=256)


def test_operators_stay_in_the_subspace():
    sub = TINY28.full().fix_op(4, "xception").restrict_factors(2, [0.5])
    rng = random.Random(0)
    pop = [sub.sample(rng) for _ in range(10)]
    for _ in range(300):
        for child in (mutate(rng.choice(pop), sub, rng, 0.5), crossover(rng.choice(pop), rng.choice(pop), rng, 0.5)):
            assert sub.contains(child)
            assert all((op == "skip") == (c is None) for op, c in child)
    a, b = pop[0], pop[1]
    assert crossover(a, b, rng, 0.0) == a and crossover(a, b, rng, 1.0) == b
    assert mutate(a, sub, rng, 0.0) == a


def test_pareto_front():
    rows = [{"acc": 0.8, "lat_ms": 1.0}, {"acc": 0.85, "lat_ms": 1.2}, {"acc": 0.82, "lat_ms": 1.3}, {"acc": 0.7, "lat_ms": 0.9}]
    assert pareto_front(rows) == [rows[3], rows[0], rows[1]]


@pytest.fixture(scope="module")
def searched(tiny_supernet, tiny_profile, fmnist, tmp_path_factory):
    out = tmp_path_factory.mktemp("search")
    return out, search(tiny_supernet, fmnist, tiny_profile, "50%", out, cfg=CFG)


def test_search_outputs(searched, tiny_profile):
    out, res = searched
    assert res["kind"] == "hsconas-search-result" and res["profile"] == tiny_profile.name
    assert res["settings"]["generations"] == 3 and res["objective"]["target_ms"] == res["target"]["target_ms"]
    rows = [json.loads(l) for l in (out / "evaluated.jsonl").read_text().splitlines()]
    keys = [json.dumps(r["key"]) for r in rows]
    assert len(keys) == len(set(keys)) == res["evaluated"]  # never evaluated twice
    assert res["F"] == max(r["F"] for r in rows)
    assert [h["generation"] for h in res["history"]] == [1, 2, 3]
    assert all(b["best_F"] >= a["best_F"] for a, b in zip(res["history"], res["history"][1:]))  # elitist
    front = json.loads((out / "pareto.json").read_text())["front"]
    assert front and all(any(f["key"] == r["key"] for r in rows) for f in front)
    assert (out / "fig6-search.png").stat().st_size > 1000
    # export, predict and measure take the result as an arch file
    sp, arch = load_arch(out / "result.json")
    assert sp == TINY28 and res["predicted_ms"] == pytest.approx(tiny_profile.predict(arch))


def test_search_resumes(tiny_supernet, tiny_profile, fmnist, searched, tmp_path):
    calls = {"n": 0}

    def interrupt(desc, done, total):
        calls["n"] += 1
        if calls["n"] == 12:  # inside generation 2
            raise KeyboardInterrupt

    with pytest.raises(HsconasError, match="resume"):
        search(tiny_supernet, fmnist, tiny_profile, "50%", tmp_path, cfg=CFG, progress=interrupt)
    assert json.loads((tmp_path / "search-state.json").read_text())["generation"] == 1
    res = search(tiny_supernet, fmnist, tiny_profile, "50%", tmp_path, cfg=CFG)
    assert res["arch"] == searched[1]["arch"] and res["evaluated"] == searched[1]["evaluated"]
    with pytest.raises(HsconasError, match="other settings"):
        search(tiny_supernet, fmnist, tiny_profile, "50%", tmp_path, cfg=SearchConfig(generations=4, population=8, parents=3))


def test_bad_settings_and_targets(tiny_supernet, tiny_profile, fmnist, tmp_path):
    with pytest.raises(HsconasError, match="--parents"):
        search(tiny_supernet, fmnist, tiny_profile, "50%", tmp_path, cfg=SearchConfig(population=4, parents=4))
    hi = tiny_profile.reachable()[1]
    with pytest.raises(HsconasError, match="outside what tiny28 reaches"):
        search(tiny_supernet, fmnist, tiny_profile, str(hi * 1.5), tmp_path, cfg=CFG)


def test_cli_search_with_verify(tiny_supernet, tiny_profile, tmp_path):
    env = {"HSCONAS_PROFILES": str(tiny_profile.path.parents[2])}
    p = run_cli("search", "--device", "tinycpu", "--latency", "60%", "--supernet", tiny_supernet, "--generations", "2",
                "--population", "6", "--parents", "2", "--calib-images", "64", "--val-images", "128", "--verify",
                "--candidates", "3", "--no-profile-check", "--out", tmp_path / "s", "--json", env=env)
    assert p.returncode == 0, p.stderr
    res = json.loads(p.stdout)
    assert res["verify"]["measured_ms"] > 0 and "error_vs_target_pct" in res["verify"]
    loop = res["closed_loop"]
    assert len(loop["candidates"]) == 3 and all(c["measured_ms"] > 0 and c["uncertainty_pct"] > 0 for c in loop["candidates"])
    assert res["arch"] == loop["candidates"][loop["chosen"]]["arch"]  # the chosen candidate is the result
    pred = run_cli("predict", "--arch", tmp_path / "s" / "result.json", "--device", "tinycpu", "--json", env=env)
    assert json.loads(pred.stdout)["predicted_ms"] == pytest.approx(res["predicted_ms"])
    assert_one_line_error(run_cli("search", "--device", "tinycpu", "--latency", "50%", "--supernet", tiny_supernet,
                                  "--population", "4", "--parents", "9", "--no-profile-check", env=env), "--parents")
    assert_one_line_error(run_cli("search", "--device", "tinycpu", "--latency", "1", "--crossover-prob", "2",
                                  "--supernet", tiny_supernet, env=env), "--crossover-prob")
