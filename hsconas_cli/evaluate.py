"""Accuracy of a subnet with inherited weights: exact BN recalibration, then top-1 (paper III-D).

BN statistics of a supernet are shared by every path and fit none of them, so before an arch is scored its
standalone network gets its running statistics reset and recomputed as an exact cumulative average
(momentum None) over a fixed, seeded calibration subset; then top-1 is counted on a fixed validation subset.
The same arch gives the same accuracy every time.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
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
def correct(net: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], device: str = "cpu") -> np.ndarray:
    """Whether ``net`` in eval mode classifies each image of ``batches`` right (a bool vector, in their order)."""
    net.eval()
    hits = [(net(x.to(device, non_blocking=True)).argmax(1).cpu() == y).numpy() for x, y in batches]
    return np.concatenate(hits) if hits else np.zeros(0, dtype=bool)


def top1(net: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], device: str = "cpu") -> float:
    """Top-1 accuracy (a fraction) of ``net`` in eval mode over ``batches``."""
    hits = correct(net, batches, device)
    return float(hits.mean()) if len(hits) else 0.0


class Evaluator:
    """ACC(arch) of a supernet's subnets: exact BN recalibration on a fixed calibration subset, then top-1 on a
    fixed validation subset. Results are cached by network (op and real width per layer), in memory and, with
    ``cache_file``, on disk as JSON lines, so no arch is evaluated twice and a resumed run reuses them.

    Small datasets are held as ready batches in memory (channels-last), so an evaluation costs the forward
    passes and little else; see ``bench/evaluator.py`` for evaluations per second against plain inference.
    """

    def __init__(self, supernet, data, *, calib_images: int = 2000, val_images: int = 5000, batch_size: int = 500,
                 cache_file=None, tag: str = "", subset: str = "val", per_image: bool = False):
        from hsconas_cli.space import arch_key

        self.supernet = supernet.eval()
        self.space = supernet.space
        self._key = lambda arch: json.dumps(arch_key(self.space, arch))
        fmt = torch.channels_last
        if data.in_memory:
            self.calib = [(x.contiguous(memory_format=fmt), y) for x, y in data.loader("calib", batch_size, limit=calib_images)]
            self.val = [(x.contiguous(memory_format=fmt), y) for x, y in data.loader(subset, batch_size, limit=val_images)]
        else:
            self.calib = data.loader("calib", batch_size, limit=calib_images, workers=4)
            self.val = data.loader(subset, batch_size, limit=val_images, workers=4)
        self.settings = {"calib_images": calib_images, "val_images": val_images, "split": data.split["sha256"],
                         "data": data.split["data_sha256"], "tag": tag}
        if subset != "val":  # the screen's records keep their old form, so their caches still match
            self.settings["subset"] = subset
        self.per_image = per_image  # keep which images each arch got right (``correct``), for paired comparisons
        self.cache: dict[str, float] = {}
        self.bits: dict[str, np.ndarray] = {}
        self.cache_file = Path(cache_file) if cache_file else None
        self._torn = False  # the file ends in a line cut short: the next record starts on a line of its own
        if self.cache_file and self.cache_file.exists():
            self._read_cache()
        self.evaluated = 0

    def _read_cache(self) -> None:
        text = self.cache_file.read_text()
        self._torn = bool(text) and not text.endswith("\n")
        for line in text.splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by an interruption
                continue
            if row.get("settings") == self.settings and (not self.per_image or "bits" in row):
                self.cache[row["key"]] = row["acc"]
                if "bits" in row:
                    self.bits[row["key"]] = unpack_bits(row["bits"], row["images"])

    def accuracy(self, arch) -> float:
        """Top-1 of ``arch`` (a fraction) on the evaluator's images, with its inherited weights."""
        key = self._key(arch)
        if key not in self.cache:
            from hsconas_cli.supernet import build_subnet

            net = build_subnet(self.supernet, arch).to(memory_format=torch.channels_last)
            recalibrate_bn(net, self.calib)
            hits = correct(net, self.val)
            self.cache[key] = float(hits.mean()) if len(hits) else 0.0
            row = {"key": key, "acc": self.cache[key], "settings": self.settings}
            if self.per_image:
                self.bits[key] = hits
                row.update(images=len(hits), bits=pack_bits(hits))
            self.evaluated += 1
            self._append(row)
        return self.cache[key]

    def correct(self, arch) -> np.ndarray:
        """Which of the evaluator's images ``arch`` classifies right (bool, in a fixed order); needs ``per_image``."""
        if not self.per_image:
            raise ValueError("this Evaluator was made without per_image=True")
        self.accuracy(arch)
        return self.bits[self._key(arch)]

    def _append(self, row: dict) -> None:
        if self.cache_file:
            self.cache_file.parent.mkdir(parents=True, exist_ok=True)
            with self.cache_file.open("a") as f:
                f.write(("\n" if self._torn else "") + json.dumps(row) + "\n")
            self._torn = False


