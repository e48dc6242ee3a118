"""ExecuTorch with the XNNPACK delegate: a ``.pte`` program lowered from ``torch.export`` of the network, and the
runtime both the ``pte`` exporter and the ``executorch`` latency backend run it in.

Lowering (``torch.export`` -> ``to_edge_transform_and_lower`` with the XNNPACK partitioner -> ``to_executorch``)
runs ExecuTorch's graph passes in Python: about a second per latency-table block and ten per whole network on
a 2-core x86 CPU, far more than running them. ``lower`` therefore takes a cache folder where programs are
kept under a hash of what determines them (the module's structure and weights, the input shape, the versions),
so a network measured twice is lowered once and an interrupted calibration resumes without lowering again.
Installed with ``pip install 'hsconas[executorch]'``.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import time
import weakref
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from exporters.files import ExportError, ExportRequest, atomic_path, time_runs, write_json

EXTRA = "pip install 'hsconas[executorch]'"


def executorch_version() -> str:
    """The installed ExecuTorch's version, or a one-line refusal naming the extra that installs it."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        import executorch  # noqa: F401  (the package itself must import, not only its metadata exist)
    except ImportError:
        raise ExportError(f"ExecuTorch is not installed here: {EXTRA}") from None
    _import_quietly()
    try:
        return version("executorch")
    except PackageNotFoundError:
        return "unknown"


_IMPORTED: list[bool] = []


def _import_quietly() -> None:
    """Import ExecuTorch's modules once, without what they print on the way: a torch notice about an Enum
    registered with pytree (logged), and cpuinfo probing ARM-only files when the threadpool starts (printed by C++
    on file descriptor 2, which is therefore pointed at /dev/null meanwhile)."""
    if _IMPORTED:
        return
    import logging
    import os
    import sys

    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            try:
                import executorch.backends.xnnpack.partition.xnnpack_partitioner  # noqa: F401
                import executorch.exir  # noqa: F401
                import executorch.runtime  # noqa: F401
                from executorch.extension.pybindings import portable_lib

                portable_lib._threadpool_get_thread_count()
            except ImportError as e:
                raise ExportError(f"ExecuTorch is installed but does not import ({e}); reinstall it: {EXTRA}") from None
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
    finally:
        os.close(saved)
    _IMPORTED.append(True)


def program_key(module, input_shape: tuple[int, ...]) -> str:
    """A hash of everything the lowered program depends on: the module's structure (its repr) and weights, the
    input shape, and the torch and ExecuTorch versions."""
    import torch

    h = hashlib.sha256()
    h.update(repr(module).encode())
    h.update(repr(tuple(input_shape)).encode())
    h.update(f"torch {torch.__version__} executorch {executorch_version()} xnnpack".encode())
    for name, t in module.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:32]


def lower(module, input_shape: tuple[int, ...], cache_dir: Path | None = None) -> bytes:
    """The ``.pte`` program of ``module`` (eval mode, fp32) at ``input_shape``, XNNPACK-delegated; taken from
    ``cache_dir`` where it was lowered before, and stored there after lowering."""
    path = None if cache_dir is None else Path(cache_dir) / f"{program_key(module, input_shape)}.pte"
    if path is not None and path.is_file():
        return path.read_bytes()
    program = _lower(module, input_shape)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            tmp.write_bytes(program)
    return program


def _lower(module, input_shape: tuple[int, ...]) -> bytes:
    executorch_version()
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import EdgeCompileConfig, to_edge_transform_and_lower

    was_training = module.training
    module.eval()
    try:
        with torch.no_grad(), contextlib.redirect_stderr(io.StringIO()):
            exported = torch.export.export(module, (torch.zeros(input_shape),))
            # ExecuTorch's recommended flow. The IR validity check re-verifies every node after each pass; the
            # program is byte-identical without it (docs/BENCHMARKS.md, "Lowering cost").
            edge = to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()],
                                               compile_config=EdgeCompileConfig(_check_ir_validity=False))
            return edge.to_executorch().buffer
    finally:
        module.train(was_training)


