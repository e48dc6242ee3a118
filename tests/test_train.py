"""Supernet and HSCoNet training on real Fashion-MNIST at a tiny budget: optimizer, resume, CLI (DDP: test_ddp.py)."""

import json
import random
from dataclasses import replace

import pytest
import torch

from conftest import assert_one_line_error, run_cli_all
from hsconas_cli.errors import HsconasError
from hsconas_cli.fileio import write_json
from hsconas_cli.space import SearchSpace, arch_to_json
from hsconas_cli.supernet import HSCoNet, Supernet, build_subnet
from hsconas_cli.checkpoint import load_checkpoint, load_supernet
from hsconas_cli.train import SlicedSGD, TrainConfig, retrain, train_supernet

TINY = SearchSpace("tiny28", (8, 16, 24, 32), 28, 1, 10, depths=(1, 1, 2, 1), factors=(0.5, 1.0), head_channels=64)
CFG = TrainConfig(epochs=2, batch_size=64, lr=0.1, limit=320, workers=0)


def test_sliced_sgd_equals_torch_sgd_on_whole_parameters():
    torch.manual_seed(0)
    a = HSCoNet(TINY, TINY.full().sample(random.Random(0)), dropout=0.0)
    b = HSCoNet(TINY, a.arch, dropout=0.0)
    b.load_state_dict(a.state_dict())
    ours = SlicedSGD(a.named_parameters(), 0.9, 1e-3)
    ref = torch.optim.SGD([{"params": [p for p in b.parameters() if p.ndim > 1], "weight_decay": 1e-3},
                           {"params": [p for p in b.parameters() if p.ndim <= 1], "weight_decay": 0.0}], lr=0.05, momentum=0.9)
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    for _ in range(3):
        for net in (a, b):
            net.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(net(x), y).backward()
        ours.step([(n, ...) for n, _ in a.named_parameters()], 0.05)
        ref.step()
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(p, q, atol=1e-7), n


def test_unused_paths_are_not_moved_by_momentum_or_decay():
    torch.manual_seed(0)
    net = Supernet(TINY).train()
    opt = SlicedSGD(net.named_parameters(), 0.9, 0.1)  # a large decay, so any stray update shows
    rng = random.Random(3)
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    archs = [TINY.full().sample(rng) for _ in range(4)]
    archs[1] = type(archs[1])(tuple(("shuffle3", 0.5) for _ in archs[1]))
    for arch in archs:
        before = {n: p.detach().clone() for n, p in net.named_parameters()}
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x, arch), y).backward()
        active = dict(net.active_slices(arch))
        opt.step(list(active.items()), 0.1)
        moved_params = sum(not torch.equal(p, before[n]) for n, p in net.named_parameters() if n in active)
        assert moved_params >= 0.8 * len(active)  # the path itself learns (a dead ReLU can leave a few still)
        for n, p in net.named_parameters():
            if n not in active:
                assert torch.equal(p, before[n]), f"{n} moved though {arch} did not use it"
            elif active[n] is not ...:
                moved = p - before[n]
                mask = torch.zeros_like(p, dtype=torch.bool)
                mask[active[n]] = True
                assert torch.equal(moved[~mask], torch.zeros_like(moved[~mask])), f"{n}: channels beyond the width moved"


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, fmnist):
    out = tmp_path_factory.mktemp("run") / "a"
    res = train_supernet("fashion-mnist", TINY, out, cfg=CFG, data=fmnist)
    return out, res


def test_supernet_run_leaves_checkpoint_and_metrics(uninterrupted):
    out, res = uninterrupted
    assert res["epochs"] == 2 and res["steps"] == 10
    ckpt = load_checkpoint(out / "checkpoint.pt")
    assert ckpt["kind"] == "supernet" and ckpt["state"]["epoch"] == 2 and ckpt["optimizer"]
    assert ckpt["data"]["split"]["sizes"]["train"] == 43000
    lines = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [l["epoch"] for l in lines] == [1, 2] and all(l["img_per_s"] > 0 for l in lines)
    assert json.loads((out / "config.json").read_text())["config"]["limit"] == 320


