"""The procedure of tests/test_ranking.py, shared with bench/ranking_test_bounds.py, which runs it over many
seeds to measure the distribution its bounds come from.

One run trains a supernet of fmnist-A for ``steps`` steps of 64 Fashion-MNIST images with a recipe, then scores
the reference archs (tests/data/ranking_reference.json: 16 archs spread over the CPU profile's latency range and a
width ladder of xception at c = 0.1 .. 1.0) with inherited weights after exact BN recalibration on 500
calibration images, top-1 on 1,000 validation images (until issue 34: 400 steps, 1,000 and 2,000 images).

Torch runs on a fixed number of threads (``THREADS``) for the whole run, whatever the process set before (a
backend that timed on one thread, a conftest): the result is then the same alone and inside the suite.
"""

from __future__ import annotations

import contextlib
import json
import statistics
from pathlib import Path

import torch

from hsconas_cli.evaluate import Evaluator, kendall_tau
from hsconas_cli.space import Arch, get_space
from hsconas_cli.train import preset, train_supernet
from hsconas_cli.checkpoint import load_supernet

REFERENCE = Path(__file__).parent / "data" / "ranking_reference.json"
THREADS = 2
BATCH = 64
CALIB_IMAGES, VAL_IMAGES = 500, 1000
# The shipped Fashion-MNIST preset as it stands, and hsconas 0.1's supernet (every op its own weights, SPOS
# initialisation, lr 0.1, no skip ramp: bench/supernet_recipes.py's "separate-ops"), which the test must reject.
RECIPES = {
    "shipped": {},
    "hsconas-0.1": {"share": "none", "init": "spos", "lr": 0.1, "skip_ramp": 0.0},
}
STEPS = 300  # the test's budget: see bench/ranking_test_bounds.py and docs/BENCHMARKS.md


@contextlib.contextmanager
def torch_threads(n: int):
    """Run torch on ``n`` intra-op threads inside the block, and restore the count it had."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def reference() -> dict:
    return json.loads(REFERENCE.read_text())


def short_run(data, out_dir: Path, *, seed: int, steps: int, recipe: str = "shipped", calib_images: int = CALIB_IMAGES,
              val_images: int = VAL_IMAGES) -> list[float]:
    """Train the short supernet and return the inherited top-1 of every reference arch, in the file's order."""
    ref = reference()
    space = get_space(ref["space"])
    with torch_threads(THREADS):
        cfg = preset("supernet", "fashion-mnist", epochs=1, limit=steps * BATCH, batch_size=BATCH, workers=0,
                     seed=seed, **RECIPES[recipe])
        train_supernet("fashion-mnist", space, out_dir, cfg=cfg, data=data)
        net, _ = load_supernet(out_dir / "checkpoint.pt")
        ev = Evaluator(net, data, calib_images=calib_images, val_images=val_images)
        return [ev.accuracy(Arch.from_list(r["arch"])) for r in ref["archs"]]


def figures(accs: list[float]) -> dict[str, float]:
    """The statistics a run is judged by (tests/test_ranking.py uses the first two):

    * ``median_spread``: the median top-1 of the 16 spread archs (chance is 0.10);
    * ``narrow_rung_gap``: the median top-1 of the ladder's rungs c >= 0.2 less that of its narrowest, c = 0.1 (at
      equal ops a wider network is not worse; a supernet that learned nothing gives 0 +- noise);
    * ``tau_ladder``: Kendall's tau of the whole ladder's top-1 against c;
    * ``tau_longer``: Kendall's tau of all 26 against the reference's longer-trained (demo-budget) supernet.
    """
    archs = reference()["archs"]
    spread = [a for r, a in zip(archs, accs) if r["group"] == "spread"]
    ladder = sorted((r["arch"][0][1], a) for r, a in zip(archs, accs) if r["group"] == "ladder")
    return {
        "median_spread": statistics.median(spread),
        "narrow_rung_gap": statistics.median(a for _, a in ladder[1:]) - ladder[0][1],
        "tau_ladder": kendall_tau([a for _, a in ladder], [c for c, _ in ladder]),
        "tau_longer": kendall_tau(accs, [r["inherited"] for r in archs]),
    }