@dataclass(frozen=True)
class Recipe:
    """How a lowering worker rebuilds a module without unpickling one: ``factory`` ("package.module:function")
    called with ``kwargs`` (plain data: numbers, strings, lists, dicts) gives the module's structure, and the
    weights travel as a state dict of tensors, read with ``torch.load(weights_only=True)``."""

    factory: str
    kwargs: dict


def lower_many(items: list, cache_dir: Path, workers: int = 2, progress=None) -> int:
    """Lower every (module, shape, recipe) of ``items`` not yet in ``cache_dir``, in ``workers`` processes (lowering is
    single-threaded Python); returns how many were lowered. A worker rebuilds each module from its ``Recipe`` and
    its weights, and stores the program under the key of what it rebuilt, which is the parent's key where the
    recipe is faithful. ``progress(done, total)`` after each."""
    todo = [(m, s, r) for m, s, r in items if not (Path(cache_dir) / f"{program_key(m, s)}.pte").is_file()]
    todo = list({program_key(m, s): (m, s, r) for m, s, r in todo}.values())  # one lowering per distinct program
    if workers <= 1 or len(todo) < 4 * workers:  # a worker's imports cost seconds: not worth it for a few
        for i, (m, s, _) in enumerate(todo):
            lower(m, s, cache_dir)
            if progress:
                progress(i + 1, len(todo))
        return len(todo)
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=die_with_parent,
                             initargs=(os.getpid(),)) as pool:
        # the weights go as bytes: pickled as tensors, every storage would hold a shared-memory file descriptor
        # until its task ran, and a calibration's hundreds of modules ran out of descriptors (found here)
        futures = [pool.submit(_lower_into, r.factory, r.kwargs, _weights_bytes(m), s, str(cache_dir)) for m, s, r in todo]
        for i, f in enumerate(as_completed(futures)):
            f.result()
            if progress:
                progress(i + 1, len(todo))
    return len(todo)


def die_with_parent(parent_pid: int) -> None:
    """In a lowering worker: end when the process that started it ends. Ctrl-C reaches the workers with their parent,
    but a parent killed by a signal (SIGTERM from a job runner, a timeout) would leave them lowering on their own
    for minutes, and every timing on the machine meanwhile would be slowed (found here). Linux's parent-death
    signal does it; elsewhere nothing is done."""
    import ctypes
    import signal
    import sys

    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent_pid:  # the parent ended before the signal was armed
        os._exit(1)


def _weights_bytes(module) -> bytes:
    import torch

    buf = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in module.state_dict().items()}, buf)
    return buf.getvalue()


def rebuild(factory: str, kwargs: dict, weights: bytes):
    """The module a ``Recipe`` describes, with ``weights`` (a state dict saved by ``_weights_bytes``) loaded into it."""
    import importlib

    import torch

    module_name, _, function = factory.partition(":")
    module = getattr(importlib.import_module(module_name), function)(**kwargs)
    module.load_state_dict(torch.load(io.BytesIO(weights), weights_only=True))
    return module.eval()


def _lower_into(factory: str, kwargs: dict, weights: bytes, input_shape, cache_dir: str) -> None:
    import torch

    torch.set_num_threads(1)  # two workers on two cores
    executorch_version()  # imports quietly
    lower(rebuild(factory, kwargs, weights), input_shape, Path(cache_dir))


_LIVE: "weakref.WeakSet[ProgramRunner]" = weakref.WeakSet()


def set_threads(threads: int) -> None:
    """The size of ExecuTorch's threadpool (XNNPACK runs on it), process-wide. A loaded method keeps the pool it
    was loaded with, so resetting the pool under a live one leaves it a dangling pool (it crashes later): the
    size is changed only while no program is loaded, else refused."""
    from executorch.extension.pybindings import portable_lib

    if portable_lib._threadpool_get_thread_count() == threads:
        return
    if any(r.method is not None for r in _LIVE):
        raise ExportError(f"ExecuTorch's threadpool has {portable_lib._threadpool_get_thread_count()} threads and a "
                          f"program loaded on it; it cannot be resized to {threads} in this process")
    with contextlib.redirect_stderr(io.StringIO()):
        portable_lib._unsafe_reset_threadpool(int(threads))


