"""Training: the weight-sharing supernet (single-path one-shot) and HSCoNets (paper II-A, III-B, IV-A).

Supernet: every step samples one (op, c) per layer uniformly from the current (sub)space and trains that path.
SGD with momentum 0.9, weight decay 3e-5 (none on BN parameters and biases), gradient-norm clipping at 5,
cosine learning rate (optionally after a linear warm-up), label smoothing. The optimizer updates only the
slices a step used: parameters of ops the step did not run, and channels beyond its widths, are left exactly
as they were, momentum and weight decay included.

Checkpoints (model, momentum buffers, step, sampler and RNG state, space, metrics) are written atomically every
epoch and on Ctrl-C, and ``resume`` continues to the same weights an uninterrupted run reaches.

Under ``torchrun --nproc_per_node N`` the same code runs DDP (NCCL on GPUs, gloo on CPUs); every rank seeds
the arch sampler identically, so all ranks train the same path at every step. On CUDA it trains in
channels-last with bf16 autocast (fp16 with a gradient scaler where bf16 is missing).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import os
import random
import signal
import threading
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hsconas_cli import __version__
from hsconas_cli.checkpoint import add_to_checkpoint, checkpoint_space, load_checkpoint, load_supernet, load_weights, save_checkpoint
from hsconas_cli.data import DataBundle, check_data_fits, load_data, parse_data
from hsconas_cli.errors import HsconasError, Interrupted
from hsconas_cli.evaluate import top1
from hsconas_cli.fileio import folder_lock, random_state_from_json, random_state_to_json, write_json, write_text
from hsconas_cli.space import (DEFAULT_SPACE_FOR_DATA, Arch, SearchSpace, Subspace, arch_to_json, get_space, load_subspace,
                               validate_arch)
from hsconas_cli.supernet import HSCoNet, Supernet, arch_cost, build_subnet
from hsconas_cli.ui import ProgressFn



# ---- settings --------------------------------------------------------------------------------------
@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 256
    lr: float = 0.25
    momentum: float = 0.9
    weight_decay: float = 3e-5
    grad_clip: float = 5.0
    label_smoothing: float = 0.1
    warmup_epochs: float = 0.0
    dropout: float = 0.1
    seed: int = 0
    limit: int | None = None  # images per epoch (a fixed, seeded subset each epoch); None = the whole subset
    train_on: str = "train"  # the subset trained on; a winner's fine-tune, chosen already, adds the selection split
    amp: str = "auto"  # auto (bf16 on CUDA), bf16, fp16, off
    channels_last: bool = True
    workers: int = 4
    # the supernet's parametrisation (supernet training only; see hsconas_cli/supernet.py)
    share: str = "all"  # how the ops of a layer share weights: all, kernels, none
    init: str = "aligned"
    update: str = "sliced"  # sliced: only the slices a path used; whole: every parameter the path touched, whole
    skip_ramp: float = 0.0  # share of the steps over which skip's sampling weight rises from 0 to that of any op
    paths_per_step: int = 1  # the batch is split between this many sampled paths, one update for all
    # recipes tried for ranking archs of equal latency (issue 35; bench/ranking_band.py scores them):
    sandwich: int = 0  # > 0: the largest path, the smallest and this many random ones each step, each on the whole batch
    distill: bool = False  # with sandwich: the smaller paths learn the largest path's soft predictions (in-place KD)
    path_band: tuple[float, float] | None = None  # sample paths whose FLOPs lie within these percentiles of random archs'

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# Stated presets: the paper's ImageNet schedule, and smaller ones for Fashion-MNIST and CIFAR-10. Measured on
# Fashion-MNIST (bench/supernet_recipes.py, docs/BENCHMARKS.md "Supernet recipes"): batch 64 with lr 0.05 (the
# paper's lr 0.5 at batch 512 scaled linearly is 0.0625), and skip brought in gradually over the first half of
# training (skip_ramp), on the shared, aligned supernet (supernet.py). CIFAR-10 takes the same by analogy.
SUPERNET_PRESETS = {
    "imagenet": TrainConfig(epochs=100, batch_size=512, lr=0.5, skip_ramp=0.5),
    "imagefolder": TrainConfig(epochs=100, batch_size=512, lr=0.5, skip_ramp=0.5),
    "cifar10": TrainConfig(epochs=60, batch_size=64, lr=0.05, skip_ramp=0.5),
    "fashion-mnist": TrainConfig(epochs=10, batch_size=64, lr=0.05, skip_ramp=0.5),
}
FINETUNE_LRS = (0.01, 0.0035)  # the paper's fine-tuning after shrinking stage 1 and stage 2, 15 epochs each
# Retraining on Fashion-MNIST takes weight decay 5e-4 rather than the paper's ImageNet 3e-5: measured with
# bench/train_quality.py on the same arch, seed and 15 epochs, test top-1 92.50% against 91.88%.
RETRAIN_PRESETS = {
    "imagenet": TrainConfig(epochs=100, batch_size=1024, lr=0.5, warmup_epochs=5),
    "imagefolder": TrainConfig(epochs=100, batch_size=1024, lr=0.5, warmup_epochs=5),
    "cifar10": TrainConfig(epochs=100, batch_size=256, lr=0.2, warmup_epochs=2),
    "fashion-mnist": TrainConfig(epochs=15, batch_size=256, lr=0.2, warmup_epochs=1, weight_decay=5e-4),
}


def preset(kind: str, data_name: str, **overrides: Any) -> TrainConfig:
    table = SUPERNET_PRESETS if kind == "supernet" else RETRAIN_PRESETS
    base = table.get(data_name, table["fashion-mnist"])
    return replace(base, **{k: v for k, v in overrides.items() if v is not None})


# ---- the optimizer ---------------------------------------------------------------------------------
class SlicedSGD:
    """SGD with momentum and decoupled-from-BN weight decay that updates only the slices a step used.

    ``step(active, lr)`` takes (parameter, index) pairs; the index is the leading slice of the parameter that
    the step's path ran (the whole parameter for unsliced ones). Everything outside is untouched, momentum
    buffers included. Matches ``torch.optim.SGD`` (dampening 0, no Nesterov) on the slices it updates.
    """

    def __init__(self, named_params: Iterable[tuple[str, nn.Parameter]], momentum: float, weight_decay: float):
        self.params = dict(named_params)
        self.momentum, self.weight_decay = momentum, weight_decay
        self.decay = {id(p): p.ndim > 1 for p in self.params.values()}  # no decay on BN parameters and biases
        self.buffers: dict[str, torch.Tensor] = {}

    def zero_grad(self) -> None:
        for p in self.params.values():
            p.grad = None

    @torch.no_grad()
    def step(self, active: list[tuple[str, tuple]], lr: float) -> None:
        ws, gs, bs, dw, dg = [], [], [], [], []
        for name, index in active:
            p = self.params[name]
            if p.grad is None:
                continue
            buf = self.buffers.get(name)
            if buf is None:
                buf = self.buffers[name] = torch.zeros_like(p)
            w, g = p.data[index], p.grad[index]
            ws.append(w)
            gs.append(g)
            bs.append(buf[index])
            if self.weight_decay and self.decay[id(p)]:
                dw.append(w)
                dg.append(g)
        if not ws:
            return
        if dg:
            torch._foreach_add_(dg, dw, alpha=self.weight_decay)
        torch._foreach_mul_(bs, self.momentum)
        torch._foreach_add_(bs, gs)
        torch._foreach_add_(ws, bs, alpha=-lr)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in self.buffers.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.buffers = {k: v.to(self.params[k].device) for k, v in state.items()}


def union_slices(per_path: list[list[tuple[str, tuple]]]) -> list[tuple[str, tuple]]:
    """The slices several paths used together: per parameter, the smallest box holding every path's slice."""
    if len(per_path) == 1:
        return per_path[0]
    merged: dict[str, Any] = {}
    for slices in per_path:
        for name, index in slices:
            have = merged.get(name)
            if have is None:
                merged[name] = index
            elif have is ... or index is ...:
                merged[name] = ...
            else:
                merged[name] = tuple(slice(min(a.start, b.start), max(a.stop, b.stop)) for a, b in zip(have, index))
    return list(merged.items())


