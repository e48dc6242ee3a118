"""Accuracy of a subnet with inherited weights: exact BN recalibration, then top-1 (paper III-D, SPEC section 6).

BN statistics of a supernet are shared by every path and fit none of them, so before an arch is scored its
standalone network gets its running statistics reset and recomputed as an exact cumulative average
(momentum None) over a fixed, seeded calibration subset; then top-1 is counted on a fixed validation subset.
The same arch gives the same accuracy every time.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn


@torch.no_grad()
def recalibrate_bn(net: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], device: str = "cpu") -> None:
    """Reset every BN's running statistics and recompute them as the exact average over ``batches``."""
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: exact mean over the batches seen
    net.train()
    for x, _ in batches:
        net(x.to(device, non_blocking=True))
    for m, mom in zip(bns, saved):
        m.momentum = mom
    net.eval()


@torch.no_grad()
def top1(net: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], device: str = "cpu") -> float:
    """Top-1 accuracy (a fraction) of ``net`` in eval mode over ``batches``."""
    net.eval()
    correct = total = 0
    for x, y in batches:
        logits = net(x.to(device, non_blocking=True))
        correct += (logits.argmax(1).cpu() == y).sum().item()
        total += len(y)
    return correct / max(1, total)
