"""``hsconas export``: the searched network as ONNX, a TensorRT engine, an OpenVINO IR or an ExecuTorch program."""

from pathlib import Path
from typing import Optional

import typer

from exporters import FORMATS
from hsconas_cli.cli import options as opt, render
from hsconas_cli.errors import HsconasError

PRECISION_HELP = ("fp32, fp16 or int8 (Q/DQ, calibrated on real images); default " + ", ".join(
    f"{f.default_precision} for {n}" for n, f in FORMATS.items() if f.default_precision != "fp32") + ", fp32 otherwise; "
    + "; ".join(f"{n} takes {f.precision_words}" for n, f in FORMATS.items() if f.precision_words) + ".")
FORMAT_HELP = ("onnx; trt (a TensorRT engine; writes the ONNX too); openvino (an IR .xml/.bin converted from the ONNX, which is "
               "written too; extra hsconas[openvino]); pte (an ExecuTorch program, XNNPACK-delegated; extra hsconas[executorch]).")


def export(
    fmt: str = typer.Option("onnx", "--format", "-f", help=FORMAT_HELP),
    result: Optional[Path] = typer.Option(None, "--result", "-r", help="A search result (default: runs/search/result.json)."),
    arch: Optional[Path] = typer.Option(None, "--arch", "-a", help="An arch file instead of a search result."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="Weights from hsconas retrain (default: inherited from the supernet)."),
    supernet: Optional[Path] = typer.Option(None, "--supernet", help="Supernet to inherit weights from (default: the result's)."),
    data: Optional[str] = typer.Option(None, "--data", help="Data for BN recalibration and the output check (default: the result's)."),
    device: str = opt.Device,
    batch_size: Optional[int] = typer.Option(None, "--batch-size", "-b", min=1, help="Static batch (default: the device's)."),
    dynamic_batch: bool = typer.Option(False, "--dynamic-batch", help="A dynamic batch dimension instead."),
    precision: Optional[str] = typer.Option(None, "--precision", help=PRECISION_HELP),
    int8: bool = typer.Option(False, "--int8", hidden=True, help="Same as --precision int8."),
    workspace: int = typer.Option(1024, "--workspace", min=1, help="TensorRT builder workspace, MiB."),
    dla_core: Optional[int] = typer.Option(None, "--dla-core", min=0, help="TensorRT: build for this DLA core (Jetson)."),
    name: str = typer.Option("hsconet", "--name", help="File stem of what is written."),
    out_dir: Path = opt.out("runs/export", "Folder of what is written."),
    as_json: bool = opt.Json,
) -> None:
    """Export the searched network (an HSCoNet) as ONNX, a TensorRT engine, an OpenVINO IR or an ExecuTorch program.

    Example: [bold]hsconas export --format onnx --result runs/search/result.json[/bold]
    On a Jetson: [bold]hsconas export --format trt --device xavier --precision int8[/bold]
    For OpenVINO on an Intel CPU: [bold]hsconas export --format openvino --device cpu-openvino[/bold]
    """
    from hsconas_cli.export import export as export_network

    if result and arch:
        raise HsconasError("give --result or --arch, not both")
    rep = export_network(fmt, arch or result or Path("runs/search/result.json"), out_dir, checkpoint=checkpoint,
                         supernet=supernet, data_spec=data, batch_size=batch_size, dynamic_batch=dynamic_batch, name=name,
                         device=device, precision="int8" if int8 else precision, workspace_mb=workspace, dla_core=dla_core)
    return render.print_json(rep) if as_json else render.exported(rep)


COMMANDS = (export,)
