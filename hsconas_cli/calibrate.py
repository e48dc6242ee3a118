"""Calibrating a device: the latency lookup table, the bias term B and the held-out validation (paper III-A).

1. Every LUT entry: each block ``make_block`` builds (the very module ``build_subnet`` emits) for each distinct
   layer shape, op and width, alone, at the device's batch size, with the device's backend. Layers of equal
   shape share entries. From each entry the backend's per-call cost is taken off (an identity model at the
   same input shape, which is also the skip op's entry), so 20 summed blocks do not add up 20 call costs.
2. B = mean over M sampled archs of (measured whole network - LUT sum - stem - head); the scaled model
   a x (LUT sum + stem + head) + b is fitted on the same archs (profiles.fit_models).
3. Validation on H held-out archs (none used for B), measured twice: predicted vs measured (RMSE, MAPE,
   share within 5% and 10%), and the noise floor, the RMSE between the two measurement passes. The model with
   the lower held-out RMSE becomes the profile's; both models' figures are kept.

Progress is kept in ``.partial.json`` beside the profile versions; an interrupted calibration resumes with
the entries measured so far.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import random
import shutil
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch

from exporters.executorch import Recipe
from exporters.onnx import chain, to_onnx_bytes
from hsconas_cli.backends import Backend, make_backend
from hsconas_cli.blocks import Head, SkipBlock, Stem, make_block
from hsconas_cli.devices import Device, PowerMode, jetson_family, machine_facts, set_power_mode, verify_measuring_device
from hsconas_cli.errors import HsconasError, Interrupted
from hsconas_cli.fileio import resumable_state, write_json
from hsconas_cli.measure import Measurement, Protocol, ProtocolTimer
from hsconas_cli.meter import REFERENCE_SEED, network_item, protocol_timer, reference_arch
from hsconas_cli.profiles import (KIND, SCHEMA_VERSION, Profile, choose_model, layer_signature, load_profile, profile_dir,
                                  save_profile, validation_figures)
from hsconas_cli.space import Arch, SearchSpace, arch_key, get_space
from hsconas_cli.ui import ProgressFn

SAVE_EVERY_S = 5.0
ESTIMATE_AFTER = 5  # measurements before the time left is estimated
DEFAULT_SIZES = {"archs": 100, "holdout": 50}  # M archs for B, H held-out archs (a device preset may say fewer)


def _duration(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 5400 else f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"


def sample_archs(space: SearchSpace, m: int, h: int, seed: int) -> tuple[list[Arch], list[Arch]]:
    """M archs for B and H held-out archs, all distinct networks, from seeded uniform sampling."""
    rng, seen, out = random.Random(seed), set(), []
    while len(out) < m + h:
        a = space.full().sample(rng)
        if arch_key(space, a) not in seen:
            seen.add(arch_key(space, a))
            out.append(a)
    return out[:m], out[m:]


class Parts:
    """The stem, every (layer shape, op, width) block and the head as modules and as ONNX exports.

    Each part is exported once; whole networks for B and validation are chained from the exports
    (``exporters.onnx.chain``), which computes what the HSCoNet's own export computes, without tracing every
    sampled network again (0.5 s each on a 2-core CPU).
    """

    def __init__(self, space: SearchSpace, batch: int):
        self.space, self.batch = space, batch
        self._onnx: dict[tuple, bytes] = {}
        hs = space.head_in_size
        self.input_shape = (batch, space.in_channels, space.input_size, space.input_size)
        self.head_shape = (batch, space.layout[-1], hs, hs)

    def module(self, part: tuple) -> tuple[torch.nn.Module, tuple[int, ...]]:
        """The module of ``part`` with seeded weights (the same module each time: a cache keyed by content hits)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            module, shape = self._module(part)
        return module.eval(), shape

    def _module(self, part: tuple) -> tuple[torch.nn.Module, tuple[int, ...]]:
        sp, kind = self.space, part[0]
        if kind == "stem":
            return Stem(sp.in_channels, sp.stem_channels, sp.stem_stride), self.input_shape
        if kind == "head":
            return Head(sp.layout[-1], sp.head_channels, sp.num_classes), self.head_shape
        if kind == "identity":
            return SkipBlock(), part[1]
        _, layer, op, mid = part  # ("block", layer index, op, mid)
        l = sp.layers[layer]
        shape = (self.batch, l.in_channels, l.in_size, l.in_size)
        if op == "skip":
            return SkipBlock(), shape
        return make_block(op, l.in_channels, l.out_channels, l.stride, mid), shape

    def onnx(self, part: tuple) -> bytes:
        key = part if part[0] != "block" else ("block", layer_signature(self.space, part[1]), *part[2:])
        if key not in self._onnx:
            module, shape = self.module(part)
            self._onnx[key] = to_onnx_bytes(module, shape)
        return self._onnx[key]

    def item(self, what: tuple | Arch) -> tuple[torch.nn.Module, tuple[int, ...], Recipe]:
        """(module, input shape, recipe) of a part or of a whole network (seed 0: the second validation pass meets
        the same network), for a backend that lowers ahead in worker processes."""
        if isinstance(what, Arch):
            return network_item(self.space, what, self.input_shape)
        module, shape = self.module(what)
        return module, shape, Recipe("hsconas_cli.calibrate:part_from_recipe",
                                     {"space": self.space.to_dict(), "batch": self.batch, "part": list(what)})

    def network_onnx(self, arch: Arch) -> bytes:
        blocks = [("block", i, op, None if op == "skip" else self.space.mid(i, c)) for i, (op, c) in enumerate(arch)]
        return chain([self.onnx(("stem",)), *(self.onnx(b) for b in blocks), self.onnx(("head",))])


