"""Evolutionary search on a tiny space with a real supernet, a real profile and real data."""

import json
import random
import re
import statistics

import pytest

from conftest import TINY28, TINY_SEARCH_CFG as CFG, TINY_SEARCH_OBJ as OBJ, assert_one_line_error, run_cli
from hsconas_cli.errors import HsconasError
from hsconas_cli.evaluate import Evaluator
from hsconas_cli.search import SearchConfig, crossover, mutate, pareto_front, search
from hsconas_cli.objective import best_by_f
from hsconas_cli.space import Arch, load_arch
from hsconas_cli.checkpoint import load_supernet



def test_best_by_f():
    """Parents and winner are the archs of highest F, not of highest accuracy; among equal F the earlier evaluated."""
    rows = [{"k": "a", "F": 0.70, "acc": 0.95}, {"k": "b", "F": 0.90, "acc": 0.60}, {"k": "c", "F": 0.80, "acc": 0.90},
            {"k": "d", "F": 0.90, "acc": 0.50}, {"k": "e", "F": 0.10, "acc": 0.99}]
    assert [r["k"] for r in best_by_f(rows, 3)] == ["b", "d", "c"]
    assert [r["k"] for r in best_by_f(rows, 1)] == ["b"]


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


def test_search_outputs(tiny_search, tiny_profile, tiny_supernet, fmnist):
    out, res = tiny_search
    assert res["kind"] == "hsconas-search-result" and res["profile"] == tiny_profile.name
    assert res["settings"]["generations"] == 3 and res["objective"]["target_ms"] == res["target"]["target_ms"]
    rows = [json.loads(l) for l in (out / "evaluated.jsonl").read_text().splitlines()]
    keys = [json.dumps(r["key"]) for r in rows]
    assert len(keys) == len(set(keys)) == res["evaluated"]  # never evaluated twice
    # every row's figures recomputed here: latency from the profile, accuracy from a fresh evaluator (no cache),
    # F = ACC + beta (LAT / T - 1) written out (beta below T where LAT < T)
    T, beta, beta_below = res["objective"]["target_ms"], res["objective"]["beta"], res["objective"]["beta_below"]

    def F(r):
        return r["acc"] + (beta if r["lat_ms"] > T else beta_below) * (r["lat_ms"] / T - 1)

    ev = Evaluator(load_supernet(tiny_supernet)[0], fmnist, calib_images=CFG.calib_images, val_images=CFG.val_images)
    for r in rows:
        assert r["lat_ms"] == pytest.approx(tiny_profile.predict(Arch.from_list(r["arch"])), rel=1e-12)
        assert r["F"] == pytest.approx(F(r), abs=1e-12)
    for r in rows[:: max(1, len(rows) // 4)]:
        assert r["acc"] == ev.accuracy(Arch.from_list(r["arch"]))
    # the screen's best is the best arch by F (the result is the selection's winner: test_selection.py); each
    # generation's best is the best of what was evaluated by then
    assert res["screened_best"]["arch"] == max(rows, key=F)["arch"]
    assert res["screened_best"]["F"] == pytest.approx(max(map(F, rows)), abs=1e-12)
    assert res["F"] == pytest.approx(res["acc"] + (beta if res["predicted_ms"] > T else beta_below) * (res["predicted_ms"] / T - 1))
    assert [h["generation"] for h in res["history"]] == [1, 2, 3]
    for h in res["history"]:
        assert h["best_F"] == pytest.approx(max(F(r) for r in rows if r["generation"] <= h["generation"]), abs=1e-12)
    # elitist selection: the last generation is the best CFG.parents archs evaluated before it, then children
    # never evaluated before
    state = json.loads((out / "search-state.json").read_text())
    earlier = [r for r in rows if r["generation"] < CFG.generations]
    parents = sorted(earlier, key=lambda r: -F(r))[: CFG.parents]
    assert state["population"][: CFG.parents] == [r["arch"] for r in parents]
    seen = {json.dumps(r["arch"]) for r in earlier}
    children = state["population"][CFG.parents:]
    assert children and not any(json.dumps(a) in seen for a in children)
    front = json.loads((out / "pareto.json").read_text())["front"]
    assert front and all(any(f["key"] == r["key"] for r in rows) for f in front)
    assert (out / "fig6-search.png").stat().st_size > 1000
    # export, predict and measure take the result as an arch file
    sp, arch = load_arch(out / "result.json")
    assert sp == TINY28 and res["predicted_ms"] == pytest.approx(tiny_profile.predict(arch))


def test_what_the_search_bought(tiny_search, tiny_profile, tiny_supernet, fmnist):
    """The result holds the winner beside random archs of the whole space within 3% of its predicted latency and
    beside uniform scaling; every figure recomputed here with a fresh evaluator and the formulas written out."""
    out, res = tiny_search
    sv = res["search_value"]
    assert sv["arch"] == res["arch"] and sv["acc"] == res["acc"] and sv["val_images"] == CFG.select_images
    assert sv["split"] == "select"
    ev = Evaluator(load_supernet(tiny_supernet)[0], fmnist, calib_images=CFG.calib_images, val_images=CFG.select_images,
                   subset="select", per_image=True)
    lat = tiny_profile.predict(Arch.from_list(res["arch"]))
    r = sv["random"]
    assert r["n"] == r["wanted"] == 8 and len({json.dumps(a) for a in r["archs"]}) == 8
    for a, acc in zip(r["archs"], r["accs"]):
        assert abs(tiny_profile.predict(Arch.from_list(a)) / lat - 1) <= 0.03 and ev.accuracy(Arch.from_list(a)) == acc
    assert r["median"] == statistics.median(r["accs"])
    assert r["se"] == pytest.approx(1.2533 * statistics.stdev(r["accs"]) / 8 ** 0.5)
    assert sv["acc_se"] == pytest.approx((res["acc"] * (1 - res["acc"]) / CFG.select_images) ** 0.5)
    assert r["lead"]["lead"] == pytest.approx(res["acc"] - r["median"])
    assert r["lead"]["se"] == pytest.approx((sv["acc_se"] ** 2 + r["se"] ** 2) ** 0.5)
    assert r["lead"]["beyond_noise"] == (abs(r["lead"]["lead"]) > 2 * r["lead"]["se"])
    T = res["target"]["target_ms"]
    for name, ops in (("shufflenetv2", ["shuffle3"] * len(res["arch"])), ("winner-ops", [op for op, _ in res["arch"]])):
        u = sv[name]
        arch = Arch.from_list(u["arch"])
        assert [op for op, _ in arch] == ops and {c for _, c in arch if c is not None} == {u["c"]}
        assert ev.accuracy(arch) == u["acc"] and u["predicted_ms"] == tiny_profile.predict(arch)
        # the lead's SE is paired: the sd of the per-image differences over sqrt(N), on the same images
        d = ev.correct(Arch.from_list(res["arch"])).astype(float) - ev.correct(arch).astype(float)
        assert u["lead"]["paired"] and u["lead"]["se"] == pytest.approx(d.std(ddof=1) / len(d) ** 0.5)
        # the widest factor that fits T (the next wider does not), or the narrowest where none fits: a winner may sit
        # a little over T, and its ops at the narrowest factor then too, as the tiny profile's timings fall
        assert u["predicted_ms"] <= T or u["c"] == min(TINY28.factors), (u, T)
        wider = [c for c in TINY28.factors if c > u["c"]]
        if wider:
            nxt = Arch(tuple(("skip", None) if op == "skip" else (op, min(wider)) for op in ops))
            assert tiny_profile.predict(nxt) > T


def test_search_resumes(tiny_supernet, tiny_profile, fmnist, tiny_search, tmp_path):
    calls = {"n": 0}

    def interrupt(desc, done, total):
        calls["n"] += 1
        if calls["n"] == 12:  # inside generation 2
            raise KeyboardInterrupt

    with pytest.raises(HsconasError, match="resume"):
        search(tiny_supernet, fmnist, tiny_profile, "50%", tmp_path, cfg=CFG, progress=interrupt, **OBJ)
    assert json.loads((tmp_path / "search-state.json").read_text())["generation"] == 1
    res = search(tiny_supernet, fmnist, tiny_profile, "50%", tmp_path, cfg=CFG, **OBJ)
    assert res["arch"] == tiny_search[1]["arch"] and res["evaluated"] == tiny_search[1]["evaluated"]
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
    assert res["search_value"]["arch"] == res["arch"]  # what the search bought, for the network the user gets
    pred = run_cli("predict", "--arch", tmp_path / "s" / "result.json", "--device", "tinycpu", "--json", env=env)
    assert json.loads(pred.stdout)["predicted_ms"] == pytest.approx(res["predicted_ms"])
    # the same search again without --verify or --json: resumed (nothing to evolve), and the summary a user reads
    # (after the predict check: without --verify the result is the searched winner again)
    again = run_cli("search", "--device", "tinycpu", "--latency", "60%", "--supernet", tiny_supernet, "--generations", "2",
                    "--population", "6", "--parents", "2", "--calib-images", "64", "--val-images", "128",
                    "--no-profile-check", "--out", tmp_path / "s", env=env)
    assert again.returncode == 0, again.stderr
    assert "what the search bought" in again.stdout
    for words in ("random archs at the same latency", "ShuffleNetV2", "the winner leads by"):
        assert re.search(r"\s+".join(words.split()), again.stdout), (words, again.stdout)
    assert_one_line_error(run_cli("search", "--device", "tinycpu", "--latency", "50%", "--supernet", tiny_supernet,
                                  "--population", "4", "--parents", "9", "--no-profile-check", env=env), "--parents")
    assert_one_line_error(run_cli("search", "--device", "tinycpu", "--latency", "1", "--crossover-prob", "2",
                                  "--supernet", tiny_supernet, env=env), "--crossover-prob")


def fashion_mnist_with_one_label_changed(folder):
    """Real IDX files of another 60,000 x 28 x 28 data set: Fashion-MNIST's, with the first training label changed."""
    import gzip
    import shutil

    from hsconas_cli.data import DEBIAN_FASHION_MNIST, FASHION_FILES, _find_fashion_files

    src = _find_fashion_files(DEBIAN_FASHION_MNIST)
    folder.mkdir(parents=True)
    for name in FASHION_FILES:
        if name == "train-labels-idx1-ubyte":
            raw = bytearray(gzip.open(src[name]).read() if src[name].suffix == ".gz" else src[name].read_bytes())
            raw[8] = (raw[8] + 1) % 10  # the first label, after the 8-byte IDX header
            (folder / name).write_bytes(bytes(raw))
        else:
            shutil.copy(src[name], folder / src[name].name)
    return folder


def test_a_resumed_search_refuses_another_supernet_or_data(tiny_supernet, tiny_profile, fmnist, tmp_path):
    """Issue 24 item 1: the resume settings hold the supernet's and the data's content, not their names."""
    import shutil

    from hsconas_cli.data import load_data
    from hsconas_cli.train import TrainConfig, train_supernet

    ckpt = tmp_path / "sn" / "checkpoint.pt"
    ckpt.parent.mkdir()
    shutil.copy(tiny_supernet, ckpt)
    cfg = SearchConfig(generations=1, population=4, parents=2, calib_images=64, val_images=64)
    first = search(ckpt, fmnist, tiny_profile, "50%", tmp_path / "s", cfg=cfg)
    # the same content under a new time stamp is the same supernet: the search resumes (nothing left to do)
    shutil.copy(tiny_supernet, ckpt)
    assert search(ckpt, fmnist, tiny_profile, "50%", tmp_path / "s", cfg=cfg)["arch"] == first["arch"]
    other = load_data(f"fashion-mnist:{fashion_mnist_with_one_label_changed(tmp_path / 'other')}", download=False)
    assert other.split["sha256"] == fmnist.split["sha256"] and other.split["data_sha256"] != fmnist.split["data_sha256"]
    with pytest.raises(HsconasError, match=r"other settings \(data_id: .* then, .* now\)"):
        search(ckpt, other, tiny_profile, "50%", tmp_path / "s", cfg=cfg)
    # the scripted scenario: search, retrain the supernet in place, search again with the same --out
    env = {"HSCONAS_PROFILES": str(tiny_profile.path.parents[2])}
    args = ("search", "--device", "tinycpu", "--latency", "50%", "--supernet", ckpt, "--generations", "1", "--population",
            "4", "--parents", "2", "--calib-images", "64", "--val-images", "64", "--no-profile-check", "--out", tmp_path / "c")
    assert run_cli(*args, env=env).returncode == 0
    # one more epoch of the same supernet (the conftest's recipe), written over the same checkpoint.pt
    train_supernet("fashion-mnist", TINY28, ckpt.parent, cfg=TrainConfig(epochs=3, batch_size=64, lr=0.2, limit=640, workers=0),
                   data=fmnist, resume=True)
    assert_one_line_error(run_cli(*args, env=env), "other settings", "supernet_id", "use another --out")


def test_a_resumed_search_keeps_its_profile_version_without_a_drift_check(tiny_supernet, tiny_profile, tmp_path):
    """Issue 24 item 3: a check that rescaled would write a new version, and the run could not resume on it."""
    import shutil

    from hsconas_cli.profiles import save_profile

    root = tmp_path / "profiles"
    shutil.copytree(tiny_profile.path.parents[2], root)
    args = ("search", "--device", "tinycpu", "--latency", "50%", "--supernet", tiny_supernet, "--generations", "1",
            "--population", "4", "--parents", "2", "--calib-images", "64", "--val-images", "64", "--out", tmp_path / "s", "--json")
    first = run_cli(*args, "--no-profile-check", env={"HSCONAS_PROFILES": str(root)})
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["profile"] == tiny_profile.name
    newer = save_profile(tiny_profile.doc, root)  # as a rescale by another command would have written it
    assert newer.name == f"v{tiny_profile.version + 1}.json"
    again = run_cli(*args, env={"HSCONAS_PROFILES": str(root)})  # with the drift check on, as by default
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["profile"] == tiny_profile.name
    assert re.search(rf"resuming .*: with {re.escape(tiny_profile.name)}, the profile it started with, without a\s+drift check",
                     again.stderr), again.stderr
    assert "checking the profile" not in again.stderr