# ---- distributed -----------------------------------------------------------------------------------
@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str) -> Dist:
    """DDP under torchrun (WORLD_SIZE > 1): NCCL on CUDA, gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if device == "cuda" else "gloo")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "cuda":
        torch.cuda.set_device(local)
    return Dist(dist.get_rank(), dist.get_world_size(), local)


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


# ---- the training loop -----------------------------------------------------------------------------
# op order from the cheapest to the costliest (per channel: supernet.cost_table), for the sandwich rule's two ends
OPS_BY_COST = ("skip", "shuffle3", "shuffle5", "shuffle7", "xception")


def sandwich_ends(sub: Subspace) -> tuple[Arch, Arch]:
    """The largest path of ``sub`` (each layer's costliest op at its widest factor) and the smallest (skip where
    allowed, else the cheapest op at the narrowest factor)."""
    def pick(ops, facs, largest):
        op = sorted(ops, key=OPS_BY_COST.index)[-1 if largest else 0]
        return (op, None) if op == "skip" else (op, max(facs) if largest else min(facs))

    return (Arch(tuple(pick(o, f, True) for o, f in zip(sub.ops, sub.factors))),
            Arch(tuple(pick(o, f, False) for o, f in zip(sub.ops, sub.factors))))


@dataclass
class RunState:
    epoch: int = 0  # epochs finished
    batch: int = 0  # batches finished in the current epoch
    step: int = 0
    sampler: Any = None  # random.Random state of the arch sampler
    torch_rng: Any = None
    history: list = field(default_factory=list)


class Trainer:
    """Trains a supernet (``subspace`` given) or a standalone network, on one process or under torchrun."""

    def __init__(
        self,
        model: nn.Module,
        data: DataBundle,
        cfg: TrainConfig,
        out_dir: Path,
        *,
        subspace: Subspace | None = None,
        meta: dict[str, Any] | None = None,
        progress: ProgressFn | None = None,
    ):
        self.device = _device()
        self.dist = init_distributed(self.device)
        self.cfg, self.data, self.out_dir, self.subspace = cfg, data, Path(out_dir), subspace
        self.meta = meta or {}
        self.progress = progress if self.dist.main else None
        self.model = model.to(self.device)
        if cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.supernet = isinstance(model, Supernet)
        self.opt = SlicedSGD(self.model.named_parameters(), cfg.momentum, cfg.weight_decay)
        self.full_slices = [(n, ...) for n, _ in self.model.named_parameters()]
        self.ddp = None
        if self.dist.world > 1:
            if cfg.paths_per_step > 1 or cfg.sandwich:
                raise HsconasError("paths per step above 1 and the sandwich rule are not supported under torchrun")
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.ddp = DDP(self.model, device_ids=[self.dist.local_rank] if self.device == "cuda" else None,
                           find_unused_parameters=self.supernet)
        self.state = RunState(sampler=random.Random(cfg.seed).getstate())
        self.amp_dtype = self._amp_dtype()
        self.scaler = _grad_scaler() if self.amp_dtype == torch.float16 else None
        self.steps_per_epoch = len(self._batches(0))

    def _amp_dtype(self):
        amp = self.cfg.amp
        if amp == "off" or self.device != "cuda" or amp not in ("auto", "bf16", "fp16"):
            return None
        if amp in ("auto", "bf16") and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float16

    # ---- data and schedule ---------------------------------------------------------------------------
    def _batches(self, epoch: int):
        return self.data.loader(self.cfg.train_on, self.cfg.batch_size, train=True, seed=self.cfg.seed * 1000 + epoch,
                                limit=self.cfg.limit, rank=self.dist.rank, world=self.dist.world, workers=self.cfg.workers)

    def skip_weight(self, step: int) -> float:
        ramp = self.cfg.skip_ramp * self.cfg.epochs * self.steps_per_epoch
        return 1.0 if step >= ramp else step / ramp

    def lr_at(self, step: int) -> float:
        total = max(1, self.cfg.epochs * self.steps_per_epoch)
        warm = int(self.cfg.warmup_epochs * self.steps_per_epoch)
        if step < warm:
            return self.cfg.lr * (step + 1) / warm
        t = (step - warm) / max(1, total - warm)
        return 0.5 * self.cfg.lr * (1 + math.cos(math.pi * min(1.0, t)))

    # ---- checkpoints ---------------------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / "checkpoint.pt"

    def save(self) -> None:
        if not self.dist.main:
            return
        s = self.state
        ckpt = {
            "hsconas_version": __version__,
            "kind": "supernet" if self.supernet else "hsconet",
            "model": self.model.state_dict(),
            "optimizer": self.opt.state_dict(),
            "state": {"epoch": s.epoch, "batch": s.batch, "step": s.step,
                      "sampler": None if s.sampler is None else random_state_to_json(s.sampler),
                      "torch_rng": torch.get_rng_state(), "cuda_rng": self._cuda_rng(), "history": s.history},
            "config": self.cfg.to_dict(),
            "space": self.model.space.to_dict(),
            "subspace": self.subspace.to_dict() if self.subspace else None,
            "arch": None if self.supernet else self.model.arch.to_list(),
            "data": self.data.describe(),
            **self.meta,
        }
        save_checkpoint(ckpt, self.checkpoint_path)

    def load(self, path: Path) -> None:
        ckpt = load_checkpoint(path, cached=False)
        load_weights(self.model, ckpt["model"], path)
        self.opt.load_state_dict(ckpt["optimizer"])
        st = ckpt["state"]
        sampler = st["sampler"]
        self.state = RunState(st["epoch"], st["batch"], st["step"], _as_random_state(sampler), st["torch_rng"], st["history"])
        torch.set_rng_state(st["torch_rng"])
        if st.get("cuda_rng") is not None and self.device == "cuda":
            torch.cuda.set_rng_state(st["cuda_rng"], torch.cuda.current_device())

    def _cuda_rng(self) -> torch.Tensor | None:
        """The CUDA generator's state of this process's device (dropout on the GPU draws from it), None on the CPU.
        Under torchrun rank 0's is saved, and every rank restores it: exact on one GPU, not across ranks."""
        return torch.cuda.get_rng_state(torch.cuda.current_device()) if self.device == "cuda" else None

    # ---- the paths of a step ---------------------------------------------------------------------------
    def _paths(self, sampler: random.Random, step: int) -> list[Arch]:
        """The paths one step trains: ``paths_per_step`` random ones (drawn inside ``path_band`` where set), or
        with ``sandwich`` the largest, the smallest and ``sandwich`` random ones."""
        cfg = self.cfg

        def draw() -> Arch:
            for _ in range(1000):
                a = self.subspace.sample(sampler, self.skip_weight(step))
                if self._band is None or self._band[0] <= arch_cost(self.subspace.space, a)["flops"] <= self._band[1]:
                    return a
            return a

        if cfg.sandwich:
            return [*sandwich_ends(self.subspace), *(draw() for _ in range(cfg.sandwich))]
        return [draw() for _ in range(cfg.paths_per_step)]

    @functools.cached_property
    def _band(self) -> tuple[float, float] | None:
        """``path_band``'s percentiles as FLOPs, over 2,000 seeded random archs of the subspace."""
        if not self.cfg.path_band or self.subspace is None:
            return None
        rng = random.Random(12345)
        flops = np.array([arch_cost(self.subspace.space, self.subspace.sample(rng))["flops"] for _ in range(2000)])
        lo, hi = np.percentile(flops, self.cfg.path_band)
        return float(lo), float(hi)

    # ---- one step --------------------------------------------------------------------------------------
    def _step(self, x: torch.Tensor, y: torch.Tensor, archs: list[Arch] | None, lr: float) -> tuple[float, int]:
        """One optimizer step on one batch; a supernet splits the batch between ``archs`` (one path each)."""
        model = self.ddp or self.model
        x = x.to(self.device, non_blocking=True)
        y = y.to(self.device, non_blocking=True)
        if self.cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        ctx = torch.autocast("cuda", dtype=self.amp_dtype) if self.amp_dtype else contextlib.nullcontext()
        self.opt.zero_grad()
        whole = archs is not None and self.cfg.sandwich > 0  # every path sees the whole batch
        parts = ([(None, x, y)] if archs is None else [(a, x, y) for a in archs] if whole
                 else list(zip(archs, x.tensor_split(len(archs)), y.tensor_split(len(archs)))))
        loss_sum, correct, teacher = 0.0, 0, None
        for k, (arch, xs, ys) in enumerate(parts):
            share = 1 / len(parts) if whole else len(ys) / len(y)
            with ctx:
                logits = model(xs, arch) if arch is not None else model(xs)
                if teacher is not None:  # in-place distillation: the largest path's predictions as soft targets
                    loss = F.kl_div(F.log_softmax(logits, 1), teacher, reduction="batchmean") * share
                else:
                    loss = F.cross_entropy(logits, ys, label_smoothing=self.cfg.label_smoothing) * share
            if whole and self.cfg.distill and k == 0:
                teacher = F.softmax(logits.detach().float(), 1)
            if self.scaler:
                self.scaler.scale(loss).backward()
            else:
                loss.backward()
            loss_sum += loss.item()
            hits = int((logits.argmax(1) == ys).sum())
            correct += round(hits / len(parts)) if whole else hits  # whole batches: the paths' mean
        if self.scaler:
            self.scaler.unscale_(_Unscale(self.opt))
        grads = [p for p in self.model.parameters() if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(grads, self.cfg.grad_clip)
        if self.scaler and not torch.isfinite(norm):
            self.scaler.update()
            return loss_sum, 0
        if archs is None:
            active = self.full_slices
        elif self.cfg.update == "sliced":
            active = union_slices([self.model.active_slices(a) for a in archs])
        else:
            active = [(n, ...) for n, p in self.model.named_parameters() if p.grad is not None]
        self.opt.step(active, lr)
        if self.scaler:
            self.scaler.update()
        return loss_sum, correct

    # ---- the loop --------------------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        cfg, s = self.cfg, self.state
        self.out_dir.mkdir(parents=True, exist_ok=True)
        metrics = self.out_dir / "metrics.jsonl"
        sampler = random.Random()
        sampler.setstate(_as_random_state(s.sampler))
        if s.torch_rng is None:
            torch.manual_seed(cfg.seed)
        total_steps = cfg.epochs * self.steps_per_epoch
        stop = _DeferredInterrupt()
        try:
            while s.epoch < cfg.epochs:
                self.model.train()
                t0, seen, loss_sum, correct = time.perf_counter(), 0, 0.0, 0
                batches = self._batches(s.epoch)
                for x, y in batches.iter_from(s.batch):
                    archs = self._paths(sampler, s.step) if self.supernet else None
                    loss, ok = self._step(x, y, archs, self.lr_at(s.step))
                    s.batch, s.step = s.batch + 1, s.step + 1
                    s.sampler = sampler.getstate()
                    seen, loss_sum, correct = seen + len(y), loss_sum + loss * len(y), correct + ok
                    if stop_agreed(stop.requested, self.dist.world, self.device):  # Ctrl-C waits for the step to end,
                        stop.agreed = True                                         # on every rank the same step
                        raise KeyboardInterrupt
                    if self.progress:
                        self.progress(f"epoch {s.epoch + 1}/{cfg.epochs} loss {loss_sum / seen:.3f} "
                                      f"acc {correct / seen:.3f} {seen * self.dist.world / (time.perf_counter() - t0):.0f} img/s",
                                      s.step, total_steps)
                dt = time.perf_counter() - t0
                record = {"epoch": s.epoch + 1, "step": s.step, "lr": self.lr_at(s.step - 1),
                          "loss": loss_sum / max(1, seen), "train_acc": correct / max(1, seen),
                          "img_per_s": seen * self.dist.world / max(dt, 1e-9), "seconds": dt, "time": time.time()}
                s.epoch, s.batch = s.epoch + 1, 0
                s.history.append(record)
                self.save()
                if self.dist.main:  # after the checkpoint, from its history: a kill between the two repeats no epoch
                    write_text(metrics, "".join(json.dumps(r) + "\n" for r in s.history))
        except KeyboardInterrupt:
            s.sampler = sampler.getstate()
            self.save()
            if stop.agreed and self.dist.world > 1:  # no rank leaves (and torchrun tears down) before rank 0 has saved
                import torch.distributed as dist

                dist.barrier()
            raise Interrupted(f"training interrupted at epoch {s.epoch + 1}, batch {s.batch}; checkpoint saved in "
                               f"{self.checkpoint_path}: rerun with --resume to continue") from None
        finally:
            stop.restore()
        result = {"epochs": s.epoch, "steps": s.step, "history": s.history, "checkpoint": str(self.checkpoint_path)}
        if self.dist.world > 1:
            result["ranks_in_sync"] = self._ranks_in_sync()
        return result

    def _ranks_in_sync(self) -> bool:
        import torch.distributed as dist

        digest = hashlib.sha256()  # parameters; BN buffers are DDP's to broadcast from rank 0 at each forward
        for p in self.model.parameters():
            digest.update(p.detach().cpu().contiguous().numpy().tobytes())
        mine = digest.hexdigest()
        everyone = [None] * self.dist.world
        dist.all_gather_object(everyone, mine)
        return len(set(everyone)) == 1


def stop_agreed(requested: bool, world: int, device: str = "cpu") -> bool:
    """Whether any rank has been asked to stop (all ranks call it after every step and get the same answer), so
    that under torchrun every rank stops after the same step and rank 0's checkpoint is every rank's state.
    One process: ``requested`` itself."""
    if world <= 1:
        return requested
    import torch.distributed as dist

    flag = torch.tensor([1.0 if requested else 0.0], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item() > 0)


class _DeferredInterrupt:
    """While installed, SIGINT only sets ``requested``; the loop raises KeyboardInterrupt between steps, once
    every rank agrees (``agreed``)."""

    def __init__(self):
        self.requested = self.agreed = False
        self._old = None
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum, frame):
        if self.requested:  # a second Ctrl-C does not wait
            raise KeyboardInterrupt
        self.requested = True

    def restore(self) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


