"""Datasets and the deterministic train / BN-calibration / validation / selection split.

``--data`` takes ``fashion-mnist`` (the default), ``fashion-mnist:FOLDER``, ``cifar10``, ``cifar10:FOLDER``,
``imagenet:PATH`` or ``imagefolder:PATH``. Fashion-MNIST is looked for in the given folder, then
``$HSCONAS_DATA``, then Debian's ``/usr/share/datasets/fashion-mnist``, then torchvision's download.

Small datasets (Fashion-MNIST, CIFAR-10) are held in memory as uint8 tensors and batched without worker
processes; image folders go through torchvision's ImageFolder and a DataLoader.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from hsconas_cli.errors import HsconasError

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
SPLIT_SEED = 0


def cache_dir() -> Path:
    return Path(os.environ.get("HSCONAS_CACHE", Path.home() / ".cache" / "hsconas"))


@dataclass
class DataBundle:
    """A dataset with its split. ``subsets`` maps train / calib / val / select to indices of the training set."""

    name: str
    num_classes: int
    in_channels: int
    input_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    subsets: dict[str, np.ndarray]
    split: dict
    # in-memory datasets
    images: torch.Tensor | None = None  # uint8, N x C x H x W (training set)
    labels: torch.Tensor | None = None
    test_images: torch.Tensor | None = None
    test_labels: torch.Tensor | None = None
    # folder datasets
    folder: Path | None = None
    test_folder: Path | None = None
    _folder_cache: dict = field(default_factory=dict, repr=False)

    @property
    def in_memory(self) -> bool:
        return self.images is not None

    def describe(self) -> dict:
        return {
            "name": self.name,
            "num_classes": self.num_classes,
            "input": [self.in_channels, self.input_size, self.input_size],
            "normalization": {"mean": list(self.mean), "std": list(self.std)},
            "split": self.split,
        }

    def loader(
        self,
        subset: str,
        batch_size: int,
        *,
        train: bool = False,
        seed: int = 0,
        limit: int | None = None,
        rank: int = 0,
        world: int = 1,
        workers: int = 0,
    ) -> "Batches":
        """Batches of one subset (train / calib / val / select, several joined by "+" as in train+select, or test =
        the official test set).

        ``train`` shuffles with ``seed`` and augments; otherwise order is fixed. ``limit`` keeps the first
        ``limit`` images of the subset (after the seeded shuffle where ``train``). Under DDP each of
        ``world`` ranks takes every world-th batch-sized slice.
        """
        if subset == "test":
            n = len(self.test_labels) if self.in_memory else len(self._folder("test"))
            idx = np.arange(n)
        else:
            idx = np.sort(np.concatenate([self.subsets[s] for s in subset.split("+")]))
        if train:
            idx = idx[np.random.default_rng(seed).permutation(len(idx))]
        if limit is not None:
            idx = idx[:limit]
        if world > 1:
            per = len(idx) // world  # equal shares keep ranks in step
            idx = idx[rank * per : (rank + 1) * per]
        return Batches(self, subset, idx, batch_size, train, seed, workers)

    def _folder(self, which: str):
        if which not in self._folder_cache:
            from torchvision import datasets

            root = self.test_folder if which == "test" else self.folder
            self._folder_cache[which] = datasets.ImageFolder(root)
        return self._folder_cache[which]


class Batches:
    """An iterable of (images, labels) float batches for one pass over a subset."""

    def __init__(self, data: DataBundle, subset: str, idx: np.ndarray, batch_size: int, train: bool, seed: int, workers: int):
        self.data, self.subset, self.idx, self.batch_size = data, subset, idx, batch_size
        self.train, self.seed, self.workers = train, seed, workers

    def __len__(self) -> int:
        return (len(self.idx) + self.batch_size - 1) // self.batch_size

    @property
    def num_images(self) -> int:
        return len(self.idx)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.iter_from(0)

    def iter_from(self, start: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches from batch index ``start`` on; each batch's augmentation is seeded by (seed, index), so a
        resumed epoch sees exactly the batches an uninterrupted one would."""
        d = self.data
        if not d.in_memory:
            yield from self._folder_batches(start)
            return
        images = d.test_images if self.subset == "test" else d.images
        labels = d.test_labels if self.subset == "test" else d.labels
        mean = torch.tensor(d.mean).view(1, -1, 1, 1) * 255
        std = torch.tensor(d.std).view(1, -1, 1, 1) * 255
        for b in range(start, len(self)):
            ix = torch.from_numpy(self.idx[b * self.batch_size : (b + 1) * self.batch_size])
            x = images[ix]
            if self.train:
                x = _augment(x, torch.Generator().manual_seed(self.seed * 1_000_003 + b))
            yield (x.float() - mean) / std, labels[ix]

    def _folder_batches(self, start: int = 0):
        from torch.utils.data import DataLoader, Subset
        from torchvision import transforms

        d = self.data
        norm = transforms.Normalize(d.mean, d.std)
        if self.train:
            tf = transforms.Compose(
                [transforms.RandomResizedCrop(d.input_size), transforms.RandomHorizontalFlip(), transforms.ToTensor(), norm]
            )
        else:
            resize = int(round(d.input_size / 0.875))
            tf = transforms.Compose([transforms.Resize(resize), transforms.CenterCrop(d.input_size), transforms.ToTensor(), norm])
        base = d._folder("test" if self.subset == "test" else "train")
        ds = Subset(_Transformed(base, tf), self.idx[start * self.batch_size :].tolist())
        yield from DataLoader(ds, batch_size=self.batch_size, shuffle=False, num_workers=self.workers, pin_memory=False)


