"""The weight-sharing supernet (single-path one-shot with dynamic channel scaling) and its subnets.

``Supernet(space)`` holds one ``ChoiceLayer`` per layer. ``supernet(x, arch)`` runs one path: the chosen op of
each layer on its first ``mid`` channels (weights sliced, never masked). ``build_subnet(supernet, arch)`` hands
out the standalone network of that path, an ``HSCoNet``, with physically pruned channels and inherited weights;
in eval mode the two compute the same function.

How the ops of a layer share weights (``share="all"``, the default). Every op of a layer is the same ShuffleNetV2
unit with another main branch, so one set of weights serves all of them:

* ``shuffle3/5/7`` are one block, 1x1 -> depthwise 7x7 -> 1x1, whose k x k kernel is the centre of the 7x7
  (Once-for-All's elastic kernel); the stride-2 projection's depthwise kernel likewise;
* ``xception`` (dw 3x3 -> 1x1 -> dw 3x3 -> 1x1 -> dw 3x3 -> 1x1) runs the shuffle block's first 1x1 as its first
  1x1, the centre 3x3 of its depthwise kernel (at stride 1) as its last depthwise, and its last 1x1 as its last;
  only its first two depthwise convs and its middle 1x1 are its own.

``init="aligned"`` then starts every op of a layer computing nearly the same function: the rings of the 7x7
kernels beyond the centre 3x3 start small (x0.3 per ring), and xception's own convs start as identities, so
xception starts as shuffle3. A supernet whose ops start apart does not learn at this project's budgets: with
separate weights per op, 300 steps on Fashion-MNIST left random subnets at chance (docs/BENCHMARKS.md,
"Supernet recipes"). ``share="none"`` and ``init="spos"`` rebuild that supernet for the recipe benchmark;
``share="kernels"`` shares only among shuffle3/5/7 and starts xception's weights as a copy of theirs.

The standalone networks are those of the search space whatever the parametrisation: ``build_subnet`` copies
each static block's part of the shared weights (leading channels, centred kernels; ``blocks.sub_index``), and
the supernet runs exactly the same computation (``blocks.run_unit``).
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from hsconas_cli.blocks import (
    SHUFFLE_KERNELS, ConvBN, Head, Stem, Step, copy_sliced_, init_weights, make_block, run_unit, sub_index,
)
from hsconas_cli.space import Arch, Layer, SearchSpace, validate_arch

INITS = ("aligned", "spos", "aligned-he")
SHARING = ("all", "kernels", "none")
RING_SCALE = 0.3  # aligned init: each ring of a shared depthwise kernel beyond the centre 3x3 starts this much smaller
RELU_MEAN_OVER_STD = 0.6833  # mean / std of ReLU(z), z ~ N(0, 1): the BN shift that makes ReLU(BN(ReLU(y))) ~ ReLU(y)


def _stem(space: SearchSpace) -> Stem:
    return Stem(space.in_channels, space.stem_channels, space.stem_stride)


def _head(space: SearchSpace, dropout: float) -> Head:
    return Head(space.layout[-1], space.head_channels, space.num_classes, dropout)


class ChoiceLayer(nn.Module):
    """Every op of one layer, at full width, over shared weights (``share``: see the module docstring).

    ``plan(op, mid)`` lists the ConvBN calls of the op's unit; ``forward`` runs them and ``static_block`` copies
    them into the standalone block, so the two cannot disagree. Group ``g`` holds the weights of the ops that
    share: one group ``"all"``; ``"shuffle"`` and ``"xception"``; or one per op.
    """

    def __init__(self, layer: Layer, share: str = "all"):
        super().__init__()
        if share not in SHARING:
            raise ValueError(f"unknown sharing {share!r}; one of {', '.join(SHARING)}")
        self.layer = layer
        self.share = share
        self._slices: dict[tuple, list] = {}
        inp, oup, stride = layer.in_channels, layer.out_channels, layer.stride
        m, half = layer.max_mid, oup // 2
        cin = inp if stride == 2 else inp // 2
        self.groups = nn.ModuleDict()
        for op in layer.ops:
            if op == "skip":
                continue
            group = self.group(op)
            if group not in self.groups:
                ops = [o for o in layer.ops if o != "skip" and self.group(o) == group]
                kmax = max([SHUFFLE_KERNELS[o] for o in ops if o in SHUFFLE_KERNELS] + [3])
                convs = {}
                if stride == 2:
                    convs["proj_dw"] = ConvBN(inp, inp, kmax, 2, depthwise=True, relu=False)
                    convs["proj_pw"] = ConvBN(inp, half, 1)
                convs["pw1"] = ConvBN(cin, m, 1)
                convs["dw"] = ConvBN(m, m, kmax, stride, depthwise=True, relu=False)
                convs["pw2"] = ConvBN(m, half, 1)
                if "xception" in ops:
                    convs["xdw1"] = ConvBN(cin, cin, 3, stride, depthwise=True, relu=False)
                    convs["xdw2"] = ConvBN(m, m, 3, 1, depthwise=True, relu=False)
                    convs["xpw"] = ConvBN(m, m, 1)
                self.groups[group] = nn.ModuleDict(convs)

    def group(self, op: str) -> str:
        if self.share == "all":
            return "all"
        if self.share == "kernels":
            return "shuffle" if op in SHUFFLE_KERNELS else op
        return op

    def plan(self, op: str, mid: int) -> tuple[list[Step] | None, list[Step]]:
        """(projection, main branch) of ``op`` at width ``mid``: the steps, in the static block's order."""
        c = self.groups[self.group(op)]
        k = SHUFFLE_KERNELS.get(op, 3)
        proj = [Step(c["proj_dw"], kernel=k), Step(c["proj_pw"])] if self.layer.stride == 2 else None
        if op in SHUFFLE_KERNELS:
            main = [Step(c["pw1"], mid), Step(c["dw"], kernel=k), Step(c["pw2"])]
        elif op == "xception":
            main = [Step(c["xdw1"]), Step(c["pw1"], mid), Step(c["xdw2"]), Step(c["xpw"], mid),
                    Step(c["dw"], kernel=3, stride=1), Step(c["pw2"])]
        else:
            raise ValueError(f"op {op!r} has no weights")
        return proj, main

    def forward(self, x: torch.Tensor, op: str, mid: int | None) -> torch.Tensor:
        if op == "skip":
            return x
        proj, main = self.plan(op, mid)
        return run_unit(x, self.layer.in_channels, proj, main)

    def static_block(self, op: str, mid: int | None) -> nn.Module:
        """The standalone block of ``op`` at ``mid`` with this layer's weights (``get_active_subnet``)."""
        l = self.layer
        block = make_block(op, l.in_channels, l.out_channels, l.stride, mid)
        self.load_static_(block, op, mid)
        return block.train(self.training)

    def load_static_(self, block: nn.Module, op: str, mid: int | None) -> None:
        """Copy into ``block`` (the static block of ``op`` at ``mid``) its part of this layer's weights."""
        if op == "skip":
            return
        proj, main = self.plan(op, mid)
        steps = [*(proj or []), *main]
        assert len(steps) == len(block.steps())
        for static, step in zip(block.steps(), steps):
            copy_sliced_(static, step.conv)

    def slices(self, op: str, mid: int | None) -> list[tuple[str, tuple]]:
        """(parameter name in this layer, index) of every weight ``op`` at ``mid`` uses (cached: training asks
        for them at every step)."""
        key = (op, mid)
        if key not in self._slices:
            self._slices[key] = self._compute_slices(op, mid)
        return self._slices[key]

    def _compute_slices(self, op: str, mid: int | None) -> list[tuple[str, tuple]]:
        if op == "skip":
            return []
        names = {id(p): n for n, p in self.named_parameters()}
        l = self.layer
        shapes = _static_shapes(op, l.in_channels, l.out_channels, l.stride, mid)
        proj, main = self.plan(op, mid)
        out = []
        for step, step_shapes in zip([*(proj or []), *main], shapes):
            for p, shape in zip(step.conv.parameters(), step_shapes):
                out.append((names[id(p)], ... if shape == tuple(p.shape) else sub_index(p.shape, shape)))
        return out

    @torch.no_grad()
    def align_(self) -> None:
        """The aligned initialisation (module docstring): shrink kernel rings, make xception's own convs identities."""
        for convs in self.groups.values():
            for name in ("proj_dw", "dw"):
                if name in convs:
                    w = convs[name].conv.weight
                    k = w.shape[-1]
                    r = (torch.arange(k) - k // 2).abs()
                    ring = torch.maximum(r[:, None], r[None, :])
                    w.mul_(RING_SCALE ** (ring - 1).clamp(min=0).to(w.dtype))
            if "xpw" in convs:
                for name in ("xdw1", "xdw2"):
                    w = convs[name].conv.weight
                    w.zero_()
                    w[:, :, 1, 1] = 1.0
                convs["xpw"].conv.weight.zero_()
                convs["xpw"].conv.weight[:, :, 0, 0] = torch.eye(self.layer.max_mid)
                convs["xpw"].bn.bias.fill_(RELU_MEAN_OVER_STD)
        if self.share == "kernels" and "xception" in self.groups and "shuffle" in self.groups:
            own, shuffle = self.groups["xception"], self.groups["shuffle"]  # xception starts as a copy of shuffle3
            for name in ("proj_dw", "proj_pw", "pw1", "dw", "pw2"):
                if name in own:
                    copy_sliced_(own[name], shuffle[name])


@functools.lru_cache(maxsize=None)
def _static_shapes(op: str, inp: int, oup: int, stride: int, mid: int) -> list[list[tuple[int, ...]]]:
    """Per ConvBN step of the static block, the shapes of its parameters (counted on the meta device)."""
    with torch.device("meta"):
        block = make_block(op, inp, oup, stride, mid)
    return [[tuple(p.shape) for p in conv.parameters()] for conv in block.steps()]


class Supernet(nn.Module):
    def __init__(self, space: SearchSpace, dropout: float = 0.1, *, share: str = "all", init: str = "aligned"):
        super().__init__()
        if init not in INITS:
            raise ValueError(f"unknown supernet init {init!r}; one of {', '.join(INITS)}")
        self.space = space
        self.dropout = dropout
        self.share, self.init = share, init
        self.stem = _stem(space)
        self.layers = nn.ModuleList(ChoiceLayer(l, share) for l in space.layers)
        self.head = _head(space, dropout)
        init_weights(self)
        if init == "aligned-he":
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
        if init.startswith("aligned"):
            for layer in self.layers:
                layer.align_()

    @property
    def options(self) -> dict:
        """What rebuilds this supernet's parameters besides the space (stored in checkpoints)."""
        return {"share": self.share, "init": self.init}

    def mids(self, arch: Arch) -> list[int | None]:
        return [None if op == "skip" else self.space.mid(i, c) for i, (op, c) in enumerate(arch)]

    def forward(self, x: torch.Tensor, arch: Arch) -> torch.Tensor:
        x = self.stem(x)
        for layer, (op, _), mid in zip(self.layers, arch, self.mids(arch)):
            x = layer(x, op, mid)
        return self.head(x)

    def active_slices(self, arch: Arch, prefix: str = "") -> list[tuple[str, tuple]]:
        """(parameter name, index) of every parameter the path of ``arch`` uses: the part of each shared tensor
        that its static block holds (what ``build_subnet`` copies)."""
        out = [(f"{prefix}stem.{n}", ...) for n, _ in self.stem.named_parameters()]
        for i, (layer, (op, _), mid) in enumerate(zip(self.layers, arch, self.mids(arch))):
            out += [(f"{prefix}layers.{i}.{n}", index) for n, index in layer.slices(op, mid)]
        out += [(f"{prefix}head.{n}", ...) for n, _ in self.head.named_parameters()]
        return out


class HSCoNet(nn.Module):
    """A standalone network of the space: stem, one static block per layer of the space at its own width, head."""

    def __init__(self, space: SearchSpace, arch: Arch, dropout: float = 0.1):
        super().__init__()
        arch = validate_arch(space, arch)
        self.space, self.arch = space, arch
        self.stem = _stem(space)
        self.blocks = nn.Sequential(
            *(
                make_block(op, l.in_channels, l.out_channels, l.stride, None if op == "skip" else space.mid(l.index, c))
                for l, (op, c) in zip(space.layers, arch)
            )
        )
        self.head = _head(space, dropout)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


def build_subnet(supernet: Supernet, arch: Arch) -> HSCoNet:
    """The standalone, physically pruned network of ``arch`` with weights inherited from ``supernet``."""
    space = supernet.space
    net = HSCoNet(space, arch, supernet.dropout)
    copy_sliced_(net.stem, supernet.stem)
    for block, layer, (op, _), mid in zip(net.blocks, supernet.layers, net.arch, supernet.mids(net.arch)):
        layer.load_static_(block, op, mid)
    copy_sliced_(net.head, supernet.head)
    net.train(supernet.training)
    return net


@functools.lru_cache(maxsize=64)
def cost_table(space: SearchSpace) -> dict:
    """FLOPs and parameters of every (layer, op, mid) block, plus stem and head, counted on the meta device.

    FLOPs are 2 x MACs of convolutions and the classifier (what ``torch.utils.flop_counter`` counts).
    """
    table: dict = {}
    with torch.device("meta"):
        table["stem"] = _stem(space).cost(space.input_size)
        table["head"] = _head(space, 0.0).cost(space.head_in_size)
        for l in space.layers:
            for op in l.ops:
                mids = [None] if op == "skip" else sorted({space.mid(l.index, c) for c in space.factors})
                for mid in mids:
                    block = make_block(op, l.in_channels, l.out_channels, l.stride, mid)
                    table[(l.index, op, mid)] = block.cost(l.in_size)
    return table


def arch_cost(space: SearchSpace, arch: Arch) -> dict[str, object]:
    """FLOPs and parameters of ``arch``, per layer and in total (additive over the cost table)."""
    arch = validate_arch(space, arch)
    table = cost_table(space)
    per_layer = [table[(i, op, None if op == "skip" else space.mid(i, c))] for i, (op, c) in enumerate(arch)]
    (sf, sp), (hf, hp) = table["stem"], table["head"]
    return {
        "stem": (sf, sp),
        "layers": per_layer,
        "head": (hf, hp),
        "flops": sf + hf + sum(f for f, _ in per_layer),
        "params": sp + hp + sum(p for _, p in per_layer),
    }
