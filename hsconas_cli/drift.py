"""Does a device profile still hold on this machine today? The drift check, and what is done when it does not.

A profile is a set of measurements taken on one machine at one time. Cloud VMs of one kind share their host
name and CPU model string, and their speed moves by 10-20% between VMs and hours, so neither the machine's
facts nor the profile's age tell whether it still holds; only measuring again does. The check:

1. measures, with the profile's own backend and protocol, its reference network (the fast-state time the
   protocol keeps anyway) and a handful of its held-out archs, spread over their latency range;
2. compares them with what the profile stored for them (the mean of its two validation passes):
   * ``drift`` = the median over the archs measured on a quiet machine of (now / stored) - 1, in absolute
     time, here, today (an arch measured under load is left out: it is slow for another reason);
   * ``reference`` = the reference network's now / stored - 1;
   * ``shape`` = the median of the archs' ratios to the reference, now against stored - 1: how much the
     archs moved *unlike* the reference;
3. sets these against the noise the profile itself measured (its noise floor between two measurement passes):
   ``threshold`` is three standard deviations of one arch's drift, at least ``MIN_THRESHOLD_PCT``.

The outcome is one of ``holds`` (|drift| within the threshold), ``uniform`` (beyond it, and the archs moved
with the reference: one speed factor, the archs' median drift, explains it), ``changed`` (beyond it, not
uniform: recalibrate), or ``inconclusive`` (the machine was busy through more than half the check: nothing is
decided). ``checked_profile`` acts on it before a profile is used: a uniform drift writes a rescaled version
that records the factor and this evidence; a change recalibrates (``recalibrate_like``) as a new version.
``profile_for_run`` decides which profile a run uses in the first place (a resumed run keeps the version it
started with; ``hsconas run`` reuses one measured on a machine like this one, or calibrates). The factor is the archs'
median rather than the reference network's own ratio: one network's measurement carries its own noise into
every time of the rescaled profile, a median of several carries less.
"""

from __future__ import annotations

import copy
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from hsconas_cli.devices import Device, load_device, machine_facts
from hsconas_cli.errors import HsconasError
from hsconas_cli.fileio import read_json
from hsconas_cli.profiles import Profile, find_profile, load_profile, save_profile, versions
from hsconas_cli.space import Arch, SearchSpace
from hsconas_cli.ui import ProgressFn

MIN_THRESHOLD_PCT = 2.0
CHECK_ARCHS = 6
CHECK_REPEATS = 3
CHECK_BUDGET_S = 30.0


@dataclass
class CheckResult:
    profile: str
    outcome: str  # holds | uniform | changed | inconclusive
    drift_pct: float
    threshold_pct: float
    reference_pct: float | None
    shape_pct: float
    archs: list[dict[str, Any]] = field(default_factory=list)
    busy_archs: int = 0
    seconds: float = 0.0
    identity: str = ""

    @property
    def factor(self) -> float:
        """The uniform speed factor: 1 + the median drift of the archs measured on a quiet machine."""
        return 1 + self.drift_pct / 100

    def describe(self) -> str:
        ref = f", reference network {self.reference_pct:+.1f}%" if self.reference_pct is not None else ""
        head = (f"profile {self.profile}: drift {self.drift_pct:+.1f}% (noise threshold +-{self.threshold_pct:.1f}%, "
                f"{len(self.archs)} held-out archs{ref}, {self.seconds:.0f} s)")
        tail = {
            "holds": "it holds on this machine",
            "uniform": f"one uniform speed factor x{self.factor:.3f} explains it (the archs moved with the reference, "
                       f"{self.shape_pct:+.1f}% apart)",
            "changed": f"not one speed factor (the archs moved {self.shape_pct:+.1f}% against the reference): the "
                       "profile no longer describes this machine",
            "inconclusive": f"inconclusive: the machine was busy during {self.busy_archs} of {len(self.archs)} "
                            "measurements",
        }[self.outcome]
        return f"{head}: {tail}"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "factor": self.factor, "description": self.describe()}


def _pick_archs(profile: Profile, n: int) -> list[tuple[Arch, float]]:
    """``n`` held-out archs evenly spread over their stored latencies, with the mean of the two stored passes."""
    v = profile.validation
    stored = [(Arch.from_list(a), (m1 + m2) / 2) for a, m1, m2 in zip(v["arch_list"], v["measured_ms"], v["measured_again_ms"])]
    stored.sort(key=lambda t: t[1])
    if len(stored) <= n:
        return stored
    return [stored[int((i + 0.5) * len(stored) / n)] for i in range(n)]


