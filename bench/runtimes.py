"""Three runtimes on this CPU: onnxruntime (device cpu), OpenVINO (cpu-openvino) and ExecuTorch with XNNPACK
(cpu-xnnpack), issue 25. Do they agree on which networks are fast?

1. Latency per runtime of the demo's winner and the CPU column of Table I (bench/baselines.py: the torchvision
   models at 224x224x3, and the fastest, median and slowest archs of layouts A and B there).
2. The Spearman correlation between runtimes over ``--random`` random fmnist-A archs, with a bootstrap 90%
   interval over archs, beside the correlation of each runtime with itself (two passes): its noise ceiling.
3. Whether the search's winner changes with the runtime: one search per runtime's profile at the same
   percentile target (the demo's supernet, shrunk space and budget), each winner timed on all three runtimes.

Timings: each network prepared once per runtime (ExecuTorch programs lowered ahead, in a cache), then timed in
interleaved rounds (the runtime order rotated per round): the median over rounds of the mean of ``k`` back-to-back
runs, one thread each, batch 1. One heavy job at a time: run it alone. Finished parts are cached in --work;
rerunning resumes.

    python bench/runtimes.py --run runs/demo --random 50 --target 40%
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import result_path  # noqa: E402

from hsconas_cli.backends import make_backend  # noqa: E402
from exporters.executorch import Recipe  # noqa: E402
from hsconas_cli.meter import network_item  # noqa: E402
from hsconas_cli.devices import load_device  # noqa: E402
from hsconas_cli.fileio import read_json, write_json  # noqa: E402
from hsconas_cli.space import SPACES, Arch, get_space  # noqa: E402

DEVICES = ("cpu", "cpu-openvino", "cpu-xnnpack")
ROUNDS, RUN_MS = 15, 30.0  # timing rounds per network, and about how long each round's back-to-back runs last


def backends() -> dict:
    out = {}
    for name in DEVICES:
        dev = load_device(name)
        out[name] = make_backend(dev.backend, {k: v for k, v in dev.backend_options.items() if k != "protocol"})
    return out


def hsconet(space, arch: Arch) -> tuple:
    """(module, recipe) of an arch's seeded network: what ``time_networks`` takes."""
    module, _, recipe = network_item(space, arch, (1, space.in_channels, space.input_size, space.input_size))
    return module, recipe


def time_networks(models: dict, shape: tuple, backs: dict, work: Path, label: str) -> dict:
    """{network: {device: ms}}, cached per network in work/label.json."""
    cache_file = work / f"{label}.json"
    done = read_json(cache_file, "cache") if cache_file.exists() else {}
    xnn = backs["cpu-xnnpack"]
    xnn.program_dir = work / "programs"
    todo = [n for n in models if n not in done]
    if todo:
        print(f"{label}: lowering {len(todo)} ExecuTorch programs ahead ...", flush=True)
        t0 = time.perf_counter()
        xnn.lower_ahead([(models[n][0], shape, models[n][1]) for n in todo])  # (module, recipe) per name
        print(f"  {time.perf_counter() - t0:.0f} s", flush=True)
    for i, name in enumerate(todo):
        runners = {d: b.prepare(models[name][0].eval(), shape) for d, b in backs.items()}
        per = {d: [] for d in runners}
        k = {d: max(1, int(RUN_MS / max(r.time(3), 1e-3))) for d, r in runners.items()}
        for rnd in range(ROUNDS):
            order = list(runners)[rnd % 3:] + list(runners)[: rnd % 3]
            for d in order:
                per[d].append(runners[d].time(k[d]))
        for r in runners.values():
            r.close()
        done[name] = {d: statistics.median(v) for d, v in per.items()}
        write_json(cache_file, done)
        print(f"  [{i + 1}/{len(todo)}] {name}: " + ", ".join(f"{d} {ms:.3f} ms" for d, ms in done[name].items()), flush=True)
    return done


def spearman(a: list[float], b: list[float]) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def spearman_interval(a: list[float], b: list[float], n: int = 2000, seed: int = 0) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    a, b = np.asarray(a), np.asarray(b)
    vals = []
    for _ in range(n):
        idx = rng.integers(0, len(a), len(a))
        vals.append(spearman(list(a[idx]), list(b[idx])))
    return float(np.percentile(vals, 5)), float(np.percentile(vals, 95))


def table1_models() -> dict:
    import torchvision

    from bench.baselines import extreme
    from hsconas_cli.profiles import find_profile

    builders = {"MobileNetV2 1.0": "mobilenet_v2", "ShuffleNetV2 1.5": "shufflenet_v2_x1_5",
                "MobileNetV3-Large": "mobilenet_v3_large", "MnasNet 1.0": "mnasnet1_0"}
    models = {name: (getattr(torchvision.models, f)(), Recipe(f"torchvision.models:{f}", {})) for name, f in builders.items()}
    for name in ("imagenet-A", "imagenet-B"):
        prof = find_profile("cpu", name, check_mode=False)
        sp = prof.space
        rng = random.Random(0)
        sample = sorted((sp.full().sample(rng) for _ in range(200)), key=prof.predict)
        for label, arch in (("fastest", extreme(prof, True)), ("median", sample[100]), ("slowest", extreme(prof, False))):
            models[f"HSCoNAS-{name[-1]} {label}"] = hsconet(sp, arch)
    return models