def test_resume_after_ctrl_c_reaches_the_same_weights(uninterrupted, tmp_path, fmnist):
    out = tmp_path / "b"
    calls = {"n": 0}

    def interrupt(desc, done, total):
        calls["n"] += 1
        if calls["n"] == 7:  # in the second epoch
            raise KeyboardInterrupt

    with pytest.raises(HsconasError, match="rerun with --resume"):
        train_supernet("fashion-mnist", TINY, out, cfg=CFG, data=fmnist, progress=interrupt)
    mid = load_checkpoint(out / "checkpoint.pt")
    assert (mid["state"]["epoch"], mid["state"]["batch"]) == (1, 2)
    with pytest.raises(HsconasError, match="pass --resume"):
        train_supernet("fashion-mnist", TINY, out, cfg=CFG, data=fmnist)
    train_supernet("fashion-mnist", TINY, out, cfg=CFG, data=fmnist, resume=True)
    a = load_checkpoint(uninterrupted[0] / "checkpoint.pt")["model"]
    b = load_checkpoint(out / "checkpoint.pt")["model"]
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_retrain_from_scratch_and_inherited(uninterrupted, tmp_path, fmnist):
    arch = TINY.full().sample(random.Random(5))
    cfg = TrainConfig(epochs=1, batch_size=64, lr=0.1, limit=256, warmup_epochs=0.5, workers=0)
    res = retrain("fashion-mnist", TINY, arch, tmp_path / "scratch", cfg=cfg, data=fmnist)
    assert 0.0 <= res["test_top1"] <= 1.0
    ck = load_checkpoint(tmp_path / "scratch" / "checkpoint.pt")
    assert ck["kind"] == "hsconet" and ck["arch"] == arch.to_list() and "test_top1" in ck
    # fine-tuning starts from the supernet's weights: with a zero learning rate they stay exactly those
    frozen = TrainConfig(epochs=1, batch_size=64, lr=0.0, limit=128, workers=0)
    retrain("fashion-mnist", TINY, arch, tmp_path / "inherit", cfg=frozen, data=fmnist, inherit=uninterrupted[0] / "checkpoint.pt")
    supernet, _ = load_supernet(uninterrupted[0] / "checkpoint.pt")
    want = build_subnet(supernet, arch).state_dict()
    got = load_checkpoint(tmp_path / "inherit" / "checkpoint.pt")["model"]
    weights = [k for k in want if k.endswith("weight") or k.endswith("bias")]
    assert weights and all(torch.equal(want[k], got[k]) for k in weights)


def test_cli_train_errors(tmp_path, uninterrupted):
    out = uninterrupted[0]
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    arch = tmp_path / "a.json"
    write_json(arch, arch_to_json(TINY, TINY.full().sample(random.Random(0))))
    cases = [
        (("train", "--space", "fmnist-A", "--out", out, "--limit", "64"), "pass --resume"),
        (("train", "--out", tmp_path / "x", "--resume"), "nothing to resume"),
        (("train", "--space", "cifar10-A", "--out", tmp_path / "y"), "expects 32x32x3"),
        (("train", "--data", "mnist9"), "unknown dataset"),
        (("retrain", "--arch", tmp_path / "none.json"), "not found"),
        (("retrain", "--arch", arch, "--inherit", broken, "--out", tmp_path / "z"), "cannot be read"),
    ]
    for (_, needle), p in zip(cases, run_cli_all(*(args for args, _ in cases))):
        assert_one_line_error(p, needle)
    assert not (tmp_path / "z" / "checkpoint.pt").exists()


