"""The options several commands share, declared once (Typer options; the library holds every default that is a
decision, the CLI only the ones that name a file or a preset)."""

from pathlib import Path

import typer

from hsconas_cli.backends import BACKENDS

Space = typer.Option("fmnist-A", "--space", "-s", help="Search space: a preset name or a space JSON file.")
SpaceForData = typer.Option(None, "--space", "-s", help="Search space (default: layout A for the data).")
Json = typer.Option(False, "--json", help="Print the result as JSON on stdout.")
Device = typer.Option("cpu", "--device", "-d", help="Device preset (device_profiles/NAME.json) or a profile file.")
DeviceArg = typer.Argument("cpu", help="Device name or a profile file.")
Version = typer.Option(None, "--version", "-v", help="Profile version (default: newest).")
ProfileVersion = typer.Option(None, "--profile-version", help="Profile version (default: the newest).")
Force = typer.Option(False, "--force", help="Use the profile although the board is in another power mode.")
Check = typer.Option(True, "--profile-check/--no-profile-check",
                     help="Check first (<= 30 s) that the profile still holds here; rescale or recalibrate it if not.")
Arch = typer.Option(..., "--arch", "-a", help="Arch JSON (or a search result).")
Data = typer.Option("fashion-mnist", "--data", help="fashion-mnist[:FOLDER], cifar10[:FOLDER], imagenet:PATH or imagefolder:PATH.")
Latency = typer.Option(..., "--latency", "-T", help="Target T: milliseconds (34, 1.2ms) or a percentile of random archs' latency (40%).")
Beta = typer.Option(None, "--beta", help="Slope of F above T (< 0; default -1.0).")
BetaBelow = typer.Option(None, "--beta-below", help="Slope of F below T (default 0: any network within T is scored by its "
                         "accuracy alone; positive charges unused budget; negative rewards running under T; = --beta is the paper's F).")
Seed = typer.Option(0, "--seed")
Backend = typer.Option(None, "--backend", help=f"Override the preset's backend: {', '.join(BACKENDS)}.")
Epochs = typer.Option(None, "--epochs", min=1, help="Epochs (default: the data's preset).")
BatchSize = typer.Option(None, "--batch-size", "-b", min=1)
Lr = typer.Option(None, "--lr", min=0.0, help="Peak learning rate of the cosine schedule.")
Limit = typer.Option(None, "--limit", min=1, help="Train on this many images per epoch.")
Resume = typer.Option(False, "--resume", help="Continue the checkpoint in --out with its own config (only --epochs may change).")
CalibImages = typer.Option(2000, "--calib-images", min=1, help="Images for BN recalibration of each arch.")
ValImages = typer.Option(5000, "--val-images", min=1, help="Validation images for each arch's accuracy.")
Prefer = typer.Option("accurate", "--prefer", help="How the winner is chosen among the re-scored candidates: accurate (the "
                      "most accurate on the held-out selection split) or fastest (the fastest within 2 paired SE of it).")


def out(default: str, help: str = "Run folder.") -> Path:
    """The ``--out`` folder of a command, with its default."""
    return typer.Option(Path(default), "--out", "-o", help=help)
