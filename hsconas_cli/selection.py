"""Choosing the winner without the winner's curse: the search's best candidates and the uniform baselines, scored
again on images the screen never saw.

The EA screens about a thousand archs on a small validation subset (``SearchConfig.val_images``). At 80-90%
top-1 one network's standard error there is about a point, so the best of a thousand screens is mostly the
luckiest: its lead over the field is what selection on noise alone gives, and it does not survive fine-tuning
(docs/BENCHMARKS.md, "Does the search pay?"). Here the screen only shortlists:

* ``shortlist``: the ``top_k`` distinct archs of the whole search history that fit T (predicted latency at most
  T), by screened accuracy, plus ``baselines``: the uniform networks that fit T (each op of the space in every
  layer at one channel factor: the widest whose prediction fits T and ``NARROWER`` narrower ones; shuffle3
  everywhere is ShuffleNetV2). The baselines are also the EA's first population, so it starts from what a user
  could pick without it, and they stay in the shortlist whatever the EA does with them.
* Every shortlisted arch is scored again on the held-out selection split (``data.split_indices``: at least
  10,000 training images on Fashion-MNIST that neither the screen nor BN recalibration uses, and that the
  supernet does not train on), all on the same images, so two candidates' difference has a paired standard
  error: the sd of the per-image differences over sqrt(N), far below the two separate errors added.
* ``choose``: the most accurate by that score (``prefer="accurate"``), or the fastest predicted within two paired
  standard errors of the most accurate (``prefer="fastest"``). The test set is never used to choose.
"""

from __future__ import annotations

import json
import math

import numpy as np

from hsconas_cli.space import Arch, Subspace, arch_key

TOP_K = 15
NARROWER = 2  # each uniform baseline: the widest factor that fits T, and this many narrower ones
PREFER = ("accurate", "fastest")
WITHIN_SE = 2.0  # --prefer fastest: within this many paired standard errors of the most accurate
OP_NAMES = {"shuffle3": "ShuffleNetV2", "shuffle5": "ShuffleNetV2 with 5x5 depthwise",
            "shuffle7": "ShuffleNetV2 with 7x7 depthwise", "xception": "ShuffleNetV2-Xception"}


def uniform(op: str, c: float, layers: int) -> Arch:
    return Arch(tuple((op, c) for _ in range(layers)))


def baseline_name(op: str, c: float) -> str:
    return f"{OP_NAMES.get(op, op)} at c = {c:g}"


def baselines(predictor, sub: Subspace, target_ms: float, narrower: int = NARROWER) -> list[tuple[str, Arch]]:
    """The uniform networks of ``sub`` that fit T (see the module's docstring), with their names: for each op that
    every layer allows (skip is none), the widest factor every layer allows whose predicted latency is at most T,
    and the next ``narrower`` factors below it."""
    found = []
    ops = [op for op in sub.ops[0] if op != "skip" and all(op in o for o in sub.ops)]
    factors = sorted(set(sub.factors[0]).intersection(*map(set, sub.factors)))
    for op in ops:
        fitting = [c for c in factors if predictor.predict(uniform(op, c, len(sub.ops))) <= target_ms]
        for c in reversed(fitting[-(narrower + 1):]):
            found.append((baseline_name(op, c), uniform(op, c, len(sub.ops))))
    return found


def shortlist(rows: list[dict], named: list[tuple[str, Arch]], space, target_ms: float, top_k: int = TOP_K) -> list[dict]:
    """The rows to score again: the ``top_k`` most accurate by the screen that fit T (where none fits, the
    ``top_k`` best by F), then every baseline of ``named`` that the search evaluated, each marked with its name."""
    fit = [r for r in rows if r["lat_ms"] <= target_ms]
    pool = sorted(fit, key=lambda r: (-r["acc"], r["lat_ms"]))[:top_k] if fit else sorted(rows, key=lambda r: -r["F"])[:top_k]
    by_key = {json.dumps(r["key"]): r for r in rows}
    chosen = {json.dumps(r["key"]): {**r, "baseline": None} for r in pool}
    for name, arch in named:
        k = json.dumps(arch_key(space, arch))
        if k in by_key:
            chosen.setdefault(k, {**by_key[k], "baseline": None})["baseline"] = name
    return list(chosen.values())