def part_from_recipe(space: dict, batch: int, part: list) -> torch.nn.Module:
    """A part's module rebuilt from plain data in a lowering worker (``Parts.item``); its weights are sent apart."""
    part = tuple(tuple(x) if isinstance(x, list) else x for x in part)
    return Parts(get_space(space), batch)._module(part)[0].eval()


def _jobs(space: SearchSpace, bias: list[Arch], held: list[Arch], parts: Parts) -> Iterator[tuple[str, tuple | Arch]]:
    """Every measurement of a calibration, in order: (key, part) for LUT entries, (key, arch) for networks."""
    yield "overhead:input", ("identity", parts.input_shape)
    yield "stem", ("stem",)
    done = set()
    for l in space.layers:
        sig = layer_signature(space, l.index)
        if sig in done:
            continue
        done.add(sig)
        yield f"overhead:{sig}", ("block", l.index, "skip", None)
        for op in l.ops:
            if op != "skip":
                for mid in sorted({space.mid(l.index, f) for f in space.factors}):
                    yield f"entry:{sig}:{op}:{mid}", ("block", l.index, op, mid)
    yield "overhead:head", ("identity", parts.head_shape)
    yield "head", ("head",)
    for tag, archs in (("bias", bias), ("val", held), ("val2", held)):
        for i, a in enumerate(archs):
            yield f"{tag}:{i}", a


def _prepare(backend, parts: Parts, what: tuple | Arch):
    """A runner for a part or a whole network, from ONNX where the backend consumes ONNX."""
    if backend.consumes_onnx:
        if isinstance(what, Arch):
            return backend.prepare_onnx(parts.network_onnx(what), parts.input_shape)
        return backend.prepare_onnx(parts.onnx(what), parts.module(what)[1])
    module, shape, _ = parts.item(what)
    return backend.prepare(module, shape)


def _lower_ahead(backend, parts: Parts, todo: list[tuple[str, tuple | Arch]], work: Path, progress, log) -> None:
    """For a backend whose preparation is slow (ExecuTorch's lowering): every program the calibration will run,
    lowered into ``work`` before anything is timed, so that no lowering runs beside a timing."""
    backend.program_dir = work / "programs"
    items = [parts.item(what) for _, what in todo]  # val2 meets val's programs in the cache
    items.append(network_item(parts.space, reference_arch(parts.space), parts.input_shape, REFERENCE_SEED))
    t0 = time.perf_counter()

    def tick(done: int, n: int) -> None:
        if progress:
            progress(f"lowering ({backend.name}, {backend.workers} processes)", done, n)
        if log and done == ESTIMATE_AFTER * backend.workers and n > done:
            each = (time.perf_counter() - t0) / done
            log(f"lowering: {each:.1f} s per program so far (wall clock, {backend.workers} processes); about "
                f"{_duration(each * (n - done))} left for {n - done} more (programs in {backend.program_dir} are reused)")

    backend.lower_ahead(items, tick)
    if log and backend.lowered:
        log(f"lowered {backend.lowered} programs in {_duration(backend.lower_seconds)} "
            f"({backend.lower_seconds / backend.lowered:.1f} s each, wall clock over {backend.workers} processes)")


