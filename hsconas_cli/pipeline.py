"""The whole pipeline in one run folder: profile -> supernet -> shrink -> search -> fine-tune -> export -> report.

Every stage is one library call that is resumable by itself; ``run.json`` records the settings and each
finished stage, so a rerun of the same command skips what is done and resumes the stage that was cut off.
A rerun with other settings is refused rather than mixed in.

Presets size the budgets: ``smoke`` (a minute or two, to try the pipeline), ``demo`` (at most 20 minutes on a
2-core CPU: what ``make demo`` runs), ``paper`` (the paper's settings).
"""

from __future__ import annotations

import datetime as _dt
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from hsconas_cli.data import check_data_fits, load_data
from hsconas_cli.devices import load_device, machine_facts
from hsconas_cli.errors import HsconasError, Interrupted
from hsconas_cli.fileio import resumable_state, write_json
from hsconas_cli.objective import parse_target, resolve_target
from hsconas_cli.profiles import Profile, find_profile, load_profile, versions
from hsconas_cli.report import write_report
from hsconas_cli.space import SearchSpace, format_count, get_space
from hsconas_cli.ui import ProgressFn

STAGES = ("profile", "supernet", "shrink", "search", "finetune", "export", "report")
# Each stage's share of a demo's time, so that the progress bar tracks time: `make demo` on a fresh Intel Xeon VM
# (issue 23) spent profile 119 s, supernet 364 s, search 91 s, fine-tune 563 s; export and the report took 11 s
# and 1 s on AMD. The demo no longer shrinks (it took 169 s): a preset that does moves through its share quickly.
STAGE_SECONDS = {"profile": 119, "supernet": 364, "shrink": 10, "search": 91, "finetune": 563, "export": 15, "report": 5}


def stage_span(name: str) -> tuple[float, float]:
    """Where a stage starts on the run's progress bar, and its width, as fractions of the whole."""
    total = sum(STAGE_SECONDS.values())
    before = sum(STAGE_SECONDS[s] for s in STAGES[: STAGES.index(name)])
    return before / total, STAGE_SECONDS[name] / total


# Why the demo does not shrink (bench/shrink_samples.py, docs/BENCHMARKS.md "Shrinking at the demo budget").
SHRINK_SKIPPED = ("not at this budget: with the demo's supernet, 4 samples per op decided none of 8 layers and 32 decided "
                  "1 of 4 (the ops' Q differ by 0.001-0.013 against 2 standard errors of 0.006-0.057), and the "
                  "stage's fine-tunings moved random subnets by +0.26 +-0.21 points; the whole space is searched")


@dataclass(frozen=True)
class RunPreset:
    """The budgets of ``hsconas run``, stage by stage (a ``None`` limit: the whole training split; no shrink samples:
    no shrinking, the whole space is searched)."""

    calib_archs: int
    calib_holdout: int
    train_epochs: int
    train_limit: int | None
    shrink_samples: int
    shrink_finetune_epochs: int
    shrink_finetune_limit: int | None
    eval_calib_images: int
    eval_val_images: int
    generations: int
    population: int
    parents: int
    finetune_epochs: int
    finetune_limit: int | None


PRESETS = {
    "smoke": RunPreset(
        calib_archs=6, calib_holdout=4,
        train_epochs=1, train_limit=256,
        shrink_samples=2, shrink_finetune_epochs=1, shrink_finetune_limit=64,
        eval_calib_images=32, eval_val_images=64,
        generations=2, population=6, parents=2,
        finetune_epochs=1, finetune_limit=128,
    ),
    "demo": RunPreset(  # no shrinking: see SHRINK_SKIPPED
        calib_archs=100, calib_holdout=50,
        train_epochs=2, train_limit=None,
        shrink_samples=0, shrink_finetune_epochs=1, shrink_finetune_limit=8_000,
        eval_calib_images=500, eval_val_images=1_000,
        generations=8, population=20, parents=8,
        finetune_epochs=5, finetune_limit=None,
    ),
    "paper": RunPreset(
        calib_archs=100, calib_holdout=50,
        train_epochs=100, train_limit=None,
        shrink_samples=100, shrink_finetune_epochs=15, shrink_finetune_limit=None,
        eval_calib_images=2_000, eval_val_images=5_000,
        generations=20, population=50, parents=20,
        finetune_epochs=100, finetune_limit=None,
    ),
}


def _reusable_profile(device, space: SearchSpace, root: Path | None) -> Profile | None:
    """The newest profile of this device and space whose device settings, CPU and GPU models and backend versions
    match this machine; None if there is none. The host name is not compared (every cloud VM of a kind is
    called ``vm``): whether the profile still holds here is decided by measuring (drift.ensure_current)."""
    if not versions(device.name, space.name, root):
        return None
    try:
        prof = find_profile(device.name, space, root=root)
    except HsconasError:
        return None
    facts, m = machine_facts(), prof.doc["machine"]
    same = (all(m.get(k) == facts.get(k) for k in ("cpu", "gpu", "onnxruntime", "tensorrt", "torch"))
            and prof.device.to_dict() == device.to_dict())
    if same and device.backend in ("openvino", "executorch"):  # the runtime's own version, which facts do not hold
        from hsconas_cli.backends import make_backend

        same = prof.doc["backend"]["versions"] == make_backend(device.backend, device.backend_options).versions()
    return prof if same else None


