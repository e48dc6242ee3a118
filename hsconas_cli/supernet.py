"""The weight-sharing supernet (single-path one-shot with dynamic channel scaling) and its subnets.

``Supernet(space)`` holds, per layer, every op of the layer at full width. ``supernet(x, arch)`` runs one
path: the chosen op of each layer on its first ``mid`` channels (weights sliced, never masked).
``build_subnet(supernet, arch)`` hands out the standalone network of that path, an ``HSCoNet``, with
physically pruned channels and inherited weights; in eval mode the two compute the same function.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from hsconas_cli.blocks import Head, Stem, copy_prefix_, init_weights, make_block
from hsconas_cli.space import Arch, SearchSpace, validate_arch


def _stem(space: SearchSpace) -> Stem:
    return Stem(space.in_channels, space.stem_channels, space.stem_stride)


def _head(space: SearchSpace, dropout: float) -> Head:
    return Head(space.layout[-1], space.head_channels, space.num_classes, dropout)


class Supernet(nn.Module):
    def __init__(self, space: SearchSpace, dropout: float = 0.1):
        super().__init__()
        self.space = space
        self.dropout = dropout
        self.stem = _stem(space)
        self.layers = nn.ModuleList(
            nn.ModuleDict(
                {op: make_block(op, l.in_channels, l.out_channels, l.stride, l.max_mid) for op in l.ops}
            )
            for l in space.layers
        )
        self.head = _head(space, dropout)
        init_weights(self)

    def path(self, arch: Arch) -> list[tuple[nn.Module, int | None]]:
        """The (block, mid) of each layer that ``arch`` runs."""
        out = []
        for i, (op, c) in enumerate(arch):
            out.append((self.layers[i][op], None if op == "skip" else self.space.mid(i, c)))
        return out

    def forward(self, x: torch.Tensor, arch: Arch) -> torch.Tensor:
        x = self.stem(x)
        for block, mid in self.path(arch):
            x = block(x, mid)
        return self.head(x)

    def path_modules(self, arch: Arch) -> list[nn.Module]:
        """Every module whose parameters ``arch`` uses (stem, one block per layer, head)."""
        return [self.stem, *(block for block, _ in self.path(arch)), self.head]


class HSCoNet(nn.Module):
    """A standalone network of the space: stem, 20 static blocks at their own widths, head."""

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
    copy_prefix_(net.stem, supernet.stem)
    for i, (block, (op, _)) in enumerate(zip(net.blocks, net.arch)):
        copy_prefix_(block, supernet.layers[i][op])
    copy_prefix_(net.head, supernet.head)
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