def _grad_scaler():
    """torch.amp.GradScaler("cuda") (torch 2.3+), or torch.cuda.amp's on older torch (JetPack 5 ships 2.0)."""
    if hasattr(torch, "amp") and hasattr(torch.amp, "GradScaler"):
        return torch.amp.GradScaler("cuda")
    return torch.cuda.amp.GradScaler()


class _Unscale:
    """Lets GradScaler.unscale_ see the parameters of SlicedSGD."""

    def __init__(self, opt: SlicedSGD):
        self.param_groups = [{"params": list(opt.params.values())}]
        self.state = {}


def _as_random_state(state):
    """random.Random states come back from torch.load as lists; setstate wants tuples."""
    return random.Random(0).getstate() if state is None else random_state_from_json(state)


# ---- resuming ----------------------------------------------------------------------------------------
CHANGEABLE_ON_RESUME = ("epochs", "workers")  # a longer schedule, and data-loading processes (no effect on results)


# what a run started from other weights takes from them (train_supernet --init, retrain --inherit), not a setting
TAKEN_FROM_INIT = ("dropout", "share", "init", "skip_ramp")


def resume_config(out_dir: str | Path, given: TrainConfig | dict | None = None) -> tuple[TrainConfig, dict[str, Any]]:
    """The config of the run whose checkpoint is in ``out_dir``, and the checkpoint. ``given``: a whole config (a
    library caller's) or the values a user gave (None where a flag was omitted). A resume continues the run as it
    was configured: only ``epochs`` (and ``workers``) may change; any other given value that differs is refused in
    one line, so that a resume never trains on with another batch size, learning rate or subset."""
    ckpt = load_checkpoint(Path(out_dir) / "checkpoint.pt", cached=False)
    saved = ckpt["config"]
    given = given.to_dict() if isinstance(given, TrainConfig) else dict(given or {})
    started_from = ckpt.get("init") or ckpt.get("inherit")
    saved = {**TrainConfig().to_dict(), **saved}  # a run saved before a field existed ran with its default
    for key, value in given.items():
        if started_from and key in TAKEN_FROM_INIT:
            continue
        if value is not None and key not in CHANGEABLE_ON_RESUME and saved.get(key) != value:
            raise HsconasError(f"--{key.replace('_', '-')} {value} differs from the run being resumed ({saved.get(key)}): a "
                               "resume continues that run as it was configured; only --epochs may change")
    known = {f.name for f in fields(TrainConfig)}
    cfg = TrainConfig(**{k: v for k, v in saved.items() if k in known})
    return replace(cfg, **{k: given[k] for k in CHANGEABLE_ON_RESUME if given.get(k) is not None}), ckpt


