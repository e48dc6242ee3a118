"""The ``hsconas`` command line: a thin Typer layer. Each command parses options and calls one library function.

Every user-facing failure is one line on stderr and exit code 2 (see ``main``).
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table
from typer.exceptions import TyperException

from hsconas_cli import __version__
from hsconas_cli.errors import HsconasError

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


# ---- entry point -----------------------------------------------------------------------------------
def main(argv: Optional[list[str]] = None) -> None:
    """Run the CLI; bad input of any kind ends in one line on stderr and exit code 2."""
    try:
        rv = app(args=argv, prog_name="hsconas", standalone_mode=False)
    except HsconasError as e:
        err.print(f"hsconas: error: {e}", markup=False, highlight=False, soft_wrap=True)
        raise SystemExit(2) from None
    except TyperException as e:  # usage errors: unknown option, bad value, missing argument
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
