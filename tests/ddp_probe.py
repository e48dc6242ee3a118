"""Runs ``python -m hsconas_cli`` unchanged, recording what each rank does; tests/test_ddp.py launches it under torchrun.

The trainer keeps no per-rank record (metrics.jsonl and the checkpoint are rank 0's), so this wrapper observes,
without changing anything, each rank's sampled paths, the sampler's state around every sample, the batch it
trained on, and its parameters when training starts and ends. One JSON line per event goes to
``$HSCONAS_DDP_PROBE/rank<RANK>.jsonl``.
"""

import hashlib
import json
import os
import runpy
from pathlib import Path

from hsconas_cli import space as space_mod
from hsconas_cli import train as train_mod

RANK = int(os.environ.get("RANK", "0"))
LOG = Path(os.environ["HSCONAS_DDP_PROBE"]) / f"rank{RANK}.jsonl"
_samples: list[dict] = []


def _emit(event: dict) -> None:
    with LOG.open("a") as f:
        f.write(json.dumps({"rank": RANK, **event}) + "\n")


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def tensor_digest(t) -> str:
    return _sha(t.detach().cpu().contiguous().numpy().tobytes())


def _params(model) -> dict[str, str]:
    return {name: tensor_digest(p) for name, p in model.named_parameters()}


_sample = space_mod.Subspace.sample


def sample(self, rng, skip_weight=1.0):
    before = _sha(repr(rng.getstate()).encode())
    arch = _sample(self, rng, skip_weight)
    _samples.append({"arch": arch.to_list(), "rng_before": before, "rng_after": _sha(repr(rng.getstate()).encode())})
    return arch


_step = train_mod.Trainer._step


def step(self, x, y, archs, lr):
    taken = list(_samples)
    _samples.clear()
    assert archs is not None and [a.to_list() for a in archs] == [s["arch"] for s in taken]
    _emit({"event": "step", "step": self.state.step, "epoch": self.state.epoch, "batch": self.state.batch,
           "lr": lr, "samples": taken, "x": tensor_digest(x), "y": tensor_digest(y)})
    return _step(self, x, y, archs, lr)


_fit = train_mod.Trainer.fit


def fit(self):
    _emit({"event": "start", "world": self.dist.world, "step": self.state.step, "params": _params(self.model)})
    result = _fit(self)
    _emit({"event": "end", "step": self.state.step, "params": _params(self.model)})
    return result


space_mod.Subspace.sample = sample
train_mod.Trainer._step = step
train_mod.Trainer.fit = fit

if __name__ == "__main__":
    runpy.run_module("hsconas_cli", run_name="__main__", alter_sys=True)
