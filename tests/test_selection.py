"""Choosing the winner on a held-out split: the baselines in the search, the split's disjointness, the paired SE,
and the two rules (hsconas_cli/selection.py)."""

import json
import math

import numpy as np
import pytest
import torch

from conftest import TINY28, TINY_SEARCH_CFG as CFG
from hsconas_cli.checkpoint import load_supernet
from hsconas_cli.evaluate import Evaluator, pack_bits, unpack_bits
from hsconas_cli.selection import WITHIN_SE, baselines, choose, paired_se, shortlist
from hsconas_cli.space import Arch, arch_key


def test_paired_se_hand_worked():
    """a right on images 1, 2, 4; b on 1, 5: per-image differences 0, 1, 0, 1, -1, mean 0.2, sample variance
    (0.04 + 0.64 + 0.04 + 0.64 + 1.44) / 4 = 0.7, SE sqrt(0.7 / 5) = 0.3742; the unpaired SE (the two proportions'
    errors in quadrature) is sqrt(0.6 * 0.4 / 5 + 0.4 * 0.6 / 5) = 0.3098 here: pairing counts the images both get
    right or wrong as no evidence either way."""
    a = np.array([1, 1, 0, 1, 0], dtype=bool)
    b = np.array([1, 0, 0, 0, 1], dtype=bool)
    assert paired_se(a, b) == pytest.approx(math.sqrt(0.7 / 5)) == pytest.approx(0.374166, abs=1e-6)
    assert paired_se(a, a) == 0.0
    # and on many images where two networks mostly agree, the paired SE is far below the unpaired one
    rng = np.random.default_rng(0)
    x = rng.random(10_000) < 0.85
    y = x.copy()
    flip = rng.choice(10_000, 300, replace=False)
    y[flip] = ~y[flip]
    unpaired = math.hypot(*(math.sqrt(v.mean() * (1 - v.mean()) / 10_000) for v in (x, y)))
    assert paired_se(x, y) < unpaired / 2


def test_bits_round_trip():
    rng = np.random.default_rng(1)
    for n in (1, 7, 8, 10_000):
        v = rng.random(n) < 0.5
        assert np.array_equal(unpack_bits(pack_bits(v), n), v)


def _cands(*rows):
    return [{"acc": a, "lat_ms": l, "paired_se": se} for a, l, se in rows]


def test_choose_accurate_and_fastest_on_constructed_scores():
    # the most accurate is first; candidate 2 trails by 0.010 with paired SE 0.006 (within 2 SE) and is the fastest
    # of those within; candidate 3 is faster still but trails by 0.030 with SE 0.010 (3 SE): out
    cands = _cands((0.900, 1.00, 0.0), (0.895, 0.95, 0.004), (0.890, 0.90, 0.006), (0.870, 0.70, 0.010))
    assert choose(cands, "accurate")[0] == 0
    win, why = choose(cands, "fastest")
    assert win == 2 and "paired SE" in why
    # exactly at the bound counts as within; just beyond does not (binary fractions: the arithmetic is exact)
    assert WITHIN_SE == 2
    edge = _cands((0.5, 1.0, 0.0), (0.375, 0.5, 0.0625))
    assert choose(edge, "fastest")[0] == 1
    beyond = _cands((0.5, 1.0, 0.0), (0.375 - 2 ** -20, 0.5, 0.0625))
    assert choose(beyond, "fastest")[0] == 0
    # among equal accuracies, the rule "accurate" takes the faster
    assert choose(_cands((0.9, 1.0, 0.0), (0.9, 0.8, 0.0)), "accurate")[0] == 1


class _Predictor:
    """Latency grows with the factor and the op's kernel: a stand-in predictor with known numbers."""

    cost = {"shuffle3": 1.0, "shuffle5": 1.2, "shuffle7": 1.4, "xception": 2.0}

    def predict(self, arch):
        return sum(self.cost[op] * c for op, c in arch if op != "skip")


def test_baselines_are_the_widest_fitting_and_narrower():
    sub = TINY28.full()
    layers = len(TINY28.layers)
    target = 0.55 * layers  # shuffle3 fits up to c = 0.5, xception up to 0.25
    found = dict((name, arch) for name, arch in baselines(_Predictor(), sub, target))
    factors = sorted(TINY28.factors)
    for op, cost in _Predictor.cost.items():
        fitting = [c for c in factors if cost * c * layers <= target]
        mine = sorted({arch.genes[0][1] for name, arch in found.items() if arch.genes[0][0] == op})
        assert mine == fitting[-3:], (op, mine, fitting)
    assert any(name.startswith("ShuffleNetV2 at c = ") for name in found)
    assert all(sub.contains(a) for a in found.values())


def test_shortlist_fits_t_and_keeps_baselines():
    space = TINY28
    arch = lambda c: Arch(tuple(("shuffle3", c) for _ in space.layers))  # noqa: E731
    rows = [{"key": arch_key(space, arch(c)), "arch": arch(c).to_list(), "acc": acc, "lat_ms": lat, "F": acc}
            for c, acc, lat in ((0.25, 0.70, 0.5), (0.5, 0.80, 0.9), (0.75, 0.85, 1.1), (1.0, 0.86, 1.3))]
    out = shortlist(rows, [("ShuffleNetV2 at c = 0.25", arch(0.25))], space, 1.0, top_k=1)
    # the one most accurate that fits T (c = 0.5), and the baseline (c = 0.25) whatever its screen
    assert [r["arch"] for r in out] == [arch(0.5).to_list(), arch(0.25).to_list()]
    assert out[1]["baseline"] == "ShuffleNetV2 at c = 0.25" and out[0]["baseline"] is None


