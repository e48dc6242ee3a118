"""Which objective below T hands the user the better network (issue 23)?

From a finished `hsconas run` folder (the demo's by default): at each target (--targets, percentiles of the
profile's whole space, resolved once to milliseconds), searches the run's search space with the run's own search
budget under each objective:

* ``beta_below`` 0: no reward and no charge below T, so F is the accuracy of any network within T;
* ``beta_below`` +0.5: each 1% of T left unused costs half a point (hsconas 0.2's default);
* the paper's: one beta on both sides (``--paper-beta``, -0.5), rewarding speed below T.

Then fine-tunes each distinct winner from the run's supernet with the run's fine-tune recipe, once per seed, all
winners at seed 0 before any at seed 1 (cached in --finetune-work, resumable, shared with bench/search_value.py),
and measures each winner here with the run's profile (run it alone: it times). Prints per target and objective the
winner's predicted and measured latency against T, its inherited accuracy and its test top-1 per seed; then the
decision: below 0 against below +0.5, the mean over targets and seeds of the difference in test top-1 beside its
standard error (the paired differences' spread, and never less than seed noise alone: the seed-to-seed spread
that bench/search_value.py measured on its networks). The default is the objective whose winners are more
accurate, where the difference stands beyond 2 standard errors and both winners' measured latency is within T;
otherwise 0, the objective that says what it means.

    python bench/beta_below.py --run runs/demo --targets 20%,40%
    python bench/beta_below.py --run runs/demo --searches-only   # the winners, no training
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import fine_tune_inherited, latest_result, result_path  # noqa: E402
from hsconas_cli.meter import measure_arch  # noqa: E402
from hsconas_cli.data import load_data  # noqa: E402
from hsconas_cli.fileio import read_json, write_json  # noqa: E402
from hsconas_cli.objective import resolve_target  # noqa: E402
from hsconas_cli.profiles import load_profile  # noqa: E402
from hsconas_cli.search import SearchConfig, search  # noqa: E402
from hsconas_cli.space import Arch, load_subspace  # noqa: E402

OBJECTIVES = {"below 0": {"beta_below": 0.0}, "below +0.5": {"beta_below": 0.5}}


def run_searches(run: dict, args, data) -> tuple[list[dict], dict]:
    """One search per (target, objective) with the run's budget; the winners, and the run's pieces."""
    st = {k: v.get("result", {}) for k, v in run["stages"].items()}
    if not all(st.get(k) for k in ("profile", "shrink", "finetune")):
        sys.exit(f"{args.run} has no finished fine-tune: run `hsconas run` (make demo) first")
    b = run["settings"]["budgets"]
    cfg = SearchConfig(generations=b["generations"], population=b["population"], parents=b["parents"],
                       calib_images=b["eval_calib_images"], val_images=b["eval_val_images"], seed=run["settings"]["seed"])
    profile = load_profile(st["profile"]["path"])
    sub = load_subspace(st["shrink"]["file"]) if st["shrink"].get("file") else None  # a demo that did not shrink
    objectives = {**OBJECTIVES, "paper": {"beta": args.paper_beta, "beta_below": args.paper_beta}}
    rows = []
    for t in args.targets.split(","):
        target_ms, _ = resolve_target(t, profile)  # on the whole space: one T per target
        for name, obj in objectives.items():
            tag = f"{t.replace('%', 'pct')}-{name.replace(' ', '').replace('+', 'p')}"
            res = search(st["shrink"]["supernet"], data, profile, f"{target_ms:.6g}", Path(args.work) / tag, subspace=sub,
                         cfg=cfg, **obj)
            rows.append({"target": t, "target_ms": target_ms, "objective": name, **obj, "arch": res["arch"],
                         "inherited": res["acc"], "predicted_ms": res["predicted_ms"]})
            print(f"T {t} ({target_ms:.4f} ms), {name}: winner predicted {res['predicted_ms']:.4f} ms, inherited "
                  f"{100 * res['acc']:.2f}%", flush=True)
    pieces = {"profile": profile, "supernet": st["shrink"]["supernet"], "recipe": st["finetune"]["config"], "search": cfg}
    return rows, pieces


def fine_tune_all(rows: list[dict], pieces: dict, seeds: list[int], paper_seeds: list[int], work: Path, data) -> None:
    """Each distinct winner fine-tuned once per seed, seed-major (a cut-short run has every winner at seed 0); the
    paper objective's winners only with ``paper_seeds`` (they do not enter the decision)."""
    space = pieces["profile"].space
    for seed in seeds:
        done: dict[str, float] = {}
        for r in rows:
            key = str(r["arch"])
            if r["objective"] == "paper" and seed not in paper_seeds:
                continue
            if key not in done:
                print(f"seed {seed}: fine-tuning the winner of T {r['target']}, {r['objective']}", flush=True)
                done[key] = fine_tune_inherited(space, Arch.from_list(r["arch"]), seed, pieces["supernet"],
                                                pieces["recipe"], work, data)["test_top1"]
            r.setdefault("test_top1", []).append(done[key])


