"""The latency verdict (issue 13): how far a user can trust what hsconas says a network measures.

Sections (all by default; run alone on the machine, timings are the subject):

* ``model``: the latency model each CPU profile chooses on its held-out archs (additive LUT + B against the
  power model k x S^p), from the stored measurements, and what each predicts (the straight line a x S + b
  too, rejected for its extrapolation) for the
  slowest and other networks of bench/results/baselines.json (measured there);
* ``repeat``: --repeats separate ``hsconas measure`` runs (fresh processes) of one arch on this machine:
  their spread against the profile's noise floor;
* ``load``: the same measurement with --hogs busy processes beside it: what hsconas reports, and whether its
  re-measured verdict stays within the noise floor of the idle median or says it could not;
* ``check``: ``profiles check`` timed; --checks checks of a profile that holds here (false alarms), and
  --checks checks of the same profile with every time divided by 1.15 (a machine 15% slower than the
  profile says: caught every time?).

    python bench/verdict.py --device cpu --space fmnist-A
    python bench/verdict.py --sections model
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import latest_result, result_path  # noqa: E402

from hsconas_cli.drift import _scaled, measure_drift, rescale_profile  # noqa: E402
from hsconas_cli.fileio import write_json  # noqa: E402
from hsconas_cli.profiles import choose_model, find_profile, load_profile, save_profile  # noqa: E402
from hsconas_cli.space import SPACES, Arch, arch_to_json  # noqa: E402

HSCONAS = str(Path(sys.executable).with_name("hsconas"))


def section_model(out: dict) -> None:
    print("latency model per CPU profile (held-out RMSE / noise floor; chosen = lower RMSE)")
    rows = {}
    for space in ("fmnist-A", "imagenet-A", "imagenet-B"):
        prof = find_profile("cpu", space, version=1 if space != "fmnist-A" else 2, check_mode=False)
        model, _ = choose_model(prof.doc)
        h = model["held_out"]
        rows[space] = {"profile": prof.name, "chosen": model["kind"], **{k: v for k, v in h.items()}}
        line = _line_fit(prof)
        rows[space]["line"] = line
        print(f"  {prof.name:22s} additive {h['additive']['rmse_over_floor']:.2f}x, power {h['power']['rmse_over_floor']:.2f}x "
              f"(p = {h['power']['power']:.3f}), line {line['rmse_over_floor']:.2f}x -> {model['kind']}")
    base = json.loads(latest_result("baselines").read_text())
    print("networks of bench/results/baselines.json: measured vs predicted, additive and chosen model")
    nets = []
    for r in base:
        if not r.get("arch") or r.get("measured_ms") is None:
            continue
        space = "imagenet-A" if "(48, 128" in r["model"] else "imagenet-B"
        prof = find_profile("cpu", space, version=1, check_mode=False)
        arch = Arch.from_list(r["arch"])
        model, _ = choose_model(prof.doc)
        s = prof.lut_sum(arch) + prof.fixed_ms
        add, chosen = s + prof.doc["bias"]["ms"], model["scale"] * s ** model["power"] + model["bias_ms"]
        line = _line_fit(prof)
        lin = line["a"] * s + line["b"]
        nets.append({"model": r["model"], "measured_ms": r["measured_ms"], "additive_ms": add, "chosen_ms": chosen, "line_ms": lin,
                     "additive_err_pct": 100 * (add / r["measured_ms"] - 1), "chosen_err_pct": 100 * (chosen / r["measured_ms"] - 1),
                     "line_err_pct": 100 * (lin / r["measured_ms"] - 1)})
        print(f"  {r['model']:48s} measured {r['measured_ms']:7.3f} ms, additive {nets[-1]['additive_err_pct']:+5.1f}%, "
              f"chosen ({model['kind']}) {nets[-1]['chosen_err_pct']:+5.1f}%, line {nets[-1]['line_err_pct']:+5.1f}%")
    out["model"] = {"profiles": rows, "baseline_networks": nets}


def _line_fit(prof) -> dict:
    """The straight line a x S + b on the bias archs, scored on the held-out archs (not offered as a model)."""
    import numpy as np

    d, v = prof.doc, prof.validation
    a, b = np.polyfit(d["bias"]["lut_sum_ms"], d["bias"]["measured_ms"], 1)
    s = np.array([prof.lut_sum(Arch.from_list(x)) + prof.fixed_ms for x in v["arch_list"]])
    rmse = float(np.sqrt(np.mean((a * s + b - np.array(v["measured_ms"])) ** 2)))
    return {"a": float(a), "b": float(b), "rmse_ms": rmse, "rmse_over_floor": rmse / v["noise_floor_ms"]}


def _measure_cli(arch_file: Path, device: str, env: dict, budget: float = 20.0) -> dict:
    p = subprocess.run([HSCONAS, "measure", "--arch", str(arch_file), "--device", device, "--budget", str(budget), "--json"],
                       capture_output=True, text=True, env=env)
    try:
        res = json.loads(p.stdout)
    except ValueError:
        res = {}
    if p.returncode != 0:
        res["error"] = p.stderr.strip()
    return res


def section_repeat(out: dict, prof, arch_file: Path, env: dict, n: int) -> None:
    rows = []
    for i in range(n):
        r = _measure_cli(arch_file, prof.device.name, env)
        rows.append(r)
        v = r.get("verdict", {})
        print(f"  run {i + 1:2d}: {r.get('measured_ms', float('nan')):.4f} ms +-{v.get('uncertainty_pct', 0):.1f}% "
              f"{v.get('status', r.get('error'))}, kept {v.get('kept')}, other cores up to {v.get('max_other_cores')}")
    ms = [r["measured_ms"] for r in rows if "measured_ms" in r and "error" not in r]
    med = statistics.median(ms)
    floor = prof.validation["noise_floor_pct"]
    f = {"runs": len(ms), "median_ms": med, "spread_pct": 100 * (max(ms) - min(ms)) / med,
         "sd_pct": 100 * statistics.stdev(ms) / med, "noise_floor_pct": floor,
         "statuses": [r.get("verdict", {}).get("status", "error") for r in rows], "ms": ms}
    print(f"repeatability: {len(ms)} runs, median {med:.4f} ms, range {f['spread_pct']:.1f}%, sd {f['sd_pct']:.1f}% "
          f"against the profile's noise floor {floor:.1f}% (target: sd within it)")
    out["repeat"] = f


def section_load(out: dict, prof, arch_file: Path, env: dict, hogs: int, idle_ms: float | None, burst_s: float | None = None) -> None:
    """``hogs`` busy processes beside ``hsconas measure``: for the whole measurement, or for its first ``burst_s``."""
    code = "while True: pass" if burst_s is None else f"import time\nt = time.time()\nwhile time.time() - t < {burst_s}: pass"
    procs = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(hogs)]
    try:
        time.sleep(0.5)
        r = _measure_cli(arch_file, prof.device.name, env)
    finally:
        for p in procs:
            p.kill()
            p.wait()
    v = r.get("verdict", {})
    f = {"hogs": hogs, "burst_s": burst_s, "result": v.get("status"), "exit_error": r.get("error"), "note": v.get("note"),
         "measured_ms": r.get("measured_ms"), "idle_median_ms": idle_ms}
    if idle_ms and r.get("measured_ms"):
        f["vs_idle_pct"] = 100 * (r["measured_ms"] / idle_ms - 1)
    when = "throughout" if burst_s is None else f"for the first {burst_s:g} s"
    print(f"under load ({hogs} busy processes {when}): {f['note']}" + (f"; {f['vs_idle_pct']:+.1f}% vs the idle median" if "vs_idle_pct" in f else ""))
    out.setdefault("load", []).append(f)


def section_check(out: dict, prof, n: int, root: Path) -> None:
    first = measure_drift(prof)
    print(f"first check of the shipped profile here: {first.describe()}")
    res = {"first": first.to_dict()}
    here = prof
    if first.outcome == "uniform":  # make a profile that holds here, as `run` would
        here = load_profile(rescale_profile(prof, first, root))
        print(f"  rescaled: {here.name}")
    elif first.outcome == "changed":  # recalibrate, as `run` would, and count false alarms against that
        from hsconas_cli.calibrate import calibrate

        here = load_profile(calibrate(prof.device, prof.space, root=root))
        print(f"  recalibrated: {here.name} ({here.doc['timing']['calibration_seconds']} s)")
    quiet = [measure_drift(here) for _ in range(n)]
    alarms = sum(c.outcome in ("uniform", "changed") for c in quiet)
    doc = {k: v for k, v in here.doc.items() if k not in ("checksum", "profile_version")}
    slow = load_profile(save_profile(_scaled(doc, 1 / 1.15), root))
    slowed = [measure_drift(slow) for _ in range(n)]
    caught = sum(c.outcome in ("uniform", "changed") for c in slowed)
    secs = [c.seconds for c in quiet + slowed]
    res.update(quiet=[c.to_dict() for c in quiet], slowed=[c.to_dict() for c in slowed], false_alarms=alarms, caught=caught,
               max_seconds=max(secs), median_seconds=statistics.median(secs))
    print(f"checks of a profile that holds: {alarms} false alarms in {n} (drifts "
          + ", ".join(f"{c.drift_pct:+.1f}%" for c in quiet) + f"; threshold +-{quiet[0].threshold_pct:.1f}%)")
    print(f"checks with a 15% slowdown: caught {caught} of {n} (drifts " + ", ".join(f"{c.drift_pct:+.1f}% {c.outcome}" for c in slowed) + ")")
    print(f"check time: median {res['median_seconds']:.1f} s, max {res['max_seconds']:.1f} s (target <= 30 s)")
    out["check"] = res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--space", default="fmnist-A")
    ap.add_argument("--sections", default="model,repeat,load,check")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--checks", type=int, default=10)
    ap.add_argument("--hogs", default="1,2", help="busy processes beside the measurement, one load test per value")
    ap.add_argument("--burst", type=float, default=10.0, help="seconds of the last load test's busy processes (the CLI starts in about 4)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "verdict.json"))
    args = ap.parse_args()
    sections = args.sections.split(",")
    out: dict = {"kind": "verdict-bench", "sections": sections}
    if "model" in sections:
        section_model(out)
    if set(sections) & {"repeat", "load", "check"}:
        tmp = Path(tempfile.mkdtemp(prefix="hsconas-verdict-"))
        root = tmp / "profiles"  # a copy: checks and rescales never touch device_profiles/
        shutil.copytree(ROOT / "device_profiles", root)
        env = {**__import__("os").environ, "HSCONAS_PROFILES": str(root)}
        prof = find_profile(args.device, args.space, root=root)
        arch = SPACES[args.space].full().sample(random.Random(0))
        arch_file = tmp / "arch.json"
        write_json(arch_file, arch_to_json(SPACES[args.space], arch))
        out["profile"] = prof.name
        if "check" in sections:
            section_check(out, prof, args.checks, root)
        if "repeat" in sections:
            section_repeat(out, find_profile(args.device, args.space, root=root), arch_file, env, args.repeats)
        if "load" in sections:
            idle = out.get("repeat", {}).get("median_ms")
            for h in args.hogs.split(","):
                section_load(out, find_profile(args.device, args.space, root=root), arch_file, env, int(h), idle)
            section_load(out, find_profile(args.device, args.space, root=root), arch_file, env, 2, idle, burst_s=args.burst)
        shutil.rmtree(tmp, ignore_errors=True)
    write_json(result_path(args.out, "verdict"), out)


if __name__ == "__main__":
    main()
