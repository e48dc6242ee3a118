"""The whole pipeline in one run folder: profile -> supernet -> shrink -> search -> fine-tune -> export -> report.

Every stage is a ``stage_*`` function of a ``RunContext`` that makes one library call, resumable by itself. A
``RunLedger`` keeps ``run.json`` (the settings and each finished stage, so a rerun of the same command skips what
is done and resumes the stage that was cut off; a rerun with other settings is refused rather than mixed in), the
progress bar's scale (each stage's share of the time, never going back), and the run folder's lock (a second
command on the same folder is refused at once).

Presets size the budgets: ``smoke`` (a minute or two, to try the pipeline), ``demo`` (at most 20 minutes on a
2-core CPU: what ``make demo`` runs), ``paper`` (the paper's settings).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

from hsconas_cli.data import DataBundle, check_data_fits, load_data
from hsconas_cli.devices import Device, load_device
from hsconas_cli.drift import profile_for_run, reusable_profile
from hsconas_cli.errors import HsconasError, Interrupted
from hsconas_cli.fileio import folder_lock, resumable_state, write_json
from hsconas_cli.objective import parse_target, resolve_target
from hsconas_cli.profiles import Profile, load_profile
from hsconas_cli.report import write_report
from hsconas_cli.selection import PREFER
from hsconas_cli.space import DEFAULT_SPACE_FOR_DATA, SearchSpace, format_count, get_space
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
    select_images: int  # held-out images that re-score the search's best candidates (selection.py)
    top_k: int  # of the screen's best archs that fit T, re-scored with the uniform baselines
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
        eval_calib_images=32, eval_val_images=64, select_images=128, top_k=3,
        generations=2, population=6, parents=2,
        finetune_epochs=1, finetune_limit=128,
    ),
    "demo": RunPreset(  # no shrinking: see SHRINK_SKIPPED
        calib_archs=100, calib_holdout=50,
        train_epochs=2, train_limit=None,
        shrink_samples=0, shrink_finetune_epochs=1, shrink_finetune_limit=8_000,
        eval_calib_images=500, eval_val_images=1_000, select_images=10_000, top_k=15,
        generations=8, population=20, parents=8,
        finetune_epochs=5, finetune_limit=None,
    ),
    "paper": RunPreset(
        calib_archs=100, calib_holdout=50,
        train_epochs=100, train_limit=None,
        shrink_samples=100, shrink_finetune_epochs=15, shrink_finetune_limit=None,
        eval_calib_images=2_000, eval_val_images=5_000, select_images=10_000, top_k=20,
        generations=20, population=50, parents=20,
        finetune_epochs=100, finetune_limit=None,
    ),
}


class RunLedger:
    """``run.json`` of a run folder (the settings, and per stage its runs, seconds, result and end), the progress
    bar (one scale of ``PROGRESS_SCALE`` over the whole run, each stage on its span, never going back), and the
    folder's lock, held while the run is open (``open``)."""

    PROGRESS_SCALE = 1000

    def __init__(self, out: Path, settings: dict, progress: ProgressFn | None, log: Callable[[str], None]):
        self.out, self.path, self.settings = out, out / "run.json", settings
        self.progress, self.log = progress, log
        self.record: dict = {}
        self._shown = 0

    @contextlib.contextmanager
    def open(self) -> Iterator["RunLedger"]:
        """Lock the folder, then take up its run (refused where it was started with other settings) or start one."""
        with folder_lock(self.out, "hsconas run"):
            self.record = resumable_state(self.path, self.settings, "a run", "choose another --out") or {
                "kind": "hsconas-run", "settings": self.settings, "stages": {}, "created": _now()}
            _clean_stale_temporaries(self.out)
            yield self

    @property
    def stages(self) -> dict:
        return self.record["stages"]

    def save(self) -> None:
        write_json(self.path, self.record)

    def run(self, name: str, fn: Callable[[], dict]) -> dict:
        """Stage ``name``'s result: recorded where it is done, else ``fn()``, counted and timed in run.json."""
        stages = self.stages
        if stages.get(name, {}).get("done"):
            self.log(f"{name}: done before, skipped")
            return stages[name]["result"]
        self.log(f"{name}: {'resuming' if name in stages else 'starting'}")
        t0 = time.perf_counter()
        stages.setdefault(name, {"runs": 0, "seconds": 0.0})
        stages[name]["runs"] += 1
        self.save()
        try:
            res = fn()
        except (KeyboardInterrupt, Interrupted):
            raise Interrupted(f"hsconas run interrupted in stage {name}; what was done is kept in {self.out}: rerun the "
                              "same command to resume") from None
        stages[name].update(done=True, result=res, seconds=stages[name]["seconds"] + time.perf_counter() - t0,
                            finished=_now())
        self.save()
        return res

    def tick(self, name: str, part: tuple[float, float] = (0.0, 1.0)) -> ProgressFn | None:
        """A progress function for stage ``name`` whose (done, total) fill ``part`` of the stage's span."""
        if self.progress is None:
            return None
        k = STAGES.index(name)
        start, width = stage_span(name)
        lo, hi = start + width * part[0], start + width * part[1]
        return lambda desc, d, t: self._show(f"{name} ({k + 1}/{len(STAGES)}): {desc}", lo + (hi - lo) * d / max(t, 1))

    def done(self) -> None:
        """The whole run is done: the bar full."""
        if self.progress is not None:
            self._show("done", 1.0)

    def say(self, name: str, desc: str) -> None:
        """Show stage ``name`` starting on ``desc`` (a stage that reports no progress of its own)."""
        tick = self.tick(name)
        if tick:
            tick(desc, 0, 1)

    def _show(self, desc: str, fraction: float) -> None:
        """One point on the bar: never below one already shown (a stage's phases each count from 0)."""
        self._shown = max(self._shown, round(self.PROGRESS_SCALE * fraction))
        self.progress(desc, self._shown, self.PROGRESS_SCALE)


