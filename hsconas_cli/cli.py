"""The ``hsconas`` command line: a thin Typer layer. Each command parses options and calls one library function.

Every user-facing failure is one line on stderr and exit code 2 (see ``main``).
"""

from __future__ import annotations

import json
import os
import random
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table
try:  # typer 0.2x vendors click; older typer raises click's own exceptions
    from typer.exceptions import TyperException as _UsageErrors
except ImportError:  # pragma: no cover - older typer
    from click.exceptions import ClickException as _UsageErrors

from hsconas_cli import __version__
from exporters.files import ExportError
from hsconas_cli.errors import HsconasError, Interrupted

app = typer.Typer(
    name="hsconas",
    help="Hardware-aware neural architecture search for fast, accurate CNNs on edge devices (HSCoNAS).\n\n"
    "Pipeline: calibrate a device -> train a supernet -> shrink the space -> search under a latency target "
    "-> export the winner (ONNX, TensorRT).",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)
arch_app = typer.Typer(help="Inspect architecture files.", no_args_is_help=True)
app.add_typer(arch_app, name="arch")
profiles_app = typer.Typer(help="List, show and validate calibrated device profiles.", no_args_is_help=True)
app.add_typer(profiles_app, name="profiles")
checkpoint_app = typer.Typer(help="Checkpoints: convert one you trust to the form read without pickle.", no_args_is_help=True)
app.add_typer(checkpoint_app, name="checkpoint")

# Wide enough for the tables when the output is a pipe or a log file (rich falls back to 80 columns).
out = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 160)

SpaceOpt = typer.Option("fmnist-A", "--space", "-s", help="Search space: a preset name or a space JSON file.")
JsonOpt = typer.Option(False, "--json", help="Print the result as JSON on stdout.")


