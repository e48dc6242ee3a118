"""Checkpoints are read without pickle: a crafted file cannot run code through any command that takes one, a
checkpoint that does not fit its space is refused in one line, and a trusted old one can be converted."""

import json
import random

import numpy as np
import pytest
import torch

from conftest import TINY28, assert_one_line_error, run_cli, run_cli_all
from hsconas_cli.errors import HsconasError
from hsconas_cli.fileio import write_json
from hsconas_cli.space import arch_to_json
from hsconas_cli.checkpoint import load_checkpoint


class _OpensAFile:
    """What an attacker would put in a checkpoint: unpickling it calls open(marker, "w")."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def evil(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"kind": "supernet", "model": {}, "space": TINY28.to_dict(), "config": {}, "payload": _OpensAFile(marker)}, path)
    assert not marker.exists()
    return path, marker


@pytest.fixture
def arch_file(tmp_path):
    path = tmp_path / "arch.json"
    write_json(path, {**arch_to_json(TINY28, TINY28.full().sample(random.Random(3))), "data": {"name": "fashion-mnist"}})
    return path


def test_a_crafted_checkpoint_runs_no_code_through_any_command(evil, arch_file, tmp_path):
    path, marker = evil
    resume = tmp_path / "resume"
    resume.mkdir()
    (resume / "checkpoint.pt").write_bytes(path.read_bytes())
    space = tmp_path / "tiny.json"
    space.write_text(json.dumps(TINY28.to_dict()))
    commands = [
        ("export", "--format", "onnx", "--arch", arch_file, "--supernet", path, "--out", tmp_path / "e1"),
        ("export", "--format", "onnx", "--arch", arch_file, "--checkpoint", path, "--out", tmp_path / "e2"),
        ("search", "--latency", "50%", "--supernet", path, "--out", tmp_path / "s"),
        ("shrink", "--latency", "50%", "--supernet", path, "--out", tmp_path / "k"),
        ("retrain", "--arch", arch_file, "--inherit", path, "--epochs", "1", "--limit", "64", "--out", tmp_path / "r"),
        ("train", "--space", space, "--init", path, "--epochs", "1", "--limit", "64", "--out", tmp_path / "t"),
        ("train", "--space", space, "--epochs", "1", "--limit", "64", "--out", resume, "--resume"),
        ("checkpoint", "upgrade", path),
    ]
    for args, p in zip(commands, run_cli_all(*commands)):
        needle = "--trust" if args[0] != "checkpoint" else "pass --trust only"
        assert_one_line_error(p, needle)
        assert not marker.exists(), f"hsconas {' '.join(map(str, args))} ran the checkpoint's code"
    assert "hsconas checkpoint upgrade" in run_cli(*commands[0]).stderr


def test_checkpoints_hsconas_writes_load_without_pickle(tiny_supernet):
    ckpt = torch.load(tiny_supernet, map_location="cpu", weights_only=True)
    assert ckpt["kind"] == "supernet" and isinstance(ckpt["state"]["sampler"], list)
    assert load_checkpoint(tiny_supernet)["space"] == TINY28.to_dict()


@pytest.mark.parametrize("damage, needle", [
    (lambda m: m.pop(next(iter(m))), "it has no 'stem"),
    (lambda m: m.update({k: torch.zeros(3) for k in [next(iter(m))]}), "is (3,), expected"),
    (lambda m: m.update({"layers.99.extra": torch.zeros(1)}), "it has 'layers.99.extra', which the network has not"),
])
def test_a_checkpoint_that_does_not_fit_is_refused_in_one_line(damage, needle, tiny_supernet, arch_file, tmp_path):
    ckpt = torch.load(tiny_supernet, map_location="cpu", weights_only=True)
    damage(ckpt["model"])
    bad = tmp_path / "bad.pt"
    torch.save(ckpt, bad)
    p = run_cli("export", "--format", "onnx", "--arch", arch_file, "--supernet", bad, "--out", tmp_path / "x")
    assert_one_line_error(p, "does not fit this network", needle)
    assert not (tmp_path / "x").exists()


def test_upgrade_converts_a_trusted_checkpoint_and_only_with_trust(tiny_supernet, arch_file, tmp_path):
    """A checkpoint only pickle can read (here: a numpy number in its history, as an older writer left) is
    refused, then converted by an explicit upgrade, after which every command reads it."""
    ckpt = torch.load(tiny_supernet, map_location="cpu", weights_only=True)
    ckpt["state"]["history"].append({"loss": np.float64(0.5)})
    old = tmp_path / "old.pt"
    torch.save(ckpt, old)
    with pytest.raises(HsconasError, match=r"hsconas does not unpickle .* hsconas checkpoint upgrade .* --trust"):
        load_checkpoint(old)
    assert_one_line_error(run_cli("checkpoint", "upgrade", old), "pass --trust only")
    p = run_cli("checkpoint", "upgrade", old, "--trust", "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["backup"].endswith("old.pt.pickle.bak")
    again = torch.load(old, map_location="cpu", weights_only=True)
    assert again["state"]["history"][-1]["loss"] == 0.5
    p = run_cli("export", "--format", "onnx", "--arch", arch_file, "--supernet", old, "--out", tmp_path / "ok")
    assert p.returncode == 0, p.stderr
