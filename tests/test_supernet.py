"""The supernet's sliced path and the standalone pruned network compute the same function."""

import copy
import random

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from exporters.onnx import to_onnx_bytes
from reference_ops import group_prefix, layer_forward, network_forward
from hsconas_cli.space import SPACES, Arch
from hsconas_cli.supernet import HSCoNet, Supernet, arch_cost, build_subnet

N_ARCHS = 25  # per space: every op about 5 times in each layer (slicing errors show in any of them)
N_SKIP_HEAVY = 10
N_REFERENCE = 10  # random archs also checked against the independent reference (besides the skip-heavy ones)


def _randomize_bn(net: torch.nn.Module, seed: int) -> None:
    """Give every BN distinct running statistics and affine parameters, so slicing mistakes show."""
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=g) - 0.5)


@pytest.fixture(scope="module", params=[(name, "all") for name in SPACES] + [("fmnist-A", "kernels"), ("fmnist-A", "none")],
                ids=lambda p: p[0] + ("" if p[1] == "all" else f"-share-{p[1]}"))
def trained_like_supernet(request):
    name, share = request.param
    sp = SPACES[name]
    torch.manual_seed(0)
    net = Supernet(sp, share=share, init="spos" if share == "none" else "aligned")
    with torch.no_grad():
        _randomize_bn(net, 1)
    return net.eval()


def _skip_heavy(sp, rng: random.Random, p: float = 0.8) -> Arch:
    """A random arch with skip in most layers that allow it."""
    arch = sp.full().sample(rng)
    return Arch(tuple(("skip", None) if "skip" in l.ops and rng.random() < p else g for l, g in zip(sp.layers, arch)))


def _extreme_archs(sp) -> list[Arch]:
    """Every op of each layer's op list at the smallest and the largest factor: per op and factor, the op in every
    layer that allows it; and per factor, skip wherever a layer allows it with the ops in turn in the other layers."""
    lo, hi = min(sp.factors), max(sp.factors)
    ops = [op for op in sp.ops if op != "skip"]
    archs = []
    for c in (lo, hi):
        for op in ops:
            archs.append(Arch(tuple((op if op in l.ops else next(o for o in l.ops if o != "skip"), c) for l in sp.layers)))
        strided = [l for l in sp.layers if "skip" not in l.ops]
        turn = {l.index: [o for o in l.ops if o != "skip"] for l in strided}
        archs.append(Arch(tuple(("skip", None) if "skip" in l.ops else (turn[l.index][strided.index(l) % len(turn[l.index])], c)
                                for l in sp.layers)))
    covered = {(l.index, op, c) for a in archs for l, (op, c) in zip(sp.layers, a)}
    assert covered == {(l.index, op, c) for l in sp.layers for op in l.ops
                       for c in ((None,) if op == "skip" else (lo, hi))}, "not every op at both widths"
    return archs


@torch.no_grad()  # batch statistics, running-statistics updates and dropout as in training; no autograd graph
def _assert_train_mode_equal(net: Supernet, arch: Arch, x: torch.Tensor) -> None:
    """``net`` in training mode: the path and its subnet give the same outputs (batch statistics, one dropout
    mask) and leave the same running statistics."""
    sub = build_subnet(net, arch).train()
    torch.manual_seed(0)
    a = net(x, arch)
    torch.manual_seed(0)  # the same dropout mask
    b = sub(x)
    assert (a - b).abs().max().item() <= 1e-4, arch
    twin = build_subnet(net.eval(), arch)  # statistics as the supernet now holds them
    net.train()
    for (name, got), want in zip(sub.state_dict().items(), twin.state_dict().values()):
        if "running" in name:
            assert torch.allclose(got, want, atol=1e-5), (name, arch)


