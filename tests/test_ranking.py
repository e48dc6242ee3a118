"""A supernet trained a few hundred steps with the shipped recipe already ranks networks, far above chance.

The reference (tests/data/ranking_reference.json, written by bench/ranking.py) holds 16 archs of fmnist-A spread
over the CPU profile's latency range and a width ladder (the same ops with c = 0.1 .. 1.0 in every layer), with
their inherited accuracies from a supernet trained at the demo's budget (2 epochs, 4 x these steps). Two
orderings are checked: the ladder's (at equal ops a wider network is not worse: the one ordering known without
training), and agreement with the longer-trained supernet. hsconas 0.1's supernet, trained the same way, left
every subnet near chance (about 12% top-1) and fails all three assertions.

The standalone figures in the reference are not used: at the benchmark's short standalone budget, accuracy
falls with network size (docs/BENCHMARKS.md, "A supernet that ranks"), so they are no ground truth to test on.
"""

import json
import statistics
from pathlib import Path

from hsconas_cli.evaluate import Evaluator, kendall_tau
from hsconas_cli.space import Arch, get_space
from hsconas_cli.train import load_supernet, preset, train_supernet

REFERENCE = Path(__file__).parent / "data" / "ranking_reference.json"
STEPS = 400
# Measured for this recipe with bench-like runs of the test (seeds 0 and 1): median 54% / 61%, ladder tau 0.36 /
# 0.54, tau against the longer-trained supernet 0.53 / 0.49. Chance gives tau 0 +- 0.25 on the ladder's 10 archs
# and 0 +- 0.14 on all 26, so the second bound is two standard deviations above chance.
TAU_LADDER = 0.2
TAU_LONGER = 0.3


def test_short_supernet_ranks_networks_above_chance(tmp_path, fmnist):
    ref = json.loads(REFERENCE.read_text())
    space = get_space(ref["space"])
    cfg = preset("supernet", "fashion-mnist", epochs=1, limit=STEPS * 64, workers=0)
    train_supernet("fashion-mnist", space, tmp_path / "supernet", cfg=cfg, data=fmnist)
    net, _ = load_supernet(tmp_path / "supernet" / "checkpoint.pt")
    ev = Evaluator(net, fmnist, calib_images=1000, val_images=2000)
    archs = ref["archs"]
    short = [ev.accuracy(Arch.from_list(r["arch"])) for r in archs]
    longer = [r["inherited"] for r in archs]
    ladder = [(r["arch"][0][1], acc) for r, acc in zip(archs, short) if r["group"] == "ladder"]

    spread = [acc for r, acc in zip(archs, short) if r["group"] == "spread"]
    assert statistics.median(spread) >= 0.40, short  # hsconas 0.1: about 0.12
    tau_ladder = kendall_tau([acc for _, acc in ladder], [c for c, _ in ladder])
    assert tau_ladder >= TAU_LADDER, (tau_ladder, ladder)
    tau_longer = kendall_tau(short, longer)
    assert tau_longer >= TAU_LONGER, (tau_longer, short, longer)
