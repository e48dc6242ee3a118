"""Device profiles: the versioned file a calibration writes, and the latency model it holds (paper III-A).

    additive (the paper's):  LAT(arch) = S + B,     S = sum over layers of LUT[layer, op, mid] + fixed (stem, head)
    power:                   LAT(arch) = k x S^p   (a scale that changes with size; p = 1 is a plain scale)

Both are fitted on the M bias archs; the one with the lower RMSE on the held-out archs is the profile's model
(``doc["model"]``, with both models' held-out figures). Blocks measured alone do not always add up to the
network: on the 224x224 CPU profiles the sum overstates the slowest networks by 6-8%, and p < 1 takes that
out. A straight line a x S + b fitted the held-out archs as well but extrapolated badly: its intercept put
the fastest network of the space 23-29% too slow (docs/BENCHMARKS.md). A profile without a ``model``
(written before the choice existed) is additive.

Files live at ``device_profiles/<device>/<space>/v<N>.json``; recalibrating writes v<N+1> and keeps the
others. A profile is refused, with a one-line reason, when it is truncated or corrupt (its checksum no longer
matches), of an unknown schema, measured for another search space, or (on a Jetson) for another power mode
than the board is in, unless forced.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hsconas_cli.devices import Device, check_power_mode, profiles_root
from hsconas_cli.schema import check as schema_check
from hsconas_cli.errors import HsconasError
from hsconas_cli.fileio import atomic_path, read_json, stamp
from hsconas_cli.measure import Protocol
from hsconas_cli.space import Arch, SearchSpace, Subspace, get_space, validate_arch

KIND = "hsconas-device-profile"
SCHEMA_VERSION = 1
MODELS = ("additive", "power", "scaled")  # scaled: a transferred profile's rescaled source model


def layer_signature(space: SearchSpace, layer: int) -> str:
    """Layers with the same signature hold the same blocks at the same shapes, so they share LUT entries."""
    l = space.layers[layer]
    return f"{l.in_channels}-{l.out_channels}-s{l.stride}-{l.in_size}"


def checksum(doc: dict[str, Any]) -> str:
    body = {k: v for k, v in doc.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def profile_dir(device: str, space: str, root: Path | None = None) -> Path:
    return (root or profiles_root()) / device / space


def versions(device: str, space: str, root: Path | None = None) -> list[int]:
    d = profile_dir(device, space, root)
    return sorted(int(m.group(1)) for p in d.glob("v*.json") if (m := re.fullmatch(r"v(\d+)\.json", p.name)))


def save_profile(doc: dict[str, Any], root: Path | None = None) -> Path:
    """Write ``doc`` as the next version for its device and space; returns its path. The file appears whole
    (written beside it, then linked into place) and only where no file of that version exists, so two
    calibrations or rescales finishing at once take two versions: the second finds vN taken and takes vN+1."""
    device, space = doc["device"]["name"], doc["space"]["name"]
    doc = stamp(doc)
    folder = profile_dir(device, space, root)
    version = (versions(device, space, root) or [0])[-1] + 1
    for _ in range(1000):
        doc["profile_version"] = version
        doc["checksum"] = checksum(doc)
        path = folder / f"v{version}.json"
        try:
            with atomic_path(path, exclusive=True) as tmp:
                tmp.write_text(json.dumps(doc, indent=1) + "\n")
            return path
        except FileExistsError:
            version = max(version, (versions(device, space, root) or [0])[-1]) + 1
    raise HsconasError(f"could not take a new profile version in {folder}")


@dataclass
class Profile:
    doc: dict[str, Any]
    path: Path | None

    # ---- loading ------------------------------------------------------------------------------------
    @classmethod
    def from_doc(cls, doc: Any, path: Path | None = None) -> "Profile":
        where = f" {path}" if path else ""
        if not isinstance(doc, dict) or doc.get("kind") != KIND:
            raise HsconasError(f"not a device profile{where}")
        if doc.get("schema_version") != SCHEMA_VERSION:
            raise HsconasError(
                f"device profile{where} has schema version {doc.get('schema_version')}; this hsconas reads version "
                f"{SCHEMA_VERSION} (recalibrate, or use the hsconas that wrote it)"
            )
        if doc.get("checksum") != checksum(doc):
            raise HsconasError(f"device profile{where} is corrupt: its checksum does not match its content (edited "
                               "by hand, or damaged; a profile is measured, not written: recalibrate)")
        schema_check("device profile", doc, str(path or ""))
        try:
            prof = cls(doc, path)
            prof._index()
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise HsconasError(f"device profile{where} is incomplete or malformed: {e!r}") from None
        return prof

    def _index(self) -> None:
        d = self.doc
        self.space = get_space(d["space"]["definition"])
        if self.space.fingerprint != d["space"]["fingerprint"]:
            raise HsconasError("profile's space definition does not match its fingerprint")
        self.device = Device.from_dict(d["device"])
        self.protocol = Protocol.from_dict(d["protocol"])
        self.fixed_ms = float(d["lut"]["stem"]["ms"]) + float(d["lut"]["head"]["ms"])
        model = d.get("model") or {"kind": "additive", "scale": 1.0, "power": 1.0, "bias_ms": d["bias"]["ms"]}
        self.model_kind, self.scale, self.power = model["kind"], float(model["scale"]), float(model["power"])
        self.bias_ms = float(model["bias_ms"])
        if self.model_kind not in MODELS or self.scale <= 0 or self.power <= 0:
            raise ValueError(f"unknown latency model {model!r}")
        by_sig: dict[tuple, float] = {}
        for e in d["lut"]["entries"]:
            by_sig[(e["signature"], e["op"], e["mid"])] = float(e["ms"])
        self.table: dict[tuple, float] = {}
        for l in self.space.layers:
            sig = layer_signature(self.space, l.index)
            for op in l.ops:
                mids = [None] if op == "skip" else {self.space.mid(l.index, c) for c in self.space.factors}
                for mid in mids:
                    self.table[(l.index, op, mid)] = 0.0 if op == "skip" else by_sig[(sig, op, mid)]

    @property
    def name(self) -> str:
        return f"{self.device.name}/{self.space.name}/v{self.version}"

    @property
    def version(self) -> int:
        return int(self.doc["profile_version"])

    @property
    def timer_note(self) -> str | None:
        """Where the measurements were timed in more than one way (a CUDA-graph capture that failed for some of
        them, say), what the mix was; None where one timer timed them all or the profile does not say."""
        timers = {k: n for k, n in (self.doc.get("timers") or {}).items() if k != "unknown"}
        if len(timers) <= 1:
            return None
        return (f"{self.name} mixes timers ({', '.join(f'{n} {k}' for k, n in sorted(timers.items(), key=lambda t: -t[1]))}): "
                "its entries are not comparable with each other; recalibrate so that one timer times them all")

    @property
    def validation(self) -> dict[str, Any]:
        return self.doc.get("validation", {})

    # ---- the latency model --------------------------------------------------------------------------
    def layer_ms(self, arch: Arch) -> list[float]:
        return [self.table[(i, op, None if op == "skip" else self.space.mid(i, c))] for i, (op, c) in enumerate(arch)]

    def lut_sum(self, arch: Arch) -> float:
        return sum(self.layer_ms(arch))

    def from_sum(self, s: float) -> float:
        """The model applied to S, the sum of LUT entries plus stem and head: scale x S^power + bias."""
        return self.scale * max(s, 1e-9) ** self.power + self.bias_ms

    def predict(self, arch: Arch) -> float:
        """LAT(arch) in milliseconds: additive S + B, or power k x S^p (S: LUT entries + stem and head)."""
        return self.from_sum(self.lut_sum(validate_arch(self.space, arch)) + self.fixed_ms)

    def explain(self, arch: Arch) -> dict[str, Any]:
        """The prediction of ``arch`` taken apart: each layer's LUT entry, stem and head, the model's terms, and the
        formula as one line (``formula``, ending "= ms")."""
        layers = self.layer_ms(validate_arch(self.space, arch))
        predicted = self.from_sum(sum(layers) + self.fixed_ms)
        if self.model_kind == "additive":
            formula = f"LUT sum {sum(layers):.4f} + stem and head {self.fixed_ms:.4f} + B {self.bias_ms:+.4f}"
        else:
            formula = (f"{self.scale:.4f} x (LUT sum {sum(layers):.4f} + stem and head {self.fixed_ms:.4f})^{self.power:.4f}"
                       + (f" {self.bias_ms:+.4f}" if self.bias_ms else ""))
        return {"profile": self.name, "predicted_ms": predicted, "stem_head_ms": self.fixed_ms, "bias_ms": self.bias_ms,
                "model": self.model_kind, "scale": self.scale, "power": self.power, "layers_ms": layers,
                "arch": arch.to_list(), "formula": f"{formula} = {predicted:.4f} ms"}

    def describe_model(self) -> str:
        if self.model_kind == "additive":
            return f"S + B ({self.bias_ms:+.4f} ms), S = LUT sum + stem and head"
        bias = f" {self.bias_ms:+.4f} ms" if self.bias_ms else ""
        return f"{self.scale:.4f} x S^{self.power:.4f}{bias}, S = LUT sum + stem and head"

    def reachable(self, sub: Subspace | None = None) -> tuple[float, float]:
        """The fastest and slowest predicted latency in a (sub)space: the sum is per layer and the model is
        increasing in it, so per layer."""
        sub = sub or self.space.full()
        lo = hi = self.fixed_ms
        for i, (ops, facs) in enumerate(zip(sub.ops, sub.factors)):
            vals = [self.table[(i, op, None if op == "skip" else self.space.mid(i, c))] for op in ops for c in (facs if op != "skip" else [None])]
            lo, hi = lo + min(vals), hi + max(vals)
        return self.from_sum(lo), self.from_sum(hi)

    def check_space(self, space: SearchSpace) -> None:
        if space.fingerprint != self.space.fingerprint:
            raise HsconasError(
                f"profile {self.name} was measured for space {self.space.name} ({self.space.fingerprint}), "
                f"not {space.name} ({space.fingerprint}); calibrate this device for that space"
            )

    def summary(self) -> dict[str, Any]:
        v = self.validation
        return {
            "profile": self.name,
            "path": str(self.path) if self.path else None,
            "device": self.device.to_dict(),
            "space": self.space.name,
            "created": self.doc.get("created"),
            "machine": self.doc.get("machine", {}).get("cpu"),
            "gpu": self.doc.get("machine", {}).get("gpu"),
            "backend": self.doc["backend"],
            "power_mode": self.doc.get("power_mode"),
            "entries": len(self.doc["lut"]["entries"]),
            "fixed_ms": self.fixed_ms,
            "bias_ms": self.bias_ms,
            "model": {"kind": self.model_kind, "scale": self.scale, "power": self.power, "bias_ms": self.bias_ms,
                      "held_out": self.doc.get("model", {}).get("held_out"), "description": self.describe_model()},
            "reference_ms": self.doc.get("reference", {}).get("ms"),
            "calibration_seconds": self.doc.get("timing", {}).get("calibration_seconds"),
            "validation": {k: v.get(k) for k in ("archs", "rmse_ms", "mape_pct", "within_5_pct", "within_10_pct",
                                                  "noise_floor_ms", "noise_floor_pct", "mean_measured_ms")},
            "reachable_ms": list(self.reachable()),
            "timers": self.doc.get("timers"),
            "timer_note": self.timer_note,
            "transfer": {k: t.get(k) for k in ("from", "networks", "design", "mapping", "candidates", "source_as_is")}
            if (t := self.doc.get("transfer")) else None,
        }


def load_profile(path: str | Path) -> Profile:
    path = Path(path)
    return Profile.from_doc(read_json(path, "device profile"), path)


def find_profile(
    device: str,
    space: SearchSpace | str | None,
    version: int | None = None,
    root: Path | None = None,
    *,
    check_mode: bool = True,
    force: bool = False,
) -> Profile:
    """The newest (or a given) profile of ``device`` for ``space``; ``device`` may also be a profile file, which
    names its own space (``space`` None: whichever it is)."""
    if device.endswith(".json") and (space is None or Path(device).is_file()):
        prof = load_profile(device)
    else:
        space = get_space(space)
        have = versions(device, space.name, root)
        if not have:
            raise HsconasError(
                f"no profile of device {device!r} for space {space.name}; run: hsconas calibrate --device {device} "
                f"--space {space.name}"
            )
        v = have[-1] if version is None else version
        if v not in have:
            raise HsconasError(f"device {device} has no profile version {v} for {space.name} (has {have})")
        prof = load_profile(profile_dir(device, space.name, root) / f"v{v}.json")
    if space is not None:
        prof.check_space(get_space(space))
    if check_mode:
        check_power_mode(prof.device, force)
    return prof


def list_profiles(root: Path | None = None) -> list[dict[str, Any]]:
    root = root or profiles_root()
    out = []
    for path in sorted(root.glob("*/*/v*.json")):
        row = {"path": str(path), "device": path.parts[-3], "space": path.parts[-2], "version": path.stem}
        try:
            p = load_profile(path)
            v = p.validation
            row.update(ok=True, created=p.doc.get("created"), rmse_ms=v.get("rmse_ms"),
                       noise_floor_ms=v.get("noise_floor_ms"), within_10_pct=v.get("within_10_pct"),
                       mean_ms=v.get("mean_measured_ms"))
        except HsconasError as e:
            row.update(ok=False, error=str(e))
        out.append(row)
    return out


def validate_profiles(target: str, root: Path | None = None) -> list[dict[str, Any]]:
    """``hsconas profiles validate``: one row per profile checked ({path, ok, profile or error}): the file
    ``target`` (refused in one line where unusable), or every version of device ``target``."""
    if target.endswith(".json"):
        return [{"path": target, "ok": True, "profile": load_profile(target).name}]
    rows = [r for r in list_profiles(root) if r["device"] == target]
    if not rows:
        raise HsconasError(f"no profiles of device {target!r}")
    return rows


def unusable(rows: list[dict[str, Any]]) -> str | None:
    """One line on the rows of ``validate_profiles`` that failed, or None where every profile is usable."""
    bad = [r for r in rows if not r["ok"]]
    return f"{len(bad)} of {len(rows)} profiles are unusable: {bad[0]['error']}" if bad else None


def validation_figures(predicted: list[float], measured: list[float], measured_again: list[float]) -> dict[str, Any]:
    """Held-out accuracy of the predictor and the measurement's own noise floor."""
    p, m, m2 = (np.asarray(x, dtype=float) for x in (predicted, measured, measured_again))
    err = p - m
    rel = np.abs(err) / m
    floor = float(np.sqrt(np.mean((m - m2) ** 2)))
    return {
        "archs": int(len(m)),
        "mean_measured_ms": float(m.mean()),
        "rmse_ms": float(np.sqrt(np.mean(err**2))),
        "mape_pct": float(100 * rel.mean()),
        "within_5_pct": float(100 * np.mean(rel <= 0.05)),
        "within_10_pct": float(100 * np.mean(rel <= 0.10)),
        "noise_floor_ms": floor,
        "noise_floor_pct": float(100 * np.sqrt(np.mean(((m - m2) / m) ** 2))),
        "rmse_over_floor": float(np.sqrt(np.mean(err**2)) / floor) if floor > 0 else None,
        "spearman": spearman(p, m),
    }