class _Transformed(torch.utils.data.Dataset):
    def __init__(self, base, tf):
        self.base, self.tf = base, tf

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        path, label = self.base.samples[i]
        return self.tf(self.base.loader(path)), label


def _augment(x: torch.Tensor, gen: torch.Generator, pad: int = 2) -> torch.Tensor:
    """Random translation by up to ``pad`` pixels (zero fill) and horizontal flip, batched."""
    n, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    offsets = torch.randint(0, 2 * pad + 1, (n, 2), generator=gen)
    out = torch.empty_like(x)
    for dy in range(2 * pad + 1):
        for dx in range(2 * pad + 1):
            sel = ((offsets[:, 0] == dy) & (offsets[:, 1] == dx)).nonzero().flatten()
            if len(sel):
                out[sel] = padded[sel, :, dy : dy + h, dx : dx + w]
    flip = (torch.rand(n, generator=gen) < 0.5).nonzero().flatten()
    out[flip] = out[flip].flip(-1)
    return out


# ---- the split -------------------------------------------------------------------------------------
def split_indices(n: int, seed: int = SPLIT_SEED) -> tuple[dict[str, np.ndarray], dict]:
    """Deterministic disjoint train / calib / val / select subsets of a training set of ``n`` images.

    val = min(50000, n/12) (the search's screen draws from it), calib = min(10000, n/30) (BN recalibration),
    select = min(10000, n/6) (the held-out selection split that re-scores the search's best candidates,
    ``hsconas_cli/selection.py``), the rest trains. NumPy's PCG64 permutation is stable across NumPy versions, so
    the split is the same on every machine. ``sha256`` hashes the permutation and the sizes (which depend only on
    ``n``); the loaders add ``data_sha256``, the identity of the images themselves.
    """
    n_val, n_cal, n_sel = min(50_000, round(n / 12)), min(10_000, round(n / 30)), min(10_000, round(n / 6))
    perm = np.random.default_rng(seed).permutation(n)
    cuts = np.cumsum([n_val, n_cal, n_sel])
    subsets = {
        "val": np.sort(perm[: cuts[0]]),
        "calib": np.sort(perm[cuts[0] : cuts[1]]),
        "select": np.sort(perm[cuts[1] : cuts[2]]),
        "train": np.sort(perm[cuts[2] :]),
    }
    sizes = {k: int(len(v)) for k, v in subsets.items()}
    digest = hashlib.sha256(perm.astype(np.int64).tobytes() + json.dumps(sizes, sort_keys=True).encode())
    record = {"seed": seed, "total": n, "sizes": sizes, "sha256": digest.hexdigest()[:16]}
    return subsets, record