def _version(value: bool) -> None:
    if value:
        out.print(f"hsconas {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """Hardware-aware NAS (HSCoNAS): calibrate, train, shrink, search, export."""


def _print_json(doc) -> None:
    sys.stdout.write(json.dumps(doc, indent=2) + "\n")


# ---- space -----------------------------------------------------------------------------------------
@app.command()
def space(space: str = SpaceOpt, as_json: bool = JsonOpt) -> None:
    """Show a search space: its layers, channels, ops and how many architectures it holds.

    Example: [bold]hsconas space --space imagenet-A[/bold]
    """
    from hsconas_cli.space import OP_DESCRIPTIONS, SPACES, format_count, get_space
    from hsconas_cli.describe import space_summary

    sp = get_space(space)
    summary = space_summary(sp)
    if as_json:
        return _print_json(summary)
    out.print(f"[bold]{sp.name}[/bold]: {sp.description or 'custom space'}  (fingerprint {sp.fingerprint})")
    out.print(
        f"input {sp.input_size}x{sp.input_size}x{sp.in_channels}, {sp.num_classes} classes; stem 3x3 -> {sp.stem_channels} "
        f"(stride {sp.stem_stride}); head 1x1 -> {sp.head_channels}, pool, dropout, linear"
    )
    t = Table(title="choice layers")
    for col in ("layer", "stage", "input", "in -> out", "stride", "ops", "mid channels for c = 0.1 .. 1.0"):
        t.add_column(col)
    for row in summary["layers"]:
        t.add_row(
            str(row["layer"]), str(row["stage"]), row["input"], f"{row['in_channels']} -> {row['out_channels']}",
            str(row["stride"]), str(len(row["ops"])), " ".join(map(str, row["mids"])),
        )
    out.print(t)
    out.print("ops: " + "; ".join(f"{k} = {v}" for k, v in OP_DESCRIPTIONS.items() if k in sp.ops))
    c = summary["counts"]
    out.print(f"distinct architectures: [bold]{format_count(c['distinct'])}[/bold] "
              f"(skip carries no factor; factors that round to the same width count once)")
    out.print(f"gene strings (op, c) per layer: {format_count(c['gene_strings'])}")
    out.print(f"the paper's count, 5^20 x 10^20: {format_count(c['paper'])}")
    f = summary["flops"]
    out.print(f"FLOPs from {f['min'] / 1e6:.1f} M to {f['max'] / 1e6:.1f} M; parameters from "
              f"{summary['params']['min'] / 1e6:.2f} M to {summary['params']['max'] / 1e6:.2f} M")
    out.print("presets: " + ", ".join(SPACES))


# ---- sample ----------------------------------------------------------------------------------------
@app.command()
def sample(
    space: str = SpaceOpt,
    seed: int = typer.Option(0, "--seed", help="Random seed: the same seed gives the same arch."),
    out_path: Path = typer.Option(Path("arch.json"), "--out", "-o", help="Where to write the arch JSON."),
    as_json: bool = JsonOpt,
) -> None:
    """Sample an architecture uniformly from a space and write it as JSON.

    Example: [bold]hsconas sample --space fmnist-A --seed 3 --out arch.json[/bold]
    """
    from hsconas_cli.fileio import write_json
    from hsconas_cli.space import arch_to_json, get_space

    sp = get_space(space)
    arch = sp.full().sample(random.Random(seed))
    doc = arch_to_json(sp, arch, seed=seed)
    write_json(out_path, doc)
    if as_json:
        return _print_json(doc)
    out.print(f"wrote {out_path} (space {sp.name}, seed {seed})")


# ---- arch show -------------------------------------------------------------------------------------
@arch_app.command("show")
def arch_show(path: Path = typer.Argument(..., help="An arch JSON (or a search result)."), as_json: bool = JsonOpt) -> None:
    """Show an architecture layer by layer, with its FLOPs and parameters.

    Example: [bold]hsconas arch show arch.json[/bold]
    """
    from hsconas_cli.describe import arch_table
    from hsconas_cli.space import load_arch

    sp, arch = load_arch(path)
    rows, totals = arch_table(sp, arch)
    if as_json:
        return _print_json({"space": sp.name, "layers": rows, **totals})
    t = Table(title=f"{path} ({sp.name})")
    for col in ("layer", "stage", "op", "c", "mid", "in -> out", "stride", "input", "MFLOPs", "params"):
        t.add_column(col, justify="right" if col in ("MFLOPs", "params", "mid") else "left")
    for r in rows:
        t.add_row(
            str(r["layer"]), str(r["stage"]), r["op"], "-" if r["c"] is None else f"{r['c']:.1f}",
            "-" if r["mid"] is None else str(r["mid"]), r["channels"], str(r["stride"]), r["input"],
            f"{r['flops'] / 1e6:.2f}", f"{r['params']:,}",
        )
    out.print(t)
    out.print(f"total: {totals['flops'] / 1e6:.2f} MFLOPs (stem {totals['stem_flops'] / 1e6:.2f}, head "
              f"{totals['head_flops'] / 1e6:.2f}), {totals['params']:,} parameters")


# ---- calibrate ---------------------------------------------------------------------------------
DeviceOpt = typer.Option("cpu", "--device", "-d", help="Device preset (device_profiles/NAME.json) or a profile file.")


@app.command()
def calibrate(
    device: str = typer.Option("cpu", "--device", "-d", help="Device preset: cpu, cpu-openvino, cpu-xnnpack, gpu, xavier, or device_profiles/NAME.json."),
    space: str = SpaceOpt,
    power_mode: Optional[int] = typer.Option(None, "--power-mode", help="Jetson nvpmodel mode to set first (needs root)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", "-b", min=1, help="Override the preset's batch size."),
    backend: Optional[str] = typer.Option(None, "--backend", help="Override the preset's backend: onnxruntime, torch, tensorrt, openvino, executorch."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="CPU threads of the backend (onnxruntime, torch on CPU, openvino, executorch)."),
    archs: Optional[int] = typer.Option(None, "--archs", "-M", min=2, help="Sampled archs for the bias term B (default 100, or the preset's)."),
    holdout: Optional[int] = typer.Option(None, "--holdout", min=2, help="Held-out archs for validation, none used for B (default 50, or the preset's)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the sampled archs."),
    fresh: bool = typer.Option(False, "--fresh", help="Discard an interrupted calibration instead of resuming it."),
    force: bool = typer.Option(False, "--force", help="Measure even though the board is in another power mode."),
    source: Optional[str] = typer.Option(None, "--from", help="Calibrate by transfer from this device's profile (DEVICE, DEVICE/vN or a profile file); needs --networks."),
    networks: Optional[int] = typer.Option(None, "--networks", "-N", min=2, help="Whole networks to measure for a transfer (--from); omitted: a full calibration."),
    design: str = typer.Option("random", "--design", help="How a transfer chooses its networks: random (uniform draws, the default) or spread (over the source's latency range and op mix; it did worse, docs/BENCHMARKS.md)."),
    max_rmse: float = typer.Option(1.5, "--max-rmse", min=0.0, help="Refuse a transferred profile whose held-out RMSE exceeds this many times its noise floor."),
    as_json: bool = JsonOpt,
) -> None:
    """Measure a device's latency table, bias B and validation; write a new versioned profile.

    Example: [bold]hsconas calibrate --device cpu --space fmnist-A[/bold]
    On a Jetson: [bold]hsconas calibrate --device xavier --power-mode 6 --space imagenet-A[/bold]

    By transfer, from a profile of another device for the same space, measuring N whole networks and 20 held-out
    ones (twice) instead of every LUT entry:
    [bold]hsconas calibrate --device cpu-openvino --space fmnist-A --from cpu --networks 20[/bold]
    On a second Jetson board or power mode: [bold]hsconas calibrate --device xavier --power-mode 2 --space imagenet-A --from xavier/v1 --networks 20[/bold]
    """
    from hsconas_cli.calibrate import calibrate as run_calibration
    from hsconas_cli.devices import load_device
    from hsconas_cli.profiles import load_profile
    from hsconas_cli.space import get_space
    from hsconas_cli.ui import progress, stderr

    dev = load_device(device, batch_size=batch_size)
    if backend and backend != dev.backend:  # another backend starts from its own default options
        dev = dev.replace(backend=backend, backend_options={})
    if threads:
        dev = dev.replace(backend_options={**dev.backend_options, "threads": threads})
    sp = get_space(space)
    log = lambda m: stderr.print(f"[dim]{m}[/dim]", highlight=False)  # noqa: E731
    if (source is None) != (networks is None):
        raise HsconasError("calibration by transfer takes both --from DEVICE and --networks N (a full calibration neither)")
    if source is not None:
        from hsconas_cli.transfer import parse_source, transfer_calibrate

        src = parse_source(source, sp)
        with progress(f"calibrating {dev.name} for {sp.name} by transfer from {src.name}") as update:
            path = transfer_calibrate(dev, src, networks, holdout=holdout or 20, seed=seed, design=design,
                                      max_rmse=max_rmse, fresh=fresh, set_mode=power_mode, force=force, progress=update,
                                      log=log)
    else:
        sizes = {"archs": 100, "holdout": 50, **(dev.calibration or {})}
        with progress(f"calibrating {dev.name} for {sp.name}") as update:
            path = run_calibration(dev, sp, archs=archs or sizes["archs"], holdout=holdout or sizes["holdout"], seed=seed,
                                   fresh=fresh, set_mode=power_mode, force=force, progress=update, log=log)
    summary = load_profile(path).summary()
    if as_json:
        return _print_json(summary)
    _print_profile_summary(summary)


def _print_profile_summary(s: dict) -> None:
    v = s["validation"]
    out.print(f"[bold]{s['profile']}[/bold]  ({s['path']})")
    out.print(f"device {s['device']['name']}: batch {s['device']['batch_size']}, backend {s['backend']['name']} "
              f"{s['backend']['options']}, machine {s['machine']}" + (f", GPU {s['gpu']}" if s.get("gpu") else "")
              + (f", power mode {s['power_mode']}" if s.get("power_mode") else ""))
    m = s["model"]
    model = (f"additive S + B, B {s['bias_ms']:+.4f} ms" if m["kind"] == "additive"
             else f"{m['kind']} {m['scale']:.4f} x S^{m['power']:.4f}" + (f" {m['bias_ms']:+.4f} ms" if m["bias_ms"] else ""))
    out.print(f"{s['entries']} LUT entries, stem + head {s['fixed_ms']:.4f} ms, model {model} (S = LUT sum + stem and head); "
              f"reachable {s['reachable_ms'][0]:.3f} .. {s['reachable_ms'][1]:.3f} ms; calibrated in {s['calibration_seconds']} s")
    if v.get("archs"):
        out.print(f"held-out ({v['archs']} archs, mean {v['mean_measured_ms']:.3f} ms): RMSE {v['rmse_ms']:.4f} ms, "
                  f"MAPE {v['mape_pct']:.1f}%, within 5% {v['within_5_pct']:.0f}%, within 10% {v['within_10_pct']:.0f}%; "
                  f"noise floor {v['noise_floor_ms']:.4f} ms ({v['noise_floor_pct']:.1f}%)")
    if t := s.get("transfer"):
        c = t["candidates"][t["mapping"]]
        out.print(f"transferred from {t['from']} with {t['networks']} {t['design']} networks, mapping {t['mapping']}: held-out "
                  f"Spearman {_rho(c['spearman'])}; the source as it is: RMSE {t['source_as_is']['rmse_ms']:.4f} ms, within "
                  f"10% {t['source_as_is']['within_10_pct']:.0f}%, Spearman {_rho(t['source_as_is']['spearman'])}")


def _rho(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


# ---- profiles ----------------------------------------------------------------------------------
@profiles_app.command("list")
def profiles_list(as_json: bool = JsonOpt) -> None:
    """List the calibrated profiles under device_profiles/.

    Example: [bold]hsconas profiles list[/bold]
    """
    from hsconas_cli.devices import preset_names, profiles_root
    from hsconas_cli.profiles import list_profiles

    rows = list_profiles()
    if as_json:
        return _print_json({"root": str(profiles_root()), "presets": preset_names(), "profiles": rows})
    out.print(f"device presets in {profiles_root()}: {', '.join(preset_names()) or 'none'}")
    t = Table(title="calibrated profiles")
    for col in ("device", "space", "version", "created", "mean ms", "RMSE ms", "noise ms", "within 10%", "status"):
        t.add_column(col)
    for r in rows:
        ok = r.get("ok")
        f = lambda k, fmt: (fmt % r[k]) if ok and r.get(k) is not None else "-"
        t.add_row(r["device"], r["space"], r["version"], (r.get("created") or "-")[:19], f("mean_ms", "%.3f"),
                  f("rmse_ms", "%.4f"), f("noise_floor_ms", "%.4f"), f("within_10_pct", "%.0f%%"),
                  "ok" if ok else f"[red]{r.get('error')}[/red]")
    out.print(t)


@profiles_app.command("show")
def profiles_show(
    device: str = typer.Argument("cpu", help="Device name or a profile file."),
    space: str = SpaceOpt,
    version: Optional[int] = typer.Option(None, "--version", "-v", help="Profile version (default: newest)."),
    as_json: bool = JsonOpt,
) -> None:
    """Show a profile: device, machine, protocol, bias, validation figures.

    Example: [bold]hsconas profiles show cpu --space fmnist-A[/bold]
    """
    from hsconas_cli.profiles import find_profile

    prof = find_profile(device, _space_of_profile_arg(device, space), version, check_mode=False)
    if as_json:
        return _print_json({**prof.summary(), "protocol": prof.doc["protocol"], "machine": prof.doc["machine"]})
    _print_profile_summary(prof.summary())
    out.print(f"protocol: {prof.doc['protocol']['statistic']}")


def _space_of_profile_arg(device: str, space: str):
    """A profile file names its own space; a device name takes --space."""
    if device.endswith(".json"):
        from hsconas_cli.profiles import load_profile

        return load_profile(device).space
    return space


@profiles_app.command("validate")
def profiles_validate(
    target: str = typer.Argument(..., help="A profile file, or a device name (checks every version of it)."),
    as_json: bool = JsonOpt,
) -> None:
    """Check profiles: schema, checksum, space, completeness. Exit code 2 if any is unusable.

    Example: [bold]hsconas profiles validate device_profiles/cpu/fmnist-A/v1.json[/bold]
    """
    from hsconas_cli.profiles import list_profiles, load_profile

    if target.endswith(".json"):
        prof = load_profile(target)
        rows = [{"path": target, "ok": True, "profile": prof.name}]
    else:
        rows = [r for r in list_profiles() if r["device"] == target]
        if not rows:
            raise HsconasError(f"no profiles of device {target!r}")
    if as_json:
        _print_json(rows)
    else:
        for r in rows:
            out.print(f"{r['path']}: " + ("ok" if r["ok"] else f"[red]{r['error']}[/red]"))
    bad = [r for r in rows if not r["ok"]]
    if bad:
        raise HsconasError(f"{len(bad)} of {len(rows)} profiles are unusable: {bad[0]['error']}")


@profiles_app.command("check")
def profiles_check(
    device: str = typer.Argument("cpu", help="Device name or a profile file."),
    space: str = SpaceOpt,
    version: Optional[int] = typer.Option(None, "--version", "-v", help="Profile version (default: newest)."),
    archs: int = typer.Option(6, "--archs", min=2, help="Held-out archs of the profile to measure again."),
    budget: float = typer.Option(30.0, "--budget", min=1.0, help="Seconds the check may take (about)."),
    fix: bool = typer.Option(False, "--fix", help="Act on the result: rescale a uniform drift, recalibrate a change."),
    force: bool = typer.Option(False, "--force", help="Check the profile although the board is in another power mode."),
    as_json: bool = JsonOpt,
) -> None:
    """Does the profile still hold on this machine? Re-measures its reference network and a few held-out archs
    with its own protocol and sets the drift against the profile's noise floor.

    Example: [bold]hsconas profiles check cpu --space fmnist-A[/bold]
    """
    from hsconas_cli.drift import check_profile
    from hsconas_cli.profiles import find_profile
    from hsconas_cli.ui import progress

    prof = find_profile(device, _space_of_profile_arg(device, space), version, force=force)
    if fix:
        prof2 = _checked_profile(prof, True, force)
        if as_json:
            return _print_json({"used": prof2.name, "path": str(prof2.path)})
        out.print(f"use {prof2.name} ({prof2.path})")
        return
    with progress(f"checking {prof.name}") as update:
        res = check_profile(prof, archs=archs, budget_s=budget, progress=update, force=force)
    if as_json:
        return _print_json(res.to_dict())
    t = Table(title=f"{prof.name} measured again here")
    for col in ("stored ms", "now ms", "drift", "status"):
        t.add_column(col)
    for r in res.archs:
        t.add_row(f"{r['stored_ms']:.4f}", f"{r['now_ms']:.4f}", f"{r['drift_pct']:+.1f}%", r["status"])
    out.print(t)
    out.print(res.describe())
    out.print(f"({res.identity})")
    if res.outcome in ("uniform", "changed"):
        out.print(f"act on it: hsconas profiles check {device} --space {prof.space.name} --fix "
                  f"({'writes a rescaled version' if res.outcome == 'uniform' else 'recalibrates'}); run, search and shrink do "
                  "this by themselves")


@profiles_app.command("refit")
def profiles_refit(
    device: str = typer.Argument("cpu", help="Device name or a profile file."),
    space: str = SpaceOpt,
    version: Optional[int] = typer.Option(None, "--version", "-v", help="Profile version (default: newest)."),
    as_json: bool = JsonOpt,
) -> None:
    """Choose a profile's latency model (additive LUT + B, or the power model k x S^p) from its stored measurements on the
    held-out archs; nothing is measured again. Writes the next version.

    Example: [bold]hsconas profiles refit cpu --space imagenet-A[/bold]
    """
    from hsconas_cli.profiles import find_profile, load_profile, refit_profile

    prof = find_profile(device, _space_of_profile_arg(device, space), version, check_mode=False)
    new = load_profile(refit_profile(prof))
    summary = new.summary()
    if as_json:
        return _print_json(summary)
    for kind, f in summary["model"]["held_out"].items():
        out.print(f"{kind}: RMSE {f['rmse_ms']:.4f} ms on the held-out archs' first pass, the selection set "
                  f"({f['rmse_over_floor']:.2f} x the noise floor), MAPE {f['mape_pct']:.1f}%")
    v = new.validation
    out.print(f"chosen {summary['model']['kind']}: RMSE {v['rmse_ms']:.4f} ms on their second pass, which the choice did not see "
              f"({v['rmse_over_floor']:.2f} x the noise floor)")
    out.print(f"wrote {new.name} ({new.path}): {new.describe_model()}")


@checkpoint_app.command("upgrade")
def checkpoint_upgrade(
    path: Path = typer.Argument(..., help="A checkpoint hsconas refused because reading it needs pickle."),
    trust: bool = typer.Option(False, "--trust", help="Required: unpickling runs any code the file holds."),
    as_json: bool = JsonOpt,
) -> None:
    """Rewrite a checkpoint you trust (an older hsconas's, say) as tensors and plain data, which hsconas reads
    without pickle; the original is kept as NAME.pickle.bak.

    Example: [bold]hsconas checkpoint upgrade runs/supernet/checkpoint.pt --trust[/bold]
    """
    from hsconas_cli.train import upgrade_checkpoint

    res = upgrade_checkpoint(path, trust=trust)
    if as_json:
        return _print_json(res)
    out.print(f"rewrote {res['path']} ({res['kind']}) to be read without pickle; the original is {res['backup']}")


# ---- predict / measure ---------------------------------------------------------------------------
VersionOpt = typer.Option(None, "--profile-version", help="Profile version (default: the newest).")
ForceOpt = typer.Option(False, "--force", help="Use the profile although the board is in another power mode.")
CheckOpt = typer.Option(True, "--profile-check/--no-profile-check",
                        help="Check first (<= 30 s) that the profile still holds here; rescale or recalibrate it if not.")


def _profile_of_run(device: str, space, version: Optional[int], force: bool, check: bool, state_file: Path):
    """The profile for a search or shrink in a folder. Where that folder holds the state of one already started
    (``state_file``), the profile version it started with, without a drift check: a check that rescaled would
    write a new version, and the run could not resume on it. Otherwise the newest (or given) version, checked."""
    from hsconas_cli.profiles import find_profile

    prof = find_profile(device, space, version, force=force)
    started = _started_profile(state_file)
    if started and version is None and started != prof.name and started.rpartition("/v")[0] == prof.name.rpartition("/v")[0]:
        prof = find_profile(device, space, int(started.rpartition("/v")[2]), force=force)
    if started == prof.name:
        if check:
            err.print(f"resuming {state_file.parent}: with {prof.name}, the profile it started with, without a drift check",
                      highlight=False)
        return prof
    return _checked_profile(prof, check, force)


def _started_profile(state_file: Path) -> Optional[str]:
    """The profile name in a search's or shrink's saved state, None where there is none or it cannot be read."""
    try:
        return json.loads(state_file.read_text())["settings"]["profile"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _checked_profile(prof, check: bool, force: bool = False):
    """The profile confirmed by a drift check here: kept, rescaled (uniform drift) or recalibrated (changed)."""
    if not check:
        return prof
    from hsconas_cli.calibrate import recalibrate_like
    from hsconas_cli.drift import ensure_current
    from hsconas_cli.ui import progress, stderr

    with progress("checking the profile") as update:
        prof, _ = ensure_current(prof, recalibrate=lambda: recalibrate_like(prof, progress=update, force=force),
                                 log=lambda m: stderr.print(f"[dim]{m}[/dim]", highlight=False), progress=update,
                                 force=force)
    return prof


@app.command()
def predict(
    arch: Path = typer.Option(..., "--arch", "-a", help="Arch JSON (or a search result)."),
    device: str = DeviceOpt,
    version: Optional[int] = VersionOpt,
    force: bool = ForceOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Predict an architecture's latency on a device from its profile, layer by layer.

    Example: [bold]hsconas predict --arch arch.json --device cpu[/bold]
    """
    from hsconas_cli.profiles import find_profile
    from hsconas_cli.space import load_arch

    sp, a = load_arch(arch)
    prof = find_profile(device, sp, version, force=force)
    layers = prof.layer_ms(a)
    doc = {"profile": prof.name, "predicted_ms": prof.predict(a), "stem_head_ms": prof.fixed_ms, "bias_ms": prof.bias_ms,
           "model": prof.model_kind, "scale": prof.scale, "power": prof.power, "layers_ms": layers, "arch": a.to_list()}
    if as_json:
        return _print_json(doc)
    t = Table(title=f"{arch} on {prof.name}")
    for col in ("layer", "op", "c", "ms"):
        t.add_column(col, justify="right" if col == "ms" else "left")
    for i, ((op, c), ms) in enumerate(zip(a, layers)):
        t.add_row(str(i + 1), op, "-" if c is None else f"{c:.1f}", f"{ms:.4f}")
    out.print(t)
    if prof.model_kind == "additive":
        formula = f"LUT sum {sum(layers):.4f} + stem and head {prof.fixed_ms:.4f} + B {prof.bias_ms:+.4f}"
    else:
        formula = f"{prof.scale:.4f} x (LUT sum {sum(layers):.4f} + stem and head {prof.fixed_ms:.4f})^{prof.power:.4f}"
        formula += f" {prof.bias_ms:+.4f}" if prof.bias_ms else ""
    out.print(f"{formula} = [bold]{doc['predicted_ms']:.4f} ms[/bold]")


@app.command()
def measure(
    arch: Path = typer.Option(..., "--arch", "-a", help="Arch JSON (or a search result)."),
    device: str = DeviceOpt,
    version: Optional[int] = VersionOpt,
    repeats: int = typer.Option(5, "--repeats", min=1, help="Quiet measurements to take the median of."),
    budget: float = typer.Option(20.0, "--budget", min=0.0, help="Seconds to spend re-measuring when the machine is busy or the gate does not settle."),
    force: bool = ForceOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Measure an architecture on this machine with the profile's backend and protocol, beside the prediction,
    with its uncertainty, the fast-state gate and the machine's load.

    Example: [bold]hsconas measure --arch arch.json --device cpu[/bold]
    """
    from hsconas_cli.calibrate import measure_arch
    from hsconas_cli.profiles import find_profile
    from hsconas_cli.space import load_arch

    sp, a = load_arch(arch)
    prof = find_profile(device, sp, version, force=force)
    res = measure_arch(prof, a, repeats=repeats, budget_s=budget, force=force)
    if as_json:
        _print_json(res)
    else:
        _print_measurement(arch, prof, res)
    if res["verdict"]["status"] == "busy":
        raise HsconasError("measured under load: other processes kept the machine busy for the whole budget; measure "
                           "again when it is quiet, or give more --budget")


def _print_measurement(arch, prof, res: dict) -> None:
    out.print(f"{arch} on {prof.name}: " + _verdict_line(res))
    if res["reference_now_ms"] is not None:
        out.print(f"(measured against the profile's reference network: {res['reference_profile_ms']:.4f} ms at calibration, "
                  f"{res['reference_now_ms']:.4f} ms now, {res['reference_drift_pct']:+.1f}%; a plain median of runs now gives "
                  f"{res['raw_median_ms']:.4f} ms; hsconas profiles check {prof.device.name} --space {prof.space.name} tells whether "
                  "the profile still holds)")


def _verdict_line(res: dict, target_ms: Optional[float] = None) -> str:
    """A measured latency as one line: the value with its uncertainty, the prediction, T, and the verdict's note."""
    v = res.get("verdict")
    line = f"measured [bold]{res['measured_ms']:.4f} ms[/bold]"
    if v:
        line += f" +-{v['uncertainty_pct']:.1f}% (spread {v['spread_pct']:.1f}% over {v['kept']} kept repeats)"
    line += f", predicted {res['predicted_ms']:.4f} ms ({res['error_pct']:+.1f}%)"
    if target_ms:
        line += f", {100 * (res['measured_ms'] / target_ms - 1):+.1f}% vs T"
    return line + (f"; {v['note']}" if v else "")


# ---- train / retrain -------------------------------------------------------------------------------
DataOpt = typer.Option("fashion-mnist", "--data", help="fashion-mnist[:FOLDER], cifar10[:FOLDER], imagenet:PATH or imagefolder:PATH.")


def _space_for(space: Optional[str], data: str, subspace: Optional[Path] = None):
    from hsconas_cli.data import parse_data
    from hsconas_cli.space import DEFAULT_SPACE_FOR_DATA, get_space, load_subspace

    if subspace is not None:
        sub = load_subspace(subspace)
        if space is not None and get_space(space).fingerprint != sub.space.fingerprint:
            raise HsconasError(f"{subspace} is a subspace of {sub.space.name}, not of {space}")
        return sub.space, sub
    sp = get_space(space or DEFAULT_SPACE_FOR_DATA[parse_data(data)[0]])
    return sp, sp.full()


def _resumed(out_dir: Path, given: dict, space: Optional[str] = None, subspace: Optional[Path] = None):
    """For --resume: the checkpoint's own config (only --epochs may change; other differing flags are refused in
    one line), and its space and subspace where --space and --subspace are omitted."""
    from hsconas_cli.space import Subspace, get_space
    from hsconas_cli.train import resume_config

    if not (out_dir / "checkpoint.pt").exists():
        raise HsconasError(f"nothing to resume: {out_dir / 'checkpoint.pt'} does not exist")
    cfg, ckpt = resume_config(out_dir, given)
    if space is None and subspace is None:
        sp = get_space(ckpt["space"])
        sub = Subspace.from_dict(ckpt["subspace"]) if ckpt.get("subspace") else None
    else:
        sp, sub = _space_for(space, "fashion-mnist", subspace)
        sub = sub if subspace else None
    return cfg, sp, sub


@app.command()
def train(
    data: str = DataOpt,
    space: Optional[str] = typer.Option(None, "--space", "-s", help="Search space (default: layout A for the data)."),
    subspace: Optional[Path] = typer.Option(None, "--subspace", help="Train within a shrunk space file (hsconas shrink)."),
    init: Optional[Path] = typer.Option(None, "--init", help="Start from this supernet checkpoint (fine-tuning)."),
    epochs: Optional[int] = typer.Option(None, "--epochs", min=1, help="Epochs (default: the data's preset)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", "-b", min=1),
    lr: Optional[float] = typer.Option(None, "--lr", min=0.0, help="Peak learning rate of the cosine schedule."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Train on this many images per epoch."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of weights, batches and paths (default 0)."),
    out_dir: Path = typer.Option(Path("runs/supernet"), "--out", "-o", help="Run folder: checkpoint, metrics, config."),
    resume: bool = typer.Option(False, "--resume", help="Continue the checkpoint in --out with its own config (only --epochs may change)."),
    as_json: bool = JsonOpt,
) -> None:
    """Train the weight-sharing supernet: single-path one-shot with dynamic channel scaling.

    Example: [bold]hsconas train --data fashion-mnist --epochs 10 --out runs/supernet[/bold]
    Several processes: [bold]torchrun --nproc_per_node 2 -m hsconas_cli train ...[/bold]
    """
    from hsconas_cli.data import load_data
    from hsconas_cli.train import preset, train_supernet
    from hsconas_cli.ui import progress

    given = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "limit": limit, "seed": seed}
    if resume:
        cfg, sp, sub = _resumed(out_dir, given, space, subspace)
    else:
        sp, sub = _space_for(space, data, subspace)
        cfg = None
    bundle = load_data(data)
    cfg = cfg or preset("supernet", bundle.name, **given)
    with progress(f"supernet {sp.name}") as update:
        res = train_supernet(data, sp, out_dir, cfg=cfg, subspace=sub, init=init, resume=resume, progress=update, data=bundle,
                             notice=err.print)
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun, rank 0 reports
        return
    if as_json:
        return _print_json(res)
    last = res["history"][-1] if res["history"] else {}
    out.print(f"trained {res['epochs']} epochs ({res['steps']} steps): loss {last.get('loss', float('nan')):.3f}, "
              f"train acc {last.get('train_acc', float('nan')):.3f}, {last.get('img_per_s', 0):.0f} img/s; "
              f"checkpoint {res['checkpoint']}")


@app.command()
def retrain(
    arch: Path = typer.Option(..., "--arch", "-a", help="Arch JSON or a search result."),
    data: str = DataOpt,
    inherit: Optional[Path] = typer.Option(None, "--inherit", help="Fine-tune from this supernet checkpoint's weights."),
    epochs: Optional[int] = typer.Option(None, "--epochs", min=1),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", "-b", min=1),
    lr: Optional[float] = typer.Option(None, "--lr", min=0.0),
    warmup: Optional[float] = typer.Option(None, "--warmup-epochs", min=0.0),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Train on this many images per epoch."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of weights and batches (default 0)."),
    out_dir: Path = typer.Option(Path("runs/hsconet"), "--out", "-o"),
    resume: bool = typer.Option(False, "--resume", help="Continue the checkpoint in --out with its own config (only --epochs may change)."),
    as_json: bool = JsonOpt,
) -> None:
    """Train an HSCoNet: from scratch (the paper's retraining) or fine-tuned from inherited weights.

    Example: [bold]hsconas retrain --arch runs/search/result.json --epochs 15 --out runs/hsconet[/bold]
    """
    from hsconas_cli.data import load_data
    from hsconas_cli.space import load_arch
    from hsconas_cli.train import preset, retrain as run_retrain
    from hsconas_cli.ui import progress

    sp, a = load_arch(arch)
    given = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "warmup_epochs": warmup, "limit": limit, "seed": seed}
    cfg = _resumed(out_dir, given)[0] if resume else None
    bundle = load_data(data)
    cfg = cfg or preset("retrain", bundle.name, **given)
    with progress(f"HSCoNet {arch.name}") as update:
        res = run_retrain(data, sp, a, out_dir, cfg=cfg, inherit=inherit, resume=resume, progress=update, data=bundle,
                          notice=err.print)
    if as_json:
        return _print_json({k: v for k, v in res.items()})
    out.print(f"trained {res['epochs']} epochs: test top-1 [bold]{100 * res['test_top1']:.2f}%[/bold] "
              f"(validation {100 * res['val_top1']:.2f}%); checkpoint {res['checkpoint']}")


