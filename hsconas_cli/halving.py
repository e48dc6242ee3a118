"""Successive halving: the selection's best few asked what fine-tuning says of them (issue 35, item 3).

Inherited accuracy among networks of near-equal latency orders them only loosely as fine-tuning does
(docs/BENCHMARKS.md, issue 35). So the finalists (``finalists``: the selection's most accurate candidates that the
closed loop did not find missing T) each get a short fine-tune from their inherited weights, of
``HalvingConfig.images`` images of the training split only (the selection split stays held out), and are scored
on the selection split, all on the same images, so two of them differ with a paired standard error. The better
half goes on from where it stopped, round after round, until one is left. The survivor's full fine-tune starts
from its last short one (``train.retrain`` inherits from a network's own checkpoint), so no round is wasted.

The test set is scored after each short fine-tune only to record it; it never chooses. ``bench/halving.py`` found
that at 10,750 images a round the rounds order the finalists by early learning speed, not by final accuracy
(docs/BENCHMARKS.md, "Successive halving, and the finalists fine-tuned"), so no preset runs this stage.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

from hsconas_cli.closed_loop import misses_target
from hsconas_cli.fileio import read_json
from hsconas_cli.selection import paired_se
from hsconas_cli.space import Arch, SearchSpace
from hsconas_cli.ui import ProgressFn


@dataclass
class HalvingConfig:
    finalists: int = 4
    images: int = 10_750  # training images per finalist per round (a quarter of an epoch on Fashion-MNIST)
    lr: float = 0.1  # each round's short cosine schedule starts here
    select_images: int = 10_000
    seed: int = 0


def finalists(selection: dict, closed_loop: dict | None, n: int, target_ms: float) -> list[dict]:
    """The ``n`` most accurate candidates of the selection (held-out accuracy), leaving out any that the closed
    loop measured missing T beyond its uncertainty."""
    missed = {json.dumps(c["arch"]) for c in (closed_loop or {}).get("candidates", [])
              if c.get("trusted") and misses_target(c["measured_ms"], c["uncertainty_pct"], target_ms)}
    ok = [c for c in selection["candidates"] if json.dumps(c["arch"]) not in missed]
    return sorted(ok, key=lambda c: (-c["acc"], c["lat_ms"]))[:n]


def fine_tunes(n: int) -> int:
    """Short fine-tunes that halving ``n`` finalists to one takes: n + ceil(n/2) + ... down to 2."""
    total = 0
    while n > 1:
        total, n = total + n, math.ceil(n / 2)
    return total


def successive_halving(space: SearchSpace, cands: list[dict], supernet: str | Path, data, out_dir: str | Path,
                       cfg: HalvingConfig | None = None, progress: ProgressFn | None = None) -> dict:
    """Rounds of short fine-tunes over ``cands`` (selection candidates: ``arch``, ``lat_ms``, ``baseline``), the
    better half kept each round, until one is left; returns every round's scores and the survivor with its
    checkpoint. Each short fine-tune is kept in ``out_dir/roundR/finalistI``, so an interrupted run resumes."""
    cfg = cfg or HalvingConfig()
    alive = [{"index": i, "arch": c["arch"], "lat_ms": c["lat_ms"], "name": c.get("baseline") or "searched",
              "checkpoint": str(supernet)} for i, c in enumerate(cands)]
    rounds, r = [], 0
    total, done = fine_tunes(len(cands)), 0
    while len(alive) > 1:
        r += 1
        hits = []
        for c in alive:
            if progress:
                progress(f"successive halving, round {r}: finalist {c['index'] + 1} ({len(alive)} left)", done, total)
            c["checkpoint"], c["test_top1"] = _short_fine_tune(space, c, Path(out_dir) / f"round{r}" / f"finalist{c['index']}", cfg, data)
            hits.append(_held_out_hits(space, c, data, cfg.select_images))
            done += 1
        rounds.append(_round_record(r, alive, hits))
        keep = {x["index"] for x in rounds[-1]["finalists"] if x["kept"]}
        alive = [c for c in alive if c["index"] in keep]
    if progress:
        progress("successive halving: done", total, total)
    return {"config": asdict(cfg), "rounds": rounds, "survivor": alive[0]}


def _short_fine_tune(space: SearchSpace, c: dict, out: Path, cfg: HalvingConfig, data) -> tuple[str, float]:
    """One round's fine-tune of finalist ``c`` from its last weights (the supernet's, or its previous round's)."""
    from hsconas_cli.train import preset, retrain

    if not (out / "result.json").exists():
        tc = preset("retrain", data.name, epochs=1, limit=cfg.images, lr=cfg.lr, warmup_epochs=0.0, seed=cfg.seed,
                    train_on="train")
        retrain(data.name, space, Arch.from_list(c["arch"]), out, cfg=tc, inherit=c["checkpoint"],
                resume=(out / "checkpoint.pt").exists(), data=data)
    return str(out / "checkpoint.pt"), read_json(out / "result.json", "short fine-tune")["test_top1"]


def _held_out_hits(space: SearchSpace, c: dict, data, n: int):
    """Which of the selection split's first ``n`` images the finalist's fine-tuned network gets right."""
    from hsconas_cli.checkpoint import load_checkpoint, load_weights
    from hsconas_cli.evaluate import correct
    from hsconas_cli.supernet import HSCoNet

    ckpt = load_checkpoint(c["checkpoint"])
    net = HSCoNet(space, Arch.from_list(c["arch"]), ckpt["config"]["dropout"])
    load_weights(net, ckpt["model"], c["checkpoint"])
    return correct(net, data.loader("select", 500, limit=n))


def _round_record(r: int, alive: list[dict], hits: list) -> dict:
    """A round's finalists with their held-out accuracy and paired SE against the round's best; the better half
    (ceil(n / 2), the faster among equals) kept."""
    accs = [float(h.mean()) for h in hits]
    order = sorted(range(len(alive)), key=lambda i: (-accs[i], alive[i]["lat_ms"]))
    kept = set(order[: math.ceil(len(alive) / 2)])
    best = order[0]
    return {"round": r, "finalists": [
        {"index": c["index"], "name": c["name"], "arch": c["arch"], "lat_ms": c["lat_ms"], "held_out": accs[i],
         "behind_best": accs[best] - accs[i], "paired_se": paired_se(hits[best], hits[i]), "test_top1": c["test_top1"],
         "kept": i in kept} for i, c in enumerate(alive)]}