@dataclass
class RunContext:
    """What every stage of a run reads: the device, space, data and target as given, the preset's budgets, where
    profiles live, and the ledger with the results of the stages before it."""

    out: Path
    device: Device
    space: SearchSpace
    data: DataBundle
    data_spec: str
    latency: str
    budget: RunPreset
    seed: int
    profiles_root: Path | None
    profile_check: bool
    ledger: RunLedger
    log: Callable[[str], None]
    prefer: str = "accurate"  # the selection's rule (selection.choose)

    def result(self, stage: str) -> dict:
        """The recorded result of an earlier stage."""
        return self.ledger.stages[stage]["result"]

    @functools.cached_property
    def profile(self) -> Profile:
        return load_profile(self.result("profile")["path"])

    @property
    def target_ms(self) -> float:
        return self.result("profile")["target"]["target_ms"]


def stage_profile(ctx: RunContext) -> dict:
    """1. The device profile: one measured on a machine like this one, once a drift check here confirms it (or
    rescales it), else a new calibration with the preset's sizes (capped by the device's where networks are slow
    to prepare); T resolved on it."""
    p, sizes = ctx.budget, ctx.device.calibration or {}

    def calibrate_here() -> Path:
        from hsconas_cli.calibrate import calibrate

        return calibrate(ctx.device, ctx.space, archs=min(p.calib_archs, sizes.get("archs", p.calib_archs)),
                         holdout=min(p.calib_holdout, sizes.get("holdout", p.calib_holdout)), seed=ctx.seed,
                         root=ctx.profiles_root, progress=ctx.ledger.tick("profile"))

    prof, how = profile_for_run(ctx.device, ctx.space, calibrate=calibrate_here, check=ctx.profile_check,
                                root=ctx.profiles_root, log=ctx.log, progress=ctx.ledger.tick("profile"))
    _, where = resolve_target(ctx.latency, prof)
    return {"path": str(prof.path), "name": prof.name, "reused": how["reused"], "check": how["check"], "target": where,
            "validation": prof.summary()["validation"], "calibration_seconds": prof.doc["timing"]["calibration_seconds"]}


def stage_supernet(ctx: RunContext) -> dict:
    """2. The supernet, trained with the preset's budget (resumed where a cut-off run left its checkpoint)."""
    from hsconas_cli.train import preset as train_preset, train_supernet

    cfg = train_preset("supernet", ctx.data.name, epochs=ctx.budget.train_epochs, limit=ctx.budget.train_limit, seed=ctx.seed)
    d = ctx.out / "supernet"
    res = train_supernet(ctx.data_spec, ctx.space, d, cfg=cfg, resume=(d / "checkpoint.pt").exists(),
                         progress=ctx.ledger.tick("supernet"), data=ctx.data)
    return {"checkpoint": res["checkpoint"], "history": res["history"], "config": cfg.to_dict()}