def identity_note(profile: Profile) -> str:
    """A hint, not a proof: whether the profile's machine identifiers match this machine's."""
    then, now = profile.doc.get("machine", {}).get("identity", {}), machine_facts().get("identity", {})
    if not then:
        return "the profile records no machine identifiers"
    if then.get("machine_id") != now.get("machine_id"):
        return "calibrated on another machine (its machine-id differs)"
    if then.get("boot_id") != now.get("boot_id"):
        return "calibrated on this machine before its last boot"
    return "calibrated on this machine since its last boot"


def measure_drift(profile: Profile, *, archs: int = CHECK_ARCHS, repeats: int = CHECK_REPEATS,
                  budget_s: float = CHECK_BUDGET_S, progress: ProgressFn | None = None,
                  force: bool = False) -> CheckResult:
    """Measure the profile's reference network and ``archs`` held-out archs here, within about ``budget_s``
    (``force``: on a Jetson whose board or power mode cannot be verified as the profile's)."""
    from hsconas_cli.meter import LatencyMeter

    if not profile.validation.get("arch_list"):
        raise HsconasError(f"profile {profile.name} has no held-out archs to check against; recalibrate it")
    picked = _pick_archs(profile, archs)
    meter = LatencyMeter(profile, force=force)
    meter.lower_ahead([arch for arch, _ in picked])  # ExecuTorch: lowering is not part of the check's budget
    t0 = time.perf_counter()
    rows = []
    for i, (arch, stored) in enumerate(picked):
        if progress:
            progress(f"checking {profile.name}: arch {i + 1}/{len(picked)}", i, len(picked))
        left = budget_s - (time.perf_counter() - t0)
        res = meter.measure(arch, repeats=repeats, budget_s=max(0.5, left / (len(picked) - i) - 1.0))
        rows.append({"arch": arch.to_list(), "stored_ms": stored, "relative_ms": res["measured_ms"],
                     "status": res["verdict"]["status"], "max_other_cores": res["verdict"]["max_other_cores"]})
    ref_stored = profile.doc.get("reference", {}).get("ms")
    ref_now = meter.reference_now_ms()
    ref_factor = ref_now / ref_stored if ref_now and ref_stored else None
    for r in rows:  # relative_ms is in the profile's time base (ratio to the reference x its stored time)
        r["now_ms"] = r["relative_ms"] * (ref_factor or 1.0)
        r["drift_pct"] = 100 * (r["now_ms"] / r["stored_ms"] - 1)
    drift, shape, busy = drift_figures(rows, has_reference=ref_factor is not None)
    threshold = _threshold_pct(profile, len(rows), repeats)
    outcome = drift_outcome(100 * drift, 100 * shape, threshold, busy=busy, archs=len(rows),
                            has_reference=ref_factor is not None)
    if progress:
        progress("checked", len(picked), len(picked))
    return CheckResult(profile.name, outcome, 100 * drift, threshold,
                       None if ref_factor is None else 100 * (ref_factor - 1), 100 * shape, rows, busy,
                       time.perf_counter() - t0, identity_note(profile))


def drift_figures(rows: list[dict[str, Any]], *, has_reference: bool) -> tuple[float, float, int]:
    """(drift, shape, busy) of a check's rows: the median over the rows measured quiet (status not busy) of
    now / stored - 1 and of relative / stored - 1 (0 without a reference network), and how many were busy.
    NaN medians where every row was busy (drift_outcome reads that as inconclusive)."""
    quiet = [r for r in rows if r["status"] != "busy"]
    if not quiet:
        return float("nan"), float("nan"), len(rows)
    drift = statistics.median(r["now_ms"] / r["stored_ms"] for r in quiet) - 1
    shape = statistics.median(r["relative_ms"] / r["stored_ms"] for r in quiet) - 1 if has_reference else 0.0
    return drift, shape, len(rows) - len(quiet)


def drift_outcome(drift_pct: float, shape_pct: float, threshold_pct: float, *, busy: int, archs: int,
                  has_reference: bool) -> str:
    """inconclusive (more than half the archs measured under load), holds (|drift| within the threshold),
    uniform (beyond it, and the archs moved with the reference, or there is no reference to tell), changed."""
    if busy > archs // 2:
        return "inconclusive"
    if abs(drift_pct) <= threshold_pct:
        return "holds"
    if not has_reference or abs(shape_pct) <= threshold_pct:
        return "uniform"
    return "changed"


