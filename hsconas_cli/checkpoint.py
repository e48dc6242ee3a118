"""Checkpoints: the files training writes, read and written as tensors and plain data only.

A checkpoint holds tensors, and numbers, strings, lists and dicts of them: ``torch.load(..., weights_only=True)``
reads it, and nothing in it can run code when it is read. Anything else (a file written by another tool, or
crafted) is refused in one line; ``hsconas checkpoint upgrade FILE --trust`` converts a file the user trusts.
Every write is atomic (``save_checkpoint``). Training (train.py) writes them; search, shrink, export and the
evaluator only read them, through this module.
"""

from __future__ import annotations

import functools
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hsconas_cli.errors import HsconasError
from hsconas_cli.fileio import atomic_path
from hsconas_cli.space import SearchSpace, get_space
from hsconas_cli.supernet import Supernet

CHECKPOINT_KINDS = ("supernet", "hsconet")
CHECKPOINT_KEYS = ("kind", "model", "space", "config")


def _plain(obj: Any) -> Any:
    """``obj`` as what the safe loader accepts: tensors, and dicts, lists and tuples of numbers and strings."""
    if isinstance(obj, torch.Tensor) or obj is None or type(obj) in (bool, int, float, str):
        return obj  # exact types: numpy's float64 is a float, and the safe loader refuses it
    if isinstance(obj, dict):
        return {str(k) if not isinstance(k, (int, str)) else k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_plain(v) for v in obj) if isinstance(obj, tuple) else [_plain(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalars
        return obj.item()
    for plain in (bool, int, float, str):  # other subclasses of them (enums, ...)
        if isinstance(obj, plain):
            return plain(obj)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"a checkpoint cannot hold a {type(obj).__name__}")


def save_checkpoint(ckpt: dict[str, Any], path: str | Path) -> Path:
    """Write ``ckpt`` atomically, in the form ``load_checkpoint`` reads without pickle."""
    with atomic_path(path) as tmp:
        torch.save(_plain(ckpt), tmp)
    return Path(path)


def checkpoint_space(path: str | Path) -> SearchSpace:
    """The search space a checkpoint was trained for (the loaded checkpoint is kept for the load that follows)."""
    return get_space(load_checkpoint(path)["space"])


def load_checkpoint(path: str | Path, *, cached: bool = True) -> dict[str, Any]:
    """An hsconas checkpoint, read with ``torch.load(weights_only=True)``: no object in it is unpickled. The last
    one read is kept (keyed by the file's path, size and modification time), so reading a file's space and then
    its weights loads it once; ``cached=False`` for a caller that hands its tensors to something that changes
    them in place (an optimizer resuming)."""
    path = Path(path)
    if not path.exists():
        raise HsconasError(f"checkpoint not found: {path}")
    if not cached:
        return _read_checkpoint(path)
    st = path.stat()
    return _cached_checkpoint(str(path), str(path.resolve()), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=1)
def _cached_checkpoint(shown: str, resolved: str, size: int, mtime_ns: int) -> dict[str, Any]:
    return _read_checkpoint(Path(shown))


def _read_checkpoint(path: Path, *, trust: bool = False) -> dict[str, Any]:
    """The checkpoint at ``path``, checked to be a whole hsconas checkpoint. ``trust`` unpickles it (only
    ``upgrade_checkpoint``, for a file the user vouches for, ever passes it)."""
    import pickle

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True) if not trust else _unpickle_trusted(path)
    except pickle.UnpicklingError as e:
        why = str(e).lower()  # torch 2.6+: "Unsupported global"; torch 2.0-2.5: "Unsupported class", "reduce"
        if not any(w in why for w in ("unsupported global", "unsupported class", "for unrecognized function")):
            # no object was refused: the file is no checkpoint at all
            raise HsconasError(f"checkpoint {path} cannot be read (truncated or not a checkpoint): UnpicklingError") from None
        raise HsconasError(
            f"{path} holds objects other than tensors and plain data, which hsconas does not unpickle (they could "
            f"run code): a checkpoint of another tool or an older hsconas, or a crafted file; if you trust it, "
            f"convert it with: hsconas checkpoint upgrade {path} --trust") from None
    except Exception as e:  # truncated or not a torch file
        raise HsconasError(f"checkpoint {path} cannot be read (truncated or not a checkpoint): {type(e).__name__}") from None
    if not isinstance(ckpt, dict) or ckpt.get("kind") not in CHECKPOINT_KINDS:
        raise HsconasError(f"{path} is not an hsconas checkpoint")
    missing = [k for k in CHECKPOINT_KEYS if k not in ckpt]
    if missing or not isinstance(ckpt["model"], dict) or not isinstance(ckpt["config"], dict):
        raise HsconasError(f"{path} is not a whole hsconas checkpoint (missing or malformed: {', '.join(missing) or 'model'})")
    return ckpt


