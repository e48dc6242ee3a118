"""The search space of HSCoNAS (paper II-A, III-B; Table I).

A space is L = 20 choice layers in four stages of [4, 4, 8, 4] layers behind a 3x3 stem and in front of a
1x1 head. Every layer picks an operator and, for operators other than skip, a channel factor c that
scales the block's internal (mid) channels:

    mid = max(1, floor(c * S_l + 0.5)),   S_l = output channels / 2

An architecture is the 20 (op, c) pairs. A *subspace* restricts the ops and factors of some layers; the
full space is the subspace with no restriction. Layers are numbered 1..20 wherever a user sees them.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence, Tuple

from hsconas_cli.errors import HsconasError

OPS: tuple[str, ...] = ("shuffle3", "shuffle5", "shuffle7", "xception", "skip")
OP_DESCRIPTIONS = {
    "shuffle3": "ShuffleNetV2 block, depthwise 3x3",
    "shuffle5": "ShuffleNetV2 block, depthwise 5x5",
    "shuffle7": "ShuffleNetV2 block, depthwise 7x7",
    "xception": "ShuffleNetV2-Xception block (3 x depthwise 3x3 + pointwise)",
    "skip": "identity (stride-1 layers only)",
}
FACTORS: tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(1, 11))
DEPTHS: tuple[int, ...] = (4, 4, 8, 4)
STEM_CHANNELS = 16
HEAD_CHANNELS = 1024

LAYOUTS: dict[str, tuple[int, ...]] = {
    "A": (48, 128, 256, 512),  # the paper's HSCoNet-A
    "B": (68, 168, 336, 672),  # the paper's HSCoNet-B
    "S": (32, 64, 128, 256),  # small preset for quick CPU runs (not from the paper)
}


def mid_channels(c: float, out_channels: int) -> int:
    """Internal channels of a block scaled by c; S_l = out/2, rounded half up as the paper (5 x 0.5 -> 3)."""
    return max(1, math.floor(c * (out_channels // 2) + 0.5 + 1e-9))


@dataclass(frozen=True)
class Layer:
    """One choice layer: where it sits and the shapes its blocks see."""

    index: int  # 0-based; shown to users as index + 1
    stage: int
    in_channels: int
    out_channels: int
    stride: int
    in_size: int  # input height = width
    ops: tuple[str, ...]

    @property
    def out_size(self) -> int:
        return (self.in_size - 1) // self.stride + 1

    @property
    def max_mid(self) -> int:
        return self.out_channels // 2


@dataclass(frozen=True)
class SearchSpace:
    """A named search space: layout, input shape and classes fix every tensor shape of every arch."""

    name: str
    layout: tuple[int, ...]
    input_size: int
    in_channels: int
    num_classes: int
    depths: tuple[int, ...] = DEPTHS
    stem_channels: int = STEM_CHANNELS
    head_channels: int = HEAD_CHANNELS
    ops: tuple[str, ...] = OPS
    factors: tuple[float, ...] = FACTORS
    description: str = ""

    def __post_init__(self) -> None:
        if len(self.layout) != len(self.depths):
            raise HsconasError(f"space {self.name}: layout has {len(self.layout)} stages, depths {len(self.depths)}")
        if any(c % 2 for c in self.layout):
            raise HsconasError(f"space {self.name}: stage channels must be even (the block splits them in two)")
        if any(not (0 < f <= 1) for f in self.factors):
            raise HsconasError(f"space {self.name}: channel factors must lie in (0, 1]")

    # ---- geometry -------------------------------------------------------------------------------
    @property
    def stem_stride(self) -> int:
        return 2 if self.input_size >= 64 else 1

    @property
    def stem_out_size(self) -> int:
        return (self.input_size - 1) // self.stem_stride + 1

    @property
    def num_layers(self) -> int:
        return sum(self.depths)

    @cached_property
    def layers(self) -> tuple[Layer, ...]:
        out, inp, size, idx = [], self.stem_channels, self.stem_out_size, 0
        for stage, (depth, oup) in enumerate(zip(self.depths, self.layout)):
            for j in range(depth):
                stride = 2 if j == 0 else 1
                ops = tuple(o for o in self.ops if not (o == "skip" and stride != 1))
                layer = Layer(idx, stage, inp, oup, stride, size, ops)
                out.append(layer)
                inp, size, idx = oup, layer.out_size, idx + 1
        return tuple(out)

    @property
    def head_in_size(self) -> int:
        return self.layers[-1].out_size

    def mid(self, layer: int, c: float) -> int:
        return mid_channels(c, self.layout_of(layer))

    def layout_of(self, layer: int) -> int:
        return self.layers[layer].out_channels

    # ---- identity -------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "layout": list(self.layout),
            "depths": list(self.depths),
            "input_size": self.input_size,
            "in_channels": self.in_channels,
            "num_classes": self.num_classes,
            "stem_channels": self.stem_channels,
            "head_channels": self.head_channels,
            "ops": list(self.ops),
            "factors": list(self.factors),
            "description": self.description,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SearchSpace":
        from hsconas_cli.schema import check

        check("space definition", d, f"{d.get('name', '')!r}" if isinstance(d, dict) else "")
        try:
            return cls(
                name=str(d["name"]),
                layout=tuple(int(c) for c in d["layout"]),
                depths=tuple(int(c) for c in d.get("depths", DEPTHS)),
                input_size=int(d["input_size"]),
                in_channels=int(d["in_channels"]),
                num_classes=int(d["num_classes"]),
                stem_channels=int(d.get("stem_channels", STEM_CHANNELS)),
                head_channels=int(d.get("head_channels", HEAD_CHANNELS)),
                ops=tuple(d.get("ops", OPS)),
                factors=tuple(round(float(f), 4) for f in d.get("factors", FACTORS)),
                description=str(d.get("description", "")),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise HsconasError(f"space definition is incomplete or malformed: {e!r}") from None

    @property
    def fingerprint(self) -> str:
        """Hash of everything that fixes the tensors of the space (not its name or description)."""
        d = self.to_dict()
        del d["name"], d["description"]
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    # ---- counting -------------------------------------------------------------------------------
    def full(self) -> "Subspace":
        return Subspace(self, tuple(layer.ops for layer in self.layers), tuple(self.factors for _ in self.layers))

    def paper_count(self) -> int:
        """The paper's count: every layer K ops times n factors, K^L * n^L (5^20 x 10^20 ~ 9.5e33)."""
        return len(self.ops) ** self.num_layers * len(self.factors) ** self.num_layers