def test_baselines_in_the_first_population_and_the_final_pool(tiny_search, tiny_profile):
    out, res = tiny_search
    rows = [json.loads(l) for l in (out / "evaluated.jsonl").read_text().splitlines()]
    first = {json.dumps(r["key"]) for r in rows if r["generation"] == 1}
    named = baselines(tiny_profile, TINY28.full(), res["target"]["target_ms"])
    assert named, "the tiny profile at 50% should fit some uniform network"
    sel = res["selection"]
    pool = {json.dumps(c["key"]): c for c in sel["candidates"]}
    for name, arch in named[: CFG.population]:
        k = json.dumps(arch_key(TINY28, arch))
        assert k in first, name
        assert pool[k]["baseline"] == name
    # the screen's top_k that fit T are there too, and every candidate was scored on the same images
    fit = sorted((r for r in rows if r["lat_ms"] <= res["target"]["target_ms"]), key=lambda r: (-r["acc"], r["lat_ms"]))
    assert all(json.dumps(r["key"]) in pool for r in fit[: CFG.top_k])
    assert sel["images"] == CFG.select_images and sel["rule"] == "accurate"
    # the winner is the most accurate on the selection split, and the result carries it
    w = sel["candidates"][sel["winner"]]
    assert w["acc"] == max(c["acc"] for c in sel["candidates"]) and res["arch"] == w["arch"] and res["acc"] == w["acc"]
    assert res["screen_acc"] == w["screen_acc"]


def test_selection_split_is_held_out(fmnist, tiny_supernet):
    """The selection split shares no image with the screen's validation subset or the BN-calibration images, and
    the selection evaluator scores exactly its first images."""
    s = fmnist.subsets
    assert len(s["select"]) >= 10_000
    for other in ("val", "calib", "train"):
        assert not set(s["select"]) & set(s[other]), other
    ev = Evaluator(load_supernet(tiny_supernet)[0], fmnist, calib_images=64, val_images=600, subset="select", per_image=True)
    x = torch.cat([b[0] for b in ev.val])
    expected = torch.cat([b[0] for b in fmnist.loader("select", 500, limit=600)])
    assert torch.equal(x, expected.contiguous(memory_format=torch.channels_last))
    calib = torch.cat([b[0] for b in ev.calib])
    assert torch.equal(calib, torch.cat([b[0] for b in fmnist.loader("calib", 500, limit=64)]).contiguous(memory_format=torch.channels_last))
    assert ev.settings["subset"] == "select"


def test_successive_halving_keeps_the_better_half_each_round(tiny_search, tiny_supernet, fmnist, tmp_path):
    """Three finalists of the tiny search: round 1 fine-tunes all three briefly and keeps two (ceil(3 / 2)), round
    2 goes on from their round-1 weights and keeps one; each round keeps those most accurate on the held-out
    split, and the survivor's checkpoint is its own network, from which a fine-tune goes on."""
    from hsconas_cli.checkpoint import load_checkpoint
    from hsconas_cli.halving import HalvingConfig, finalists, fine_tunes, successive_halving
    from hsconas_cli.train import TrainConfig, retrain

    assert [fine_tunes(n) for n in (1, 2, 3, 4, 5)] == [0, 2, 5, 6, 10]
    _, res = tiny_search
    cands = finalists(res["selection"], None, 3, res["target"]["target_ms"])
    assert len(cands) == 3 and cands[0]["acc"] >= cands[1]["acc"] >= cands[2]["acc"]
    doc = successive_halving(TINY28, cands, tiny_supernet, fmnist, tmp_path / "h",
                             HalvingConfig(images=128, select_images=500))
    r1, r2 = doc["rounds"]
    assert [len(r["finalists"]) for r in doc["rounds"]] == [3, 2] and sum(f["kept"] for f in r1["finalists"]) == 2
    for r in doc["rounds"]:
        kept = [f for f in r["finalists"] if f["kept"]]
        dropped = [f for f in r["finalists"] if not f["kept"]]
        assert min(f["held_out"] for f in kept) >= max(f["held_out"] for f in dropped)
    assert {f["index"] for f in r2["finalists"]} == {f["index"] for f in r1["finalists"] if f["kept"]}
    surv = doc["survivor"]
    assert surv["index"] == next(f["index"] for f in r2["finalists"] if f["kept"])
    ckpt = load_checkpoint(surv["checkpoint"])
    assert ckpt["kind"] == "hsconet" and ckpt["arch"] == surv["arch"] and ckpt["inherit"].endswith("checkpoint.pt")
    # the full fine-tune goes on from the survivor's own weights; another arch's checkpoint is refused
    out = retrain("fashion-mnist", TINY28, Arch.from_list(surv["arch"]), tmp_path / "full",
                  cfg=TrainConfig(epochs=1, batch_size=64, lr=0.05, limit=64, workers=0), inherit=surv["checkpoint"], data=fmnist)
    assert out["steps"] == 1
    other = next(c for c in cands if c["arch"] != surv["arch"])
    with pytest.raises(Exception, match="another network"):
        retrain("fashion-mnist", TINY28, Arch.from_list(other["arch"]), tmp_path / "bad",
                cfg=TrainConfig(epochs=1, batch_size=64, lr=0.05, limit=64, workers=0), inherit=surv["checkpoint"], data=fmnist)