def tensors_sha256(*tensors: torch.Tensor) -> str:
    """The identity of in-memory images and labels: SHA-256 of their shapes, types and bytes (16 hex digits)."""
    h = hashlib.sha256()
    for t in tensors:
        t = t.contiguous()
        h.update(f"{tuple(t.shape)}{t.dtype};".encode())
        h.update(memoryview(t.numpy()).cast("B"))
    return h.hexdigest()[:16]


def listing_sha256(root: Path, samples: list[tuple[str, int]]) -> str:
    """The identity of an image folder without reading every image: each file's path under ``root``, class index
    and size in bytes. A file replaced by another of the same size passes unseen; a re-encoded or added one does not."""
    h = hashlib.sha256()
    for path, label in samples:
        h.update(f"{Path(path).relative_to(root)}\t{label}\t{Path(path).stat().st_size}\n".encode())
    return h.hexdigest()[:16]


# ---- the datasets ----------------------------------------------------------------------------------
def parse_data(spec: str) -> tuple[str, Path | None]:
    kind, _, path = spec.partition(":")
    kind = kind.strip().lower().replace("_", "-")
    kind = {"fmnist": "fashion-mnist", "fashionmnist": "fashion-mnist", "cifar-10": "cifar10"}.get(kind, kind)
    if kind not in ("fashion-mnist", "cifar10", "imagenet", "imagefolder"):
        raise HsconasError(f"unknown dataset {spec!r}; use fashion-mnist, cifar10, imagenet:PATH or imagefolder:PATH")
    if kind in ("imagenet", "imagefolder") and not path:
        raise HsconasError(f"{kind} needs a folder: --data {kind}:PATH")
    return kind, Path(path).expanduser() if path else None


def load_data(spec: str = "fashion-mnist", *, download: bool = True) -> DataBundle:
    kind, path = parse_data(spec)
    if kind == "fashion-mnist":
        return _fashion_mnist(path, download)
    if kind == "cifar10":
        return _cifar10(path, download)
    return _image_folder(kind, path)


def _find_fashion_files(folder: Path) -> dict[str, Path] | None:
    found = {}
    for name in FASHION_FILES:
        for cand in (folder / name, folder / f"{name}.gz", folder / "FashionMNIST" / "raw" / name):
            if cand.exists():
                found[name] = cand
                break
        else:
            return None
    return found


def _files_key(files: dict[str, Path]) -> str:
    """A folder name for one set of source files (their paths, sizes and modification times): files given in
    another folder, or replaced in place, are laid out anew rather than read from an older copy."""
    stats = [(name, str(src.resolve()), src.stat().st_size, src.stat().st_mtime_ns) for name, src in sorted(files.items())]
    return hashlib.sha256(repr(stats).encode()).hexdigest()[:12]