class ProgramRunner:
    """The ``forward`` method of a loaded program on a fixed input; ``time(k)``: milliseconds per run over k runs,
    on ``threads`` threads of ExecuTorch's pool (sized before the method is loaded: see ``set_threads``)."""

    timer = "wall clock"

    def __init__(self, program: bytes, input_shape: tuple[int, ...], threads: int = 1):
        executorch_version()
        import torch
        from executorch.runtime import Runtime

        self.method = None
        set_threads(threads)
        self._buffer = program  # the runtime reads the program (its weights too) from this buffer: keep it alive
        self.program = Runtime.get().load_program(program)
        self.method = self.program.load_method("forward")
        _LIVE.add(self)
        self._x = torch.from_numpy(np.random.default_rng(0).standard_normal(input_shape, dtype=np.float32))
        self.method.execute([self._x])  # the first call initialises the delegate

    def infer(self, x: np.ndarray) -> np.ndarray:
        import torch

        return self.method.execute([torch.from_numpy(np.ascontiguousarray(x, np.float32))])[0].numpy().copy()

    def time(self, k: int) -> float:
        execute, args = self.method.execute, [self._x]
        t0 = time.perf_counter()
        for _ in range(k):
            execute(args)
        return (time.perf_counter() - t0) * 1e3 / k

    def close(self) -> None:
        self.method = self.program = self._buffer = None


def export_pte(req: ExportRequest) -> dict:
    """Lower ``req.net`` to ``out_dir/name.pte`` (XNNPACK delegate, fp32, static batch). The program, loaded in
    ExecuTorch's runtime, must agree with PyTorch on the real images within ``exporters.onnx.TOLERANCE`` fp32, or
    nothing is written. ``name.pte.json`` beside it holds the metadata, the check, the versions, a timing here
    and, where ``measure`` is given (a function of the .pte path), the latency under the device profile's
    protocol: the program itself is exactly what ``torch.export`` and the lowering emitted."""
    import torch

    from exporters import FORMATS

    FORMATS["pte"].check(req.precision, req.dla_core, req.dynamic_batch)  # refused before anything is lowered
    version = executorch_version()
    t0 = time.perf_counter()
    program = lower(req.net.eval(), req.input_shape)
    lower_s = time.perf_counter() - t0
    runner = ProgramRunner(program, req.input_shape, req.threads)
    check = _program_parity(runner, req)
    timing = {**time_runs(runner, req.timing_runs), "threads": req.threads}
    runner.close()
    path = req.out_dir / f"{req.name}.pte"
    with atomic_path(path) as tmp:
        tmp.write_bytes(program)
    latency = req.measure(path) if req.measure is not None else None
    sidecar = {
        "kind": "hsconas-executorch-program",
        "pte": path.name,
        "sha256": hashlib.sha256(program).hexdigest(),
        "executorch": version,
        "torch": torch.__version__,
        "delegate": "xnnpack",
        "lower_seconds": round(lower_s, 1),
        "input": {"shape": list(req.input_shape)},
        "check": check,
        "timing": timing,
        "latency": latency,
        "metadata": req.metadata,
    }
    side = req.out_dir / f"{req.name}.pte.json"
    write_json(side, sidecar)
    return {"format": "pte", "path": str(path), "max_abs_diff": check["max_abs_diff"], "sidecar": str(side),
            "bytes": len(program), "check": check, "timing": timing, "latency": latency, "executorch": version,
            "precision": "fp32", "lower_seconds": lower_s}


def _program_parity(runner: "ProgramRunner", req: ExportRequest) -> dict:
    """The loaded program's outputs on the check images against PyTorch's, refused outside fp32's tolerance."""
    import torch

    from exporters.onnx import check_parity, parity

    x, b = np.ascontiguousarray(req.check_images, dtype=np.float32), req.batch_size
    n = len(x) // b * b
    if n == 0:
        raise ExportError(f"checking the program needs at least {b} images")
    got = np.concatenate([runner.infer(x[s : s + b]) for s in range(0, n, b)])
    with torch.no_grad():
        want = req.net(torch.from_numpy(x[:n])).numpy()
    check = parity(got, want)
    check_parity("fp32", check, "the ExecuTorch program")
    return check