# ---- shrink ------------------------------------------------------------------------------------------
LatencyOpt = typer.Option(..., "--latency", "-T", help="Target T: milliseconds (34, 1.2ms) or a percentile of random archs' latency (40%).")
BetaOpt = typer.Option(None, "--beta", help="Slope of F above T (< 0; default -1.0).")
BetaBelowOpt = typer.Option(None, "--beta-below", help="Slope of F below T (default 0: any network within T is scored by its accuracy alone; positive charges unused budget; negative rewards running under T; = --beta is the paper's F).")


@app.command()
def shrink(
    device: str = DeviceOpt,
    latency: str = LatencyOpt,
    supernet: Path = typer.Option(Path("runs/supernet/checkpoint.pt"), "--supernet", help="The trained supernet checkpoint."),
    data: str = DataOpt,
    samples: int = typer.Option(100, "--samples", "-N", min=1, help="Archs sampled per subspace for Q (paper: 100)."),
    finetune_epochs: int = typer.Option(15, "--finetune-epochs", min=1, help="Fine-tuning epochs after each stage (paper: 15)."),
    finetune_limit: Optional[int] = typer.Option(None, "--finetune-limit", min=1, help="Images per fine-tuning epoch."),
    calib_images: int = typer.Option(2000, "--calib-images", min=1, help="Images for BN recalibration of each arch."),
    val_images: int = typer.Option(5000, "--val-images", min=1, help="Validation images for each arch's accuracy."),
    beta: Optional[float] = BetaOpt,
    beta_below: Optional[float] = BetaBelowOpt,
    seed: int = typer.Option(0, "--seed"),
    version: Optional[int] = VersionOpt,
    force: bool = ForceOpt,
    profile_check: bool = CheckOpt,
    out_dir: Path = typer.Option(Path("runs/shrink"), "--out", "-o", help="Run folder (resumable)."),
    as_json: bool = JsonOpt,
) -> None:
    """Shrink the search space towards a device: fix layers 20..17, fine-tune, fix 16..13, fine-tune.

    Example: [bold]hsconas shrink --device cpu --latency 40% --supernet runs/supernet/checkpoint.pt[/bold]
    """
    from hsconas_cli.data import load_data
    from hsconas_cli.shrink import ShrinkConfig, describe_decision, shrink as run_shrink
    from hsconas_cli.train import checkpoint_space
    from hsconas_cli.ui import progress

    prof = _profile_of_run(device, checkpoint_space(supernet), version, force, profile_check, out_dir / "shrink-state.json")
    bundle = load_data(data)
    cfg = ShrinkConfig(samples=samples, finetune_epochs=finetune_epochs, finetune_limit=finetune_limit,
                       calib_images=calib_images, val_images=val_images, seed=seed)
    with progress("shrinking") as update:
        doc = run_shrink(supernet, bundle, prof, latency, out_dir, cfg=cfg, beta=beta, beta_below=beta_below, progress=update)
    if as_json:
        return _print_json(doc)
    t = doc["target"]
    out.print(f"target T = {t['target_ms']:.4f} ms on {doc['profile']} (reachable {t['reachable_ms'][0]:.4f} .. "
              f"{t['reachable_ms'][1]:.4f} ms; T at {100 * t['position']:.0f}% of that range)")
    table = Table(title="progressive space shrinking: Q = mean F over the same sampled archs (+- 1 SE)")
    for col in ("stage", "layer", "Q per op", "decision"):
        table.add_column(col)
    for st in doc["stages"]:
        for layer, d in st["decisions"].items():
            scores = st["scores"].get(layer, {})
            table.add_row(str(st["stage"]), layer, "  ".join(f"{op} {v['Q']:.4f}+-{v['se'] or 0:.4f}" for op, v in scores.items()),
                          describe_decision(d))
    out.print(table)
    sizes = [doc["initial_size"]] + [st["size_after"] for st in doc["stages"]]
    out.print("space size (distinct networks): " + " -> ".join(s["distinct_text"] for s in sizes)
              + "; gene strings: " + " -> ".join(s["gene_strings_text"] for s in sizes))
    out.print(f"wrote {out_dir / 'shrunk-space.json'}; fine-tuned supernet {doc['supernet']}")