def measure_all(rows: list[dict], profile, repeats: int) -> None:
    """Each distinct winner measured here once, under the profile's protocol."""
    seen: dict[str, dict] = {}
    for r in rows:
        key = str(r["arch"])
        if key not in seen:
            seen[key] = measure_arch(profile, Arch.from_list(r["arch"]), repeats=repeats)
        m = seen[key]
        r.update(measured_ms=m["measured_ms"], uncertainty_pct=m["verdict"]["uncertainty_pct"],
                 status=m["verdict"]["status"], within_t=m["measured_ms"] <= r["target_ms"])


def seed_sd(result: Path) -> float | None:
    """The seed-to-seed standard deviation of one fine-tune's test top-1, pooled over the networks that
    bench/search_value.py fine-tuned with two or more seeds (its raw result ``result``)."""
    if not result.exists():
        return None
    groups = [r["test_top1"] for r in read_json(result)["rows"] if len(r["test_top1"]) > 1]
    return math.sqrt(statistics.fmean(statistics.variance(g) for g in groups)) if groups else None


def decide(rows: list[dict], sd_seed: float | None) -> dict:
    """below 0 minus below +0.5, paired per target and seed: the mean, and its standard error, the larger of the
    pairs' own spread (where there are several) and what seed noise alone gives (sqrt 2 x ``sd_seed`` per pair)."""
    diffs, within = [], True
    for t in dict.fromkeys(r["target"] for r in rows):
        a = next(r for r in rows if r["target"] == t and r["objective"] == "below 0")
        b = next(r for r in rows if r["target"] == t and r["objective"] == "below +0.5")
        diffs += [x - y for x, y in zip(a["test_top1"], b["test_top1"])]
        within = within and a["within_t"] and b["within_t"]
    mean, n = statistics.fmean(diffs), len(diffs)
    se_pairs = statistics.stdev(diffs) / math.sqrt(n) if n > 1 else 0.0
    se_seed = math.sqrt(2) * sd_seed / math.sqrt(n) if sd_seed is not None else 0.0
    se = max(se_pairs, se_seed) or float("inf")
    if abs(mean) > 2 * se and within:
        choice, why = (0.0, "below 0 is more accurate") if mean > 0 else (0.5, "below +0.5 is more accurate")
    else:
        choice, why = 0.0, ("the difference is within 2 standard errors (or a winner missed T): 0, the objective "
                            "that says what it means")
    return {"below0_minus_below05": mean, "se": se, "se_pairs": se_pairs, "se_seed": se_seed, "sd_seed": sd_seed,
            "pairs": n, "beta_below": choice, "why": why}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default=str(ROOT / "runs" / "demo"), help="a finished hsconas run folder")
    ap.add_argument("--targets", default="20%,40%")
    ap.add_argument("--paper-beta", type=float, default=-0.5)
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--paper-seeds", help="seeds for the paper objective's winners (default: --seeds)")
    ap.add_argument("--repeats", type=int, default=5, help="measurement repeats per winner")
    ap.add_argument("--searches-only", action="store_true", help="search and print the winners; no training or timing")
    ap.add_argument("--work", default=str(ROOT / "runs" / "bench-beta-below"))
    ap.add_argument("--finetune-work", default=str(ROOT / "runs" / "bench-search-value"))
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args()

    data = load_data("fashion-mnist")
    rows, pieces = run_searches(read_json(Path(args.run) / "run.json", "run record"), args, data)
    if args.searches_only:
        return
    seeds = [int(s) for s in args.seeds.split(",")]
    paper_seeds = [int(s) for s in (args.paper_seeds or args.seeds).split(",")]
    fine_tune_all(rows, pieces, seeds, paper_seeds, Path(args.finetune_work), data)
    measure_all(rows, pieces["profile"], args.repeats)
    for r in rows:
        print(f"T {r['target']} ({r['target_ms']:.4f} ms), {r['objective']}: predicted {100 * (r['predicted_ms'] / r['target_ms'] - 1):+.1f}%,"
              f" measured {100 * (r['measured_ms'] / r['target_ms'] - 1):+.1f}% +-{r['uncertainty_pct']:.1f}% vs T; inherited "
              f"{100 * r['inherited']:.2f}%; test top-1 {' / '.join(f'{100 * a:.2f}' for a in r['test_top1'])} "
              f"(mean {100 * statistics.fmean(r['test_top1']):.2f}%)")
    decision = decide(rows, seed_sd(latest_result("search_value")))
    print(f"below 0 minus below +0.5: {100 * decision['below0_minus_below05']:+.2f} +- {100 * decision['se']:.2f} points "
          f"(standard error over {decision['pairs']} target-seed pairs): beta_below {decision['beta_below']}, {decision['why']}")
    write_json(result_path(args.out, "beta_below"), {"kind": "beta-below-bench", "run": str(args.run), "seeds": seeds,
                                                    "recipe": pieces["recipe"], "search": pieces["search"].__dict__,
                                                    "rows": rows, "decision": decision})


if __name__ == "__main__":
    main()
