"""Plots and the run report: the paper's figures drawn from what each stage wrote.

* Fig. 2: latency against FLOPs and parameters (the profile's measured archs);
* Fig. 3: predicted (LUT + B) against measured latency on the held-out archs;
* Fig. 5-like: Q per op per layer of progressive shrinking;
* Fig. 6: best F per generation and the latencies the search explored (drawn by ``search.plot_search``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    from hsconas_cli.fileio import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    _plt().close(fig)
    return path


def plot_predictor(profile, stem: Path) -> tuple[Path, Path]:
    """Fig. 3 (``stem-fig3.png``) and Fig. 2 (``stem-fig2.png``) of a calibrated profile."""
    from hsconas_cli.space import Arch
    from hsconas_cli.supernet import arch_cost

    plt = _plt()
    d = profile.doc
    v = d["validation"]
    measured, pred = np.array(v["measured_ms"]), np.array(v["predicted_ms"])
    fig, ax = plt.subplots(figsize=(4.5, 4.2))
    ax.scatter(measured, pred, s=14)
    lo, hi = min(measured.min(), pred.min()), max(measured.max(), pred.max())
    ax.plot([lo, hi], [lo, hi], "k--", lw=1)
    ax.fill_between([lo, hi], [lo * 0.9, hi * 0.9], [lo * 1.1, hi * 1.1], color="grey", alpha=0.15, label="within 10%")
    ax.set_title(f"{profile.name}\nRMSE {v['rmse_ms']:.3f} ms, noise floor {v['noise_floor_ms']:.3f} ms", fontsize=9)
    ax.set_xlabel("measured latency (ms)")
    ax.set_ylabel("predicted latency, LUT + B (ms)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig3 = _save(fig, Path(f"{stem}-fig3.png"))

    archs = [Arch.from_list(a) for a in d["bias"]["archs"] + v["arch_list"]]
    lat = np.concatenate([d["bias"]["measured_ms"], measured])
    costs = [arch_cost(profile.space, a) for a in archs]
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.6))
    for ax, key, label in ((axes[0], "flops", "MFLOPs"), (axes[1], "params", "M parameters")):
        ax.scatter(np.array([c[key] for c in costs]) / 1e6, lat, s=10)
        ax.set_xlabel(label)
        ax.set_ylabel("measured latency (ms)")
    fig.suptitle(f"{profile.name}: latency against FLOPs and parameters (paper Fig. 2)", fontsize=9)
    fig.tight_layout()
    return _save(fig, Path(f"{stem}-fig2.png")), fig3


def plot_q_scores(shrunk: dict, path: Path) -> Path:
    """Q = mean F per op per layer, in the order the layers were scored."""
    plt = _plt()
    layers = [(st["stage"], layer, scores) for st in shrunk["stages"] for layer, scores in st["scores"].items()]
    ops = ["shuffle3", "shuffle5", "shuffle7", "xception", "skip"]
    fig, ax = plt.subplots(figsize=(8, 3.4))
    width = 0.16
    for j, op in enumerate(ops):
        xs = [i + (j - 2) * width for i, (_, _, sc) in enumerate(layers) if op in sc]
        ys = [sc[op]["Q"] for _, _, sc in layers if op in sc]
        ax.bar(xs, ys, width, label=op)
    ax.set_xticks(range(len(layers)))
    ax.set_xticklabels([f"L{layer}" for _, layer, _ in layers])
    qs = [v["Q"] for _, _, sc in layers for v in sc.values()]
    pad = 0.1 * (max(qs) - min(qs) + 1e-9)
    ax.set_ylim(min(qs) - pad, max(qs) + pad)
    ax.set_ylabel("Q = mean F")
    ax.set_title("progressive space shrinking: Q per op per layer (in scoring order)")
    ax.legend(fontsize=7, ncol=5)
    fig.tight_layout()
    return _save(fig, path)


def plot_training(history: list[dict], path: Path, title: str) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    ax.plot([h["epoch"] for h in history], [100 * h["train_acc"] for h in history], marker="o", label="train accuracy (sampled paths)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("%")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)
