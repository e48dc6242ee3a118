"""``hsconas shrink`` and ``search``: the space shrunk towards a device, and the evolutionary search under a latency
target, for one device or for a fleet."""

from pathlib import Path
from typing import List, Optional

import typer

from hsconas_cli.cli import options as opt, render
from hsconas_cli.errors import HsconasError
from hsconas_cli.ui import progress


def shrink(
    device: str = opt.Device,
    latency: str = opt.Latency,
    supernet: Path = typer.Option(Path("runs/supernet/checkpoint.pt"), "--supernet", help="The trained supernet checkpoint."),
    data: str = opt.Data,
    samples: int = typer.Option(100, "--samples", "-N", min=1, help="Archs sampled per subspace for Q (paper: 100)."),
    finetune_epochs: int = typer.Option(15, "--finetune-epochs", min=1, help="Fine-tuning epochs after each stage (paper: 15)."),
    finetune_limit: Optional[int] = typer.Option(None, "--finetune-limit", min=1, help="Images per fine-tuning epoch."),
    calib_images: int = opt.CalibImages,
    val_images: int = opt.ValImages,
    beta: Optional[float] = opt.Beta,
    beta_below: Optional[float] = opt.BetaBelow,
    seed: int = opt.Seed,
    version: Optional[int] = opt.ProfileVersion,
    force: bool = opt.Force,
    profile_check: bool = opt.Check,
    out_dir: Path = opt.out("runs/shrink", "Run folder (resumable)."),
    as_json: bool = opt.Json,
) -> None:
    """Shrink the search space towards a device: fix layers 20..17, fine-tune, fix 16..13, fine-tune.

    Example: [bold]hsconas shrink --device cpu --latency 40% --supernet runs/supernet/checkpoint.pt[/bold]
    """
    from hsconas_cli.shrink import ShrinkConfig, describe_decision, shrink_on_device

    cfg = ShrinkConfig(samples=samples, finetune_epochs=finetune_epochs, finetune_limit=finetune_limit,
                       calib_images=calib_images, val_images=val_images, seed=seed)
    with progress("shrinking") as update:
        doc = shrink_on_device(device, latency, supernet, out_dir, data_spec=data, cfg=cfg, beta=beta, beta_below=beta_below,
                               version=version, force=force, check=profile_check, log=render.note, progress=update)
    return render.print_json(doc) if as_json else render.shrunk(doc, out_dir, describe_decision)


def search(
    device: str = opt.Device,
    latency: Optional[str] = typer.Option(None, "--latency", "-T", help="Target T: milliseconds (34, 1.2ms) or a percentile of random archs' latency (40%)."),
    targets: Optional[List[str]] = typer.Option(None, "--target", help="DEVICE=TARGET, repeated: one network for a fleet that meets each device's target (instead of --device/--latency)."),
    space: Optional[Path] = typer.Option(None, "--space", "-s", help="Shrunk-space file (hsconas shrink) or subspace JSON; default: the whole space."),
    supernet: Optional[Path] = typer.Option(None, "--supernet", help="Supernet checkpoint (default: the shrunk space's, else runs/supernet/checkpoint.pt)."),
    data: str = opt.Data,
    beta: Optional[float] = opt.Beta,
    beta_below: Optional[float] = opt.BetaBelow,
    generations: int = typer.Option(20, "--generations", min=1),
    population: int = typer.Option(50, "--population", min=2),
    parents: int = typer.Option(20, "--parents", min=1),
    crossover_prob: float = typer.Option(0.25, "--crossover-prob", min=0.0, max=1.0),
    mutation_prob: float = typer.Option(0.25, "--mutation-prob", min=0.0, max=1.0),
    seed: int = opt.Seed,
    calib_images: int = opt.CalibImages,
    val_images: int = opt.ValImages,
    top_k: int = typer.Option(15, "--top-k", min=1, help="The screen's best archs that fit T, re-scored on the held-out selection split with the uniform baselines."),
    prefer: str = opt.Prefer,
    verify: bool = typer.Option(False, "--verify", help="Measure the best candidates on this device; replace a winner that misses T by measurement."),
    candidates: int = typer.Option(8, "--candidates", min=1, help="With --verify: how many of the best archs to measure."),
    version: Optional[int] = opt.ProfileVersion,
    force: bool = opt.Force,
    profile_check: bool = opt.Check,
    out_dir: Path = opt.out("runs/search", "Run folder (resumable)."),
    as_json: bool = opt.Json,
) -> None:
    """Search the (shrunk) space with an evolutionary algorithm for the best F(arch, T) on a device, or for one
    network that meets a target on each device of a fleet.

    Example: [bold]hsconas search --device cpu --latency 40% --space runs/shrink/shrunk-space.json --verify[/bold]
    A fleet (F charges each device's overshoot as a share of its T; --verify measures every device this machine can;
    report.md has a row per device): [bold]hsconas search --target cpu=0.9ms --target cpu-openvino=0.7ms --verify[/bold]
    """
    from hsconas_cli.fleet import search_for_fleet
    from hsconas_cli.search import SearchConfig, search_on_device

    if not targets and latency is None:
        raise HsconasError("give a target: --latency T for one device (with --device), or --target DEVICE=T for each "
                           "device of a fleet")
    cfg = SearchConfig(generations=generations, population=population, parents=parents, crossover_prob=crossover_prob,
                       mutation_prob=mutation_prob, seed=seed, calib_images=calib_images, val_images=val_images,
                       top_k=top_k, prefer=prefer)
    given = {"space_file": space, "supernet": supernet, "data_spec": data, "cfg": cfg, "beta": beta, "beta_below": beta_below,
             "verify": candidates if verify else 0, "force": force, "check": profile_check, "log": render.note}
    with progress(f"searching for a fleet of {len(targets)} devices" if targets else "searching") as update:
        if targets:
            res = search_for_fleet(targets, out_dir, progress=update, **given)
        else:
            res = search_on_device(device, latency, out_dir, version=version, progress=update, **given)
    if as_json:
        return render.print_json(res)
    render.fleet(out_dir) if targets else render.searched(res, out_dir)


COMMANDS = (shrink, search)
