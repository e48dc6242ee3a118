"""The ``hsconas`` command line: a thin Typer layer over the library. One module per command group (inspect,
profiles, train, search, export, run) parses its options and calls one library function; ``render`` prints what it
returned. Here: the app, its sub-apps and ``main``, which turns every failure into one line and exit code 2."""

from __future__ import annotations

from typing import Optional

import typer

try:  # typer 0.2x vendors click; older typer raises click's own exceptions
    from typer.exceptions import TyperException as _UsageErrors
except ImportError:  # pragma: no cover - older typer
    from click.exceptions import ClickException as _UsageErrors

from exporters.files import ExportError
from hsconas_cli import __version__
from hsconas_cli.cli import export, inspect, profiles, render, run, search, train
from hsconas_cli.errors import HsconasError, Interrupted

app = typer.Typer(name="hsconas", no_args_is_help=True, add_completion=False, rich_markup_mode="rich",
                  pretty_exceptions_enable=False,
                  help="Hardware-aware neural architecture search for fast, accurate CNNs on edge devices (HSCoNAS).\n\n"
                  "Pipeline: calibrate a device -> train a supernet -> shrink the space -> search under a latency target "
                  "-> export the winner (ONNX, TensorRT).")
SUB_APPS = {
    "arch": ("Inspect architecture files.", inspect.ARCH),
    "profiles": ("List, show and validate calibrated device profiles.", profiles.PROFILES),
    "checkpoint": ("Checkpoints: convert one you trust to the form read without pickle.", train.CHECKPOINT),
}
for module in (inspect, profiles, train, search, export, run):
    for command in module.COMMANDS:
        app.command()(command)
for name, (help_text, commands) in SUB_APPS.items():
    sub = typer.Typer(help=help_text, no_args_is_help=True)
    for sub_name, command in commands.items():
        sub.command(sub_name)(command)
    app.add_typer(sub, name=name)


def _version(value: bool) -> None:
    if value:
        render.out.print(f"hsconas {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """Hardware-aware NAS (HSCoNAS): calibrate, train, shrink, search, export."""


def main(argv: Optional[list[str]] = None) -> None:
    """Run the CLI; bad input of any kind ends in one line on stderr and exit code 2."""
    try:
        rv = app(args=argv, prog_name="hsconas", standalone_mode=False)
    except Interrupted as e:  # Ctrl-C after saving: say how to resume, exit as an interrupted program does
        render.failure(f"hsconas: {e}")
        raise SystemExit(130) from None
    except (HsconasError, ExportError) as e:
        render.failure(f"hsconas: error: {e}")
        raise SystemExit(2) from None
    except _UsageErrors as e:  # usage errors: unknown option, bad value, missing argument
        if type(e).__name__ == "NoArgsIsHelpError":  # bare `hsconas`: the help was shown
            raise SystemExit(0) from None
        render.failure(f"hsconas: error: {e.format_message()}")
        raise SystemExit(2) from None
    except (typer.Abort, KeyboardInterrupt):
        render.err.print("hsconas: interrupted", highlight=False)
        raise SystemExit(130) from None
    raise SystemExit(rv if isinstance(rv, int) else 0)