def test_a_resume_continues_the_runs_own_config(tmp_path, fmnist):
    """Issue 24 item 2: --resume without the original flags trains on with the checkpoint's config and says so; a
    flag that differs (other than --epochs) is refused in one line."""
    first = TrainConfig(epochs=1, batch_size=32, lr=0.07, limit=96, workers=0, seed=3, skip_ramp=0.25)
    train_supernet("fashion-mnist", TINY, tmp_path / "sn", cfg=first, data=fmnist)
    arch = TINY.full().sample(random.Random(1))
    write_json(tmp_path / "a.json", arch_to_json(TINY, arch))
    write_json(tmp_path / "b.json", arch_to_json(TINY, TINY.full().sample(random.Random(2))))
    retrain("fashion-mnist", TINY, arch, tmp_path / "net", cfg=replace(first, warmup_epochs=0.5), data=fmnist)
    cont = run_cli_all(("train", "--out", tmp_path / "sn", "--resume", "--epochs", "2"),
                       ("retrain", "--arch", tmp_path / "a.json", "--out", tmp_path / "net", "--resume", "--epochs", "2"))
    for p in cont:
        assert p.returncode == 0, p.stderr
        assert "resuming at epoch 2/2, batch 0, with the run's own config: batch 32, lr 0.07, 96 images per epoch, seed 3" in p.stderr
    for d, kind in (("sn", "supernet"), ("net", "hsconet")):
        ck = load_checkpoint(tmp_path / d / "checkpoint.pt")
        assert ck["kind"] == kind and ck["state"]["epoch"] == 2 and ck["config"]["epochs"] == 2
        assert {k: ck["config"][k] for k in ("batch_size", "lr", "limit", "seed")} == {"batch_size": 32, "lr": 0.07, "limit": 96, "seed": 3}
    assert load_checkpoint(tmp_path / "sn" / "checkpoint.pt")["config"]["skip_ramp"] == 0.25
    assert load_checkpoint(tmp_path / "net" / "checkpoint.pt")["config"]["warmup_epochs"] == 0.5
    cases = [
        (("train", "--out", tmp_path / "sn", "--resume", "--epochs", "3", "--lr", "0.1"), "--lr 0.1 differs from the run being resumed (0.07)"),
        (("train", "--out", tmp_path / "sn", "--resume", "--epochs", "3", "--space", "fmnist-A"), "another space"),
        (("retrain", "--arch", tmp_path / "a.json", "--out", tmp_path / "net", "--resume", "--epochs", "3", "--batch-size", "64"),
         "--batch-size 64 differs from the run being resumed (32)"),
        (("retrain", "--arch", tmp_path / "b.json", "--out", tmp_path / "net", "--resume", "--epochs", "3"), "another arch"),
    ]
    for (_, needle), p in zip(cases, run_cli_all(*(args for args, _ in cases))):
        assert_one_line_error(p, needle)
    assert load_checkpoint(tmp_path / "sn" / "checkpoint.pt")["state"]["epoch"] == 2  # refused before training


def test_metrics_follow_the_checkpoint_after_a_kill(tmp_path, fmnist):
    """Issue 24 item 6: metrics.jsonl is written after the checkpoint, from its history. A kill that left an epoch's
    line without its checkpoint (as the old order, line first, could) no longer repeats that epoch."""
    cfg = TrainConfig(epochs=1, batch_size=64, lr=0.1, limit=64, workers=0)
    out = tmp_path / "sn"
    train_supernet("fashion-mnist", TINY, out, cfg=cfg, data=fmnist)
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(l)["epoch"] for l in lines] == [1]
    stale = {**json.loads(lines[0]), "epoch": 2, "loss": 9.9}  # epoch 2's line, its checkpoint never written
    (out / "metrics.jsonl").write_text(lines[0] + "\n" + json.dumps(stale) + "\n")
    train_supernet("fashion-mnist", TINY, out, cfg=replace(cfg, epochs=2), data=fmnist, resume=True)
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2] and rows[1]["loss"] != 9.9
    assert rows == load_checkpoint(out / "checkpoint.pt")["state"]["history"]