def spearman(a, b) -> float | None:
    """Spearman's rank correlation of two sequences, tied values given their average rank; None below 3 values or
    where one side is constant."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    return float(np.corrcoef(_ranks(a), _ranks(b))[0, 1])


def _ranks(v: np.ndarray) -> np.ndarray:
    """0-based ranks of ``v``, ties sharing their average rank."""
    r = np.empty(len(v))
    r[np.argsort(v, kind="stable")] = np.arange(len(v), dtype=float)
    for x in np.unique(v):
        r[v == x] = r[v == x].mean()
    return r


# ---- the latency model: fitted on the bias archs, chosen on the held-out archs -------------------------
def fit_models(lut_sums: list[float], measured: list[float]) -> dict[str, dict[str, float]]:
    """Both models fitted on the M bias archs (``lut_sums`` include stem and head): additive B is the mean
    residual (the paper's); the power model is the least-squares line of log(measured) on log(S)."""
    s, m = np.asarray(lut_sums, dtype=float), np.asarray(measured, dtype=float)
    models = {"additive": {"scale": 1.0, "power": 1.0, "bias_ms": float(np.mean(m - s))}}
    if len(s) >= 3 and np.ptp(s) > 0 and (s > 0).all() and (m > 0).all():
        p, c = np.polyfit(np.log(s), np.log(m), 1)
        if p > 0:
            models["power"] = {"scale": float(np.exp(c)), "power": float(p), "bias_ms": 0.0}
    return models


def choose_model(doc: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The latency model of a profile document with its bias archs and held-out measurements. Each held-out arch
    was measured in two passes: every model of ``fit_models`` is scored on the first (``held_out``, the selection
    set) and the lowest RMSE chosen; the chosen model's validation figures are scored on the second, which the
    choice never saw. Returns (model, validation)."""
    base = Profile({**doc, "model": None}, None)
    base._index()
    v = doc["validation"]
    held = [Arch.from_list(a) for a in v["arch_list"]]
    sums = [base.lut_sum(a) + base.fixed_ms for a in held]
    scored = {}
    for kind, params in fit_models(doc["bias"]["lut_sum_ms"], doc["bias"]["measured_ms"]).items():
        predicted = [params["scale"] * s ** params["power"] + params["bias_ms"] for s in sums]
        scored[kind] = {**params, "predicted_ms": predicted,
                        **validation_figures(predicted, v["measured_ms"], v["measured_again_ms"])}
    kind = min(scored, key=lambda k: scored[k]["rmse_ms"])
    model = {"kind": kind, "scale": scored[kind]["scale"], "power": scored[kind]["power"], "bias_ms": scored[kind]["bias_ms"],
             "chosen_by": "lowest RMSE on the held-out archs' first pass (held_out: the selection set); the profile's "
                          "validation figures are scored on their second pass",
             "held_out": {k: {f: x[f] for f in ("scale", "power", "bias_ms", "rmse_ms", "rmse_over_floor", "mape_pct", "within_5_pct",
                                               "within_10_pct")} for k, x in scored.items()}}
    predicted = scored[kind]["predicted_ms"]
    on_second = validation_figures(predicted, v["measured_again_ms"], v["measured_ms"])
    on_second["noise_floor_pct"] = scored[kind]["noise_floor_pct"]  # relative to the first pass, as it always was
    return model, {**v, "predicted_ms": predicted, "scored_on": "second pass", **on_second}


def refit_profile(prof: Profile, root: Path | None = None) -> Path:
    """Choose the latency model of an existing profile from its stored measurements (nothing is measured
    again) and save the result as the next version."""
    doc = {k: v for k, v in prof.doc.items() if k not in ("checksum", "profile_version")}
    doc["model"], doc["validation"] = choose_model(doc)
    doc["refit_of"] = prof.version
    return save_profile(doc, root)
