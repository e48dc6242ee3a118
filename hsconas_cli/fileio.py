"""Reading the JSON files a user hands over, and writing files atomically; JSON documents (``write_json``) are
stamped with the product version that wrote them (``write_text`` writes the text as given)."""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Iterator

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
    saved = state.get("settings") if isinstance(state, dict) else None
    if saved != settings:
        raise HsconasError(f"{path} holds {what} with other settings{settings_diff(saved, settings)}; {otherwise}")
    return state


def settings_diff(saved: Any, now: Any, shown: int = 2) -> str:
    """" (KEY: SAVED then, NOW now; ...)" for the top-level keys that differ, the first ``shown`` of them, values cut
    to 40 characters; empty where either side is not a dict."""
    if not isinstance(saved, dict) or not isinstance(now, dict):
        return ""

    def cut(v):
        text = json.dumps(v)
        return text if len(text) <= 40 else text[:37] + "..."

    keys = [k for k in dict.fromkeys([*now, *saved]) if saved.get(k) != now.get(k)]
    parts = [f"{k}: {cut(saved.get(k))} then, {cut(now.get(k))} now" for k in keys[:shown]]
    more = f"; {len(keys) - shown} more" if len(keys) > shown else ""
    return f" ({'; '.join(parts)}{more})" if parts else ""


def file_sha256(path: str | os.PathLike) -> str:
    """The first 16 hex digits of the SHA-256 of a file's content: its identity, whatever its path or time stamp.
    Cached by path, size and modification time in nanoseconds, so a checkpoint is read once per process."""
    st = Path(path).stat()
    return _file_sha256(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=32)
def _file_sha256(resolved: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(resolved, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def random_state_to_json(state: tuple) -> list:
    """A ``random.Random`` state as plain lists and numbers (JSON, and checkpoints without pickle)."""
    version, internal, gauss = state
    return [version, list(internal), gauss]


def random_state_from_json(doc: Any) -> tuple:
    """``random_state_to_json``'s inverse: the tuple ``random.Random.setstate`` takes."""
    version, internal, gauss = doc
    return (int(version), tuple(int(i) for i in internal), gauss)


# ---- one writer per run folder ---------------------------------------------------------------------------
LOCK_FILE = ".hsconas.lock"
_HELD: dict[str, int] = {}  # folders this process holds, by resolved path -> nesting depth (the lock is reentrant)


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, what: str) -> Iterator[Path]:
    """Hold ``folder``'s exclusive lock while the block runs: a second hsconas process that asks for it (a run,
    training, search, shrink or retraining into the same --out) is refused at once, in one line naming the process
    that holds it. The lock is the kernel's (``flock`` on ``folder/.hsconas.lock``), so it ends with its process:
    a lock left by a killed process is free, and the next command takes it over. Reentrant within a process."""
    folder = Path(folder)
    key = str(folder.resolve())
    if key in _HELD:
        _HELD[key] += 1
        try:
            yield folder
        finally:
            _HELD[key] -= 1
        return
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise HsconasError(f"{folder} is in use by another hsconas process ({_holder(fd)}); wait for it to end, "
                               "or choose another --out") from None
        holder = {"pid": os.getpid(), "what": what, "command": " ".join(sys.argv), "since": time.strftime("%H:%M:%S")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        _HELD[key] = 1
        try:
            yield folder
        finally:
            del _HELD[key]
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _holder(fd: int) -> str:
    """Who holds a lock, as its holder wrote it: "pid N, WHAT, since HH:MM:SS: COMMAND"."""
    try:
        doc = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        return f"pid {doc['pid']}, {doc['what']}, since {doc['since']}: {doc['command']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "its pid is not recorded yet"