def pack_bits(hits: np.ndarray) -> str:
    """A bool vector as base64 of its packed bits (a 10,000-image record is 1,668 characters)."""
    return base64.b64encode(np.packbits(hits.astype(bool)).tobytes()).decode()


def unpack_bits(text: str, n: int) -> np.ndarray:
    return np.unpackbits(np.frombuffer(base64.b64decode(text), dtype=np.uint8))[:n].astype(bool)


def supernet_tag(path) -> str:
    """Identity of a supernet checkpoint for caches and resume: the SHA-256 of its content, so a checkpoint
    retrained in place is another supernet, and a copied or moved one is the same."""
    from hsconas_cli.fileio import file_sha256

    return f"sha256:{file_sha256(path)}"


def kendall_tau(a: Sequence[float], b: Sequence[float]) -> float:
    """Kendall's tau-b between two paired lists (ties counted as neither concordant nor discordant)."""
    if len(a) != len(b) or len(a) < 2:
        raise ValueError("kendall_tau needs two paired lists of at least two values")
    conc = disc = ties_a = ties_b = 0
    for i in range(len(a)):
        for j in range(i + 1, len(a)):
            da, db = a[i] - a[j], b[i] - b[j]
            if da == 0 and db == 0:
                continue
            if da == 0:
                ties_a += 1
            elif db == 0:
                ties_b += 1
            elif (da > 0) == (db > 0):
                conc += 1
            else:
                disc += 1
    denom = ((conc + disc + ties_a) * (conc + disc + ties_b)) ** 0.5
    return (conc - disc) / denom if denom else 0.0


def reference_archs(space) -> dict:
    """The largest path (xception, c = 1 everywhere) and the smallest (skip wherever allowed, else shuffle3 at
    the smallest factor): the two ends that a supernet's report quotes beside its random subnets."""
    from hsconas_cli.space import Arch

    cmin = min(space.factors)
    return {
        "largest": Arch(tuple(("xception", 1.0) for _ in space.layers)),
        "smallest": Arch(tuple(("skip", None) if "skip" in l.ops else ("shuffle3", cmin) for l in space.layers)),
    }


def subnet_quality(evaluator: "Evaluator", count: int = 20, seed: int = 1) -> dict:
    """Inherited top-1 of ``count`` seeded random subnets of the whole space (median, spread, each) and of the
    largest and smallest paths: how well a supernet's weights serve the networks it stands for."""
    import random
    import statistics

    space = evaluator.space
    rng = random.Random(seed)
    accs = [evaluator.accuracy(space.full().sample(rng)) for _ in range(count)]
    ends = {name: evaluator.accuracy(arch) for name, arch in reference_archs(space).items()}
    return {"subnets": count, "seed": seed, "median": statistics.median(accs), "mean": statistics.mean(accs),
            "min": min(accs), "max": max(accs), "all": accs, **ends, "settings": evaluator.settings}