@torch.no_grad()
def test_supernet_path_equals_subnet(trained_like_supernet):
    """The sliced path and the standalone subnet agree on many archs, and both agree with the network written out
    independently (tests/reference_ops.py) on the skip-heavy ones and a first few: the path and the subnet share
    ChoiceLayer.plan, so only the reference can tell a wrong op or a wrong choice of weights."""
    net = trained_like_supernet
    sp = net.space
    rng = random.Random(42)
    x = torch.randn(2, sp.in_channels, sp.input_size, sp.input_size)
    worst = worst_ref = 0.0
    archs = [sp.full().sample(rng) for _ in range(N_ARCHS)] + [_skip_heavy(sp, rng) for _ in range(N_SKIP_HEAVY)]
    assert sum(op == "skip" for a in archs[N_ARCHS:] for op, _ in a) >= 0.6 * N_SKIP_HEAVY * sum("skip" in l.ops for l in sp.layers)
    for i, arch in enumerate(archs):
        sub = build_subnet(net, arch).eval()
        got = net(x, arch)
        worst = max(worst, (got - sub(x)).abs().max().item())
        if i < N_REFERENCE or i >= N_ARCHS:
            worst_ref = max(worst_ref, (got - network_forward(net, arch, x)).abs().max().item())
        # physically pruned: each block holds exactly its mid channels
        for block, l, (op, c) in zip(sub.blocks, sp.layers, arch):
            if op != "skip":
                assert block.main[-1].conv.in_channels == sp.mid(l.index, c)
    assert worst <= 1e-5 and worst_ref <= 1e-5, (worst, worst_ref)


def test_extreme_archs_equal(trained_like_supernet):
    """Every op at both extreme widths, alone and between skips, in eval mode and in training mode."""
    sp = trained_like_supernet.space
    x = torch.randn(2, sp.in_channels, sp.input_size, sp.input_size)
    archs = _extreme_archs(sp)
    with torch.no_grad():
        for arch in archs:
            got, want = trained_like_supernet(x, arch), build_subnet(trained_like_supernet, arch).eval()(x)
            assert (got - want).abs().max().item() <= 1e-5, arch
            assert (got - network_forward(trained_like_supernet, arch, x)).abs().max().item() <= 1e-5, arch
    net = copy.deepcopy(trained_like_supernet).train()
    for arch in archs:
        _assert_train_mode_equal(net, arch, x)


def test_training_mode_equal_outputs_and_statistics(trained_like_supernet):
    """In training mode (batch statistics) the path and its subnet agree, and so do the statistics they update."""
    net = copy.deepcopy(trained_like_supernet).train()
    sp = net.space
    rng = random.Random(5)
    x = torch.randn(4, sp.in_channels, sp.input_size, sp.input_size)
    for arch in [sp.full().sample(rng) for _ in range(3)] + [_skip_heavy(sp, rng)]:
        _assert_train_mode_equal(net, arch, x)


def test_ops_of_a_layer_share_their_weights():
    """k x k kernels are the centre of the 7x7, xception reuses the shuffle block's 1x1s; separate ops do not."""
    sp = SPACES["fmnist-A"]
    torch.manual_seed(0)
    shared, separate = Supernet(sp), Supernet(sp, share="none", init="spos")
    for net, same in ((shared, True), (separate, False)):
        layer = net.layers[5]
        s3, s7, x = (layer.static_block(op, 10) for op in ("shuffle3", "shuffle7", "xception"))
        assert torch.equal(s3.main[1].conv.weight, s7.main[1].conv.weight[:, :, 2:5, 2:5]) is same
        assert torch.equal(s3.main[0].conv.weight, x.main[1].conv.weight) is same
        assert torch.equal(s7.main[2].conv.weight, x.main[5].conv.weight) is same
    assert sum(p.numel() for p in shared.parameters()) < 0.5 * sum(p.numel() for p in separate.parameters())


@torch.no_grad()
def test_aligned_init_starts_ops_alike():
    """At initialisation the ops of a layer compute nearly the same function: xception starts as shuffle3, and the
    3x3 centre carries most of a 7x7 kernel. With separate ops they are unrelated."""
    sp = SPACES["fmnist-A"]
    torch.manual_seed(0)
    x = torch.randn(64, 128, 7, 7).relu()
    for init, share, low, high in (("aligned", "all", 0.8, 1.0), ("aligned", "kernels", 0.8, 1.0), ("spos", "none", -0.2, 0.2)):
        layer = Supernet(sp, share=share, init=init).layers[5].train()
        # the branch's half of the output (odd channels after the shuffle); the other half passes through
        outs = {op: layer(x, op, 24)[:, 1::2].flatten() for op in ("shuffle3", "shuffle7", "xception")}
        for op in ("shuffle7", "xception"):
            r = torch.corrcoef(torch.stack([outs["shuffle3"], outs[op]]))[0, 1].item()
            assert low <= r <= high, (init, op, r)


