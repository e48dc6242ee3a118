"""The run report (``write_report``: report.md of ``hsconas run``, written at its last stage) and its plots: the
paper's figures drawn from what each stage wrote.

* Fig. 2: latency against FLOPs and parameters (the profile's measured archs);
* Fig. 3: predicted (LUT + B) against measured latency on the held-out archs;
* Fig. 5-like: Q per op per layer of progressive shrinking;
* Fig. 6: best F per generation and the latencies the search explored (drawn by ``search.plot_search``);
* the selection's Pareto chart: the re-scored candidates and baselines against latency, the winner marked.
"""

from __future__ import annotations

import json
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
        errs = [2 * (sc[op].get("se") or 0.0) for _, _, sc in layers if op in sc]
        ax.bar(xs, ys, width, yerr=errs, capsize=2, label=op)
    ax.set_xticks(range(len(layers)))
    ax.set_xticklabels([f"L{layer}" for _, layer, _ in layers])
    qs = [v["Q"] + sign * 2 * (v.get("se") or 0.0) for _, _, sc in layers for v in sc.values() for sign in (-1, 1)] or [0.0]
    pad = 0.1 * (max(qs) - min(qs) + 1e-9)
    ax.set_ylim(min(qs) - pad, max(qs) + pad)
    ax.set_ylabel("Q = mean F (bars: 2 SE)")
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


def latency_verdict(lat: dict, target_ms: float) -> str:
    """One line: the measured latency with its uncertainty and status, against the prediction and T."""
    v = lat.get("verdict") or {}
    u = f" +-{v['uncertainty_pct']:.1f}%" if v else ""
    line = (f"measured **{lat['measured_ms']:.4f} ms**{u}, predicted {lat['predicted_ms']:.4f} ms, target {target_ms:.4f} ms "
            f"({100 * (lat['measured_ms'] / target_ms - 1):+.1f}% vs T)")
    return line + (f"; {v['note']}" if v else "")


def shrink_section(shrink: dict) -> list[str]:
    """The shrink stage in report.md: why it was skipped, or the Q chart and each layer's decision with its margin."""
    if shrink.get("skipped"):
        return [f"Skipped: {shrink['skipped']}.", ""]
    return ["![Q scores](figures/shrink-q-scores.png)", "",
            "Each layer's op is fixed only where the best Q beats the second by more than 2 standard errors of their "
            "difference, on the same sampled archs; otherwise the layer stays free.", "",
            "| layer | decision |", "|---|---|",
            *[f"| {k} | {v} |" for k, v in shrink.get("decisions", {}).items()], ""]


def search_value_section(doc: dict | None) -> list[str]:
    """What the search bought, as a table: the winner beside random archs at its latency and uniform scaling."""
    if not doc:
        return []
    from hsconas_cli.search_value import describe

    r = doc["random"]

    def row(name, acc, se, ms, ld):
        lead = f"{100 * ld['lead']:+.2f} +-{100 * ld['se']:.2f} ({'beyond' if ld['beyond_noise'] else 'within'} the noise)" if ld else ""
        return f"| {name} | {100 * acc:.2f}% +-{100 * se:.2f} | {ms} | {lead} |"

    lines = ["## What the search bought", "",
             f"Inherited accuracy on {doc['val_images']} validation images (+- one standard error); the lead is the winner's "
             "minus each baseline's, beyond the noise where it exceeds two standard errors.", "",
             "| network | accuracy | predicted ms | winner's lead (points) |", "|---|---|---|---|",
             row("searched winner", doc["acc"], doc["acc_se"], f"{doc['predicted_ms']:.4f}", None)]
    if r["n"] >= 2:
        lines.append(row(f"median of {r['n']} random archs within +-{100 * r['band']:.0f}% of its latency", r["median"], r["se"],
                         f"{doc['predicted_ms']:.4f} +-{100 * r['band']:.0f}%", r["lead"]))
    for name, label in (("shufflenetv2", "ShuffleNetV2 (shuffle3) at one factor"), ("winner-ops", "the winner's ops at one factor")):
        u = doc[name]
        lines.append(row(f"{label}, c = {u['c']:g}", u["acc"], u["se"], f"{u['predicted_ms']:.4f}", u["lead"]))
    return lines + ["", describe(doc)[-1], ""]