def _check_resumed_inputs(ckpt: dict[str, Any], data: DataBundle, what: dict[str, Any]) -> None:
    """Refuse to resume a checkpoint on other data, or with another space, subspace, arch or starting point.
    ``what``: name -> (the value given, the checkpoint's), compared where the value was given."""
    saved_data = ckpt.get("data", {}).get("split", {}).get("data_sha256")
    if saved_data and saved_data != data.split["data_sha256"]:
        raise HsconasError(f"the run being resumed trained on other data ({ckpt['data'].get('name')} "
                           f"{saved_data}, given {data.name} {data.split['data_sha256']}); resume it on its own data")
    for name, (given, saved) in what.items():
        if given is not None and given != saved:
            raise HsconasError(f"the run being resumed has another {name}; resume it without --{name}, or train anew "
                               "with another --out")


def describe_resume(ckpt: dict[str, Any], cfg: TrainConfig) -> str:
    """One line for the user: what is resumed, from where, with which settings."""
    st = ckpt["state"]
    return (f"resuming at epoch {st['epoch'] + 1}/{cfg.epochs}, batch {st['batch']}, with the run's own config: "
            f"batch {cfg.batch_size}, lr {cfg.lr:g}, {cfg.limit or 'all'} images per epoch, seed {cfg.seed}")