@dataclass
class Setup:
    """What a calibration measures with: the device as measured (its power mode set where asked, and verified or
    forced), its backend and protocol, the space, and this machine's facts. Full calibrations and transfers share
    it, so their profiles start alike (``header``) and their partial states compare alike (``settings``)."""

    device: Device
    mode: PowerMode | None
    space: SearchSpace
    backend: Backend
    protocol: Protocol
    facts: dict

    @classmethod
    def open(cls, device: Device, space: SearchSpace, *, set_mode: int | None = None, force: bool = False) -> "Setup":
        if set_mode is not None:  # the preset's mode name is only expected where the preset's mode id is asked for
            mode = set_power_mode(set_mode, board=device.board,
                                  expected_name=device.power_mode_name if set_mode == device.power_mode else None)
            device = device.replace(power_mode=set_mode, power_mode_name=mode.name)
        mode = verify_measuring_device(device, force)  # the board, the mode's id and name: verified, or --force
        return cls(device, mode, space, make_backend(device.backend, device.backend_options), Protocol.for_device(device),
                   machine_facts())

    def settings(self) -> dict:
        """What a resumed measurement must share with the interrupted one (the caller adds its own sizes)."""
        return {"device": self.device.to_dict(), "space_fingerprint": self.space.fingerprint,
                "protocol": self.protocol.to_dict(), "backend_versions": self.backend.versions(),
                "cpu": self.facts.get("cpu"), "gpu": self.facts.get("gpu")}

    def header(self, ref_ms: float | None) -> dict:
        """What every profile document starts with: what was measured, where, how, and against which reference."""
        mode, space, backend = self.mode, self.space, self.backend
        return {
            "kind": KIND,
            "schema_version": SCHEMA_VERSION,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "device": self.device.to_dict(),
            "power_mode": None if mode is None else {"id": mode.id, "name": mode.name, "source": mode.source},
            "machine": self.facts,
            "backend": {"name": backend.name, "options": backend.options, "versions": backend.versions()},
            "space": {"name": space.name, "fingerprint": space.fingerprint, "definition": space.to_dict()},
            "protocol": self.protocol.to_dict(),
            "reference": {"arch": reference_arch(space).to_list(), "seed": REFERENCE_SEED, "ms": ref_ms},
        }

    def partial(self, root: Path | None) -> Path:
        """Where an interrupted measurement of this device and space keeps its progress."""
        return profile_dir(self.device.name, self.space.name, root) / ".partial.json"


def calibration_sizes(device: Device, archs: int | None = None, holdout: int | None = None) -> tuple[int, int]:
    """M (archs for B) and H (held-out archs): as given, else the device preset's, else ``DEFAULT_SIZES``."""
    sizes = {**DEFAULT_SIZES, **(device.calibration or {})}
    return archs or sizes["archs"], holdout or sizes["holdout"]