def test_a_torn_line_in_the_evaluation_cache_costs_only_itself(tmp_path, fmnist):
    """Issue 24 item 6: a record cut short by a kill no longer swallows the record appended after it."""
    from hsconas_cli.evaluate import Evaluator

    out = tmp_path / "sn"
    train_supernet("fashion-mnist", TINY, out, cfg=TrainConfig(epochs=1, batch_size=64, lr=0.1, limit=64, workers=0), data=fmnist)
    net, _ = load_supernet(out / "checkpoint.pt")
    cache = tmp_path / "evaluations.jsonl"
    a, b, c = (TINY.full().sample(random.Random(i)) for i in (10, 11, 12))
    ev = Evaluator(net, fmnist, calib_images=64, val_images=64, cache_file=cache)
    ev.accuracy(a), ev.accuracy(b)
    first, second = cache.read_text().splitlines()
    cache.write_text(first + "\n" + second[: len(second) // 2])  # b's record cut short
    ev = Evaluator(net, fmnist, calib_images=64, val_images=64, cache_file=cache)
    assert len(ev.cache) == 1
    ev.accuracy(c)
    again = Evaluator(net, fmnist, calib_images=64, val_images=64, cache_file=cache)
    assert len(again.cache) == 2 and again.accuracy(c) == ev.accuracy(c) and again.evaluated == 0


def test_sandwich_ends_are_the_largest_and_smallest_paths():
    from hsconas_cli.evaluate import reference_archs
    from hsconas_cli.train import sandwich_ends

    largest, smallest = sandwich_ends(TINY.full())
    assert (largest, smallest) == (reference_archs(TINY)["largest"], reference_archs(TINY)["smallest"])
    sub = TINY.full().fix_op(0, "shuffle5").restrict_factors(0, [0.5])
    big, small = sandwich_ends(sub)
    assert big.genes[0] == small.genes[0] == ("shuffle5", 0.5) and sub.contains(big) and sub.contains(small)


def test_recipe_paths_sandwich_and_band(tmp_path, fmnist):
    """The paths a step trains: the two ends and n random ones under the sandwich rule; with a FLOPs band, only
    paths inside the band's FLOPs (as percentiles of 2,000 random archs); incompatible recipes refused."""
    import numpy as np

    from hsconas_cli.supernet import arch_cost
    from hsconas_cli.train import Trainer, sandwich_ends

    sub = TINY.full()
    t = Trainer(Supernet(TINY), fmnist, replace(CFG, sandwich=2), tmp_path / "s", subspace=sub)
    paths = t._paths(random.Random(0), 10_000)
    assert len(paths) == 4 and tuple(paths[:2]) == sandwich_ends(sub)
    t = Trainer(Supernet(TINY), fmnist, replace(CFG, path_band=(30.0, 50.0), paths_per_step=3), tmp_path / "b", subspace=sub)
    lo, hi = t._band
    rng = random.Random(12345)
    flops = [arch_cost(TINY, sub.sample(rng))["flops"] for _ in range(2000)]
    assert (lo, hi) == tuple(np.percentile(flops, (30.0, 50.0)))
    rng = random.Random(1)
    for _ in range(20):
        for a in t._paths(rng, 10_000):
            assert lo <= arch_cost(TINY, a)["flops"] <= hi
    for bad, match in ((dict(distill=True), "sandwich"), (dict(sandwich=1, paths_per_step=2), "paths_per_step"),
                       (dict(path_band=(60.0, 40.0)), "percentiles")):
        with pytest.raises(HsconasError, match=match):
            train_supernet("fashion-mnist", TINY, tmp_path / "bad", cfg=replace(CFG, **bad), data=fmnist)


def test_sandwich_with_distillation_trains(tmp_path, fmnist):
    """A real supernet run with the sandwich rule and in-place distillation: every path sees the whole batch, the
    loss stays finite and the reported accuracy is the paths' mean (a fraction, not their sum)."""
    res = train_supernet("fashion-mnist", TINY, tmp_path / "kd", cfg=replace(CFG, sandwich=1, distill=True), data=fmnist)
    assert res["steps"] == 10
    for h in res["history"]:
        assert 0 < h["loss"] < 10 and 0 <= h["train_acc"] <= 1
    cfg = json.loads((tmp_path / "kd" / "config.json").read_text())["config"]
    assert cfg["sandwich"] == 1 and cfg["distill"] is True
