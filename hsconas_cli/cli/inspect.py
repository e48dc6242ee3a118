"""``hsconas space``, ``sample`` and ``arch show``: what a search space and an architecture hold."""

import random
from pathlib import Path

import typer

from hsconas_cli.cli import options as opt, render


def space(space: str = opt.Space, as_json: bool = opt.Json) -> None:
    """Show a search space: its layers, channels, ops and how many architectures it holds.

    Example: [bold]hsconas space --space imagenet-A[/bold]
    """
    from hsconas_cli.describe import space_summary
    from hsconas_cli.space import get_space

    sp = get_space(space)
    summary = space_summary(sp)
    return render.print_json(summary) if as_json else render.space(sp, summary)


def sample(
    space: str = opt.Space,
    seed: int = typer.Option(0, "--seed", help="Random seed: the same seed gives the same arch."),
    out_path: Path = typer.Option(Path("arch.json"), "--out", "-o", help="Where to write the arch JSON."),
    as_json: bool = opt.Json,
) -> None:
    """Sample an architecture uniformly from a space and write it as JSON.

    Example: [bold]hsconas sample --space fmnist-A --seed 3 --out arch.json[/bold]
    """
    from hsconas_cli.fileio import write_json
    from hsconas_cli.space import arch_to_json, get_space

    sp = get_space(space)
    doc = arch_to_json(sp, sp.full().sample(random.Random(seed)), seed=seed)
    write_json(out_path, doc)
    return render.print_json(doc) if as_json else render.out.print(f"wrote {out_path} (space {sp.name}, seed {seed})")


def arch_show(path: Path = typer.Argument(..., help="An arch JSON (or a search result)."), as_json: bool = opt.Json) -> None:
    """Show an architecture layer by layer, with its FLOPs and parameters.

    Example: [bold]hsconas arch show arch.json[/bold]
    """
    from hsconas_cli.describe import arch_table
    from hsconas_cli.space import load_arch

    sp, a = load_arch(path)
    rows, totals = arch_table(sp, a)
    return render.print_json({"space": sp.name, "layers": rows, **totals}) if as_json else render.arch(path, sp.name, rows, totals)


COMMANDS = (space, sample)
ARCH = {"show": arch_show}