SPACES: dict[str, SearchSpace] = {
    s.name: s
    for s in (
        SearchSpace("imagenet-A", LAYOUTS["A"], 224, 3, 1000, description="the paper's layout A on ImageNet, 224x224x3"),
        SearchSpace("imagenet-B", LAYOUTS["B"], 224, 3, 1000, description="the paper's layout B on ImageNet, 224x224x3"),
        SearchSpace("fmnist-A", LAYOUTS["A"], 28, 1, 10, description="layout A on Fashion-MNIST, 28x28x1"),
        SearchSpace("fmnist-B", LAYOUTS["B"], 28, 1, 10, description="layout B on Fashion-MNIST, 28x28x1"),
        SearchSpace("fmnist-S", LAYOUTS["S"], 28, 1, 10, description="small layout for quick CPU runs, Fashion-MNIST"),
        SearchSpace("cifar10-A", LAYOUTS["A"], 32, 3, 10, description="layout A on CIFAR-10, 32x32x3"),
        SearchSpace("cifar10-B", LAYOUTS["B"], 32, 3, 10, description="layout B on CIFAR-10, 32x32x3"),
    )
}


def get_space(name: str | dict | SearchSpace) -> SearchSpace:
    """A preset by name, a space dict, or a JSON file holding one (top level or under "space")."""
    if isinstance(name, SearchSpace):
        return name
    if isinstance(name, dict):
        return SearchSpace.from_dict(name)
    if name in SPACES:
        return SPACES[name]
    path = Path(name)
    if path.suffix == ".json" or path.exists():
        from hsconas_cli.fileio import read_json

        doc = read_json(path, "space file")
        if not isinstance(doc, dict):
            raise HsconasError(f"space file {path} does not hold a JSON object")
        from hsconas_cli.schema import check

        body = doc.get("space", doc)
        check("space definition", body, str(path))
        return SearchSpace.from_dict(body)
    raise HsconasError(f"unknown space {name!r}; presets: {', '.join(SPACES)} (or a space JSON file)")


# ---- architectures ---------------------------------------------------------------------------------
Gene = Tuple[str, Optional[float]]