def paired_se(hits_a: np.ndarray, hits_b: np.ndarray) -> float:
    """Standard error of acc(a) - acc(b) where both were scored on the same images (``hits``: right or wrong, per
    image): the sd of the per-image differences (each -1, 0 or 1) over sqrt(N)."""
    d = hits_a.astype(float) - hits_b.astype(float)
    n = len(d)
    return float(d.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")


def proportion_se(p: float, n: int) -> float:
    return math.sqrt(max(p * (1 - p), 0.0) / n) if n else float("nan")


def choose(cands: list[dict], prefer: str = "accurate") -> tuple[int, str]:
    """Which candidate wins, and why. Each holds ``acc`` (on the selection split), ``lat_ms`` and ``paired_se``
    (of its difference from the most accurate). ``accurate``: the most accurate (the faster among equals).
    ``fastest``: the fastest predicted whose accuracy is within ``WITHIN_SE`` paired SE of the most accurate."""
    best = max(range(len(cands)), key=lambda i: (cands[i]["acc"], -cands[i]["lat_ms"]))
    if prefer == "accurate":
        return best, "the most accurate on the selection split"
    top = cands[best]["acc"]
    near = [i for i, c in enumerate(cands) if i == best or top - c["acc"] <= WITHIN_SE * c["paired_se"]]
    win = min(near, key=lambda i: (cands[i]["lat_ms"], -cands[i]["acc"]))
    if win == best:
        return best, f"the fastest within {WITHIN_SE:g} paired SE of the most accurate, which is the most accurate itself"
    return win, (f"the fastest within {WITHIN_SE:g} paired SE of the most accurate ({100 * (top - cands[win]['acc']):.2f} "
                 f"points behind it, paired SE {100 * cands[win]['paired_se']:.2f})")


def select(rows: list[dict], named: list[tuple[str, Arch]], evaluator, target_ms: float, *, top_k: int = TOP_K,
           prefer: str = "accurate", progress=None) -> dict:
    """Score ``shortlist(rows, named, ...)`` on ``evaluator`` (made with ``per_image=True`` on the selection split)
    and ``choose``; returns the selection: every candidate (screened and selection accuracy, its SE, predicted
    latency, its trail behind the most accurate with the paired SE, its baseline name), the winner's index, the
    rule and why."""
    space = evaluator.space
    cands = shortlist(rows, named, space, target_ms, top_k)
    hits = []
    for i, c in enumerate(cands):
        if progress:
            progress(f"scoring the best candidates on the selection split: {i + 1}/{len(cands)}", i, len(cands))
        hits.append(evaluator.correct(Arch.from_list(c["arch"])))
    n = len(hits[0])
    accs = [float(h.mean()) for h in hits]
    best = max(range(len(cands)), key=lambda i: (accs[i], -cands[i]["lat_ms"]))
    out = []
    for c, h, a in zip(cands, hits, accs):
        out.append({"arch": c["arch"], "key": c["key"], "baseline": c["baseline"], "screen_acc": c["acc"], "acc": a,
                    "se": proportion_se(a, n), "lat_ms": c["lat_ms"], "trail": accs[best] - a,
                    "paired_se": paired_se(hits[best], h)})
    win, why = choose(out, prefer)
    for c, h in zip(out, hits):
        c["vs_winner"] = {"diff": c["acc"] - accs[win], "paired_se": paired_se(h, hits[win])}
    order = sorted(range(len(out)), key=lambda i: (-out[i]["acc"], out[i]["lat_ms"]))
    return {"split": "select", "images": n, "top_k": top_k, "rule": prefer, "candidates": [out[i] for i in order],
            "winner": order.index(win), "reason": why, "baseline_won": out[win]["baseline"], "settings": evaluator.settings}


def describe(sel: dict) -> list[str]:
    """Lines for a summary: what was re-scored, which rule chose, the winner, and how far the runners-up trailed."""
    w = sel["candidates"][sel["winner"]]
    what = f"the best network found is {w['baseline']}" if w["baseline"] else "the winner is a searched network"
    lines = [f"{len(sel['candidates'])} candidates (the search's {sel['top_k']} best that fit T by the screen, and the "
             f"uniform baselines) re-scored on {sel['images']:,} held-out images; rule: {sel['rule']} "
             f"({sel['reason']})",
             f"{what}: {100 * w['acc']:.2f}% +-{100 * w['se']:.2f} on the selection split "
             f"(screened {100 * w['screen_acc']:.2f}%), predicted {w['lat_ms']:.4f} ms"]
    others = [c for c in sel["candidates"] if c is not w][:3]
    for c in others:
        v = c["vs_winner"]
        lines.append(f"  then {c['baseline'] or 'a searched network'}: {100 * c['acc']:.2f}% ({100 * v['diff']:+.2f} points "
                     f"+-{100 * v['paired_se']:.2f} paired SE), predicted {c['lat_ms']:.4f} ms")
    return lines