# ---- search ------------------------------------------------------------------------------------------
@app.command()
def search(
    device: str = DeviceOpt,
    latency: Optional[str] = typer.Option(None, "--latency", "-T", help="Target T: milliseconds (34, 1.2ms) or a percentile of random archs' latency (40%)."),
    targets: Optional[List[str]] = typer.Option(None, "--target", help="DEVICE=TARGET, repeated: one network for a fleet that meets each device's target (instead of --device/--latency)."),
    space: Optional[Path] = typer.Option(None, "--space", "-s", help="Shrunk-space file (hsconas shrink) or subspace JSON; default: the whole space."),
    supernet: Optional[Path] = typer.Option(None, "--supernet", help="Supernet checkpoint (default: the shrunk space's, else runs/supernet/checkpoint.pt)."),
    data: str = DataOpt,
    beta: Optional[float] = BetaOpt,
    beta_below: Optional[float] = BetaBelowOpt,
    generations: int = typer.Option(20, "--generations", min=1),
    population: int = typer.Option(50, "--population", min=2),
    parents: int = typer.Option(20, "--parents", min=1),
    crossover_prob: float = typer.Option(0.25, "--crossover-prob", min=0.0, max=1.0),
    mutation_prob: float = typer.Option(0.25, "--mutation-prob", min=0.0, max=1.0),
    seed: int = typer.Option(0, "--seed"),
    calib_images: int = typer.Option(2000, "--calib-images", min=1),
    val_images: int = typer.Option(5000, "--val-images", min=1),
    verify: bool = typer.Option(False, "--verify", help="Measure the best candidates on this device; replace a winner that misses T by measurement."),
    candidates: int = typer.Option(8, "--candidates", min=1, help="With --verify: how many of the best archs to measure."),
    version: Optional[int] = VersionOpt,
    force: bool = ForceOpt,
    profile_check: bool = CheckOpt,
    out_dir: Path = typer.Option(Path("runs/search"), "--out", "-o", help="Run folder (resumable)."),
    as_json: bool = JsonOpt,
) -> None:
    """Search the (shrunk) space with an evolutionary algorithm for the best F(arch, T) on a device, or for one
    network that meets a target on each device of a fleet.

    Example: [bold]hsconas search --device cpu --latency 40% --space runs/shrink/shrunk-space.json --verify[/bold]
    A fleet: [bold]hsconas search --target cpu=0.9ms --target cpu-openvino=0.7ms --target cpu-xnnpack=40% --verify[/bold]
    (F charges each device's overshoot as a share of its T; --verify measures the candidates on every device this
    machine can measure; report.md has a row per device and each device's own winner beside the fleet's.)
    """
    from hsconas_cli.data import load_data
    from hsconas_cli.search import SearchConfig, search as run_search, search_inputs
    from hsconas_cli.ui import progress

    if targets:
        from hsconas_cli.fleet import parse_fleet_targets

        parsed = parse_fleet_targets(targets)  # a bad --target is refused before anything is loaded
    elif latency is None:
        raise HsconasError("give a target: --latency T for one device (with --device), or --target DEVICE=T for each "
                           "device of a fleet")
    sub, ckpt, sp, shrunk_target = search_inputs(space, supernet)
    cfg = SearchConfig(generations=generations, population=population, parents=parents, crossover_prob=crossover_prob,
                       mutation_prob=mutation_prob, seed=seed, calib_images=calib_images, val_images=val_images)
    if targets:
        return _fleet_search(parsed, sub or sp.full(), ckpt, data, cfg, beta, beta_below, candidates if verify else 0,
                             force, profile_check, out_dir, as_json)
    prof = _profile_of_run(device, sp, version, force, profile_check, out_dir / "search-state.json")
    bundle = load_data(data)
    with progress("searching") as update:
        res = run_search(ckpt, bundle, prof, latency, out_dir, subspace=sub, cfg=cfg, beta=beta, beta_below=beta_below,
                         verify=candidates if verify else 0, shrunk_target=shrunk_target, progress=update)
    if as_json:
        return _print_json(res)
    t = res["target"]
    out.print(f"target T = {t['target_ms']:.4f} ms; this space reaches {t['reachable_ms'][0]:.4f} .. {t['reachable_ms'][1]:.4f} ms "
              f"on {res['profile']} (T at {100 * t['position']:.0f}% of that range, above {t['percentile_of_random_archs']:.0f}% of the whole space's random archs)")
    if t.get("note"):
        out.print(t["note"])
    out.print(f"best of {res['evaluated']} archs: accuracy [bold]{100 * res['acc']:.2f}%[/bold], predicted "
              f"[bold]{res['predicted_ms']:.4f} ms[/bold] ({100 * (res['predicted_ms'] / t['target_ms'] - 1):+.1f}% vs T), F {res['F']:.4f}")
    if verify:
        loop = res["closed_loop"]
        t2 = Table(title=f"the {len(loop['candidates'])} best candidates measured on this device")
        for col in ("#", "accuracy", "predicted ms", "measured ms", "vs T", "status", "chosen"):
            t2.add_column(col)
        for i, c in enumerate(loop["candidates"]):
            t2.add_row(str(i + 1), f"{100 * c['acc']:.2f}%", f"{c['predicted_ms']:.4f}", f"{c['measured_ms']:.4f} +-{c['uncertainty_pct']:.1f}%",
                       f"{c['vs_target_pct']:+.1f}%", c["status"], "yes" if i == loop["chosen"] else "")
        out.print(t2)
        out.print(loop["reason"])
        out.print("chosen: " + _verdict_line(res["verify"], t["target_ms"]))
    _print_search_value(res["search_value"])
    out.print(f"wrote {out_dir / 'result.json'}, evaluated.jsonl, pareto.json, fig6-search.png")