def test_sliced_training_step_touches_only_the_prefix():
    """In training mode the sliced BN updates exactly the first mid running statistics."""
    sp = SPACES["fmnist-A"]
    net = Supernet(sp).train()
    arch = sp.full().sample(random.Random(1))
    arch = type(arch)(tuple(("shuffle3", 0.5) for _ in arch))
    before = net.layers[5].groups["all"]["pw1"].bn.running_mean.clone()
    net(torch.randn(8, 1, 28, 28), arch)
    after = net.layers[5].groups["all"]["pw1"].bn.running_mean
    mid = sp.mid(5, 0.5)
    assert not torch.equal(before[:mid], after[:mid])
    assert torch.equal(before[mid:], after[mid:])


def test_flops_and_params_match_torch_counters():
    for name in ("imagenet-A", "fmnist-B"):
        sp = SPACES[name]
        rng = random.Random(9)
        for _ in range(5):
            arch = sp.full().sample(rng)
            net = HSCoNet(sp, arch).eval()
            with FlopCounterMode(display=False) as counter, torch.no_grad():
                net(torch.zeros(1, sp.in_channels, sp.input_size, sp.input_size))
            cost = arch_cost(sp, arch)
            assert cost["flops"] == counter.get_total_flops()
            assert cost["params"] == sum(p.numel() for p in net.parameters())


@pytest.mark.parametrize("name", list(SPACES))
def test_subnet_onnx_matches_pytorch(name):
    sp = SPACES[name]
    torch.manual_seed(3)
    net = Supernet(sp)
    with torch.no_grad():
        _randomize_bn(net, 2)
    rng = random.Random(7)
    for arch in (sp.full().sample(rng), sp.full().sample(rng), _skip_heavy(sp, rng)):
        sub = build_subnet(net, arch).eval()
        model = onnx.load_from_string(to_onnx_bytes(sub, (2, sp.in_channels, sp.input_size, sp.input_size)))
        onnx.checker.check_model(model, full_check=True)
        assert model.opset_import[0].version >= 17
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        x = torch.randn(2, sp.in_channels, sp.input_size, sp.input_size)
        got = session.run(None, {"input": x.numpy()})[0]
        with torch.no_grad():
            want = sub(x).numpy()
        assert np.abs(got - want).max() <= 1e-4


@pytest.mark.parametrize("share", ["all", "none"])
@torch.no_grad()
def test_the_latency_tables_blocks_compute_the_ops(share):
    """The module a latency table times for (layer, op, mid) (calibrate.Parts: the block ``make_block`` builds, as
    the subnet holds it), given the supernet's weights for it, computes that op as written out independently
    (tests/reference_ops.py), and so does the subnet's block: every op of every layer shape of fmnist-A, at the
    smallest and the largest width."""
    from hsconas_cli.calibrate import Parts

    sp = SPACES["fmnist-A"]
    torch.manual_seed(4)
    net = Supernet(sp, share=share, init="spos" if share == "none" else "aligned")
    _randomize_bn(net, 5)
    net.eval()
    state, parts = net.state_dict(), Parts(sp, 2)
    checked = 0
    for l in sp.layers:
        for op in l.ops:
            for c in ((None,) if op == "skip" else (min(sp.factors), max(sp.factors))):
                mid = None if c is None else sp.mid(l.index, c)
                block, shape = parts.module(("block", l.index, op, mid))
                net.layers[l.index].load_static_(block, op, mid)
                x = torch.randn(shape)
                want = layer_forward(state, group_prefix(share, l.index, op), l, op, mid, x)
                assert (block.eval()(x) - want).abs().max().item() <= 1e-5, (l.index, op, c)
                assert (net.layers[l.index].static_block(op, mid).eval()(x) - want).abs().max().item() <= 1e-5
                checked += 1
    assert checked == sum(1 if op == "skip" else 2 for l in sp.layers for op in l.ops)
