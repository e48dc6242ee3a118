"""What several benchmark scripts share: training a network from scratch once per (arch, seed, budget), reused."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hsconas_cli.fileio import read_json  # noqa: E402
from hsconas_cli.space import Arch, arch_key  # noqa: E402
from hsconas_cli.train import preset, retrain  # noqa: E402

# The short standalone budget of the ranking and search-value benchmarks: 1 epoch of 20,000 training images
# (batch 256, lr 0.2, cosine after a warm-up of a fifth of an epoch, weight decay 5e-4).
SHORT_BUDGET = {"epochs": 1, "limit": 20_000, "warmup_epochs": 0.2}


def train_standalone(space, arch: Arch, seed: int, work: Path, data, budget: dict | None = None) -> dict:
    """Train ``arch`` from scratch with ``budget`` (TrainConfig overrides of the retraining preset) and ``seed``;
    the result is kept in ``work`` under the arch's key, so a rerun (or another benchmark) reuses it."""
    budget = budget or SHORT_BUDGET
    key = hashlib.sha256(json.dumps([arch_key(space, arch), budget, space.fingerprint]).encode()).hexdigest()[:16]
    out = Path(work) / f"{key}-seed{seed}"
    done = out / "result.json"
    if done.exists():
        return read_json(done)
    if out.exists():  # a run cut short: start it over
        shutil.rmtree(out)
    cfg = preset("retrain", "fashion-mnist", seed=seed, workers=0, **budget)
    t0 = time.perf_counter()
    res = retrain("fashion-mnist", space, arch, out, cfg=cfg, data=data)
    print(f"    trained from scratch, seed {seed}: test top-1 {100 * res['test_top1']:.2f}% "
          f"({time.perf_counter() - t0:.0f} s)", flush=True)
    return read_json(done)