def _fleet_search(targets, sub, ckpt, data, cfg, beta, beta_below, verify: int, force: bool, check: bool, out_dir: Path,
                  as_json: bool) -> None:
    from hsconas_cli.data import load_data
    from hsconas_cli.fleet import fleet_search, resolve_fleet
    from hsconas_cli.ui import progress

    fleet = resolve_fleet(targets, sub, force=force, check=lambda p: _checked_profile(p, check, force))
    bundle = load_data(data)
    with progress(f"searching for a fleet of {len(fleet.members)} devices") as update:
        res = fleet_search(ckpt, bundle, fleet, out_dir, subspace=sub, cfg=cfg, beta=beta, beta_below=beta_below,
                           verify=verify, progress=update)
    if as_json:
        return _print_json(res)
    out.print((out_dir / "report.md").read_text(), markup=False, highlight=False)
    out.print(f"wrote {out_dir / 'result.json'}, report.md, evaluated.jsonl")


def _print_search_value(doc: dict) -> None:
    from hsconas_cli.search_value import describe

    out.print("[bold]what the search bought[/bold]")
    for line in describe(doc):
        out.print("  " + line, highlight=False)


# ---- export ------------------------------------------------------------------------------------------
@app.command()
def export(
    fmt: str = typer.Option("onnx", "--format", "-f", help="onnx; trt (a TensorRT engine; writes the ONNX too); openvino (an IR .xml/.bin converted from the ONNX, which is written too; extra hsconas[openvino]); pte (an ExecuTorch program, XNNPACK-delegated; extra hsconas[executorch])."),
    result: Optional[Path] = typer.Option(None, "--result", "-r", help="A search result (default: runs/search/result.json)."),
    arch: Optional[Path] = typer.Option(None, "--arch", "-a", help="An arch file instead of a search result."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="Weights from hsconas retrain (default: inherited from the supernet)."),
    supernet: Optional[Path] = typer.Option(None, "--supernet", help="Supernet to inherit weights from (default: the result's)."),
    data: Optional[str] = typer.Option(None, "--data", help="Data for BN recalibration and the output check (default: the result's)."),
    device: str = DeviceOpt,
    batch_size: Optional[int] = typer.Option(None, "--batch-size", "-b", min=1, help="Static batch (default: the device's)."),
    dynamic_batch: bool = typer.Option(False, "--dynamic-batch", help="A dynamic batch dimension instead."),
    precision: Optional[str] = typer.Option(None, "--precision", help="fp32, fp16 or int8 (Q/DQ, calibrated on real images); default fp16 for trt, fp32 otherwise; openvino takes fp32 or fp16 (weights), pte fp32."),
    int8: bool = typer.Option(False, "--int8", hidden=True, help="Same as --precision int8."),
    workspace: int = typer.Option(1024, "--workspace", min=1, help="TensorRT builder workspace, MiB."),
    dla_core: Optional[int] = typer.Option(None, "--dla-core", min=0, help="TensorRT: build for this DLA core (Jetson)."),
    name: str = typer.Option("hsconet", "--name", help="File stem of what is written."),
    out_dir: Path = typer.Option(Path("runs/export"), "--out", "-o"),
    as_json: bool = JsonOpt,
) -> None:
    """Export the searched network (an HSCoNet) as ONNX, a TensorRT engine, an OpenVINO IR or an ExecuTorch program.

    Example: [bold]hsconas export --format onnx --result runs/search/result.json[/bold]
    On a Jetson: [bold]hsconas export --format trt --device xavier --precision int8[/bold]
    For OpenVINO on an Intel CPU: [bold]hsconas export --format openvino --device cpu-openvino[/bold]
    """
    from hsconas_cli.export import export as run_export

    if result and arch:
        raise HsconasError("give --result or --arch, not both")
    rep = run_export(fmt, arch or result or Path("runs/search/result.json"), out_dir, checkpoint=checkpoint,
                     supernet=supernet, data_spec=data, batch_size=batch_size, dynamic_batch=dynamic_batch, name=name,
                     device=device, precision="int8" if int8 else precision, workspace_mb=workspace, dla_core=dla_core)
    if as_json:
        return _print_json(rep)
    onnx_rep = rep if rep["format"] == "onnx" else rep.get("onnx")
    if onnx_rep:
        _print_onnx(onnx_rep)
    if rep["format"] == "trt":
        out.print(f"TensorRT engine ({rep['precision']}) vs PyTorch on {rep['check']['batches']} batches: " + _parity_line(rep["check"]))
        t = rep["timing"]
        out.print(f"wrote [bold]{rep['path']}[/bold] (TensorRT {rep['tensorrt']}) and {rep['sidecar']}: median {t['median_ms']:.3f} ms, "
                  f"p90 {t['p90_ms']:.3f} ms, p99 {t['p99_ms']:.3f} ms ({t['timer']})")
    if rep["format"] in ("openvino", "pte"):
        t, what = rep["timing"], {"openvino": f"OpenVINO {rep.get('openvino')}", "pte": f"ExecuTorch {rep.get('executorch')}"}
        out.print(f"{what[rep['format']]} vs PyTorch: " + _parity_line(rep["check"]))
        out.print(f"wrote [bold]{rep['path']}[/bold] and {rep['sidecar']}: median {t['median_ms']:.3f} ms, "
                  f"p90 {t['p90_ms']:.3f} ms over {t['runs']} runs here ({t['timer']}, {t.get('threads')} thread(s))")
    if rep.get("latency"):
        lat = rep["latency"]
        out.print(f"latency on this device ({lat['profile']}): " + _verdict_line(lat))
    if rep["metadata"].get("accuracy") is not None:
        out.print(f"accuracy: {100 * rep['metadata']['accuracy']:.2f}% ({rep['metadata']['accuracy_kind']})")