def _unpickle_trusted(path: Path) -> Any:
    """Unpickle a file the user trusts (``hsconas checkpoint upgrade --trust``): the one read in hsconas that may
    run code the file holds, and the only one a test allows to be other than ``weights_only=True``."""
    return torch.load(path, map_location="cpu", weights_only=False)


def add_to_checkpoint(path: str | Path, **fields: Any) -> Path:
    """Write ``fields`` (plain data) into the checkpoint at ``path``, read and written as every checkpoint is."""
    ckpt = load_checkpoint(path, cached=False)
    ckpt.update(fields)
    return save_checkpoint(ckpt, path)


def upgrade_checkpoint(path: str | Path, *, trust: bool) -> dict[str, Any]:
    """Rewrite a checkpoint the user trusts (``trust``: its unpickling may run code) in the form read without
    pickle; the original is kept beside it as ``NAME.pickle.bak``. Never done implicitly."""
    path = Path(path)
    if not trust:
        raise HsconasError(f"upgrading {path} unpickles it, which runs any code it holds: pass --trust only for a "
                           "file whose origin you trust")
    if not path.exists():
        raise HsconasError(f"checkpoint not found: {path}")
    ckpt = _read_checkpoint(path, trust=True)
    try:
        plain = _plain(ckpt)
    except TypeError as e:
        raise HsconasError(f"{path} cannot be converted: {e}") from None
    backup = path.with_name(path.name + ".pickle.bak")
    shutil.copy2(path, backup)
    save_checkpoint(plain, path)
    _read_checkpoint(path)  # it now reads without pickle
    return {"path": str(path), "backup": str(backup), "kind": plain["kind"]}


def load_weights(net: nn.Module, state: dict[str, Any], path: str | Path) -> None:
    """``net.load_state_dict(state)``, where every key and shape fits; else one line naming the first mismatch."""
    own = net.state_dict()
    for key, value in own.items():
        if key not in state:
            raise HsconasError(f"{path} does not fit this network: it has no '{key}' ({len(own)} tensors expected, "
                               f"{len(state)} found)")
        if not isinstance(state[key], torch.Tensor) or tuple(state[key].shape) != tuple(value.shape):
            shape = tuple(state[key].shape) if isinstance(state[key], torch.Tensor) else type(state[key]).__name__
            raise HsconasError(f"{path} does not fit this network: '{key}' is {shape}, expected {tuple(value.shape)}")
    extra = [k for k in state if k not in own]
    if extra:
        raise HsconasError(f"{path} does not fit this network: it has '{extra[0]}', which the network has not"
                           + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""))
    net.load_state_dict(state)


def load_supernet(path: str | Path) -> tuple[Supernet, dict[str, Any]]:
    ckpt = load_checkpoint(path)
    if ckpt["kind"] != "supernet":
        raise HsconasError(f"{path} holds a trained HSCoNet, not a supernet")
    space = get_space(ckpt["space"])
    cfg = ckpt["config"]
    net = Supernet(space, cfg.get("dropout", 0.1), share=cfg.get("share", "none"), init=cfg.get("init", "spos"))
    load_weights(net, ckpt["model"], path)
    return net.eval(), ckpt
