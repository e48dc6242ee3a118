"""``hsconas calibrate``, ``profiles list | show | validate | check | refit``, ``predict`` and ``measure``: a device's
latency profile, made, read, checked and used on one architecture."""

from pathlib import Path
from typing import Optional

import typer

from hsconas_cli.cli import options as opt, render
from hsconas_cli.errors import HsconasError
from hsconas_cli.ui import progress


def calibrate(
    device: str = typer.Option("cpu", "--device", "-d", help="Device preset: cpu, cpu-openvino, cpu-xnnpack, gpu, xavier, or device_profiles/NAME.json."),
    space: str = opt.Space,
    power_mode: Optional[int] = typer.Option(None, "--power-mode", help="Jetson nvpmodel mode to set first (needs root)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", "-b", min=1, help="Override the preset's batch size."),
    backend: Optional[str] = opt.Backend,
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="CPU threads of the backend (onnxruntime, torch on CPU, openvino, executorch)."),
    archs: Optional[int] = typer.Option(None, "--archs", "-M", min=2, help="Sampled archs for the bias term B (default 100, or the preset's)."),
    holdout: Optional[int] = typer.Option(None, "--holdout", min=2, help="Held-out archs for validation, none used for B (default 50, or the preset's; 20 for a transfer)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the sampled archs."),
    fresh: bool = typer.Option(False, "--fresh", help="Discard an interrupted calibration instead of resuming it."),
    force: bool = typer.Option(False, "--force", help="Measure even though the board is in another power mode."),
    source: Optional[str] = typer.Option(None, "--from", help="Calibrate by transfer from this device's profile (DEVICE, DEVICE/vN or a profile file); needs --networks."),
    networks: Optional[int] = typer.Option(None, "--networks", "-N", min=2, help="Whole networks to measure for a transfer (--from); omitted: a full calibration."),
    design: str = typer.Option("random", "--design", help="How a transfer chooses its networks: random (uniform draws, the default) or spread (over the source's latency range and op mix; it did worse, docs/BENCHMARKS.md)."),
    max_rmse: Optional[float] = typer.Option(None, "--max-rmse", min=0.0, help="Refuse a transferred profile whose held-out RMSE exceeds this many times its noise floor (default 1.5)."),
    as_json: bool = opt.Json,
) -> None:
    """Measure a device's latency table, bias B and validation; write a new versioned profile.

    Example: [bold]hsconas calibrate --device cpu --space fmnist-A[/bold]
    On a Jetson: [bold]hsconas calibrate --device xavier --power-mode 6 --space imagenet-A[/bold]
    By transfer from another device's profile of the space (N whole networks and 20 held-out ones, measured twice,
    instead of every LUT entry): [bold]hsconas calibrate --device cpu-openvino --space fmnist-A --from cpu --networks 20[/bold]
    On a second Jetson board or power mode: [bold]hsconas calibrate --device xavier --power-mode 2 --space imagenet-A --from xavier/v1 --networks 20[/bold]
    """
    from hsconas_cli.devices import load_device
    from hsconas_cli.profiles import load_profile
    from hsconas_cli.space import get_space
    from hsconas_cli.transfer import calibrate_or_transfer

    dev, sp = load_device(device, batch_size=batch_size, backend=backend, threads=threads), get_space(space)
    with progress(f"calibrating {dev.name} for {sp.name}" + (f" by transfer from {source}" if source else "")) as update:
        path = calibrate_or_transfer(dev, sp, source=source, networks=networks, archs=archs, max_rmse=max_rmse, design=design,
                                     holdout=holdout, seed=seed, fresh=fresh, set_mode=power_mode, force=force,
                                     progress=update, log=render.note)
    summary = load_profile(path).summary()
    return render.print_json(summary) if as_json else render.profile(summary)


def profiles_list(as_json: bool = opt.Json) -> None:
    """List the calibrated profiles under device_profiles/.

    Example: [bold]hsconas profiles list[/bold]
    """
    from hsconas_cli.devices import preset_names, profiles_root
    from hsconas_cli.profiles import list_profiles

    rows = list_profiles()
    doc = {"root": str(profiles_root()), "presets": preset_names(), "profiles": rows}
    return render.print_json(doc) if as_json else render.profiles(doc)


def _profile(device: str, space: str, version: Optional[int], **kw):
    """The profile a command names: a profile file (for the space it names), or a device's for --space."""
    from hsconas_cli.profiles import find_profile

    return find_profile(device, None if device.endswith(".json") else space, version, **kw)


def profiles_show(device: str = opt.DeviceArg, space: str = opt.Space, version: Optional[int] = opt.Version,
                  as_json: bool = opt.Json) -> None:
    """Show a profile: device, machine, protocol, bias, validation figures.

    Example: [bold]hsconas profiles show cpu --space fmnist-A[/bold]
    """
    prof = _profile(device, space, version, check_mode=False)
    doc = {**prof.summary(), "protocol": prof.doc["protocol"], "machine": prof.doc["machine"]}
    return render.print_json(doc) if as_json else render.profile(prof.summary(), prof.doc["protocol"])


