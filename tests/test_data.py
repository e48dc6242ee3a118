import numpy as np
import pytest
import torch
from PIL import Image

from hsconas_cli.data import check_data_fits, load_data, parse_data, split_indices
from hsconas_cli.errors import HsconasError
from hsconas_cli.space import SPACES


def test_split_is_deterministic_disjoint_and_recorded():
    s1, r1 = split_indices(60000)
    s2, r2 = split_indices(60000)
    assert r1 == r2 and all(np.array_equal(s1[k], s2[k]) for k in s1)
    assert r1["sizes"] == {"val": 5000, "calib": 2000, "select": 10000, "train": 43000}
    union = np.concatenate(list(s1.values()))
    assert len(np.unique(union)) == 60000
    _, r3 = split_indices(60000, seed=1)
    assert r3["sha256"] != r1["sha256"]


def test_fashion_mnist_from_debian_files(fmnist):
    assert fmnist.name == "fashion-mnist" and fmnist.images.shape == (60000, 1, 28, 28)
    assert fmnist.test_images.shape == (10000, 1, 28, 28)
    assert fmnist.split["sizes"]["val"] == 5000
    check_data_fits(SPACES["fmnist-A"], fmnist)
    with pytest.raises(HsconasError, match="expects 224x224x3"):
        check_data_fits(SPACES["imagenet-A"], fmnist)


def test_loaders_fixed_and_seeded(fmnist):
    val = list(fmnist.loader("val", 500, limit=1000))
    assert [x.shape for x, _ in val] == [(500, 1, 28, 28)] * 2
    again = list(fmnist.loader("val", 500, limit=1000))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(val, again))
    x = torch.cat([b[0] for b in val])
    assert abs(x.mean().item()) < 0.2 and 0.8 < x.std().item() < 1.2  # normalized
    t1 = next(iter(fmnist.loader("train", 64, train=True, seed=5)))
    t2 = next(iter(fmnist.loader("train", 64, train=True, seed=5)))
    t3 = next(iter(fmnist.loader("train", 64, train=True, seed=6)))
    assert torch.equal(t1[0], t2[0]) and not torch.equal(t1[1], t3[1])
    # ranks of a distributed run see disjoint, equal shares
    r0 = fmnist.loader("train", 100, train=True, seed=1, rank=0, world=2)
    r1 = fmnist.loader("train", 100, train=True, seed=1, rank=1, world=2)
    assert r0.num_images == r1.num_images and not set(r0.idx) & set(r1.idx)


def test_fashion_mnist_user_folder_and_missing(tmp_path, monkeypatch):
    with pytest.raises(HsconasError, match="no Fashion-MNIST IDX files"):
        load_data(f"fashion-mnist:{tmp_path}", download=False)


def test_unknown_and_incomplete_specs():
    with pytest.raises(HsconasError, match="unknown dataset"):
        parse_data("mnist3")
    with pytest.raises(HsconasError, match="needs a folder"):
        parse_data("imagenet")
    with pytest.raises(HsconasError, match="not found"):
        load_data("imagenet:/nonexistent/folder")
    with pytest.raises(HsconasError, match="CIFAR-10 not found"):
        load_data("cifar10:/nonexistent/folder", download=False)


def test_image_folder(tmp_path):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in ("cat", "dog", "eel"):
            d = tmp_path / split / cls
            d.mkdir(parents=True)
            for i in range(12 if split == "train" else 2):
                Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(d / f"{i}.png")
    data = load_data(f"imagefolder:{tmp_path}")
    assert data.num_classes == 3 and data.input_size == 224 and data.split["total"] == 36
    # 36 training images split as val round(36/12) = 3, calib round(36/30) = 1, select round(36/6) = 6, train 26:
    # one val batch of 3
    assert data.split["sizes"] == {"val": 3, "calib": 1, "select": 6, "train": 26}
    val = list(data.loader("val", 4))
    assert len(val) == 1
    x, y = val[0]
    assert x.shape == (3, 3, 224, 224) and y.tolist() == [data._folder("train").targets[i] for i in data.subsets["val"]]
    xt, _ = next(iter(data.loader("train", 8, train=True)))
    assert xt.shape[1:] == (3, 224, 224)
    xs, ys = next(iter(data.loader("test", 6)))
    assert xs.shape == (6, 3, 224, 224) and set(ys.tolist()) <= {0, 1, 2}


def test_retraining_on_a_folder_without_val_is_refused_before_it_trains(tmp_path):
    """Issue 24 item 6: retraining scores the network on PATH/val; without it, it is refused up front."""
    from hsconas_cli.errors import HsconasError
    from hsconas_cli.space import get_space
    from hsconas_cli.train import retrain

    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        d = tmp_path / "data" / "train" / cls
        d.mkdir(parents=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(d / f"{i}.png")
    sp = get_space("imagenet-A")
    data = load_data(f"imagefolder:{tmp_path / 'data'}")
    data.num_classes = sp.num_classes  # the space's 1000 classes; the check under test is the folder's, not the classes'
    arch = sp.full().sample(__import__("random").Random(0))
    with pytest.raises(HsconasError, match="has no val/ beside train/"):
        retrain(f"imagefolder:{tmp_path / 'data'}", sp, arch, tmp_path / "out", data=data)
    assert not (tmp_path / "out").exists()
    (tmp_path / "cut").mkdir()
    (tmp_path / "cut" / "checkpoint.pt").write_bytes(b"")  # where a cut-off retraining left its checkpoint
    with pytest.raises(HsconasError, match="has no val/ beside train/"):  # refused before the checkpoint is read
        retrain(f"imagefolder:{tmp_path / 'data'}", sp, arch, tmp_path / "cut", data=data, resume=True)
