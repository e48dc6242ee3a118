"""Reading the JSON files a user hands over, and writing files atomically; JSON documents (``write_json``) are
stamped with the product version that wrote them (``write_text`` writes the text as given)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from exporters.files import atomic_path  # noqa: F401  (the one atomic write; exporters is the lower layer)
from hsconas_cli import __version__
from hsconas_cli.errors import HsconasError


def write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def stamp(doc: dict[str, Any]) -> dict[str, Any]:
    """Return ``doc`` with the writing product's version first."""
    return {"hsconas_version": __version__, **{k: v for k, v in doc.items() if k != "hsconas_version"}}


def write_json(path: str | os.PathLike, doc: dict[str, Any]) -> Path:
    return write_text(path, json.dumps(stamp(doc), indent=2) + "\n")


def read_json(path: str | os.PathLike, what: str = "file") -> Any:
    """Read a JSON file, turning every way it can be unusable into a one-line HsconasError."""
    path = Path(path)
    if not path.exists():
        raise HsconasError(f"{what} not found: {path}")
    if path.is_dir():
        raise HsconasError(f"{what} is a directory, expected a JSON file: {path}")
    try:
        return json.loads(path.read_text())
    except UnicodeDecodeError:
        raise HsconasError(f"{what} is not a text file: {path}") from None
    except json.JSONDecodeError as e:
        raise HsconasError(f"{what} is not valid JSON (truncated or corrupt?): {path}: {e.msg} at line {e.lineno}") from None


def resumable_state(path: str | os.PathLike, settings: Any, what: str, otherwise: str) -> Any:
    """The saved state of interrupted work at ``path``, if it was started with ``settings``; None where there is
    none. A state started with other settings is refused in one line (resuming would mix two pieces of work);
    ``otherwise`` says what the user can do."""
    path = Path(path)
    if not path.exists():
        return None
    state = read_json(path, what)
    if not isinstance(state, dict) or state.get("settings") != settings:
        raise HsconasError(f"{path} holds {what} with other settings; {otherwise}")
    return state


def random_state_to_json(state: tuple) -> list:
    """A ``random.Random`` state as plain lists and numbers (JSON, and checkpoints without pickle)."""
    version, internal, gauss = state
    return [version, list(internal), gauss]


def random_state_from_json(doc: Any) -> tuple:
    """``random_state_to_json``'s inverse: the tuple ``random.Random.setstate`` takes."""
    version, internal, gauss = doc
    return (int(version), tuple(int(i) for i in internal), gauss)