@dataclass(frozen=True)
class Arch:
    """An architecture: one (op, c) gene per layer; c is None for skip."""

    genes: tuple[Gene, ...]

    def __iter__(self):
        return iter(self.genes)

    def __len__(self) -> int:
        return len(self.genes)

    def to_list(self) -> list[list]:
        return [[op, c] for op, c in self.genes]

    @classmethod
    def from_list(cls, genes: Iterable[Sequence]) -> "Arch":
        out = []
        for g in genes:
            if isinstance(g, dict):
                g = (g.get("op"), g.get("c"))
            if not isinstance(g, (list, tuple)) or len(g) != 2:
                raise HsconasError(f"an arch gene must be [op, c], got {g!r}")
            op, c = g
            out.append((str(op), None if c is None else round(float(c), 4)))
        return cls(tuple(out))


def normalize_factor(space: SearchSpace, c: float) -> float:
    for f in space.factors:
        if abs(f - c) < 1e-6:
            return f
    raise HsconasError(f"channel factor {c} is not one of {list(space.factors)}")


def validate_arch(space: SearchSpace, arch: Arch) -> Arch:
    """Check an arch against a space and return it with canonical factors; one-line errors."""
    layers = space.layers
    if len(arch) != len(layers):
        raise HsconasError(f"arch has {len(arch)} layers, space {space.name} has {len(layers)}")
    genes = []
    for layer, (op, c) in zip(layers, arch):
        where = f"layer {layer.index + 1}"
        if op not in space.ops:
            raise HsconasError(f"{where}: unknown op {op!r}; ops: {', '.join(space.ops)}")
        if op not in layer.ops:
            raise HsconasError(f"{where}: {op} is not allowed in a stride-{layer.stride} layer")
        if op == "skip":
            genes.append((op, None))
            continue
        if c is None:
            raise HsconasError(f"{where}: {op} needs a channel factor c")
        try:
            genes.append((op, normalize_factor(space, c)))
        except HsconasError as e:
            raise HsconasError(f"{where}: {e}") from None
    return Arch(tuple(genes))


def arch_key(space: SearchSpace, arch: Arch) -> tuple:
    """What makes two archs the same network: the op and the real mid channels of every layer."""
    return tuple((op, None if op == "skip" else space.mid(i, c)) for i, (op, c) in enumerate(arch))


def space_ref(space: SearchSpace) -> dict[str, Any]:
    """How a file names its space: the preset's name, or the whole definition of a custom space."""
    ref = {"space": space.name, "space_fingerprint": space.fingerprint}
    if space.name not in SPACES or SPACES[space.name] != space:
        ref["space_definition"] = space.to_dict()
    return ref


def arch_to_json(space: SearchSpace, arch: Arch, **extra: Any) -> dict[str, Any]:
    return {"kind": "hsconas-arch", **space_ref(space), "arch": arch.to_list(), **extra}


def arch_from_json(doc: Any, space: SearchSpace | None = None) -> tuple[SearchSpace, Arch]:
    """Parse an arch document (also a search result holding one); check it belongs to ``space``."""
    if not isinstance(doc, dict) or "arch" not in doc:
        raise HsconasError("not an arch file: expected a JSON object with an 'arch' list")
    if "space_definition" in doc:
        own = get_space(doc["space_definition"])
    elif "space" in doc:
        own = get_space(doc["space"]) if isinstance(doc["space"], (str, dict)) else None
    else:
        own = None
    if own is None:
        raise HsconasError("arch file does not name its space")
    fp = doc.get("space_fingerprint")
    if fp is not None and fp != own.fingerprint:
        raise HsconasError(f"arch file's space fingerprint {fp} does not match space {own.name} ({own.fingerprint})")
    if space is not None and own.fingerprint != space.fingerprint:
        raise HsconasError(f"arch belongs to space {own.name}, not {space.name}")
    arch = Arch.from_list(doc["arch"]) if isinstance(doc["arch"], list) else None
    if arch is None:
        raise HsconasError("arch file's 'arch' must be a list of [op, c] pairs")
    return own, validate_arch(own, arch)


def load_arch(path: str | Path, space: SearchSpace | None = None) -> tuple[SearchSpace, Arch]:
    from hsconas_cli.fileio import read_json

    return arch_from_json(read_json(path, "arch file"), space)