def profiles_validate(target: str = typer.Argument(..., help="A profile file, or a device name (checks every version of it)."),
                      as_json: bool = opt.Json) -> None:
    """Check profiles: schema, checksum, space, completeness. Exit code 2 if any is unusable.

    Example: [bold]hsconas profiles validate device_profiles/cpu/fmnist-A/v1.json[/bold]
    """
    from hsconas_cli.profiles import unusable, validate_profiles

    rows = validate_profiles(target)
    render.print_json(rows) if as_json else render.validated(rows)
    if problem := unusable(rows):
        raise HsconasError(problem)


def profiles_check(
    device: str = opt.DeviceArg,
    space: str = opt.Space,
    version: Optional[int] = opt.Version,
    archs: int = typer.Option(6, "--archs", min=2, help="Held-out archs of the profile to measure again."),
    budget: float = typer.Option(30.0, "--budget", min=1.0, help="Seconds the check may take (about)."),
    fix: bool = typer.Option(False, "--fix", help="Act on the result as run, search and shrink do: rescale a uniform drift, recalibrate a change."),
    force: bool = typer.Option(False, "--force", help="Check the profile although the board is in another power mode."),
    as_json: bool = opt.Json,
) -> None:
    """Does the profile still hold on this machine? Re-measures its reference network and a few held-out archs
    with its own protocol and sets the drift against the profile's noise floor.

    Example: [bold]hsconas profiles check cpu --space fmnist-A[/bold]
    """
    from hsconas_cli.drift import checked_profile, measure_drift

    prof = _profile(device, space, version, force=force)
    with progress(f"checking {prof.name}") as update:
        res = (checked_profile(prof, force=force, log=render.note, progress=update)[0] if fix else
               measure_drift(prof, archs=archs, budget_s=budget, progress=update, force=force))
    if fix:
        return render.print_json({"used": res.name, "path": str(res.path)}) if as_json else render.out.print(f"use {res.name} ({res.path})")
    return render.print_json(res.to_dict()) if as_json else render.drift(res, device, prof.space.name)


def profiles_refit(device: str = opt.DeviceArg, space: str = opt.Space, version: Optional[int] = opt.Version,
                   as_json: bool = opt.Json) -> None:
    """Choose a profile's latency model (additive LUT + B, or the power model k x S^p) from its stored measurements on the
    held-out archs; nothing is measured again. Writes the next version.

    Example: [bold]hsconas profiles refit cpu --space imagenet-A[/bold]
    """
    from hsconas_cli.profiles import load_profile, refit_profile

    new = load_profile(refit_profile(_profile(device, space, version, check_mode=False)))
    return render.print_json(new.summary()) if as_json else render.refit(new, new.summary())


def predict(arch: Path = opt.Arch, device: str = opt.Device, version: Optional[int] = opt.ProfileVersion,
            force: bool = opt.Force, as_json: bool = opt.Json) -> None:
    """Predict an architecture's latency on a device from its profile, layer by layer.

    Example: [bold]hsconas predict --arch arch.json --device cpu[/bold]
    """
    from hsconas_cli.profiles import find_profile
    from hsconas_cli.space import load_arch

    sp, a = load_arch(arch)
    doc = find_profile(device, sp, version, force=force).explain(a)
    return render.print_json(doc) if as_json else render.prediction(arch, doc, a)


def measure(
    arch: Path = opt.Arch,
    device: str = opt.Device,
    version: Optional[int] = opt.ProfileVersion,
    repeats: int = typer.Option(5, "--repeats", min=1, help="Quiet measurements to take the median of."),
    budget: float = typer.Option(20.0, "--budget", min=0.0, help="Seconds to spend re-measuring when the machine is busy or the gate does not settle."),
    force: bool = opt.Force,
    as_json: bool = opt.Json,
) -> None:
    """Measure an architecture on this machine with the profile's backend and protocol, beside the prediction,
    with its uncertainty, the fast-state gate and the machine's load.

    Example: [bold]hsconas measure --arch arch.json --device cpu[/bold]
    """
    from hsconas_cli.meter import measure_arch
    from hsconas_cli.profiles import find_profile
    from hsconas_cli.space import load_arch

    sp, a = load_arch(arch)
    prof = find_profile(device, sp, version, force=force)
    res = measure_arch(prof, a, repeats=repeats, budget_s=budget, force=force)
    render.print_json(res) if as_json else render.measurement(arch, prof, res)
    if res["verdict"]["status"] == "busy":
        raise HsconasError("measured under load: other processes kept the machine busy for the whole budget; measure "
                           "again when it is quiet, or give more --budget")


COMMANDS = (calibrate, predict, measure)
PROFILES = {"list": profiles_list, "show": profiles_show, "validate": profiles_validate, "check": profiles_check,
            "refit": profiles_refit}
