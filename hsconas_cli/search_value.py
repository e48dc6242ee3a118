"""What the search bought: the winner's inherited accuracy beside networks a user gets without searching.

Two baselines, scored by the same evaluator as the winner (the supernet's inherited weights, exact BN
recalibration, the same validation images):

* ``random``: archs drawn uniformly from the profile's whole (unshrunk) space whose predicted latency lies
  within ``BAND`` (3%) of the winner's; their median, with its standard error (1.2533 sd / sqrt(n), the median
  of normal samples; the sd over archs already holds each one's evaluation noise). These are what a user gets by
  drawing a network of the same cost at random.
* ``uniform``: ShuffleNetV2 scaled to T, every layer shuffle3 at one channel factor: the widest whose predicted
  latency is at most T (the narrowest where none is). And the winner's own ops at one factor, chosen the same way.

Each accuracy carries the standard error of a proportion on the images scored, sqrt(p (1 - p) / V). The search
scores them on its held-out selection split (``hsconas_cli.selection``), image by image, so the winner's lead over
a uniform network has a paired standard error (the sd of the per-image differences over sqrt(V)); its lead over
the random median has the two errors added in quadrature. A lead within two standard errors is said to be within
the noise. The winner was chosen on these same images among a few dozen candidates, so its lead is still biased
upwards, far less than by the screen's thousand; ``bench/search_value.py`` measures the lead that counts, on the
test set after fine-tuning (``AFTER_FINE_TUNING``, docs/BENCHMARKS.md "Does the search pay?"), and every summary
says what it found.
"""

from __future__ import annotations

import math
import random
import statistics

from hsconas_cli.selection import paired_se, proportion_se
from hsconas_cli.space import Arch

BAND = 0.03  # random archs within +-3% of the winner's predicted latency
RANDOM_ARCHS = 8
MAX_DRAWS = 200_000
# What bench/search_value.py measured after fine-tuning (the demo's run, its 5-epoch recipe, test set): said beside
# every inherited comparison, which on its own promises more than the search delivered there.
AFTER_FINE_TUNING = ("measured after fine-tuning on Fashion-MNIST at the demo's budget with this selection (docs/BENCHMARKS.md, "
                     "\"Successive halving, and the finalists fine-tuned\"; 2 seeds), the demo's winner scored 89.85% test "
                     "top-1 and ShuffleNetV2 at c = 1, which the held-out split could not tell from it, 90.50% at 38% less "
                     "latency: inherited accuracy does not yet find the most accurate network after fine-tuning")


def random_at_latency(profile, lat_ms: float, n: int, rng: random.Random, band: float = BAND) -> list[Arch]:
    """Up to ``n`` distinct archs of the profile's whole space, drawn uniformly, whose predicted latency is within
    ``band`` of ``lat_ms`` (fewer where ``MAX_DRAWS`` draws do not find them)."""
    full, found, seen = profile.space.full(), [], set()
    for _ in range(MAX_DRAWS):
        arch = full.sample(rng)
        if abs(profile.predict(arch) / lat_ms - 1) <= band and arch not in seen:
            seen.add(arch)
            found.append(arch)
            if len(found) == n:
                break
    return found


def one_factor(profile, ops: list[str], target_ms: float) -> Arch:
    """``ops`` (skip kept where it stands) at one channel factor in every layer: the widest whose predicted
    latency is at most T, else the narrowest."""
    def at(c):
        return Arch(tuple(("skip", None) if op == "skip" else (op, c) for op in ops))

    factors = sorted(profile.space.factors)
    fitting = [c for c in factors if profile.predict(at(c)) <= target_ms]
    return at(fitting[-1] if fitting else factors[0])


def lead(acc: float, acc_se: float, base: float, base_se: float, paired: float | None = None) -> dict:
    """The winner's lead over a baseline, its standard error (``paired``, where both were scored on the same
    images image by image; else the two errors in quadrature), and whether it stands beyond two of them."""
    diff = acc - base
    se = paired if paired is not None else math.hypot(acc_se, base_se)
    return {"lead": diff, "se": se, "paired": paired is not None, "beyond_noise": abs(diff) > 2 * se}