def plot_selection(sel: dict, loop: dict | None, target_ms: float, path: Path) -> Path:
    """The selection's Pareto chart: every re-scored candidate and uniform baseline, held-out accuracy (+- one
    SE) against predicted latency, and measured latency where the closed loop measured it; T drawn, the winner
    marked."""
    plt = _plt()
    measured = {json.dumps(c["arch"]): c["measured_ms"] for c in (loop or {}).get("candidates", [])}
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for kind, color, marker in (("searched", "tab:blue", "o"), ("baseline", "tab:orange", "s")):
        pts = [c for c in sel["candidates"] if (c["baseline"] is not None) == (kind == "baseline")]
        if pts:
            ax.errorbar([c["lat_ms"] for c in pts], [100 * c["acc"] for c in pts], yerr=[100 * c["se"] for c in pts],
                        fmt=marker, color=color, ms=5, capsize=2, label=f"{kind} (predicted)")
    m = [(measured[json.dumps(c["arch"])], 100 * c["acc"]) for c in sel["candidates"] if json.dumps(c["arch"]) in measured]
    if m:
        ax.scatter(*zip(*m), facecolors="none", edgecolors="black", s=40, label="measured here")
    w = sel["candidates"][sel["winner"]]
    ax.scatter([w["lat_ms"]], [100 * w["acc"]], marker="*", s=220, color="red", zorder=5, label="winner")
    ax.axvline(target_ms, color="red", linestyle="--", lw=1, label=f"T = {target_ms:.3g} ms")
    ax.set_xlabel("latency (ms)")
    ax.set_ylabel(f"top-1 on {sel['images']:,} held-out images (%)")
    ax.set_title("the re-scored candidates")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def selection_section(sel: dict | None) -> list[str]:
    """How the winner was chosen: the re-scored candidates, the rule, the Pareto chart."""
    if not sel:
        return []
    from hsconas_cli.selection import describe

    lines = ["## How the winner was chosen", "", *describe(sel)[:2], "",
             "![re-scored candidates](figures/selection-pareto.png)", "",
             "| network | held-out accuracy | screened | predicted ms | vs the winner (points, paired SE) |", "|---|---|---|---|---|"]
    for i, c in enumerate(sel["candidates"]):
        name = ("**winner**: " if i == sel["winner"] else "") + (c["baseline"] or "searched")
        vs = "" if i == sel["winner"] else f"{100 * c['vs_winner']['diff']:+.2f} +-{100 * c['vs_winner']['paired_se']:.2f}"
        lines.append(f"| {name} | {100 * c['acc']:.2f}% +-{100 * c['se']:.2f} | {100 * c['screen_acc']:.2f}% | {c['lat_ms']:.4f} | {vs} |")
    return lines + [""]


def write_report(out: Path, run: dict, profile) -> Path:
    """``out/report.md`` of a finished ``hsconas run`` (``run``: its run.json record): every stage's figures, and
    the plots drawn from what the stages wrote."""
    import datetime as _dt

    from hsconas_cli import __version__
    from hsconas_cli.fileio import write_text

    st = {k: v.get("result", {}) for k, v in run["stages"].items()}
    _plots(out, st, profile)
    s = run["settings"]
    lines = [
        "# hsconas run report",
        "",
        f"Written by hsconas {__version__} on {_dt.datetime.now(_dt.timezone.utc).isoformat(timespec='seconds')}. Device `{s['device']['name']}` "
        f"(batch {s['device']['batch_size']}, {s['device']['backend']}), space `{s['space']['name']}`, data `{s['data']}`, "
        f"preset `{s['preset']}`, target `{s['latency']}`.",
        "",
        *summary_section(st),
        "",
        *selection_section(st["search"].get("selection")),
        *closed_loop_section(st["search"].get("closed_loop")),
        "",
        *search_value_section(st["search"].get("search_value")),
        *figures_section(st),
        "## Stage times",
        "",
        "| stage | seconds | runs |",
        "|---|---|---|",
    ]
    lines += [f"| {k} | {v.get('seconds', 0):.0f} | {v.get('runs', 0)} |" for k, v in run["stages"].items() if k != "report"]
    path = out / "report.md"
    write_text(path, "\n".join(lines) + "\n")
    return path