def _fashion_mnist(path: Path | None, download: bool) -> DataBundle:
    from torchvision import datasets

    candidates = [path] if path else [Path(p) for p in [os.environ.get("HSCONAS_DATA")] if p] + [DEBIAN_FASHION_MNIST]
    root = cache_dir() / "data"
    files = None
    for folder in candidates:
        files = _find_fashion_files(folder)
        if files or path:
            break
    if path and not files:
        raise HsconasError(f"no Fashion-MNIST IDX files (train-images-idx3-ubyte[.gz], ...) in {path}")
    if files:  # lay the files out as torchvision's FashionMNIST expects (raw/, uncompressed), once per source
        root = root / "fashion-mnist" / _files_key(files)
        raw = root / "FashionMNIST" / "raw"
        raw.mkdir(parents=True, exist_ok=True)
        for name, src in files.items():
            dst = raw / name
            if not dst.exists() or dst.stat().st_size == 0:
                from exporters.files import atomic_path

                with atomic_path(dst) as tmp, (gzip.open(src) if src.suffix == ".gz" else open(src, "rb")) as fi, \
                        open(tmp, "wb") as fo:
                    shutil.copyfileobj(fi, fo)
    try:
        train = datasets.FashionMNIST(root, train=True, download=download and not files)
        test = datasets.FashionMNIST(root, train=False, download=download and not files)
    except (RuntimeError, OSError) as e:
        raise HsconasError(
            "Fashion-MNIST not found: install Debian's package (sudo apt-get install dataset-fashion-mnist), "
            f"set HSCONAS_DATA to a folder of its IDX files, or allow the download ({str(e).splitlines()[0]})"
        ) from None
    subsets, record = split_indices(len(train.targets))
    record["data_sha256"] = tensors_sha256(train.data, train.targets)
    return DataBundle(
        "fashion-mnist", 10, 1, 28, (0.2860,), (0.3530,), subsets, record,
        images=train.data.unsqueeze(1).contiguous(), labels=train.targets.long(),
        test_images=test.data.unsqueeze(1).contiguous(), test_labels=test.targets.long(),
    )


def _cifar10(path: Path | None, download: bool) -> DataBundle:
    from torchvision import datasets

    root = path or Path(os.environ.get("HSCONAS_DATA") or cache_dir() / "data")
    try:
        train = datasets.CIFAR10(root, train=True, download=download)
        test = datasets.CIFAR10(root, train=False, download=download)
    except (RuntimeError, OSError) as e:
        raise HsconasError(
            f"CIFAR-10 not found in {root} and could not be downloaded ({str(e).splitlines()[0]}); "
            "put cifar-10-batches-py there or pass --data cifar10:FOLDER"
        ) from None

    def to_tensor(ds):
        return torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous(), torch.tensor(ds.targets, dtype=torch.long)

    images, labels = to_tensor(train)
    t_images, t_labels = to_tensor(test)
    subsets, record = split_indices(len(labels))
    record["data_sha256"] = tensors_sha256(images, labels)
    return DataBundle(
        "cifar10", 10, 3, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), subsets, record,
        images=images, labels=labels, test_images=t_images, test_labels=t_labels,
    )


def _image_folder(kind: str, path: Path) -> DataBundle:
    """ImageNet layout: PATH/train/<class>/*.jpg and PATH/val/<class>/*.jpg (or PATH/<class>/ alone)."""
    from torchvision import datasets

    if not path.is_dir():
        raise HsconasError(f"{kind} folder not found: {path}")
    train_dir = path / "train" if (path / "train").is_dir() else path
    test_dir = path / "val" if (path / "val").is_dir() else None
    try:
        train = datasets.ImageFolder(train_dir)
    except (FileNotFoundError, RuntimeError) as e:
        raise HsconasError(f"{train_dir} is not an image folder (one sub-folder of images per class): {e}") from None
    subsets, record = split_indices(len(train.samples))
    record["data_sha256"] = listing_sha256(train_dir, train.samples)
    bundle = DataBundle(
        kind, len(train.classes), 3, 224, IMAGENET_MEAN, IMAGENET_STD, subsets, record,
        folder=train_dir, test_folder=test_dir,
    )
    bundle._folder_cache["train"] = train
    return bundle


def check_data_fits(space, data: DataBundle) -> None:
    """Refuse a space whose input shape or class count the data does not have."""
    want = (space.in_channels, space.input_size, space.num_classes)
    have = (data.in_channels, data.input_size, data.num_classes)
    if want != have:
        raise HsconasError(
            f"space {space.name} expects {want[1]}x{want[1]}x{want[0]} inputs and {want[2]} classes; "
            f"{data.name} has {have[1]}x{have[1]}x{have[0]} and {have[2]}"
        )
