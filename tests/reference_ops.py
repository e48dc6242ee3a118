"""The search space's networks written out once more, independently of hsconas_cli.blocks and ChoiceLayer.plan:
plain ``torch.nn.functional`` over the supernet's state dict, from SPEC section 3 (ops), torchvision's
ShuffleNetV2 (split, branch, concatenate, shuffle) and the supernet's documented weight sharing. In eval mode
(BN on running statistics, no dropout). A wrong op definition or a wrong choice of weights in the product
shows as a difference against this.

Weight sharing (hsconas_cli/supernet.py): the ops of a layer read group ``all`` (share="all"), ``shuffle`` or
``xception`` (share="kernels"), or their own name (share="none"). Inside a group: shuffle k runs pw1 (1x1 to
mid), the centred k x k of dw (depthwise, the layer's stride), pw2 (1x1 to out/2); xception runs xdw1
(depthwise 3x3, the layer's stride), pw1 (1x1 to mid), xdw2 (depthwise 3x3), xpw (1x1 mid to mid), the centred
3x3 of dw at stride 1, pw2. A stride-2 layer's projection runs the centred k x k of proj_dw (k of the op, 3 for
xception) at stride 2, then proj_pw (1x1 to out/2). Every 1x1 is followed by BN and ReLU, every depthwise conv by
BN alone. Channels kept are always the leading ones.
"""

from __future__ import annotations

import math
from fractions import Fraction

import torch
import torch.nn.functional as F

KERNEL = {"shuffle3": 3, "shuffle5": 5, "shuffle7": 7, "xception": 3}


def group_prefix(share: str, layer: int, op: str) -> str:
    """Where the weights ``op`` of layer ``layer`` reads live in the supernet's state dict."""
    group = "all" if share == "all" else op if share == "none" else "xception" if op == "xception" else "shuffle"
    return f"layers.{layer}.groups.{group}"


def _conv_bn(state: dict, prefix: str, x: torch.Tensor, *, cout: int | None = None, k: int | None = None,
             stride: int = 1, depthwise: bool = False, relu: bool = True) -> torch.Tensor:
    w = state[prefix + ".conv.weight"]
    cin = x.shape[1]
    if depthwise:
        cout = cin
    cout = w.shape[0] if cout is None else cout
    k = w.shape[-1] if k is None else k
    lo = (w.shape[-1] - k) // 2
    w = w[:cout, : (1 if depthwise else cin), lo : lo + k, lo : lo + k]
    y = F.conv2d(x, w, None, stride, k // 2, 1, cin if depthwise else 1)
    bn = {n: state[f"{prefix}.bn.{n}"][:cout] for n in ("weight", "bias", "running_mean", "running_var")}
    y = F.batch_norm(y, bn["running_mean"], bn["running_var"], bn["weight"], bn["bias"], False, 0.0, 1e-5)
    return F.relu(y) if relu else y


def _shuffle(x: torch.Tensor) -> torch.Tensor:
    n, c, h, w = x.shape
    return x.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)


def layer_forward(state: dict, prefix: str, layer, op: str, mid: int | None, x: torch.Tensor) -> torch.Tensor:
    """One choice layer (``layer``: hsconas_cli.space.Layer) running ``op`` at width ``mid``; ``prefix`` names the
    group's weights, as ``layers.3.groups.all``."""
    if op == "skip":
        return x
    half = layer.out_channels // 2
    k = KERNEL[op]
    if layer.stride == 1:
        keep, x = x[:, : x.shape[1] // 2], x[:, x.shape[1] // 2 :]
    else:
        keep = _conv_bn(state, prefix + ".proj_dw", x, k=k, stride=2, depthwise=True, relu=False)
        keep = _conv_bn(state, prefix + ".proj_pw", keep, cout=half)
    s = layer.stride
    if op == "xception":
        x = _conv_bn(state, prefix + ".xdw1", x, k=3, stride=s, depthwise=True, relu=False)
        x = _conv_bn(state, prefix + ".pw1", x, cout=mid)
        x = _conv_bn(state, prefix + ".xdw2", x, k=3, depthwise=True, relu=False)
        x = _conv_bn(state, prefix + ".xpw", x, cout=mid)
        x = _conv_bn(state, prefix + ".dw", x, k=3, stride=1, depthwise=True, relu=False)
    else:
        x = _conv_bn(state, prefix + ".pw1", x, cout=mid)
        x = _conv_bn(state, prefix + ".dw", x, k=k, stride=s, depthwise=True, relu=False)
    x = _conv_bn(state, prefix + ".pw2", x, cout=half)
    return _shuffle(torch.cat((keep, x), dim=1))


def _mid(c: float, s: int) -> int:
    """SPEC: mid = max(1, floor(c x S_l + 1/2)), in exact decimal arithmetic (0.3 x 5 + 1/2 is 2, not 1.999...)."""
    return max(1, math.floor(Fraction(str(c)) * s + Fraction(1, 2)))


@torch.no_grad()
def network_forward(supernet, arch, x: torch.Tensor) -> torch.Tensor:
    """The eval-mode output of ``arch``'s network with ``supernet``'s weights."""
    state, space = supernet.state_dict(), supernet.space
    x = _conv_bn(state, "stem.0", x, stride=space.stem_stride)
    for i, (layer, (op, c)) in enumerate(zip(space.layers, arch)):
        mid = None if op == "skip" else _mid(c, layer.out_channels // 2)
        x = layer_forward(state, group_prefix(supernet.share, i, op), layer, op, mid, x)
    x = _conv_bn(state, "head.conv", x)
    x = x.mean(dim=(2, 3))
    return F.linear(x, state["head.classifier.weight"], state["head.classifier.bias"])
