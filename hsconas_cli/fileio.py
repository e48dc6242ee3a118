"""Atomic file writes, each stamped with the product version that wrote it."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

from hsconas_cli import __version__
from hsconas_cli.errors import HsconasError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; it replaces ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the permissions a plain open() would
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


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