def stage_shrink(ctx: RunContext) -> dict:
    """3. Progressive space shrinking towards the device, or the whole space where the preset does not shrink."""
    from hsconas_cli.shrink import ShrinkConfig, describe_decision, shrink

    p, supernet = ctx.budget, ctx.result("supernet")["checkpoint"]
    if not p.shrink_samples:
        return {"skipped": SHRINK_SKIPPED, "file": None, "supernet": supernet, "chosen": {}, "decisions": {},
                "sizes": [{"distinct_text": format_count(ctx.space.full().count())}]}
    cfg = ShrinkConfig(samples=p.shrink_samples, finetune_epochs=p.shrink_finetune_epochs,
                       finetune_limit=p.shrink_finetune_limit, calib_images=p.eval_calib_images,
                       val_images=p.eval_val_images, seed=ctx.seed)
    doc = shrink(supernet, ctx.data, ctx.profile, str(ctx.target_ms), ctx.out / "shrink", cfg=cfg,
                 progress=ctx.ledger.tick("shrink"))
    return {"file": str(ctx.out / "shrink" / "shrunk-space.json"), "supernet": doc["supernet"],
            "sizes": [doc["initial_size"]] + [st["size_after"] for st in doc["stages"]],
            "chosen": {k: v for st in doc["stages"] for k, v in st["chosen"].items()},
            "decisions": {k: describe_decision(d) for st in doc["stages"] for k, d in st["decisions"].items()}}


def stage_search(ctx: RunContext) -> dict:
    """4. The evolutionary search in the (shrunk) space, its best candidates measured here (the closed loop), and
    what the search bought."""
    from hsconas_cli.closed_loop import verify_on_device
    from hsconas_cli.search import SearchConfig, record_search_value, search
    from hsconas_cli.search_value import describe as describe_search_value
    from hsconas_cli.selection import describe as describe_selection
    from hsconas_cli.space import load_subspace

    p, shrunk, tick = ctx.budget, ctx.result("shrink"), ctx.ledger.tick
    cfg = SearchConfig(generations=p.generations, population=p.population, parents=p.parents, seed=ctx.seed,
                       calib_images=p.eval_calib_images, val_images=p.eval_val_images, select_images=p.select_images,
                       top_k=p.top_k, prefer=ctx.prefer)
    result_file = ctx.out / "search" / "result.json"
    search(shrunk["supernet"], ctx.data, ctx.profile, str(ctx.target_ms), ctx.out / "search",
           subspace=load_subspace(shrunk["file"]) if shrunk.get("file") else None, cfg=cfg,
           progress=tick("search", (0.0, 0.8)))
    verify_on_device(result_file, ctx.profile, log=lambda m: ctx.log(f"closed loop: {m}"), progress=tick("search", (0.8, 0.95)))
    res = record_search_value(result_file, ctx.data, ctx.profile, cfg, progress=tick("search", (0.95, 1.0)))
    for line in describe_search_value(res["search_value"]):
        ctx.log(f"what the search bought: {line}")
    for line in describe_selection(res["selection"]):
        ctx.log(f"selection: {line}")
    return {"closed_loop": res["closed_loop"], "search_value": res["search_value"], "selection": res["selection"],
            "result": str(result_file),
            "acc": res["acc"], "predicted_ms": res["predicted_ms"], "F": res["F"], "evaluated": res["evaluated"],
            "arch": res["arch"]}


def stage_finetune(ctx: RunContext) -> dict:
    """5. The winner fine-tuned from its inherited weights, and scored on the test set."""
    from hsconas_cli.space import load_arch
    from hsconas_cli.train import preset as train_preset, retrain

    _, arch = load_arch(ctx.result("search")["result"])
    cfg = train_preset("retrain", ctx.data.name, epochs=ctx.budget.finetune_epochs, limit=ctx.budget.finetune_limit,
                       lr=0.1, warmup_epochs=0.0, seed=ctx.seed, train_on="train+select")
    d = ctx.out / "hsconet"
    res = retrain(ctx.data_spec, ctx.space, arch, d, cfg=cfg, inherit=ctx.result("shrink")["supernet"],
                  resume=(d / "checkpoint.pt").exists(), progress=ctx.ledger.tick("finetune"), data=ctx.data)
    return {"checkpoint": res["checkpoint"], "test_top1": res["test_top1"], "val_top1": res["val_top1"], "config": cfg.to_dict()}


def stage_export(ctx: RunContext) -> dict:
    """6. The fine-tuned HSCoNet exported in the format the device deploys, measured here beside its prediction."""
    from exporters import deployed_format
    from hsconas_cli.export import export

    fmt = deployed_format(ctx.profile.device.backend)
    ctx.ledger.say("export", f"{fmt}, parity check, latency")
    rep = export(fmt, ctx.result("search")["result"], ctx.out / "export", checkpoint=ctx.result("finetune")["checkpoint"],
                 data_spec=ctx.data_spec, profile=ctx.profile, batch_size=ctx.profile.device.batch_size)
    return {k: v for k, v in rep.items() if k != "metadata"}