def _plots(out: Path, st: dict, profile) -> None:
    """The report's figures, drawn from what the stages wrote (the search drew its own Fig. 6)."""
    from hsconas_cli.fileio import read_json

    figs = out / "figures"
    figs.mkdir(parents=True, exist_ok=True)
    plot_predictor(profile, figs / "predictor")
    if st["shrink"].get("file"):
        plot_q_scores(read_json(st["shrink"]["file"], "shrunk space"), figs / "shrink-q-scores.png")
    plot_training(st["supernet"]["history"], figs / "supernet-training.png", "supernet training")
    if st["search"].get("selection"):
        plot_selection(st["search"]["selection"], st["search"].get("closed_loop"), st["profile"]["target"]["target_ms"],
                       figs / "selection-pareto.png")


def summary_section(st: dict) -> list[str]:
    """The summary table: one row per stage's figure, the latency measured here, and the profile check."""
    from exporters import FORMATS

    v, t = st["profile"]["validation"], st["profile"]["target"]
    fmt = FORMATS[st["export"].get("format", "onnx")]
    shrunk = st["shrink"].get("skipped") or "space " + " -> ".join(x["distinct_text"] for x in st["shrink"]["sizes"]) + " distinct networks"
    lines = [
        "## Summary",
        "",
        "| stage | figure |",
        "|---|---|",
        f"| target T | {t['target_ms']:.4f} ms ({100 * t['position']:.0f}% of the reachable {t['reachable_ms'][0]:.4f} .. {t['reachable_ms'][1]:.4f} ms) |",
        f"| profile | {st['profile']['name']} ({'reused' if st['profile']['reused'] else 'calibrated'}, "
        f"{st['profile']['calibration_seconds']} s); held-out RMSE {v['rmse_ms']:.4f} ms vs noise floor {v['noise_floor_ms']:.4f} ms, "
        f"within 10%: {v['within_10_pct']:.0f}% |",
        f"| supernet | {len(st['supernet']['history'])} epochs; last train accuracy on sampled paths "
        f"{100 * st['supernet']['history'][-1]['train_acc']:.1f}% |",
        f"| shrinking | {shrunk} |",
        f"| search | {st['search']['evaluated']} archs evaluated; winner accuracy {100 * st['search']['acc']:.2f}% "
        f"(inherited weights), predicted {st['search']['predicted_ms']:.4f} ms ({100 * (st['search']['predicted_ms'] / t['target_ms'] - 1):+.1f}% vs T) |",
        f"| fine-tuned winner | test top-1 **{100 * st['finetune']['test_top1']:.2f}%** (validation {100 * st['finetune']['val_top1']:.2f}%) |",
        f"| exported {fmt.title} | `{st['export']['path']}`; {fmt.checked_with} vs PyTorch max abs diff {st['export']['max_abs_diff']:.1e} |",
    ]
    lat = st["export"].get("latency") or {}
    if lat:
        lines.append(f"| latency here | {latency_verdict(lat, t['target_ms'])} |")
    check = st["profile"].get("check")
    if check:
        lines.append(f"| profile check | {check['check']['description']}; {check['action']} ({check['used']}) |")
    return lines


def closed_loop_section(loop: dict | None) -> list[str]:
    """The closed loop's candidates, measured on the device, and which one the user got."""
    from hsconas_cli.closed_loop import CANDIDATE_COLUMNS, candidate_rows

    if not loop:
        return []
    return ["", "## Closed loop: the best candidates measured on the device", "", loop["reason"] + ".", "",
            "| " + " | ".join(CANDIDATE_COLUMNS) + " |", "|" + "---|" * len(CANDIDATE_COLUMNS),
            *("| " + " | ".join(row) + " |" for row in candidate_rows(loop))]


def figures_section(st: dict) -> list[str]:
    """The paper's figures, each under its stage."""
    search_fig = Path(st["search"]["result"]).parent / "fig6-search.png"
    return [
        "## Latency predictor (paper Fig. 2 and 3)",
        "",
        "![latency vs FLOPs and parameters](figures/predictor-fig2.png)",
        "![predicted vs measured](figures/predictor-fig3.png)",
        "",
        "## Supernet training",
        "",
        "![supernet training](figures/supernet-training.png)",
        "",
        "## Progressive space shrinking (Q per op per layer)",
        "",
        *shrink_section(st["shrink"]),
        "## Evolutionary search (paper Fig. 6)",
        "",
        f"![search](search/{search_fig.name})",
        "",
    ]
