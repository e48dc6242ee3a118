"""``hsconas run``: the whole pipeline in one resumable run folder."""

from pathlib import Path
from typing import Optional

import typer

from hsconas_cli.cli import options as opt, render
from hsconas_cli.ui import progress


def run(
    device: str = opt.Device,
    latency: str = opt.Latency,
    data: str = opt.Data,
    space: Optional[str] = opt.SpaceForData,
    preset: str = typer.Option("demo", "--preset", help="Budgets: smoke (minutes), demo (<= 20 min on 2 CPU cores), paper."),
    seed: int = opt.Seed,
    prefer: str = opt.Prefer,
    out_dir: Path = opt.out("runs/run", "Run folder; rerun the same command to resume."),
    profile_check: bool = opt.Check,
    as_json: bool = opt.Json,
) -> None:
    """Run the whole pipeline: profile (reuse or calibrate), supernet, shrink, search, fine-tune, export, report.

    Example: [bold]hsconas run --device cpu --latency 40% --data fashion-mnist --out runs/demo[/bold]
    """
    from hsconas_cli.pipeline import run_pipeline

    with progress("hsconas run") as update:
        res = run_pipeline(device, latency, data, out_dir, space=space, preset=preset, seed=seed, progress=update,
                           profile_check=profile_check, prefer=prefer, log=render.note)
    return render.print_json(res) if as_json else render.run_summary(res, out_dir)


COMMANDS = (run,)