# ---- the library entry points ----------------------------------------------------------------------
def _prepare_out(out_dir: Path, resume: bool) -> None:
    ckpt = out_dir / "checkpoint.pt"
    if ckpt.exists() and not resume:
        raise HsconasError(f"{ckpt} exists: pass --resume to continue it, or choose another --out")
    if resume and not ckpt.exists():
        raise HsconasError(f"nothing to resume: {ckpt} does not exist")


def is_main_process() -> bool:
    """Whether this process writes the run's files: the only one, or rank 0 under torchrun."""
    return int(os.environ.get("RANK", "0")) == 0


def _locked(out_dir: Path, what: str):
    """The run folder's lock (``fileio.folder_lock``), taken by the process that writes it: rank 0 under torchrun."""
    return folder_lock(out_dir, what) if is_main_process() else contextlib.nullcontext()


def supernet_space(data_spec: str, space: SearchSpace | str | None, subspace: Subspace | str | Path | None,
                   resumed: Path | None = None) -> tuple[SearchSpace, Subspace | None]:
    """The space a supernet trains in, and its subspace (None: the whole space). ``subspace`` may be a shrunk-space
    file, which names its space; ``space`` omitted: the subspace's, else (``resumed``: a run folder being
    resumed) the checkpoint's, else layout A for the data."""
    if isinstance(subspace, (str, Path)):
        sub = load_subspace(subspace)
        if space is not None and get_space(space).fingerprint != sub.space.fingerprint:
            raise HsconasError(f"{subspace} is a subspace of {sub.space.name}, not of {get_space(space).name}")
        return sub.space, sub
    if subspace is not None:
        return (subspace.space if space is None else get_space(space)), subspace
    if space is None and resumed is not None:
        ckpt = load_checkpoint(resumed / "checkpoint.pt")
        return get_space(ckpt["space"]), Subspace.from_dict(ckpt["subspace"]) if ckpt.get("subspace") else None
    return get_space(space or DEFAULT_SPACE_FOR_DATA[parse_data(data_spec)[0]]), None