def _print_onnx(onnx_rep: dict) -> None:
    out.print(f"wrote [bold]{onnx_rep['path']}[/bold]: opset {onnx_rep['opset']}, input {onnx_rep['input']['shape']}, "
              f"{len(onnx_rep['ops'])} op types ({', '.join(onnx_rep['ops'])}), onnx.checker clean"
              + (", simplified with onnxslim" if onnx_rep["slimmed"] else ""))
    out.print(f"onnxruntime vs PyTorch on {onnx_rep['checked_images']} real images: max abs difference {onnx_rep['max_abs_diff']:.2e}")
    for prec, f in onnx_rep["files"].items():
        if prec != "fp32":
            out.print(f"wrote [bold]{f['path']}[/bold] ({prec}): " + _parity_line(f["parity"]))


def _parity_line(p: dict) -> str:
    return (f"{p['images']} real images, relative difference {p['max_rel_diff']:.2e}, "
            f"top-1 agreement {100 * p['top1_agreement']:.1f}%")


# ---- run (the whole pipeline) -------------------------------------------------------------------------
@app.command()
def run(
    device: str = DeviceOpt,
    latency: str = LatencyOpt,
    data: str = DataOpt,
    space: Optional[str] = typer.Option(None, "--space", "-s", help="Search space (default: layout A for the data)."),
    preset: str = typer.Option("demo", "--preset", help="Budgets: smoke (minutes), demo (<= 20 min on 2 CPU cores), paper."),
    seed: int = typer.Option(0, "--seed"),
    out_dir: Path = typer.Option(Path("runs/run"), "--out", "-o", help="Run folder; rerun the same command to resume."),
    profile_check: bool = CheckOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Run the whole pipeline: profile (reuse or calibrate), supernet, shrink, search, fine-tune, export, report.

    Example: [bold]hsconas run --device cpu --latency 40% --data fashion-mnist --out runs/demo[/bold]
    """
    from hsconas_cli.pipeline import run_pipeline
    from hsconas_cli.ui import progress, stderr

    with progress("hsconas run") as update:
        res = run_pipeline(device, latency, data, out_dir, space=space, preset=preset, seed=seed, progress=update,
                           profile_check=profile_check,
                           log=lambda m: stderr.print(f"[dim]{m}[/dim]", highlight=False))
    if as_json:
        return _print_json(res)
    t = Table(title=f"hsconas run: {out_dir}")
    t.add_column("stage")
    t.add_column("result")
    p, s, f, e = res["profile"], res["search"], res["finetune"], res["export"]
    t.add_row("target", f"T = {res['target_ms']:.4f} ms ({100 * p['target']['position']:.0f}% of the reachable range)")
    t.add_row("profile", f"{p['name']} ({'reused' if p['reused'] else 'calibrated'}): held-out RMSE {p['validation']['rmse_ms']:.4f} ms, "
                         f"noise floor {p['validation']['noise_floor_ms']:.4f} ms")
    if p.get("check"):
        t.add_row("profile check", f"{p['check']['check']['description']}; {p['check']['action']}")
    t.add_row("supernet", res["supernet"]["checkpoint"])
    t.add_row("shrink", res["shrink"].get("skipped") or " -> ".join(x["distinct_text"] for x in res["shrink"]["sizes"]) + " distinct networks")
    t.add_row("search", f"winner {100 * s['acc']:.2f}% (inherited weights), predicted {s['predicted_ms']:.4f} ms, {s['evaluated']} archs evaluated")
    if s.get("closed_loop"):
        t.add_row("closed loop", s["closed_loop"]["reason"])
    if s.get("search_value"):
        from hsconas_cli.search_value import describe

        t.add_row("what the search bought", "\n".join(describe(s["search_value"])[1:]))
    t.add_row("fine-tuned", f"test top-1 {100 * f['test_top1']:.2f}%")
    lat = e.get("latency") or {}
    t.add_row("exported", f"{e['path']} (parity {e['max_abs_diff']:.1e})")
    if lat:
        t.add_row("latency here", _verdict_line(lat, res["target_ms"]).replace("[bold]", "").replace("[/bold]", ""))
    t.add_row("report", res["report"])
    out.print(t)


# ---- entry point -----------------------------------------------------------------------------------
def main(argv: Optional[list[str]] = None) -> None:
    """Run the CLI; bad input of any kind ends in one line on stderr and exit code 2."""
    try:
        rv = app(args=argv, prog_name="hsconas", standalone_mode=False)
    except Interrupted as e:  # Ctrl-C after saving: say how to resume, exit as an interrupted program does
        err.print(f"hsconas: {e}", markup=False, highlight=False, soft_wrap=True)
        raise SystemExit(130) from None
    except (HsconasError, ExportError) as e:
        err.print(f"hsconas: error: {e}", markup=False, highlight=False, soft_wrap=True)
        raise SystemExit(2) from None
    except _UsageErrors as e:  # usage errors: unknown option, bad value, missing argument
        if type(e).__name__ == "NoArgsIsHelpError":  # bare `hsconas`: the help was shown
            raise SystemExit(0) from None
        err.print(f"hsconas: error: {e.format_message()}", markup=False, highlight=False, soft_wrap=True)
        raise SystemExit(2) from None
    except typer.Abort:
        err.print("hsconas: interrupted", highlight=False)
        raise SystemExit(130) from None
    except KeyboardInterrupt:
        err.print("hsconas: interrupted", highlight=False)
        raise SystemExit(130) from None
    raise SystemExit(rv if isinstance(rv, int) else 0)