def _threshold_pct(profile: Profile, n: int, repeats: int) -> float:
    """Three standard deviations of the drift that noise alone gives, from the profile's noise floor: one
    measurement's relative noise is floor / sqrt(2); the stored value is the mean of two, the one taken now
    the median of ``repeats``. It is not divided by sqrt(n): on a shared machine the speed swings move every
    arch together (four checks of one profile minutes apart drifted +3.4%, +4.8%, +1.6% and +12.1%), so more
    archs do not average them out."""
    floor = (profile.validation.get("noise_floor_pct") or 0.0) / 100
    sigma = floor / np.sqrt(2)
    per_arch = sigma * np.sqrt(0.5 + 1.571 / max(1, repeats))
    return max(MIN_THRESHOLD_PCT, float(300 * per_arch))


def rescale_profile(profile: Profile, check: CheckResult, root: Path | None = None) -> Path:
    """Save the profile, every time in it multiplied by the check's uniform factor, as the next version; the
    factor and the check that found it are recorded in ``rescaled``."""
    f = check.factor
    doc = {k: v for k, v in profile.doc.items() if k not in ("checksum", "profile_version")}
    doc = _scaled(doc, f)
    doc["rescaled"] = {"from_version": profile.version, "factor": f, "check": check.to_dict(),
                       "machine_before": profile.doc.get("machine")}
    doc["machine"] = machine_facts()
    return save_profile(doc, root)


def _scaled(doc: dict[str, Any], f: float) -> dict[str, Any]:
    d = copy.deepcopy(doc)
    for e in d["lut"]["entries"]:
        e["ms"] *= f
        e["raw_ms"] *= f
    for part in ("stem", "head"):
        d["lut"][part]["ms"] *= f
    d["overhead_ms"] = {k: v * f for k, v in d.get("overhead_ms", {}).items()}
    if d.get("reference", {}).get("ms") is not None:
        d["reference"]["ms"] *= f
    d["bias"]["ms"] *= f
    d["bias"]["measured_ms"] = [x * f for x in d["bias"]["measured_ms"]]
    d["bias"]["lut_sum_ms"] = [x * f for x in d["bias"]["lut_sum_ms"]]
    if d.get("model"):  # k' (f S)^p + f b = f (k S^p + b) with k' = k f^(1 - p)
        for m in [d["model"], *d["model"].get("held_out", {}).values()]:
            m["scale"] *= f ** (1 - m.get("power", 1.0))
            m["bias_ms"] *= f
        for m in d["model"].get("held_out", {}).values():
            m["rmse_ms"] *= f
    v = d["validation"]
    for k in ("measured_ms", "measured_again_ms", "predicted_ms"):
        v[k] = [x * f for x in v[k]]
    for k in ("mean_measured_ms", "rmse_ms", "noise_floor_ms"):
        if v.get(k) is not None:
            v[k] *= f
    return d


def not_its_device(profile: Profile) -> str | None:
    """Why this machine cannot check ``profile`` (it is not the device the profile measured), or None.

    A Jetson profile read on a workstation, or a GPU profile on a machine without that GPU, is searched with,
    not measured: measuring here would time another device. A CPU profile is always checked: the "cpu" device
    is whatever CPU runs hsconas, and a change there is what the check exists to find."""
    from hsconas_cli.devices import is_jetson

    device, stored = profile.device, profile.doc.get("machine", {})
    if device.jetson and not is_jetson():
        return f"{profile.name} is a Jetson profile and this machine is not a Jetson"
    gpu_backend = device.backend == "tensorrt" or device.backend_options.get("device") == "cuda" or \
        device.backend_options.get("provider") in ("cuda", "tensorrt")
    if gpu_backend and stored.get("gpu") != machine_facts().get("gpu"):
        return f"{profile.name} was measured on GPU {stored.get('gpu')!r}, and this machine has {machine_facts().get('gpu')!r}"
    return None


def recalibrate_like(profile: Profile, *, root: Path | None = None, progress: ProgressFn | None = None,
                     force: bool = False) -> Path:
    """Calibrate ``profile``'s device and space again with the profile's own settings (archs, holdout, seed); a
    profile calibrated by transfer is transferred again, from the same source, with its own N."""
    if profile.doc.get("transfer"):
        from hsconas_cli.transfer import transfer_like

        return transfer_like(profile, root=root, progress=progress, force=force)
    from hsconas_cli.calibrate import calibrate

    return calibrate(profile.device, profile.space, archs=len(profile.doc["bias"]["archs"]),
                     holdout=len(profile.validation["arch_list"]), seed=profile.doc["bias"].get("seed", 0), root=root,
                     force=force, progress=progress)