def train_supernet(
    data_spec: str,
    space: SearchSpace | str | None = None,
    out_dir: str | Path = "runs/supernet",
    *,
    cfg: TrainConfig | dict | None = None,
    subspace: Subspace | str | Path | None = None,
    init: str | Path | None = None,
    resume: bool = False,
    progress: ProgressFn | None = None,
    data: DataBundle | None = None,
    notice: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train (or fine-tune from ``init``) a supernet; returns the run summary. Usable without the CLI.

    ``space`` and ``subspace``: see ``supernet_space``. ``cfg``: a whole config, or the values a user gave (None
    where omitted) over the data's preset. ``resume``: continue the checkpoint in ``out_dir`` as it was configured
    (``resume_config``: only epochs may change); ``notice`` hears what is resumed, once every check has passed. The
    run folder is locked while it trains."""
    out_dir = Path(out_dir)
    _prepare_out(out_dir, resume)
    space, subspace = supernet_space(data_spec, space, subspace, out_dir if resume else None)
    resumed = resume_config(out_dir, cfg) if resume else None
    data = data or load_data(data_spec)
    check_data_fits(space, data)
    if resumed:
        with _locked(out_dir, "supernet training"):
            return _resume_supernet(space, subspace, init, data, out_dir, *resumed, progress, notice)
    cfg = cfg if isinstance(cfg, TrainConfig) else preset("supernet", data.name, **(cfg or {}))
    sub = subspace or space.full()
    if sub.space.fingerprint != space.fingerprint:
        raise HsconasError(f"the subspace belongs to space {sub.space.name}, not {space.name}")
    net, cfg = _fresh_supernet(space, cfg, init)
    with _locked(out_dir, "supernet training"):
        trainer = Trainer(net, data, cfg, out_dir, subspace=sub, progress=progress,
                          meta={"init": str(init) if init else None})
        if trainer.dist.main:
            write_json(out_dir / "config.json", {"kind": "supernet", "space": space.to_dict(), "data": data.describe(),
                                                 "config": cfg.to_dict(), "subspace": sub.to_dict(),
                                                 "init": str(init) if init else None})
        return trainer.fit()


def _fresh_supernet(space: SearchSpace, cfg: TrainConfig, init: str | Path | None) -> tuple[Supernet, TrainConfig]:
    """The supernet a training starts from: ``init``'s weights (fine-tuning keeps its parametrisation, and skip is
    no longer new to it: no ramp), or fresh seeded ones."""
    if init:
        net, _ = load_supernet(init)
        if net.space.fingerprint != space.fingerprint:
            raise HsconasError(f"{init} is a supernet of space {net.space.name}, not {space.name}")
        return net, replace(cfg, dropout=net.dropout, share=net.share, init=net.init, skip_ramp=0.0)
    torch.manual_seed(cfg.seed)
    check_recipe(cfg)
    return Supernet(space, cfg.dropout, share=cfg.share, init=cfg.init), cfg


def check_recipe(cfg: TrainConfig) -> None:
    """Refuse a supernet recipe whose parts do not go together, in one line."""
    if cfg.distill and not cfg.sandwich:
        raise HsconasError("in-place distillation needs the sandwich rule (its teacher is the largest path): set sandwich")
    if cfg.sandwich and cfg.paths_per_step > 1:
        raise HsconasError("the sandwich rule sets the paths of a step itself: leave paths_per_step at 1")
    if cfg.path_band is not None:
        lo, hi = cfg.path_band
        if not 0 <= lo < hi <= 100:
            raise HsconasError(f"path_band must be two percentiles 0 <= lo < hi <= 100, not {list(cfg.path_band)}")


def _resume_supernet(space, subspace, init, data, out_dir, cfg, ckpt, progress, notice) -> dict[str, Any]:
    """Continue the supernet run in ``out_dir`` with its own config, subspace and starting point (refused where
    the data, space, subspace or ``init`` given differ from the checkpoint's)."""
    _check_resumed_inputs(ckpt, data, {"space": (space.fingerprint, get_space(ckpt["space"]).fingerprint),
                                       "subspace": (subspace.to_dict() if subspace else None, ckpt["subspace"]),
                                       "init": (str(init) if init else None, ckpt.get("init"))})
    sub = Subspace.from_dict(ckpt["subspace"]) if ckpt.get("subspace") else space.full()
    net = Supernet(space, cfg.dropout, share=cfg.share, init=cfg.init)
    trainer = Trainer(net, data, cfg, out_dir, subspace=sub, progress=progress, meta={"init": ckpt.get("init")})
    trainer.load(trainer.checkpoint_path)
    if notice:
        notice(describe_resume(ckpt, cfg))
    return trainer.fit()


def retrain(
    data_spec: str,
    space: SearchSpace,
    arch: Arch,
    out_dir: str | Path,
    *,
    cfg: TrainConfig | dict | None = None,
    inherit: str | Path | None = None,
    resume: bool = False,
    progress: ProgressFn | None = None,
    data: DataBundle | None = None,
    notice: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train an HSCoNet from scratch, or fine-tune it from weights inherited from a supernet; evaluate on test.
    ``cfg``, ``resume`` and ``notice``: as ``train_supernet``'s. The run folder is locked while it trains."""
    out_dir = Path(out_dir)
    _prepare_out(out_dir, resume)
    data = data or load_data(data_spec)
    check_data_fits(space, data)
    if not data.in_memory and data.test_folder is None:  # refused now, not after the whole retraining
        raise HsconasError(f"{data.folder} has no val/ beside train/: retraining scores the network on it; add "
                           "PATH/val/<class>/ images")
    arch = validate_arch(space, arch)
    resumed = resume_config(out_dir, cfg) if resume else None
    net, cfg, inherit = _hsconet(space, arch, data, cfg, inherit, resumed, notice)
    with _locked(out_dir, "HSCoNet training"):
        trainer = Trainer(net, data, cfg, out_dir, progress=progress,
                          meta={"inherit": str(inherit) if inherit else None, "arch_json": arch_to_json(space, arch)})
        if resume:
            trainer.load(trainer.checkpoint_path)
        elif trainer.dist.main:
            write_json(out_dir / "config.json", {"kind": "hsconet", "arch": arch_to_json(space, arch), "data": data.describe(),
                                                 "config": cfg.to_dict(), "inherit": str(inherit) if inherit else None})
        result = trainer.fit()
        if trainer.dist.main:
            _score(trainer, data, space, arch, result)
        return result


def _score(trainer: "Trainer", data: DataBundle, space: SearchSpace, arch: Arch, result: dict) -> None:
    """A finished retraining's test and validation top-1, into ``result``, its checkpoint and result.json."""
    model = trainer.model.to("cpu", memory_format=torch.contiguous_format).eval()
    result["test_top1"] = top1(model, data.loader("test", 500))
    result["val_top1"] = top1(model, data.loader("val", 500))
    add_to_checkpoint(trainer.checkpoint_path, test_top1=result["test_top1"], val_top1=result["val_top1"])
    write_json(trainer.out_dir / "result.json", {"kind": "hsconet-training", "arch": arch_to_json(space, arch),
                                                 **{k: v for k, v in result.items() if k != "history"}})


def _continued_hsconet(space: SearchSpace, arch: Arch, cfg: TrainConfig, path: str | Path) -> nn.Module:
    """``arch`` with the weights of an earlier retraining of the same arch (successive halving's survivors go on
    from their short fine-tune); one line where the checkpoint holds another network."""
    ckpt = load_checkpoint(path)
    if ckpt.get("arch") != arch.to_list() or checkpoint_space(path).fingerprint != space.fingerprint:
        raise HsconasError(f"{path} holds another network than the one to train; inherit from a supernet or from "
                           "this arch's own checkpoint")
    net = HSCoNet(space, arch, cfg.dropout)
    load_weights(net, ckpt["model"], path)
    return net


def _hsconet(space, arch, data, cfg, inherit, resumed, notice) -> tuple[nn.Module, TrainConfig, str | None]:
    """The network a retraining starts from, its config and the supernet it inherits from: the resumed run's own
    (``resumed``: its config and checkpoint), weights inherited from ``inherit``, or fresh seeded weights."""
    if resumed:  # the run as it was configured; only epochs may change
        cfg, ckpt = resumed
        _check_resumed_inputs(ckpt, data, {"arch": (arch.to_list(), ckpt.get("arch")),
                                           "inherit": (str(inherit) if inherit else None, ckpt.get("inherit"))})
        if notice:
            notice(describe_resume(ckpt, cfg))
        return HSCoNet(space, arch, cfg.dropout), cfg, ckpt.get("inherit")
    cfg = cfg if isinstance(cfg, TrainConfig) else preset("retrain", data.name, **(cfg or {}))
    if inherit and load_checkpoint(inherit).get("kind") == "hsconet":  # this network's own weights, trained before
        return _continued_hsconet(space, arch, cfg, inherit), cfg, inherit
    if inherit:
        supernet, _ = load_supernet(inherit)
        if supernet.space.fingerprint != space.fingerprint:
            raise HsconasError(f"{inherit} is a supernet of space {supernet.space.name}, not {space.name}")
        return build_subnet(supernet, arch), replace(cfg, dropout=supernet.dropout), inherit  # the network's own, for a resume
    torch.manual_seed(cfg.seed)
    return HSCoNet(space, arch, cfg.dropout), cfg, inherit