# ---- subspaces and sampling ------------------------------------------------------------------------
@dataclass(frozen=True)
class Subspace:
    """Per layer, the ops and channel factors still allowed."""

    space: SearchSpace
    ops: tuple[tuple[str, ...], ...]
    factors: tuple[tuple[float, ...], ...]

    def __post_init__(self) -> None:
        layers = self.space.layers
        if len(self.ops) != len(layers) or len(self.factors) != len(layers):
            raise HsconasError(f"subspace must list ops and factors for all {len(layers)} layers")
        for layer, ops, facs in zip(layers, self.ops, self.factors):
            bad = [o for o in ops if o not in layer.ops]
            if not ops or bad:
                raise HsconasError(f"layer {layer.index + 1}: ops {list(ops)} not a non-empty subset of {list(layer.ops)}")
            if any(o != "skip" for o in ops) and not facs:
                raise HsconasError(f"layer {layer.index + 1}: no channel factor left")
            for f in facs:
                normalize_factor(self.space, f)

    def fix_op(self, layer: int, op: str) -> "Subspace":
        ops = list(self.ops)
        ops[layer] = (op,)
        return Subspace(self.space, tuple(ops), self.factors)

    def restrict_factors(self, layer: int, factors: Sequence[float]) -> "Subspace":
        facs = list(self.factors)
        facs[layer] = tuple(normalize_factor(self.space, f) for f in factors)
        return Subspace(self.space, self.ops, tuple(facs))

    def sample(self, rng: random.Random, skip_weight: float = 1.0) -> Arch:
        """Uniform over ops of each layer, then uniform over its factors (as single-path training samples).

        ``skip_weight`` < 1 makes skip that much less likely than each other op (supernet training ramps it up).
        """
        genes = []
        for ops, facs in zip(self.ops, self.factors):
            if skip_weight < 1.0 and "skip" in ops and len(ops) > 1:
                op = rng.choices(ops, [skip_weight if o == "skip" else 1.0 for o in ops])[0]
            else:
                op = rng.choice(ops)
            genes.append((op, None if op == "skip" else rng.choice(facs)))
        return Arch(tuple(genes))

    def contains(self, arch: Arch) -> bool:
        return all(
            op in ops and (op == "skip" or c in facs) for (op, c), ops, facs in zip(arch, self.ops, self.factors)
        )

    def layer_choices(self, layer: int) -> int:
        """Distinct blocks one layer can hold: factors that round to the same mid count once."""
        mids = {self.space.mid(layer, c) for c in self.factors[layer]}
        return sum(len(mids) if op != "skip" else 1 for op in self.ops[layer])

    def count(self) -> int:
        """Distinct networks in the subspace (skip carries no factor; equal mids are one network)."""
        return math.prod(self.layer_choices(i) for i in range(len(self.ops)))

    def gene_count(self) -> int:
        """Distinct gene strings, before merging factors that give equal networks."""
        return math.prod(
            sum(1 if op == "skip" else len(facs) for op in ops) for ops, facs in zip(self.ops, self.factors)
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            **space_ref(self.space),
            "ops": [list(o) for o in self.ops],
            "factors": [list(f) for f in self.factors],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Subspace":
        space = get_space(d.get("space_definition") or d["space"])
        if d.get("space_fingerprint", space.fingerprint) != space.fingerprint:
            raise HsconasError(f"subspace was made for another version of space {space.name}")
        try:
            return cls(space, tuple(tuple(o) for o in d["ops"]), tuple(tuple(float(x) for x in f) for f in d["factors"]))
        except (KeyError, TypeError) as e:
            raise HsconasError(f"subspace definition is malformed: {e!r}") from None


def format_count(n: int) -> str:
    """9.5e33-style rendering of a large integer."""
    if n < 1_000_000:
        return f"{n:,}"
    e = len(str(n)) - 1
    return f"{n / 10**e:.1f} x 10^{e}"


DEFAULT_SPACE_FOR_DATA = {"fashion-mnist": "fmnist-A", "cifar10": "cifar10-A", "imagenet": "imagenet-A", "imagefolder": "imagenet-A"}


def load_subspace(path: str | Path) -> Subspace:
    """A subspace from a shrunk-space file (``hsconas shrink`` writes one) or a plain subspace JSON."""
    from hsconas_cli.fileio import read_json

    doc = read_json(path, "space file")
    if not isinstance(doc, dict):
        raise HsconasError(f"{path} does not hold a JSON object")
    body = doc.get("subspace", doc)
    if not isinstance(body, dict) or "ops" not in body:
        raise HsconasError(f"{path} is not a shrunk-space or subspace file")
    return Subspace.from_dict(body)