def checked_profile(profile: Profile, *, recalibrate: Callable[[], Path] | None = None, root: Path | None = None,
                    log: Callable[[str], None] = print, progress: ProgressFn | None = None,
                    force: bool = False) -> tuple[Profile, dict]:
    """Check ``profile`` here before it is used, and act: keep it (holds, or inconclusive, said so), write a
    rescaled version (uniform drift), or recalibrate (changed: ``recalibrate``, by default ``recalibrate_like``).
    Returns the profile to use and what happened. Off the profile's device (``not_its_device``) nothing is
    measured: the profile is used as it is."""
    elsewhere = not_its_device(profile)
    if elsewhere:
        log(f"profile check skipped: {elsewhere}; it runs on the device (hsconas profiles check there)")
        return profile, {"check": {"outcome": "not checked", "description": f"not checked: {elsewhere}"},
                         "used": profile.name, "action": "used as calibrated"}
    check = measure_drift(profile, progress=progress, force=force)
    log(check.describe())
    action = {"check": check.to_dict(), "used": profile.name, "action": "kept"}
    if check.outcome == "uniform":
        old_version = profile.version
        profile = load_profile(rescale_profile(profile, check, root))
        action.update(action="rescaled", used=profile.name)
        log(f"wrote {profile.name}: {check.identity}; every time of v{old_version} x{check.factor:.3f}")
    elif check.outcome == "changed":
        log(f"recalibrating ({check.identity})")
        again = recalibrate or (lambda: recalibrate_like(profile, root=root, progress=progress, force=force))
        profile = load_profile(again())
        action.update(action="recalibrated", used=profile.name)
    elif check.outcome == "inconclusive":
        log(f"the profile is used as it is, unconfirmed: measure again when the machine is quiet ({check.identity})")
        action["action"] = "kept, unconfirmed"
    return profile, action


# ---- which profile a run uses -------------------------------------------------------------------------
def started_profile(state_file: str | Path | None) -> str | None:
    """The profile name in a search's or shrink's saved state, None where there is none or it cannot be read."""
    if state_file is None or not Path(state_file).is_file():
        return None
    try:
        return read_json(state_file, "saved state")["settings"]["profile"]
    except (HsconasError, KeyError, TypeError):
        return None


def reusable_profile(device: Device, space: SearchSpace, root: Path | None = None) -> Profile | None:
    """The newest profile of this device and space whose device settings, CPU and GPU models and backend versions
    match this machine; None if there is none. The host name is not compared (every cloud VM of a kind is
    called ``vm``): whether the profile still holds here is decided by measuring (``checked_profile``)."""
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


def profile_for_run(device: str | Device, space: SearchSpace, *, version: int | None = None,
                    state_file: str | Path | None = None, calibrate: Callable[[], Path] | None = None,
                    check: bool = True, check_mode: bool = True, force: bool = False, root: Path | None = None,
                    log: Callable[[str], None] = print, progress: ProgressFn | None = None) -> tuple[Profile, dict]:
    """The profile a run on ``device`` and ``space`` uses, and a record of how it was chosen ({"reused", "check"}).

    * With ``calibrate`` (``hsconas run``): the newest profile measured on a machine like this one
      (``reusable_profile``), else a new calibration (``calibrate()``, which also recalibrates a changed one).
    * Without: the newest (or ``version``) profile of the device; refused where there is none. Where
      ``state_file`` holds the state of a search or shrink that started with another version of that profile,
      that version, unchecked: a check that rescaled would write a new version, and the run could not resume.

    Then, unless ``check`` is False or the run resumes, the drift check acts on it (``checked_profile``)."""
    if calibrate is not None:
        device = device if isinstance(device, Device) else load_device(device, root)
        prof = reusable_profile(device, space, root)
        if prof is None:
            return load_profile(calibrate()), {"reused": False, "check": None}
    else:
        name = device.name if isinstance(device, Device) else device
        prof = find_profile(name, space, version, root, check_mode=check_mode, force=force)
        started = started_profile(state_file)
        same_profile = started and started.rpartition("/v")[0] == prof.name.rpartition("/v")[0]
        if same_profile and version is None and started != prof.name:
            prof = find_profile(name, space, int(started.rpartition("/v")[2]), root, check_mode=check_mode, force=force)
        if started == prof.name:
            if check:
                log(f"resuming {Path(state_file).parent}: with {prof.name}, the profile it started with, without a "
                    "drift check")
            return prof, {"reused": True, "check": None}
    if not check:
        return prof, {"reused": True, "check": None}
    prof, action = checked_profile(prof, recalibrate=calibrate, root=root, log=log, progress=progress, force=force)
    return prof, {"reused": action["action"] != "recalibrated", "check": action}