def searches(run_dir: Path, target: str, work: Path) -> list[dict]:
    """One search per runtime's profile at the same percentile target, with the demo's pieces."""
    from hsconas_cli.data import load_data
    from hsconas_cli.objective import resolve_target
    from hsconas_cli.profiles import find_profile
    from hsconas_cli.search import SearchConfig, search
    from hsconas_cli.space import load_subspace

    run = read_json(run_dir / "run.json", "run record")
    st = {k: v.get("result", {}) for k, v in run["stages"].items()}
    b = run["settings"]["budgets"]
    cfg = SearchConfig(generations=b["generations"], population=b["population"], parents=b["parents"],
                       calib_images=b["eval_calib_images"], val_images=b["eval_val_images"], seed=run["settings"]["seed"])
    sub = load_subspace(st["shrink"]["file"]) if st["shrink"].get("file") else None
    data = load_data("fashion-mnist")
    rows = []
    for dev in DEVICES:
        out = work / f"search-{dev}"
        prof = find_profile(dev, get_space("fmnist-A"), check_mode=False)
        if (out / "result.json").exists():
            res = read_json(out / "result.json", "search result")
        else:
            target_ms, _ = resolve_target(target, prof)
            res = search(st["shrink"]["supernet"], data, prof, f"{target_ms:.6g}", out, subspace=sub, cfg=cfg)
        rows.append({"device": dev, "profile": prof.name, "arch": res["arch"], "inherited": res["acc"],
                     "predicted_ms": res["predicted_ms"], "target_ms": res["target"]["target_ms"]})
        print(f"search on {dev} ({prof.name}): T {res['target']['target_ms']:.4f} ms, winner predicted "
              f"{res['predicted_ms']:.4f} ms, inherited {100 * res['acc']:.2f}%", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default=str(ROOT / "runs" / "demo"), help="a finished hsconas run folder (its winner, supernet)")
    ap.add_argument("--random", type=int, default=50)
    ap.add_argument("--target", default="40%")
    ap.add_argument("--skip", default="", help="comma-separated parts to skip: table1, random, search")
    ap.add_argument("--work", default=str(ROOT / "runs" / "bench-runtimes"))
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args()
    work, skip = Path(args.work), set(filter(None, args.skip.split(",")))
    work.mkdir(parents=True, exist_ok=True)
    backs = backends()
    versions = {d: b.versions() for d, b in backs.items()}
    sp = SPACES["fmnist-A"]
    fm_shape = (1, sp.in_channels, sp.input_size, sp.input_size)
    doc: dict = {"kind": "runtimes-bench", "versions": versions, "rounds": ROUNDS}
    winner = read_json(Path(args.run) / "search" / "result.json", "search result")
    if "table1" not in skip:
        models = {"demo winner (fmnist-A)": hsconet(sp, Arch.from_list(winner["arch"]))}
        doc["demo_winner"] = time_networks(models, fm_shape, backs, work, "demo-winner")
        doc["table1"] = time_networks(table1_models(), (1, 3, 224, 224), backs, work, "table1")
    if "random" not in skip:
        rng = random.Random(0)
        archs = [sp.full().sample(rng) for _ in range(args.random)]
        models = {f"random {i}": hsconet(sp, a) for i, a in enumerate(archs)}
        first = time_networks(models, fm_shape, backs, work, "random")
        again = time_networks(models, fm_shape, backs, work, "random-again")
        names = list(models)
        corr = {}
        for i, a in enumerate(DEVICES):
            corr[f"{a} vs itself"] = {"rho": spearman([first[n][a] for n in names], [again[n][a] for n in names])}
            for b in DEVICES[i + 1:]:
                x, y = [first[n][a] for n in names], [first[n][b] for n in names]
                corr[f"{a} vs {b}"] = {"rho": spearman(x, y), "interval_90": spearman_interval(x, y)}
        doc["random"] = {"archs": [a.to_list() for a in archs], "first": first, "again": again, "spearman": corr}
        for k, v in corr.items():
            print(f"Spearman {k}: {v['rho']:.3f}" + (f" [90%: {v['interval_90'][0]:.3f}, {v['interval_90'][1]:.3f}]"
                                                     if "interval_90" in v else ""), flush=True)
    if "search" not in skip:
        rows = searches(Path(args.run), args.target, work)
        winners = {f"winner on {r['device']}": hsconet(sp, Arch.from_list(r["arch"])) for r in rows}
        timed = time_networks(winners, fm_shape, backs, work, "winners")
        doc["search"] = {"target": args.target, "rows": rows, "timed": timed,
                         "distinct_winners": len({json.dumps(r["arch"]) for r in rows})}
    write_json(result_path(args.out, "runtimes"), doc)


if __name__ == "__main__":
    main()