def calibrate(
    device: Device,
    space: SearchSpace,
    *,
    archs: int | None = None,
    holdout: int | None = None,
    seed: int = 0,
    root: Path | None = None,
    fresh: bool = False,
    set_mode: int | None = None,
    force: bool = False,
    progress: ProgressFn | None = None,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Measure a device profile for ``space`` and save it as the next version; returns the file written.
    ``archs`` and ``holdout``: M and H (``calibration_sizes``).

    ``log`` gets the plan up front (measurements, engine builds) and, after the first few measurements, an
    estimate of the time left."""
    archs, holdout = calibration_sizes(device, archs, holdout)
    if archs < 2 or holdout < 2:
        raise HsconasError("--archs and --holdout need at least 2 architectures each")
    setup = Setup.open(device, space, set_mode=set_mode, force=force)
    bias_archs, held_archs = sample_archs(space, archs, holdout, seed)
    settings = setup.settings() | {"archs": archs, "holdout": holdout, "seed": seed}
    parts = Parts(space, setup.device.batch_size)
    partial = setup.partial(root)
    run = measure_jobs(setup, parts, list(_jobs(space, bias_archs, held_archs, parts)), partial, settings,
                       fresh=fresh, progress=progress, log=log)
    doc = _profile_doc(setup, run, bias_archs, held_archs, seed)
    return finish_profile(doc, run, setup.backend, partial, root, log)


@dataclass
class JobsRun:
    """The measurements of a calibration: {key: Measurement list + timer}, the protocol timer (its reference
    times), the wall time over all sittings and how many measurements a resumed run kept."""

    results: dict[str, list]
    timer: ProtocolTimer
    elapsed_s: float
    resumed: int

    def ms(self, key: str, ref_ms: float | None) -> float:
        """The measurement of ``key`` in milliseconds: its ratio to the reference x ``ref_ms``, or as timed."""
        m = Measurement.from_list(self.results[key])
        return m.value * ref_ms if ref_ms is not None else m.value


def measure_jobs(setup: Setup, parts: Parts, jobs: list[tuple[str, tuple | Arch]], partial: Path, settings: dict, *,
                 fresh: bool = False, progress: ProgressFn | None = None,
                 log: Callable[[str], None] | None = None) -> JobsRun:
    """Measure every job (LUT parts and whole networks) with the setup's backend under its protocol, keeping
    progress in ``partial`` so that an interrupted run resumes with the measurements taken so far."""
    backend = setup.backend
    state = {"settings": settings, "results": {}, "reference_times": [], "fast_reference_times": [], "elapsed_s": 0.0}
    if not fresh:
        state = resumable_state(partial, settings, "an interrupted calibration", "pass --fresh to discard it") or state
    results: dict[str, list] = state["results"]
    resumed = len(results)
    prior_s, t_start = float(state.get("elapsed_s", 0.0)), time.perf_counter()
    work = partial.parent / f".{backend.name}"
    if backend.name == "tensorrt":
        backend.timing_cache, backend.plan_dir, backend.board = work / "timing.cache", work / "plans", jetson_family()
    todo = [key for key, _ in jobs if key not in results]
    if log:
        log(_plan(backend, todo, len(jobs), resumed, work))

    def save() -> None:
        state["elapsed_s"] = prior_s + time.perf_counter() - t_start
        if timer is not None:
            state["reference_times"] = [round(t, 6) for t in timer.reference_times[-4000:]]
            state["fast_reference_times"] = [round(t, 6) for t in timer.fast_reference_times]
        write_json(partial, state)

    timer = None
    if backend.lowers_ahead:
        try:
            pending = set(todo)
            _lower_ahead(backend, parts, [(k, w) for k, w in jobs if k in pending], work, progress, log)
        except KeyboardInterrupt:  # the time spent lowering counts in the calibration's time when it resumes
            save()
            raise Interrupted(f"calibration interrupted while lowering; the programs lowered so far are kept in {work}: "
                              "rerun the same command to resume") from None
    timer = protocol_timer(backend, setup.protocol, parts.space, parts.batch, state)
    try:
        _measure_each(backend, timer, parts, jobs, results, len(todo), save, progress, log)
    except KeyboardInterrupt:
        save()
        raise Interrupted(f"calibration interrupted; {len(results)} of {len(jobs)} measurements kept in {partial}: "
                          "rerun the same command to resume") from None
    save()
    return JobsRun(results, timer, state["elapsed_s"], resumed)


def _measure_each(backend, timer: ProtocolTimer, parts: Parts, jobs: list, results: dict, todo: int, save: Callable,
                  progress: ProgressFn | None, log: Callable[[str], None] | None) -> None:
    """Measure the jobs not in ``results`` yet, saving after each where preparing is expensive (engine builds,
    lowering), else every ``SAVE_EVERY_S``; log an estimate of the time left after the first few."""
    expensive = backend.name in ("tensorrt", "executorch")  # minutes of engine builds or lowering: keep every entry
    done_here, t_jobs, last_save = 0, time.perf_counter(), time.perf_counter()
    for n, (key, what) in enumerate(jobs):
        if progress:
            progress(_phase(key), n, len(jobs))
        if key in results:
            continue
        runner = _prepare(backend, parts, what)
        results[key] = timer.measure(runner).to_list() + [runner.timer]
        runner.close()
        done_here += 1
        if expensive or time.perf_counter() - last_save > SAVE_EVERY_S:
            save()
            last_save = time.perf_counter()
        if log and done_here == ESTIMATE_AFTER and todo > done_here:
            each = (time.perf_counter() - t_jobs) / done_here
            log(f"estimate: {_duration(each * (todo - done_here))} left at {each:.1f} s per measurement so far")
    if progress:
        progress("writing profile", len(jobs), len(jobs))


def _plan(backend, todo: list[str], jobs: int, resumed: int, work: Path) -> str:
    builds = len({k.replace("val2:", "val:") for k in todo})  # the second validation pass reuses the first's plans
    return (f"{len(todo)} of {jobs} measurements to take" + (f" (resuming: {resumed} kept)" if resumed else "")
            + (f", {builds} TensorRT engine builds (each network once; a timing cache in {work} is shared by all)"
               if backend.name == "tensorrt" else "")
            + (f", {builds + 1} ExecuTorch programs to lower first (each network once, kept in {work})"
               if backend.lowers_ahead else ""))


def finish_profile(doc: dict, run: JobsRun, backend, partial: Path, root: Path | None,
                   log: Callable[[str], None] | None) -> Path:
    """Save a measured profile document as the next version, then drop the partial state and the work folders
    (engine plans, lowered programs: they served resuming; TensorRT's timing cache stays for next time)."""
    doc["timing"]["resumed_measurements"] = run.resumed
    path = save_profile(doc, root)
    partial.unlink(missing_ok=True)
    note = load_profile(path).timer_note if log else None
    if note:
        log(note)
    for done_with in (getattr(backend, "plan_dir", None), getattr(backend, "program_dir", None)):
        if done_with is not None:
            shutil.rmtree(done_with, ignore_errors=True)
            with contextlib.suppress(OSError):
                done_with.parent.rmdir()  # the work folder, where nothing else is kept in it
    return path


def _timer(result: list) -> str:
    """How a measurement was timed (the runner's ``timer``), stored after its figures; "unknown" before 0.3."""
    return str(result[4]) if len(result) > 4 else "unknown"


def _phase(key: str) -> str:
    tag = key.split(":")[0]
    return {"overhead": "latency table", "entry": "latency table", "stem": "latency table", "head": "latency table",
            "bias": "bias B (M archs)", "val": "validation, pass 1", "val2": "validation, pass 2"}[tag]


def timers_of(results: dict[str, list]) -> dict[str, int]:
    """How many measurements each timer took (a profile with more than one mixes timers)."""
    return dict(Counter(_timer(v) for v in results.values()))


def _lut_entries(space: SearchSpace, run: JobsRun, ms: Callable[[str], float]) -> list[dict]:
    """Every LUT entry: its block's time less the per-call overhead at its shape, with the raw time and spread."""
    entries = []
    for key in run.results:
        if key.startswith("entry:"):
            _, sig, op, mid = key.split(":")
            m = Measurement.from_list(run.results[key])
            entries.append({
                "signature": sig, "op": op, "mid": int(mid),
                "layers": [l.index + 1 for l in space.layers if layer_signature(space, l.index) == sig],
                "ms": max(0.0, ms(key) - ms(f"overhead:{sig}")),
                "raw_ms": ms(key), "spread": m.spread, "settled": m.settled, "timer": _timer(run.results[key]),
            })
    return entries


def _profile_doc(setup: Setup, run: JobsRun, bias_archs: list[Arch], held_archs: list[Arch], seed: int) -> dict:
    """The profile document of a full calibration: the LUT, B from the M archs, then the validation of the model
    chosen on the held-out archs (``profiles.choose_model``)."""
    ref_ms = run.timer.reference_ms() if setup.protocol.reference else None
    ms = lambda key: run.ms(key, ref_ms)  # noqa: E731
    stem = max(0.0, ms("stem") - ms("overhead:input"))
    head = max(0.0, ms("head") - ms("overhead:head"))
    doc = {
        **setup.header(ref_ms),
        "overhead_ms": {k.split(":", 1)[1]: ms(k) for k in run.results if k.startswith("overhead:")},
        "lut": {"stem": {"ms": stem}, "head": {"ms": head}, "entries": _lut_entries(setup.space, run, ms)},
        "bias": {"ms": 0.0},
    }
    prof = Profile(doc, None)
    prof._index()
    bias_measured = [ms(f"bias:{i}") for i in range(len(bias_archs))]
    bias_sums = [prof.lut_sum(a) + prof.fixed_ms for a in bias_archs]
    B = sum(m - s for m, s in zip(bias_measured, bias_sums)) / len(bias_archs)
    doc["bias"] = {"ms": B, "archs": [a.to_list() for a in bias_archs], "measured_ms": bias_measured, "lut_sum_ms": bias_sums, "seed": seed}
    prof.bias_ms = B
    measured = [ms(f"val:{i}") for i in range(len(held_archs))]
    again = [ms(f"val2:{i}") for i in range(len(held_archs))]
    predicted = [prof.predict(a) for a in held_archs]
    doc["validation"] = {
        **validation_figures(predicted, measured, again),
        "arch_list": [a.to_list() for a in held_archs],
        "predicted_ms": predicted,
        "measured_ms": measured,
        "measured_again_ms": again,
    }
    doc["model"], doc["validation"] = choose_model(doc)
    doc["timers"] = timers_of(run.results)
    unsettled = sum(1 for v in run.results.values() if not Measurement.from_list(v).settled)
    doc["timing"] = {"calibration_seconds": round(run.elapsed_s, 1), "measurements": len(run.results), "unsettled": unsettled}
    return doc
