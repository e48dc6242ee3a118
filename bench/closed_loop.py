"""The closed loop (issue 13): do the searched winners run at T when measured, before and after the loop?

For each target (the same five as bench/search.py): the default EA on the demo-budget supernet, then what
``hsconas run`` does at the end of its search: the 8 best candidates measured on this machine, the winner
replaced by the most accurate candidate that meets T by measurement where its measurement misses T beyond
its uncertainty. The profile is first checked here and rescaled if it drifted uniformly or recalibrated if it
changed otherwise, as ``run`` does (in a copy of device_profiles/); the searches themselves ran on the shipped
profile, so the loop also has to rescue a prediction made with a profile from another machine. Prints, per target, the searched winner's and the chosen arch's measured
latency against T; the target is within +-5% of T at >= 4 of 5 targets.

The searches are resumable and cached in --work; ``--phase search`` runs only them (CPU-heavy, not timed),
``--phase measure`` only the measurements (run it alone on the machine).

    python bench/closed_loop.py --supernet runs/bench-ranking/demo/checkpoint.pt
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import result_path  # noqa: E402

from hsconas_cli.data import load_data  # noqa: E402
from hsconas_cli.drift import checked_profile  # noqa: E402
from hsconas_cli.calibrate import calibrate  # noqa: E402
from hsconas_cli.fileio import write_json  # noqa: E402
from hsconas_cli.profiles import find_profile  # noqa: E402
from hsconas_cli.search import SearchConfig, search  # noqa: E402
from hsconas_cli.closed_loop import verify_on_device  # noqa: E402
from hsconas_cli.checkpoint import load_supernet  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--supernet", default=str(ROOT / "runs" / "bench-ranking" / "demo" / "checkpoint.pt"))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--targets", default="@0.12,25%,50%,75%,@0.55")
    ap.add_argument("--candidates", type=int, default=8)
    ap.add_argument("--phase", choices=["all", "search", "measure"], default="all")
    ap.add_argument("--work", default=str(ROOT / "runs" / "bench-closed-loop"))
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "closed_loop.json"))
    args = ap.parse_args()

    data = load_data("fashion-mnist")
    net, _ = load_supernet(args.supernet)
    space = net.space
    work = Path(args.work)
    base_profile = find_profile(args.device, space)  # searched with the shipped profile; the loop measures here
    cfg = SearchConfig(generations=20, population=20, parents=8, calib_images=500, val_images=1000)
    targets = []
    for t in args.targets.split(","):
        if t.startswith("@"):
            lo, hi = base_profile.reachable()
            t = f"{lo + float(t[1:]) * (hi - lo):.4f}"
        targets.append(t)
    if args.phase in ("all", "search"):
        for t in targets:
            d = work / f"ea-{t.replace('%', 'pct')}"
            res = search(args.supernet, data, base_profile, t, d, cfg=cfg)
            print(f"searched T = {t}: winner {100 * res['acc']:.2f}%, predicted {res['predicted_ms']:.4f} ms", flush=True)
    if args.phase == "search":
        return

    tmp = Path(tempfile.mkdtemp(prefix="hsconas-loop-"))
    root = tmp / "profiles"
    shutil.copytree(ROOT / "device_profiles", root)
    profile = find_profile(args.device, space, root=root)
    profile, action = checked_profile(profile, recalibrate=lambda: calibrate(profile.device, space, root=root), root=root)
    rows = []
    for t in targets:
        d = work / f"ea-{t.replace('%', 'pct')}"
        loop_dir = tmp / d.name
        shutil.copytree(d, loop_dir)
        res = verify_on_device(loop_dir / "result.json", profile, candidates=args.candidates)
        T = res["target"]["target_ms"]
        cl = res["closed_loop"]
        w, c = cl["candidates"][0], cl["candidates"][cl["chosen"]]
        rows.append({"target": t, "T_ms": T, "winner": w, "chosen": c, "replaced": cl["replaced"], "reason": cl["reason"]})
        print(f"T = {t} ({T:.4f} ms): winner measured {w['vs_target_pct']:+.1f}% +-{w['uncertainty_pct']:.1f}% ({w['status']}), "
              f"chosen {c['vs_target_pct']:+.1f}% ({'replaced' if cl['replaced'] else 'kept'}; acc {100 * w['acc']:.2f}% -> "
              f"{100 * c['acc']:.2f}%)", flush=True)
    before = sum(abs(r["winner"]["vs_target_pct"]) <= 5 for r in rows)
    after = sum(abs(r["chosen"]["vs_target_pct"]) <= 5 for r in rows)
    print(f"\nmeasured within +-5% of T: searched winners {before} of {len(rows)}, after the closed loop {after} of {len(rows)} "
          f"(target >= 4 of 5); profile {action['action']}: {action['check']['description']}")
    write_json(result_path(args.out, "closed_loop"), {"kind": "closed-loop-bench", "supernet": args.supernet, "profile_action": action,
                                "targets": rows, "within_5_pct_before": before, "within_5_pct_after": after})
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
