"""``hsconas train``, ``retrain`` and ``checkpoint upgrade``: the supernet, an HSCoNet, and checkpoints."""

from pathlib import Path
from typing import Optional

import typer

from hsconas_cli.cli import options as opt, render
from hsconas_cli.ui import progress


def train(
    data: str = opt.Data,
    space: Optional[str] = opt.SpaceForData,
    subspace: Optional[Path] = typer.Option(None, "--subspace", help="Train within a shrunk space file (hsconas shrink)."),
    init: Optional[Path] = typer.Option(None, "--init", help="Start from this supernet checkpoint (fine-tuning)."),
    epochs: Optional[int] = opt.Epochs,
    batch_size: Optional[int] = opt.BatchSize,
    lr: Optional[float] = opt.Lr,
    limit: Optional[int] = opt.Limit,
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of weights, batches and paths (default 0)."),
    out_dir: Path = opt.out("runs/supernet", "Run folder: checkpoint, metrics, config."),
    resume: bool = opt.Resume,
    as_json: bool = opt.Json,
) -> None:
    """Train the weight-sharing supernet: single-path one-shot with dynamic channel scaling.

    Example: [bold]hsconas train --data fashion-mnist --epochs 10 --out runs/supernet[/bold]
    Several processes: [bold]torchrun --nproc_per_node 2 -m hsconas_cli train ...[/bold]
    """
    from hsconas_cli.train import is_main_process, train_supernet

    given = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "limit": limit, "seed": seed}
    with progress(f"supernet {space or 'for ' + data}") as update:
        res = train_supernet(data, space, out_dir, cfg=given, subspace=subspace, init=init, resume=resume,
                             progress=update, notice=render.err.print)
    if is_main_process():  # under torchrun, rank 0 reports
        render.print_json(res) if as_json else render.trained(res)


def retrain(
    arch: Path = typer.Option(..., "--arch", "-a", help="Arch JSON or a search result."),
    data: str = opt.Data,
    inherit: Optional[Path] = typer.Option(None, "--inherit", help="Fine-tune from this supernet checkpoint's weights."),
    epochs: Optional[int] = opt.Epochs,
    batch_size: Optional[int] = opt.BatchSize,
    lr: Optional[float] = opt.Lr,
    warmup: Optional[float] = typer.Option(None, "--warmup-epochs", min=0.0),
    limit: Optional[int] = opt.Limit,
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of weights and batches (default 0)."),
    out_dir: Path = opt.out("runs/hsconet"),
    resume: bool = opt.Resume,
    as_json: bool = opt.Json,
) -> None:
    """Train an HSCoNet: from scratch (the paper's retraining) or fine-tuned from inherited weights.

    Example: [bold]hsconas retrain --arch runs/search/result.json --epochs 15 --out runs/hsconet[/bold]
    """
    from hsconas_cli.space import load_arch
    from hsconas_cli.train import retrain as train_hsconet

    sp, a = load_arch(arch)
    given = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "warmup_epochs": warmup, "limit": limit, "seed": seed}
    with progress(f"HSCoNet {arch.name}") as update:
        res = train_hsconet(data, sp, a, out_dir, cfg=given, inherit=inherit, resume=resume, progress=update,
                            notice=render.err.print)
    render.print_json(res) if as_json else render.trained(res)


def checkpoint_upgrade(
    path: Path = typer.Argument(..., help="A checkpoint hsconas refused because reading it needs pickle."),
    trust: bool = typer.Option(False, "--trust", help="Required: unpickling runs any code the file holds."),
    as_json: bool = opt.Json,
) -> None:
    """Rewrite a checkpoint you trust (an older hsconas's, say) as tensors and plain data, which hsconas reads
    without pickle; the original is kept as NAME.pickle.bak.

    Example: [bold]hsconas checkpoint upgrade runs/supernet/checkpoint.pt --trust[/bold]
    """
    from hsconas_cli.checkpoint import upgrade_checkpoint

    res = upgrade_checkpoint(path, trust=trust)
    return render.print_json(res) if as_json else \
        render.out.print(f"rewrote {res['path']} ({res['kind']}) to be read without pickle; the original is {res['backup']}")


COMMANDS = (train, retrain)
CHECKPOINT = {"upgrade": checkpoint_upgrade}