def run_pipeline(
    device_name: str,
    latency: str,
    data_spec: str,
    out_dir: str | Path,
    *,
    space: SearchSpace | str | None = None,
    preset: str = "demo",
    seed: int = 0,
    profiles_root: Path | None = None,
    profile_check: bool = True,
    progress: ProgressFn | None = None,
    log: Callable[[str], None] = lambda s: None,
) -> dict:
    if preset not in PRESETS:
        raise HsconasError(f"unknown preset {preset!r}; presets: {', '.join(PRESETS)}")
    p = PRESETS[preset]
    out = Path(out_dir)
    data = load_data(data_spec)
    from hsconas_cli.space import DEFAULT_SPACE_FOR_DATA

    sp = get_space(space or DEFAULT_SPACE_FOR_DATA[data.name])
    check_data_fits(sp, data)
    device = load_device(device_name, profiles_root)
    parse_target(latency)  # a bad target is refused before anything is written
    if not (out / "run.json").exists():  # and one outside the range of a profile this run would reuse, too
        known = _reusable_profile(device, sp, profiles_root)
        if known is not None:
            resolve_target(latency, known)
    settings = {"device": device.to_dict(), "latency": str(latency), "data": data_spec, "space": sp.to_dict(),
                "preset": preset, "budgets": asdict(p), "seed": seed}
    run_file = out / "run.json"
    run = resumable_state(run_file, settings, "a run", "choose another --out")
    run = run or {"kind": "hsconas-run", "settings": settings, "stages": {}, "created": _now()}
    _clean_stale_temporaries(out)
    stages = run["stages"]

    def save() -> None:
        write_json(run_file, run)

    def stage(name: str, fn: Callable[[], dict]) -> dict:
        if stages.get(name, {}).get("done"):
            log(f"{name}: done before, skipped")
            return stages[name]["result"]
        log(f"{name}: {'resuming' if name in stages else 'starting'}")
        t0 = time.perf_counter()
        stages.setdefault(name, {"runs": 0, "seconds": 0.0})
        stages[name]["runs"] += 1
        save()
        try:
            res = fn()
        except (KeyboardInterrupt, Interrupted):
            raise Interrupted(f"hsconas run interrupted in stage {name}; what was done is kept in {out}: rerun the same "
                              "command to resume") from None
        stages[name].update(done=True, result=res, seconds=stages[name]["seconds"] + time.perf_counter() - t0, finished=_now())
        save()
        return res

    def tick(stage_name: str) -> ProgressFn | None:
        if progress is None:
            return None
        k = STAGES.index(stage_name)
        start, width = stage_span(stage_name)
        return lambda desc, d, t: progress(f"{stage_name} ({k + 1}/{len(STAGES)}): {desc}",
                                           round(1000 * (start + width * d / max(t, 1))), 1000)

    # 1. the device profile: reuse a matching one once a check here confirms it (or rescale it), else calibrate
    def do_profile() -> dict:
        from hsconas_cli.calibrate import calibrate
        from hsconas_cli.drift import ensure_current

        def recalibrate() -> Path:  # the preset's sizes, capped by the device's where networks are slow to prepare
            sizes = device.calibration or {}
            return calibrate(device, sp, archs=min(p.calib_archs, sizes.get("archs", p.calib_archs)),
                             holdout=min(p.calib_holdout, sizes.get("holdout", p.calib_holdout)), seed=seed,
                             root=profiles_root, progress=tick("profile"))

        prof = _reusable_profile(device, sp, profiles_root)
        reused, check = prof is not None, None
        if not reused:
            prof = load_profile(recalibrate())
        elif profile_check:
            prof, check = ensure_current(prof, recalibrate=recalibrate, root=profiles_root, log=log, progress=tick("profile"))
            reused = check["action"] != "recalibrated"
        _, where = resolve_target(latency, prof)
        return {"path": str(prof.path), "name": prof.name, "reused": reused, "check": check, "target": where,
                "validation": prof.summary()["validation"], "calibration_seconds": prof.doc["timing"]["calibration_seconds"]}

    prof_res = stage("profile", do_profile)
    profile = load_profile(prof_res["path"])
    target_ms = prof_res["target"]["target_ms"]

    # 2. the supernet
    def do_supernet() -> dict:
        from hsconas_cli.train import preset as train_preset, train_supernet

        cfg = train_preset("supernet", data.name, epochs=p.train_epochs, limit=p.train_limit, seed=seed)
        d = out / "supernet"
        res = train_supernet(data_spec, sp, d, cfg=cfg, resume=(d / "checkpoint.pt").exists(), progress=tick("supernet"), data=data)
        return {"checkpoint": res["checkpoint"], "history": res["history"], "config": cfg.to_dict()}

    sup_res = stage("supernet", do_supernet)

    # 3. progressive space shrinking
    def do_shrink() -> dict:
        from hsconas_cli.shrink import ShrinkConfig, describe_decision, shrink

        if not p.shrink_samples:
            return {"skipped": SHRINK_SKIPPED, "file": None, "supernet": sup_res["checkpoint"], "chosen": {}, "decisions": {},
                    "sizes": [{"distinct_text": format_count(sp.full().count())}]}
        cfg = ShrinkConfig(samples=p.shrink_samples, finetune_epochs=p.shrink_finetune_epochs,
                           finetune_limit=p.shrink_finetune_limit, calib_images=p.eval_calib_images,
                           val_images=p.eval_val_images, seed=seed)
        doc = shrink(sup_res["checkpoint"], data, profile, str(target_ms), out / "shrink", cfg=cfg, progress=tick("shrink"))
        return {"file": str(out / "shrink" / "shrunk-space.json"), "supernet": doc["supernet"],
                "sizes": [doc["initial_size"]] + [st["size_after"] for st in doc["stages"]],
                "chosen": {k: v for st in doc["stages"] for k, v in st["chosen"].items()},
                "decisions": {k: describe_decision(d) for st in doc["stages"] for k, d in st["decisions"].items()}}

    shr_res = stage("shrink", do_shrink)

    # 4. evolutionary search in the shrunk space
    def do_search() -> dict:
        from hsconas_cli.search_value import describe as describe_search_value
        from hsconas_cli.search import SearchConfig, record_search_value, search, verify_on_device
        from hsconas_cli.space import load_subspace

        cfg = SearchConfig(generations=p.generations, population=p.population, parents=p.parents, seed=seed,
                           calib_images=p.eval_calib_images, val_images=p.eval_val_images)
        res = search(shr_res["supernet"], data, profile, str(target_ms), out / "search",
                     subspace=load_subspace(shr_res["file"]) if shr_res.get("file") else None, cfg=cfg, progress=tick("search"))
        verify_on_device(out / "search" / "result.json", profile, log=lambda m: log(f"closed loop: {m}"), progress=tick("search"))
        res = record_search_value(out / "search" / "result.json", data, profile, cfg, progress=tick("search"))
        for line in describe_search_value(res["search_value"]):
            log(f"what the search bought: {line}")
        return {"closed_loop": res["closed_loop"], "search_value": res["search_value"], "result": str(out / "search" / "result.json"), "acc": res["acc"], "predicted_ms": res["predicted_ms"],
                "F": res["F"], "evaluated": res["evaluated"], "arch": res["arch"]}

    sea_res = stage("search", do_search)

    # 5. fine-tune the winner from its inherited weights
    def do_finetune() -> dict:
        from hsconas_cli.space import load_arch
        from hsconas_cli.train import preset as train_preset, retrain

        _, arch = load_arch(sea_res["result"])
        cfg = train_preset("retrain", data.name, epochs=p.finetune_epochs, limit=p.finetune_limit, lr=0.1,
                           warmup_epochs=0.0, seed=seed)
        d = out / "hsconet"
        res = retrain(data_spec, sp, arch, d, cfg=cfg, inherit=shr_res["supernet"], resume=(d / "checkpoint.pt").exists(),
                      progress=tick("finetune"), data=data)
        return {"checkpoint": res["checkpoint"], "test_top1": res["test_top1"], "val_top1": res["val_top1"], "config": cfg.to_dict()}

    ft_res = stage("finetune", do_finetune)

    # 6. export the fine-tuned HSCoNet in the device's format, measured here beside its prediction
    def do_export() -> dict:
        from hsconas_cli.export import DEPLOYED_FORMAT, export

        fmt = DEPLOYED_FORMAT.get(profile.device.backend, "onnx")
        if progress:
            progress(f"export (6/7): {fmt}, parity check, latency", 5000, 7000)
        rep = export(fmt, sea_res["result"], out / "export", checkpoint=ft_res["checkpoint"], data_spec=data_spec,
                     profile=profile, batch_size=profile.device.batch_size)
        return {k: v for k, v in rep.items() if k != "metadata"}

    exp_res = stage("export", do_export)

    # 7. the report
    def do_report() -> dict:
        if progress:
            progress("report (7/7)", 6000, 7000)
        return {"path": str(write_report(out, run, profile))}

    stage("report", do_report)
    return {"run": str(out), "profile": prof_res, "supernet": sup_res, "shrink": shr_res, "search": sea_res,
            "finetune": ft_res, "export": exp_res, "report": str(out / "report.md"), "target_ms": target_ms}


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _clean_stale_temporaries(out: Path) -> None:
    """Remove what a killed process left of atomic writes (``.name.xxxx.tmp``): never a finished file."""
    if out.exists():
        for tmp in out.rglob(".*.tmp"):
            tmp.unlink(missing_ok=True)
