"""Which objective below T hands the user the better network (issue 23)?

From a finished `hsconas run` folder (the demo's by default): at each target (--targets, percentiles of the
profile's whole space), searches the run's shrunk space with the run's own search budget under each objective:

* ``beta_below`` 0: no reward and no charge below T, so F is the accuracy of any network within T;
* ``beta_below`` +0.5: each 1% of T left unused costs half a point (hsconas 0.2's default);
* the paper's: one beta on both sides (``--paper-beta``, -0.5), rewarding speed below T.

Then fine-tunes each winner from the run's supernet with the run's fine-tune recipe, once per seed (cached in
--work, resumable, shared with bench/search_value.py), and measures each winner here with the run's profile.
Prints per target and objective: the winner's predicted and measured latency against T, its inherited accuracy,
and its test top-1 per seed. The default is the objective whose winners are more accurate at a measured latency
within T, where the difference stands beyond the seed-to-seed noise; otherwise 0, the objective that says what it
means.

    python bench/beta_below.py --run runs/demo
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import fine_tune_inherited, result_path  # noqa: E402
from hsconas_cli.calibrate import measure_arch  # noqa: E402
from hsconas_cli.data import load_data  # noqa: E402
from hsconas_cli.fileio import read_json, write_json  # noqa: E402
from hsconas_cli.objective import resolve_target  # noqa: E402
from hsconas_cli.profiles import load_profile  # noqa: E402
from hsconas_cli.search import SearchConfig, search  # noqa: E402
from hsconas_cli.space import Arch, load_subspace  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default=str(ROOT / "runs" / "demo"), help="a finished hsconas run folder")
    ap.add_argument("--targets", default="30%,50%")
    ap.add_argument("--paper-beta", type=float, default=-0.5)
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--work", default=str(ROOT / "runs" / "bench-beta-below"))
    ap.add_argument("--finetune-work", default=str(ROOT / "runs" / "bench-search-value"))
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args()

    run = read_json(Path(args.run) / "run.json", "run record")
    st = {k: v.get("result", {}) for k, v in run["stages"].items()}
    if not all(st.get(k) for k in ("profile", "shrink", "finetune")):
        sys.exit(f"{args.run} has no finished fine-tune: run `hsconas run` (make demo) first")
    b = run["settings"]["budgets"]
    cfg = SearchConfig(generations=b["generations"], population=b["population"], parents=b["parents"],
                       calib_images=b["eval_calib_images"], val_images=b["eval_val_images"], seed=run["settings"]["seed"])
    profile = load_profile(st["profile"]["path"])
    sub = load_subspace(st["shrink"]["file"]) if st["shrink"].get("file") else None  # a demo that did not shrink: None
    supernet, recipe = st["shrink"]["supernet"], st["finetune"]["config"]
    objectives = {"below 0": {"beta_below": 0.0}, "below +0.5": {"beta_below": 0.5},
                  "paper": {"beta": args.paper_beta, "beta_below": args.paper_beta}}
    seeds = [int(s) for s in args.seeds.split(",")]
    data = load_data("fashion-mnist")
    rows = []
    for t in args.targets.split(","):
        target_ms, _ = resolve_target(t, profile)
        for name, obj in objectives.items():
            tag = f"{t.replace('%', 'pct')}-{name.replace(' ', '').replace('+', 'p')}"
            res = search(supernet, data, profile, f"{target_ms:.6g}", Path(args.work) / tag, subspace=sub, cfg=cfg, **obj)
            arch = Arch.from_list(res["arch"])
            accs = [fine_tune_inherited(profile.space, arch, s, supernet, recipe, Path(args.finetune_work), data)["test_top1"]
                    for s in seeds]
            m = measure_arch(profile, arch, repeats=5)
            rows.append({"target": t, "target_ms": target_ms, "objective": name, **obj, "arch": res["arch"],
                         "inherited": res["acc"], "predicted_ms": res["predicted_ms"], "measured_ms": m["measured_ms"],
                         "uncertainty_pct": m["verdict"]["uncertainty_pct"], "status": m["verdict"]["status"],
                         "test_top1": accs, "mean": statistics.fmean(accs)})
            r = rows[-1]
            print(f"T {t} ({target_ms:.4f} ms), {name}: predicted {100 * (r['predicted_ms'] / target_ms - 1):+.1f}%, measured "
                  f"{100 * (r['measured_ms'] / target_ms - 1):+.1f}% +-{r['uncertainty_pct']:.1f}% vs T; inherited "
                  f"{100 * r['inherited']:.2f}%; test top-1 {' / '.join(f'{100 * a:.2f}' for a in accs)} (mean {100 * r['mean']:.2f}%)",
                  flush=True)
    write_json(result_path(args.out, "beta_below"), {"kind": "beta-below-bench", "run": str(args.run), "seeds": seeds,
                                                    "recipe": recipe, "search": cfg.__dict__, "rows": rows})


if __name__ == "__main__":
    main()
