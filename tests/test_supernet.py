"""The supernet's sliced path and the standalone pruned network compute the same function (SPEC section 3)."""

import random

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from exporters.onnx import to_onnx_bytes
from hsconas_cli.blocks import make_block
from hsconas_cli.space import SPACES
from hsconas_cli.supernet import HSCoNet, Supernet, arch_cost, build_subnet

N_ARCHS = 50


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


@pytest.fixture(scope="module", params=["imagenet-A", "imagenet-B", "fmnist-A", "fmnist-B"])
def trained_like_supernet(request):
    sp = SPACES[request.param]
    torch.manual_seed(0)
    net = Supernet(sp)
    with torch.no_grad():
        _randomize_bn(net, 1)
    return net.eval()


@torch.no_grad()
def test_supernet_path_equals_subnet(trained_like_supernet):
    net = trained_like_supernet
    sp = net.space
    rng = random.Random(42)
    x = torch.randn(2, sp.in_channels, sp.input_size, sp.input_size)
    worst = 0.0
    for _ in range(N_ARCHS):
        arch = sp.full().sample(rng)
        sub = build_subnet(net, arch).eval()
        worst = max(worst, (net(x, arch) - sub(x)).abs().max().item())
        # physically pruned: each block holds exactly its mid channels
        for block, l, (op, c) in zip(sub.blocks, sp.layers, arch):
            if op != "skip":
                assert block.main[-1].conv.in_channels == sp.mid(l.index, c)
    assert worst <= 1e-5, worst


@torch.no_grad()
def test_extreme_archs_equal(trained_like_supernet):
    net = trained_like_supernet
    sp = net.space
    x = torch.randn(1, sp.in_channels, sp.input_size, sp.input_size)
    for op in ("shuffle3", "shuffle7", "xception"):
        for c in (0.1, 1.0):
            arch = sp.full().sample(random.Random(0))
            arch = type(arch)(tuple((op, c) for _ in arch))
            assert (net(x, arch) - build_subnet(net, arch).eval()(x)).abs().max().item() <= 1e-5


def test_sliced_training_step_touches_only_the_prefix():
    """In training mode the sliced BN updates exactly the first mid running statistics."""
    sp = SPACES["fmnist-A"]
    net = Supernet(sp).train()
    arch = sp.full().sample(random.Random(1))
    arch = type(arch)(tuple(("shuffle3", 0.5) for _ in arch))
    before = net.layers[5]["shuffle3"].main[0].bn.running_mean.clone()
    net(torch.randn(8, 1, 28, 28), arch)
    after = net.layers[5]["shuffle3"].main[0].bn.running_mean
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


@pytest.mark.parametrize("name", ["imagenet-A", "imagenet-B", "fmnist-A", "fmnist-B"])
def test_subnet_onnx_matches_pytorch(name):
    sp = SPACES[name]
    torch.manual_seed(3)
    net = Supernet(sp)
    with torch.no_grad():
        _randomize_bn(net, 2)
    rng = random.Random(7)
    for _ in range(2):
        arch = sp.full().sample(rng)
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


def test_blocks_share_one_definition():
    """The block the supernet runs, the one the subnet holds and the one a latency table times are one class."""
    sp = SPACES["fmnist-A"]
    net = Supernet(sp)
    arch = sp.full().sample(random.Random(4))
    sub = build_subnet(net, arch)
    for l, (op, c), block in zip(sp.layers, arch, sub.blocks):
        fresh = make_block(op, l.in_channels, l.out_channels, l.stride, None if op == "skip" else sp.mid(l.index, c))
        assert type(fresh) is type(block) is type(net.layers[l.index][op])
        assert [p.shape for p in fresh.parameters()] == [p.shape for p in block.parameters()]
