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
from collections import Counter
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch

from hsconas_cli.backends import make_backend
from hsconas_cli.blocks import Head, SkipBlock, Stem, make_block
from hsconas_cli.devices import Device, PowerMode, machine_facts, set_power_mode, verify_measuring_device
from hsconas_cli.errors import HsconasError, Interrupted
from hsconas_cli.fileio import resumable_state, write_json
from hsconas_cli.measure import Measurement, Meter, Protocol, take_verdict
from hsconas_cli.profiles import (KIND, SCHEMA_VERSION, Profile, choose_model, layer_signature, load_profile, profile_dir,
                                  save_profile, validation_figures)
from hsconas_cli.space import Arch, SearchSpace, arch_key
from hsconas_cli.supernet import HSCoNet
from exporters.onnx import chain, to_onnx_bytes
from hsconas_cli.ui import ProgressFn

REFERENCE_GENE = ("shuffle3", 0.5)
SAVE_EVERY_S = 5.0
ESTIMATE_AFTER = 5  # measurements before the time left is estimated


def _duration(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 5400 else f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"


def reference_arch(space: SearchSpace) -> Arch:
    """The fixed network every measurement is compared with: shuffle3 at c = 0.5 in every layer."""
    return Arch(tuple(REFERENCE_GENE for _ in space.layers))


def network(space: SearchSpace, arch: Arch, seed: int = 0) -> HSCoNet:
    """The standalone network of ``arch`` with seeded weights (the process's own random state left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return HSCoNet(space, arch).eval()


def sample_archs(space: SearchSpace, m: int, h: int, seed: int) -> tuple[list[Arch], list[Arch]]:
    """M archs for B and H held-out archs, all distinct networks, from seeded uniform sampling."""
    rng, seen, out = random.Random(seed), set(), []
    while len(out) < m + h:
        a = space.full().sample(rng)
        if arch_key(space, a) not in seen:
            seen.add(arch_key(space, a))
            out.append(a)
    return out[:m], out[m:]


def default_protocol(device: Device) -> Protocol:
    opts = device.backend_options
    steady = device.backend == "tensorrt" or (device.backend == "torch" and opts.get("device") == "cuda" and opts.get("graphs", True))
    return Protocol(**{"reference": not steady, **opts.get("protocol", {})})  # the preset may say otherwise


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

    def network_onnx(self, arch: Arch) -> bytes:
        blocks = [("block", i, op, None if op == "skip" else self.space.mid(i, c)) for i, (op, c) in enumerate(arch)]
        return chain([self.onnx(("stem",)), *(self.onnx(b) for b in blocks), self.onnx(("head",))])


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


def _module(parts: Parts, what: tuple | Arch) -> tuple[torch.nn.Module, tuple[int, ...]]:
    """The module of a part or of a whole network (seed 0: the second validation pass meets the same network)."""
    return (network(parts.space, what), parts.input_shape) if isinstance(what, Arch) else parts.module(what)


def _prepare(backend, parts: Parts, what: tuple | Arch):
    """A runner for a part or a whole network, from ONNX where the backend consumes ONNX."""
    if backend.consumes_onnx:
        if isinstance(what, Arch):
            return backend.prepare_onnx(parts.network_onnx(what), parts.input_shape)
        return backend.prepare_onnx(parts.onnx(what), parts.module(what)[1])
    return backend.prepare(*_module(parts, what))


def _lower_ahead(backend, parts: Parts, todo: list[tuple[str, tuple | Arch]], work: Path, progress, log) -> None:
    """For a backend whose preparation is slow (ExecuTorch's lowering): every program the calibration will run,
    lowered into ``work`` before anything is timed, so that no lowering runs beside a timing."""
    backend.program_dir = work / "programs"
    items = [_module(parts, what) for _, what in todo]  # val2 meets val's programs in the cache
    items.append((network(parts.space, reference_arch(parts.space), 12345), parts.input_shape))
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


def calibrate(
    device: Device,
    space: SearchSpace,
    *,
    archs: int = 100,
    holdout: int = 50,
    seed: int = 0,
    root: Path | None = None,
    fresh: bool = False,
    set_mode: int | None = None,
    force: bool = False,
    progress: ProgressFn | None = None,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Measure a device profile for ``space`` and save it as the next version; returns the file written.

    ``log`` gets the plan up front (measurements, engine builds) and, after the first few measurements, an
    estimate of the time left."""
    if archs < 2 or holdout < 2:
        raise HsconasError("--archs and --holdout need at least 2 architectures each")
    device, mode = measuring_device(device, set_mode, force)
    backend, protocol = make_backend(device.backend, device.backend_options), default_protocol(device)
    bias_archs, held_archs = sample_archs(space, archs, holdout, seed)
    facts = machine_facts()
    settings = measuring_settings(device, space, protocol, backend, facts) | {"archs": archs, "holdout": holdout, "seed": seed}
    parts = Parts(space, device.batch_size)
    partial = profile_dir(device.name, space.name, root) / ".partial.json"
    run = measure_jobs(backend, protocol, parts, list(_jobs(space, bias_archs, held_archs, parts)), partial, settings,
                       fresh=fresh, progress=progress, log=log)
    doc = _profile_doc(device, space, protocol, backend, facts, mode, run.meter, run.results, bias_archs, held_archs,
                       run.elapsed_s, seed)
    return finish_profile(doc, run, backend, partial, root, log)


def measuring_device(device: Device, set_mode: int | None, force: bool) -> tuple[Device, PowerMode | None]:
    """The device as it will be measured: its power mode set where asked (a Jetson), and verified (or forced)."""
    if set_mode is not None:  # the preset's mode name is only expected where the preset's mode id is asked for
        mode = set_power_mode(set_mode, board=device.board,
                              expected_name=device.power_mode_name if set_mode == device.power_mode else None)
        device = device.replace(power_mode=set_mode, power_mode_name=mode.name)
    return device, verify_measuring_device(device, force)  # the board, the mode's id and name: verified, or --force


def measuring_settings(device: Device, space: SearchSpace, protocol: Protocol, backend, facts: dict) -> dict:
    """What a resumed measurement must share with the interrupted one (the caller adds its own sizes)."""
    return {"device": device.to_dict(), "space_fingerprint": space.fingerprint, "protocol": protocol.to_dict(),
            "backend_versions": backend.versions(), "cpu": facts.get("cpu"), "gpu": facts.get("gpu")}


@dataclass
class JobsRun:
    """The measurements of a calibration: {key: Measurement list + timer}, the meter (its reference times), the
    wall time over all sittings and how many measurements a resumed run kept."""

    results: dict[str, list]
    meter: Meter
    elapsed_s: float
    resumed: int


def measure_jobs(backend, protocol: Protocol, parts: Parts, jobs: list[tuple[str, tuple | Arch]], partial: Path,
                 settings: dict, *, fresh: bool = False, progress: ProgressFn | None = None,
                 log: Callable[[str], None] | None = None) -> JobsRun:
    """Measure every job (LUT parts and whole networks) with ``backend`` under ``protocol``, keeping progress in
    ``partial`` so that an interrupted run resumes with the measurements taken so far."""
    state = {"settings": settings, "results": {}, "reference_times": [], "fast_reference_times": [], "elapsed_s": 0.0}
    if not fresh:
        state = resumable_state(partial, settings, "an interrupted calibration", "pass --fresh to discard it") or state
    results: dict[str, list] = state["results"]
    resumed = len(results)
    prior_s, t_start = float(state.get("elapsed_s", 0.0)), time.perf_counter()
    expensive = backend.name in ("tensorrt", "executorch")  # minutes of engine builds or lowering: keep every entry
    work = partial.parent / f".{backend.name}"
    if backend.name == "tensorrt":
        backend.timing_cache, backend.plan_dir = work / "timing.cache", work / "plans"
    todo = [key for key, _ in jobs if key not in results]
    if log:
        log(_plan(backend, todo, len(jobs), resumed, work))
    if backend.lowers_ahead:
        try:
            pending = set(todo)
            _lower_ahead(backend, parts, [(k, w) for k, w in jobs if k in pending], work, progress, log)
        except KeyboardInterrupt:  # the time spent lowering counts in the calibration's time when it resumes
            state["elapsed_s"] = prior_s + time.perf_counter() - t_start
            write_json(partial, state)
            raise Interrupted(f"calibration interrupted while lowering; the programs lowered so far are kept in {work}: "
                              "rerun the same command to resume") from None
    meter = _make_meter(backend, protocol, parts.space, parts.batch, state)
    done_here, t_jobs, last_save = 0, time.perf_counter(), t_start

    def save() -> None:
        state["elapsed_s"] = prior_s + time.perf_counter() - t_start
        state["reference_times"] = [round(t, 6) for t in meter.reference_times[-4000:]]
        state["fast_reference_times"] = [round(t, 6) for t in meter.fast_reference_times]
        write_json(partial, state)

    try:
        for n, (key, what) in enumerate(jobs):
            if progress:
                progress(_phase(key), n, len(jobs))
            if key in results:
                continue
            runner = _prepare(backend, parts, what)
            results[key] = meter.measure(runner).to_list() + [runner.timer]
            runner.close()
            done_here += 1
            if expensive or time.perf_counter() - last_save > SAVE_EVERY_S:
                save()
                last_save = time.perf_counter()
            if log and done_here == ESTIMATE_AFTER and len(todo) > done_here:
                each = (time.perf_counter() - t_jobs) / done_here
                log(f"estimate: {_duration(each * (len(todo) - done_here))} left at {each:.1f} s per measurement so far")
        if progress:
            progress("writing profile", len(jobs), len(jobs))
    except KeyboardInterrupt:
        save()
        raise Interrupted(f"calibration interrupted; {len(results)} of {len(jobs)} measurements kept in {partial}: "
                          "rerun the same command to resume") from None
    save()
    return JobsRun(results, meter, state["elapsed_s"], resumed)


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


def _make_meter(backend, protocol: Protocol, space: SearchSpace, batch: int, state: dict) -> Meter:
    ref = None
    if protocol.reference:
        ref = backend.prepare(network(space, reference_arch(space), 12345), (batch, space.in_channels, space.input_size, space.input_size))
    meter = Meter(protocol, ref, list(state.get("reference_times", [])), list(state.get("fast_reference_times", [])))
    meter.warm_up()
    return meter


def profile_header(device: Device, mode, facts: dict, backend, protocol: Protocol, space: SearchSpace,
                   ref_ms: float | None) -> dict:
    """What every profile document starts with: what was measured, where, how, and against which reference."""
    return {
        "kind": KIND,
        "schema_version": SCHEMA_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "device": device.to_dict(),
        "power_mode": None if mode is None else {"id": mode.id, "name": mode.name, "source": mode.source},
        "machine": facts,
        "backend": {"name": backend.name, "options": backend.options, "versions": backend.versions()},
        "space": {"name": space.name, "fingerprint": space.fingerprint, "definition": space.to_dict()},
        "protocol": protocol.to_dict(),
        "reference": {"arch": reference_arch(space).to_list(), "seed": 12345, "ms": ref_ms},
    }


def timers_of(results: dict[str, list]) -> dict[str, int]:
    """How many measurements each timer took (a profile with more than one mixes timers)."""
    return dict(Counter(_timer(v) for v in results.values()))


def _profile_doc(device, space, protocol, backend, facts, mode, meter, results, bias_archs, held_archs, elapsed, seed) -> dict:
    ref_ms = meter.reference_ms() if protocol.reference else None

    def ms(key: str) -> float:
        m = Measurement.from_list(results[key])
        return m.value * ref_ms if protocol.reference else m.value

    entries = []
    for key in results:
        if key.startswith("entry:"):
            _, sig, op, mid = key.split(":")
            m = Measurement.from_list(results[key])
            entries.append({
                "signature": sig, "op": op, "mid": int(mid),
                "layers": [l.index + 1 for l in space.layers if layer_signature(space, l.index) == sig],
                "ms": max(0.0, ms(key) - ms(f"overhead:{sig}")),
                "raw_ms": ms(key), "spread": m.spread, "settled": m.settled, "timer": _timer(results[key]),
            })
    stem = max(0.0, ms("stem") - ms("overhead:input"))
    head = max(0.0, ms("head") - ms("overhead:head"))
    overheads = {k.split(":", 1)[1]: ms(k) for k in results if k.startswith("overhead:")}
    doc = {
        **profile_header(device, mode, facts, backend, protocol, space, ref_ms),
        "overhead_ms": overheads,
        "lut": {"stem": {"ms": stem}, "head": {"ms": head}, "entries": entries},
        "bias": {"ms": 0.0},
    }
    # B from the M archs, then validation with the finished model
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
    doc["timers"] = timers_of(results)
    unsettled = sum(1 for v in results.values() if not Measurement.from_list(v).settled)
    doc["timing"] = {"calibration_seconds": round(elapsed, 1), "measurements": len(results), "unsettled": unsettled}
    return doc


def recalibrate_like(profile: Profile, *, root: Path | None = None, progress: ProgressFn | None = None,
                     force: bool = False) -> Path:
    """Calibrate ``profile``'s device and space again with the profile's own settings (archs, holdout, seed); a
    profile calibrated by transfer is transferred again, from the same source, with its own N."""
    if profile.doc.get("transfer"):
        from hsconas_cli.transfer import transfer_like

        return transfer_like(profile, root=root, progress=progress, force=force)
    return calibrate(profile.device, profile.space, archs=len(profile.doc["bias"]["archs"]),
                     holdout=len(profile.validation["arch_list"]), seed=profile.doc["bias"].get("seed", 0), root=root,
                     force=force, progress=progress)


class LatencyMeter:
    """Measures models on this machine with a profile's backend and protocol, against the profile's reference
    network; one meter for many models, so the fast-state baseline carries over from one to the next."""

    def __init__(self, profile: Profile, *, force: bool = False):
        self.profile, space, device = profile, profile.space, profile.device
        verify_measuring_device(device, force)  # a Jetson profile is measured on its board, in its power mode
        self.backend = make_backend(device.backend, device.backend_options)
        if self.backend.name == "tensorrt" and profile.path is not None:  # the calibration's kernel timings
            self.backend.timing_cache = Path(profile.path).parent / ".tensorrt" / "timing.cache"
        self.shape = (device.batch_size, space.in_channels, space.input_size, space.input_size)
        if self.backend.lowers_ahead:  # programs of this meter's life, lowered once each
            import tempfile

            self._programs = tempfile.TemporaryDirectory(prefix="hsconas-programs-")
            self.backend.program_dir = Path(self._programs.name)
        self.meter = _make_meter(self.backend, profile.protocol, space, device.batch_size, {})

    def lower_ahead(self, archs: list[Arch]) -> None:
        """Prepare the programs of ``archs`` before any of them is timed, where the backend lowers (ExecuTorch),
        so that the seconds of lowering count in no measurement's time budget."""
        if self.backend.lowers_ahead:
            self.backend.lower_ahead([(network(self.profile.space, a), self.shape) for a in archs])

    def runner(self, model: torch.nn.Module | bytes | Arch | Path):
        """A runner of a module, an arch (its seeded network), ONNX bytes, or an exported file (``.onnx``, OpenVINO
        ``.xml``, ExecuTorch ``.pte``) that the profile's backend runs."""
        if isinstance(model, Path):
            return self.backend.prepare_file(model, self.shape)
        if isinstance(model, Arch):
            model = network(self.profile.space, model)
        if isinstance(model, bytes):
            if not self.backend.consumes_onnx:
                raise HsconasError(f"backend {self.backend.name} measures modules, not ONNX")
            return self.backend.prepare_onnx(model, self.shape)
        return self.backend.prepare(model.eval(), self.shape)

    def measure(self, model: torch.nn.Module | bytes | Arch | Path, *, repeats: int = 3, budget_s: float = 20.0) -> dict:
        prof, protocol = self.profile, self.profile.protocol
        runner = self.runner(model)

        def once() -> tuple[float, bool]:
            m = self.meter.measure(runner)
            return (m.value * prof.doc["reference"]["ms"] if protocol.reference else m.value), m.settled

        v = take_verdict(once, repeats=repeats, budget_s=budget_s, floor_pct=prof.validation.get("noise_floor_pct") or 0.0)
        raw = sorted(runner.time(1) for _ in range(max(5, protocol.pairs_min)))
        runner.close()
        ref_now = self.meter.reference_ms() if protocol.reference else None
        return {
            "measured_ms": v.ms,
            "verdict": v.to_dict(),
            "measurements_ms": v.repeats_ms,
            "settled": v.settled,
            "raw_median_ms": raw[len(raw) // 2],
            "reference_now_ms": ref_now,
            "reference_profile_ms": prof.doc["reference"]["ms"],
            "reference_drift_pct": None if ref_now is None else 100 * (ref_now / prof.doc["reference"]["ms"] - 1),
            "profile": prof.name,
        }

    def measure_arch(self, arch: Arch, *, repeats: int = 3, budget_s: float = 20.0,
                     exported: bytes | Path | None = None) -> dict:
        """``arch`` measured here beside its prediction: its exported model where given (ONNX bytes, or a file the
        backend runs), else its seeded network."""
        res = self.measure(exported if exported is not None else arch, repeats=repeats, budget_s=budget_s)
        predicted = self.profile.predict(arch)
        return {**res, "predicted_ms": predicted, "error_pct": 100 * (predicted - res["measured_ms"]) / res["measured_ms"]}


def measure_model(profile: Profile, model: torch.nn.Module | bytes, *, repeats: int = 3, budget_s: float = 20.0) -> dict:
    """Measure any model of the profile's input shape (a module, or ONNX bytes for backends that consume ONNX)
    on this machine with the profile's backend and protocol: a Verdict (measure.py) and the reference's drift."""
    return LatencyMeter(profile).measure(model, repeats=repeats, budget_s=budget_s)


def measure_arch(profile: Profile, arch: Arch, *, repeats: int = 3, budget_s: float = 20.0,
                 exported: bytes | Path | None = None, force: bool = False) -> dict:
    """Measure one architecture of the profile's space here (its exported model if given), beside the prediction."""
    return LatencyMeter(profile, force=force).measure_arch(arch, repeats=repeats, budget_s=budget_s, exported=exported)