def stage_report(ctx: RunContext) -> dict:
    """7. report.md, with the plots of every stage."""
    ctx.ledger.say("report", "report.md and its figures")
    return {"path": str(write_report(ctx.out, ctx.ledger.record, ctx.profile))}


STAGE_FUNCTIONS = {"profile": stage_profile, "supernet": stage_supernet, "shrink": stage_shrink, "search": stage_search,
                   "finetune": stage_finetune, "export": stage_export, "report": stage_report}


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
    prefer: str = "accurate",
    progress: ProgressFn | None = None,
    log: Callable[[str], None] = lambda s: None,
) -> dict:
    """``hsconas run``: every stage of ``STAGES`` in ``out_dir``, each skipped where done before; returns every
    stage's result, the report's path and T. Bad input is refused before anything is written."""
    if preset not in PRESETS:
        raise HsconasError(f"unknown preset {preset!r}; presets: {', '.join(PRESETS)}")
    out, p = Path(out_dir), PRESETS[preset]
    data = load_data(data_spec)
    sp = get_space(space or DEFAULT_SPACE_FOR_DATA[data.name])
    check_data_fits(sp, data)
    device = load_device(device_name, profiles_root)
    parse_target(latency)  # a bad target is refused before anything is written
    if prefer not in PREFER:
        raise HsconasError(f"--prefer must be one of {', '.join(PREFER)}")
    if not (out / "run.json").exists():  # and one outside the range of a profile this run would reuse, too
        known = reusable_profile(device, sp, profiles_root)
        if known is not None:
            resolve_target(latency, known)
    settings = {"device": device.to_dict(), "latency": str(latency), "data": data_spec, "space": sp.to_dict(),
                "preset": preset, "budgets": asdict(p), "seed": seed, "prefer": prefer}
    ledger = RunLedger(out, settings, progress, log)
    ctx = RunContext(out, device, sp, data, data_spec, str(latency), p, seed, profiles_root, profile_check, ledger, log, prefer)
    with ledger.open():
        results = {name: ledger.run(name, functools.partial(STAGE_FUNCTIONS[name], ctx)) for name in STAGES}
        ledger.done()
    return {"run": str(out), **{k: v for k, v in results.items() if k != "report"}, "report": str(out / "report.md"),
            "target_ms": ctx.target_ms}


def summary_rows(res: dict) -> list[tuple[str, str]]:
    """A finished run (``run_pipeline``'s result) as (stage, what it gave) rows: the summary ``hsconas run`` prints."""
    from hsconas_cli.measure import describe_measurement
    from hsconas_cli.search_value import describe
    from hsconas_cli.selection import describe as describe_selection

    p, s, f, e = res["profile"], res["search"], res["finetune"], res["export"]
    rows = [("target", f"T = {res['target_ms']:.4f} ms ({100 * p['target']['position']:.0f}% of the reachable range)"),
            ("profile", f"{p['name']} ({'reused' if p['reused'] else 'calibrated'}): held-out RMSE {p['validation']['rmse_ms']:.4f} ms, "
                        f"noise floor {p['validation']['noise_floor_ms']:.4f} ms")]
    if p.get("check"):
        rows.append(("profile check", f"{p['check']['check']['description']}; {p['check']['action']}"))
    rows += [("supernet", res["supernet"]["checkpoint"]),
             ("shrink", res["shrink"].get("skipped") or " -> ".join(x["distinct_text"] for x in res["shrink"]["sizes"]) + " distinct networks"),
             ("search", f"winner {100 * s['acc']:.2f}% (inherited weights, held-out images), predicted {s['predicted_ms']:.4f} ms, {s['evaluated']} archs evaluated")]
    if s.get("selection"):
        rows.append(("selection", "\n".join(describe_selection(s["selection"]))))
    if s.get("closed_loop"):
        rows.append(("closed loop", s["closed_loop"]["reason"]))
    if s.get("search_value"):
        rows.append(("what the search bought", "\n".join(describe(s["search_value"])[1:])))
    rows += [("fine-tuned", f"test top-1 {100 * f['test_top1']:.2f}%"), ("exported", f"{e['path']} (parity {e['max_abs_diff']:.1e})")]
    if lat := e.get("latency"):
        rows.append(("latency here", describe_measurement(lat, res["target_ms"])))
    return rows + [("report", res["report"])]


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _clean_stale_temporaries(out: Path) -> None:
    """Remove what a killed process left of atomic writes (``.name.xxxx.tmp``): never a finished file."""
    if out.exists():
        for tmp in out.rglob(".*.tmp"):
            tmp.unlink(missing_ok=True)