def search_value(evaluator, profile, arch: Arch, target_ms: float, *, n: int = RANDOM_ARCHS, seed: int = 0) -> dict:
    """The winner ``arch`` against the baselines (see the module's docstring), each with its accuracy, predicted
    latency and standard error, and the winner's lead over each."""
    val = evaluator.settings["val_images"]
    acc, lat = evaluator.accuracy(arch), profile.predict(arch)
    acc_se = proportion_se(acc, val)
    rand = random_at_latency(profile, lat, n, random.Random(seed))
    accs = [evaluator.accuracy(a) for a in rand]
    if len(accs) >= 2:
        med = statistics.median(accs)
        med_se = 1.2533 * statistics.stdev(accs) / math.sqrt(len(accs))
    else:
        med = med_se = float("nan")
    uniforms = {"shufflenetv2": one_factor(profile, ["shuffle3"] * len(arch), target_ms),
                "winner-ops": one_factor(profile, [op for op, _ in arch], target_ms)}
    doc = {"arch": arch.to_list(), "acc": acc, "acc_se": acc_se, "predicted_ms": lat, "val_images": val,
           "random": {"n": len(accs), "wanted": n, "band": BAND, "median": med, "se": med_se, "accs": accs,
                      "archs": [a.to_list() for a in rand], "lead": lead(acc, acc_se, med, med_se)}}
    per_image = getattr(evaluator, "per_image", False)
    for name, u in uniforms.items():
        a = evaluator.accuracy(u)
        paired = paired_se(evaluator.correct(arch), evaluator.correct(u)) if per_image else None
        doc[name] = {"arch": u.to_list(), "c": next(c for _, c in u if c is not None), "acc": a,
                     "se": proportion_se(a, val), "predicted_ms": profile.predict(u),
                     "lead": lead(acc, acc_se, a, proportion_se(a, val), paired)}
    doc["split"] = evaluator.settings.get("subset", "val")
    return doc


def describe(doc: dict) -> list[str]:
    """Lines for a summary: the winner beside each baseline, and whether its lead stands beyond the noise."""
    def verdict(x):
        return "beyond the noise" if x["beyond_noise"] else "within the noise"

    r = doc["random"]
    where = "held-out selection" if doc.get("split") == "select" else "validation"
    lines = [f"winner {100 * doc['acc']:.2f}% +-{100 * doc['acc_se']:.2f} (inherited, {doc['val_images']} {where} images, "
             f"predicted {doc['predicted_ms']:.4f} ms)"]
    if r["n"] >= 2:
        lines.append(f"random archs at the same latency (+-{100 * r['band']:.0f}%, median of {r['n']}): "
                     f"{100 * r['median']:.2f}% +-{100 * r['se']:.2f}; the winner leads by {100 * r['lead']['lead']:+.2f} "
                     f"+-{100 * r['lead']['se']:.2f} points, {verdict(r['lead'])}")
    else:
        lines.append(f"random archs at the same latency: only {r['n']} found within +-{100 * r['band']:.0f}%; no comparison")
    for name, label in (("shufflenetv2", "ShuffleNetV2 (shuffle3 everywhere)"), ("winner-ops", "the winner's ops")):
        u = doc[name]
        lines.append(f"{label} at one factor c = {u['c']:g} ({u['predicted_ms']:.4f} ms): {100 * u['acc']:.2f}% +-{100 * u['se']:.2f}; "
                     f"the winner leads by {100 * u['lead']['lead']:+.2f} +-{100 * u['lead']['se']:.2f} points{' (paired SE)' if u['lead'].get('paired') else ''}, {verdict(u['lead'])}")
    if doc.get("split", "val") == "select":
        lines.append("(held-out selection images; the winner was chosen on them among a few dozen candidates, so its lead "
                     f"is still somewhat optimistic; {AFTER_FINE_TUNING})")
    else:
        lines.append("(the winner was picked on these validation images, so its lead here is optimistic; "
                     f"{AFTER_FINE_TUNING})")
    return lines
