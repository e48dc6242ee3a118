"""The one definition of every block of the search space.

The supernet holds each block at its widest (mid = S_l) and runs it on its first ``mid`` channels by slicing
weights; ``build_subnet`` and the latency table instantiate the same classes at a given ``mid``. A block
therefore computes the same thing in all three places, which is what makes export and the latency model
trustworthy.

Blocks (ShuffleNetV2 units, torchvision's layout of the two branches):

* stride 1: split the input in two halves; one passes through, the other runs the main branch.
* stride 2: a projection branch (depthwise k x k stride 2, 1x1) beside the main branch, both on the input.
* then the halves are concatenated and channel-shuffled (Reshape / Transpose / Reshape).

Main branches: ``shuffle{3,5,7}`` = 1x1 (-> mid), depthwise k x k, 1x1 (-> out/2);
``xception`` = three times (depthwise 3x3, 1x1), the first two 1x1 to mid, the last to out/2.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import nn

BN_MOMENTUM = 0.1
SHUFFLE_KERNELS = {"shuffle3": 3, "shuffle5": 5, "shuffle7": 7}


def channel_shuffle(x: torch.Tensor, groups: int = 2) -> torch.Tensor:
    _, c, h, w = x.shape
    return x.reshape(-1, groups, c // groups, h, w).transpose(1, 2).reshape(-1, c, h, w)


def sub_index(full: Sequence[int], part: Sequence[int]) -> tuple[slice, ...]:
    """Where a narrower twin's tensor of shape ``part`` sits in the full tensor of shape ``full``.

    Channels scale down from the maximum, so channel dimensions (and every dimension of a 1-D or 2-D tensor)
    keep their leading entries; the spatial dimensions of a conv weight keep their centre, so a k x k kernel is
    the middle of a larger one (Once-for-All's elastic kernel).
    """
    out = []
    for d, (n, m) in enumerate(zip(full, part)):
        start = (n - m) // 2 if d >= 2 and len(full) == 4 else 0
        out.append(slice(start, start + m))
    return tuple(out)


class Step(NamedTuple):
    """One ConvBN call of a unit: output channels, kernel and stride (None = the ConvBN's own)."""

    conv: "ConvBN"
    cout: int | None = None
    kernel: int | None = None
    stride: int | None = None


def run_unit(x: torch.Tensor, inp: int, proj: Sequence[Step] | None, main: Sequence[Step]) -> torch.Tensor:
    """The computation of every ShuffleNetV2 unit: split (stride 1) or project (stride 2), the main branch,
    concatenate, channel shuffle. Static blocks and the supernet's shared layers both run through here."""
    if proj is None:
        half = inp // 2  # a constant, so the exported graph slices without shape arithmetic
        keep, x = x[:, :half], x[:, half:]
    else:
        keep = x
        for step in proj:
            keep = step.conv(keep, step.cout, step.kernel, step.stride)
    for step in main:
        x = step.conv(x, step.cout, step.kernel, step.stride)
    return channel_shuffle(torch.cat((keep, x), dim=1))


def _sliced_batch_norm(bn: nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    """BatchNorm2d on the first x.shape[1] channels of ``bn``, updating exactly those running stats.

    Mirrors ``torch.nn.modules.batchnorm._BatchNorm.forward`` (momentum None = cumulative average).
    """
    c = x.shape[1]
    factor = 0.0 if bn.momentum is None else bn.momentum
    if bn.training and bn.track_running_stats:
        bn.num_batches_tracked.add_(1)
        factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
    use_batch_stats = bn.training or bn.running_mean is None
    track = not bn.training or bn.track_running_stats
    return F.batch_norm(
        x,
        bn.running_mean[:c] if track else None,
        bn.running_var[:c] if track else None,
        bn.weight[:c],
        bn.bias[:c],
        use_batch_stats,
        factor,
        bn.eps,
    )


class ConvBN(nn.Module):
    """A k x k convolution (dense or depthwise), BatchNorm and optional ReLU, runnable on its first channels."""

    def __init__(self, cin: int, cout: int, kernel: int = 1, stride: int = 1, depthwise: bool = False, relu: bool = True):
        super().__init__()
        if depthwise and cin != cout:
            raise ValueError("a depthwise conv keeps its channel count")
        self.depthwise, self.relu = depthwise, relu
        self.conv = nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=cin if depthwise else 1, bias=False)
        self.bn = nn.BatchNorm2d(cout, momentum=BN_MOMENTUM)

    @property
    def in_channels(self) -> int:
        return self.conv.in_channels

    @property
    def out_channels(self) -> int:
        return self.conv.out_channels

    def forward(self, x: torch.Tensor, cout: int | None = None, kernel: int | None = None,
                stride: int | None = None) -> torch.Tensor:
        """Run on the input's channels, producing ``cout`` (the first ones), with the centred ``kernel`` x ``kernel``
        part of the weights and ``stride``; each defaults to the layer's own. The supernet runs its shared layers
        this way; a standalone network always runs the static case."""
        cin = x.shape[1]
        conv = self.conv
        cout = cin if self.depthwise else (self.out_channels if cout is None else cout)
        k = conv.kernel_size[0] if kernel is None else kernel
        s = conv.stride[0] if stride is None else stride
        if (cin, cout, k, s) == (self.in_channels, self.out_channels, conv.kernel_size[0], conv.stride[0]):
            y = self.bn(conv(x))  # static: the plain modules
        else:
            weight = conv.weight[sub_index(conv.weight.shape, (cout, 1 if self.depthwise else cin, k, k))]
            y = F.conv2d(x, weight, None, s, k // 2, 1, cin if self.depthwise else 1)
            y = _sliced_batch_norm(self.bn, y)
        return F.relu(y) if self.relu else y

    def cost(self, in_size: int) -> tuple[int, int, int]:
        """(FLOPs, parameters, output size) of this layer at its own width; FLOPs = 2 x MACs of the conv."""
        conv = self.conv
        k, s = conv.kernel_size[0], conv.stride[0]
        out = (in_size + 2 * conv.padding[0] - k) // s + 1
        macs = self.out_channels * (self.in_channels // conv.groups) * k * k * out * out
        params = conv.weight.numel() + 2 * self.out_channels  # conv weight + BN affine
        return 2 * macs, params, out


class Block(nn.Module):
    """A ShuffleNetV2-style unit: ``proj`` (stride 2 only) beside ``main``; see the module docstring."""

    op: str = ""

    def __init__(self, inp: int, oup: int, stride: int, mid: int, main: list[ConvBN], scaled: list[bool], proj_kernel: int):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError("stride must be 1 or 2")
        if stride == 1 and inp != oup:
            raise ValueError("a stride-1 block keeps its width")
        self.inp, self.oup, self.stride, self.mid = inp, oup, stride, mid
        half = oup // 2
        self.proj = (
            nn.Sequential(ConvBN(inp, inp, proj_kernel, 2, depthwise=True, relu=False), ConvBN(inp, half, 1))
            if stride == 2
            else None
        )
        self.main = nn.ModuleList(main)
        self.scaled = tuple(scaled)  # which main convs output ``mid`` channels

    def forward(self, x: torch.Tensor, mid: int | None = None) -> torch.Tensor:
        proj = None if self.proj is None else [Step(conv) for conv in self.proj]
        main = [Step(conv, mid if scaled else None) for conv, scaled in zip(self.main, self.scaled)]
        return run_unit(x, self.inp, proj, main)

    def steps(self) -> list[ConvBN]:
        """Every ConvBN of the block, projection first: the order of ``run_unit``'s steps."""
        return [*(self.proj or []), *self.main]

    def cost(self, in_size: int) -> tuple[int, int]:
        """(FLOPs, parameters) of this block at its own mid; cross-checked by torch's flop counter in tests."""
        flops = params = 0
        for branch in (self.proj or [], self.main):
            size = in_size
            for conv in branch:
                f, p, size = conv.cost(size)
                flops, params = flops + f, params + p
        return flops, params


class ShuffleBlock(Block):
    """ShuffleNetV2 block with a k x k depthwise conv: 1x1 -> dw k x k -> 1x1."""

    def __init__(self, inp: int, oup: int, stride: int, mid: int, kernel: int):
        cin = inp if stride == 2 else inp // 2
        main = [
            ConvBN(cin, mid, 1),
            ConvBN(mid, mid, kernel, stride, depthwise=True, relu=False),
            ConvBN(mid, oup // 2, 1),
        ]
        super().__init__(inp, oup, stride, mid, main, [True, False, False], kernel)
        self.op = f"shuffle{kernel}"


class XceptionBlock(Block):
    """ShuffleNetV2-Xception block: (dw 3x3 -> 1x1) three times."""

    op = "xception"

    def __init__(self, inp: int, oup: int, stride: int, mid: int):
        cin = inp if stride == 2 else inp // 2
        main = [
            ConvBN(cin, cin, 3, stride, depthwise=True, relu=False),
            ConvBN(cin, mid, 1),
            ConvBN(mid, mid, 3, 1, depthwise=True, relu=False),
            ConvBN(mid, mid, 1),
            ConvBN(mid, mid, 3, 1, depthwise=True, relu=False),
            ConvBN(mid, oup // 2, 1),
        ]
        super().__init__(inp, oup, stride, mid, main, [False, True, False, True, False, False], 3)


class SkipBlock(nn.Module):
    """Identity; offered only where input and output shapes agree (stride-1 layers)."""

    op = "skip"

    def forward(self, x: torch.Tensor, mid: int | None = None) -> torch.Tensor:
        return x

    def cost(self, in_size: int) -> tuple[int, int]:
        return 0, 0


def make_block(op: str, inp: int, oup: int, stride: int, mid: int) -> nn.Module:
    """The block for ``op`` at width ``mid``: the single constructor used by supernet, subnet and LUT."""
    if op == "skip":
        if stride != 1 or inp != oup:
            raise ValueError("skip only fits a stride-1 layer")
        return SkipBlock()
    if op in SHUFFLE_KERNELS:
        return ShuffleBlock(inp, oup, stride, mid, SHUFFLE_KERNELS[op])
    if op == "xception":
        return XceptionBlock(inp, oup, stride, mid)
    raise ValueError(f"unknown op {op!r}")


class Stem(nn.Sequential):
    """3x3 conv to ``out_channels`` (the space's ``stem_channels``), BN, ReLU, at ``stride`` (the space's
    ``stem_stride``)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__(ConvBN(in_channels, out_channels, 3, stride))

    def cost(self, in_size: int) -> tuple[int, int]:
        f, p, _ = self[0].cost(in_size)
        return f, p


class Head(nn.Module):
    """1x1 conv to ``channels`` (the space's ``head_channels``), BN, ReLU, global average pool, dropout, linear
    classifier."""

    def __init__(self, in_channels: int, channels: int, num_classes: int, dropout: float = 0.1):
        super().__init__()
        self.conv = ConvBN(in_channels, channels, 1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self.classifier(self.dropout(x))

    def cost(self, in_size: int) -> tuple[int, int]:
        f, p, _ = self.conv.cost(in_size)
        lin = self.classifier
        return f + 2 * lin.in_features * lin.out_features, p + lin.weight.numel() + lin.bias.numel()


def init_weights(module: nn.Module) -> None:
    """Single-path one-shot's initialisation: conv weights N(0, 1 / fan-in per output channel's group input).

    For a depthwise conv that is N(0, 1): He initialisation by fan-out would make depthwise weights tiny, and
    behind BatchNorm a tiny weight gets a huge gradient (it scales with 1 / |w|). Those gradients then own the
    clipped global norm and a supernet with sampled ops does not learn at all (measured: chance accuracy after
    150 steps, against 58% with this initialisation). Unit BN, small normal classifier.
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, 0.0, 1.0 / m.weight.shape[1])
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)


@torch.no_grad()
def copy_sliced_(dst: nn.Module, src: nn.Module) -> None:
    """Load ``dst`` (a narrower twin of ``src``) with its part of every tensor of ``src`` (see ``sub_index``):
    the leading channels of each weight, BN parameter and running statistic, the centre of each kernel."""
    src_state = src.state_dict()
    for name, t in dst.state_dict().items():
        s = src_state[name]
        t.copy_(s[sub_index(s.shape, t.shape)] if t.dim() else s)
