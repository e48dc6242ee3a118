"""What several benchmark scripts share: where raw results go (never over an earlier one), and training a network
from scratch once per (arch, seed, budget), reused."""

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

def result_path(out: str | Path, stem: str) -> Path:
    """Where a bench script writes a raw result: ``out`` itself where it names a .json file that does not exist
    yet, else ``out/STEM-YYYYmmdd-HHMMSS.json`` (STEM names the settings). Never a file that exists: a result
    docs/BENCHMARKS.md quotes stays as it was."""
    out, stamp = Path(out), time.strftime("%Y%m%d-%H%M%S")
    if out.suffix == ".json":
        path = out if not out.exists() else out.with_name(f"{out.stem}-{stamp}.json")
    else:
        path = out / f"{stem}-{stamp}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def latest_result(stem: str) -> Path:
    """The newest raw result of ``stem`` in bench/results (a dated one, else the undated one of earlier runs)."""
    results = ROOT / "bench" / "results"
    dated = sorted(results.glob(f"{stem}-2*.json"))
    return dated[-1] if dated else results / f"{stem}.json"


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


def fine_tune_inherited(space, arch: Arch, seed: int, supernet: str | Path, recipe: dict, work: Path, data,
                        cached_only: bool = False) -> dict | None:
    """Fine-tune ``arch`` from ``supernet``'s weights with ``recipe`` (a TrainConfig as a dict, e.g. a run's
    fine-tune config) and ``seed``, as `hsconas run` fine-tunes its winner; kept in ``work`` under the arch,
    recipe and supernet, so a rerun reuses it, and an interrupted one resumes from its checkpoint. ``cached_only``:
    None where it has not finished, rather than training."""
    from hsconas_cli.train import TrainConfig

    cfg = TrainConfig(**{**recipe, "seed": seed})
    key = hashlib.sha256(json.dumps([arch_key(space, arch), {**recipe, "seed": None}, str(supernet), space.fingerprint],
                                    sort_keys=True).encode()).hexdigest()[:16]
    out = Path(work) / f"{key}-seed{seed}"
    if (out / "result.json").exists():
        return read_json(out / "result.json")
    if cached_only:
        return None
    t0 = time.perf_counter()
    res = retrain("fashion-mnist", space, arch, out, cfg=cfg, inherit=supernet, resume=(out / "checkpoint.pt").exists(), data=data)
    print(f"    fine-tuned, seed {seed}: test top-1 {100 * res['test_top1']:.2f}% ({time.perf_counter() - t0:.0f} s)", flush=True)
    return read_json(out / "result.json")
