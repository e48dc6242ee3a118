"""Everything the command line prints: tables and summary lines on stdout, notes and errors on stderr, JSON for
--json; each function takes what a library call returned."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from hsconas_cli.measure import describe_measurement
from hsconas_cli.ui import stderr as err

# Wide enough for the tables when the output is a pipe or a log file (rich falls back to 80 columns).
out = Console(width=None if sys.stdout.isatty() else 160)


def print_json(doc) -> None:
    sys.stdout.write(json.dumps(doc, indent=2) + "\n")


def note(message: str) -> None:
    """A line of what the library is doing (a drift check, a resume), dimmed on stderr, never wrapped."""
    err.print(f"[dim]{message}[/dim]", highlight=False, soft_wrap=True)


def failure(message: str) -> None:
    """The one line of a failure, on stderr, never wrapped."""
    err.print(message, markup=False, highlight=False, soft_wrap=True)


def _table(title: str, columns, rows, right=()) -> None:
    t = Table(title=title)
    for col in columns:
        t.add_column(col, justify="right" if col in right else "left")
    for row in rows:
        t.add_row(*row)
    out.print(t)


def space(sp, summary: dict) -> None:
    from hsconas_cli.space import OP_DESCRIPTIONS, SPACES, format_count

    c, f, p = summary["counts"], summary["flops"], summary["params"]
    out.print(f"[bold]{sp.name}[/bold]: {sp.description or 'custom space'}  (fingerprint {sp.fingerprint})")
    out.print(f"input {sp.input_size}x{sp.input_size}x{sp.in_channels}, {sp.num_classes} classes; stem 3x3 -> "
              f"{sp.stem_channels} (stride {sp.stem_stride}); head 1x1 -> {sp.head_channels}, pool, dropout, linear")
    _table("choice layers", ("layer", "stage", "input", "in -> out", "stride", "ops", "mid channels for c = 0.1 .. 1.0"),
           [(str(r["layer"]), str(r["stage"]), r["input"], f"{r['in_channels']} -> {r['out_channels']}", str(r["stride"]),
             str(len(r["ops"])), " ".join(map(str, r["mids"]))) for r in summary["layers"]])
    out.print("ops: " + "; ".join(f"{k} = {v}" for k, v in OP_DESCRIPTIONS.items() if k in sp.ops) + "\n"
              f"distinct architectures: [bold]{format_count(c['distinct'])}[/bold] (skip carries no factor; factors that "
              f"round to the same width count once)\ngene strings (op, c) per layer: {format_count(c['gene_strings'])}\n"
              f"the paper's count, 5^20 x 10^20: {format_count(c['paper'])}\nFLOPs from {f['min'] / 1e6:.1f} M to "
              f"{f['max'] / 1e6:.1f} M; parameters from {p['min'] / 1e6:.2f} M to {p['max'] / 1e6:.2f} M\n"
              "presets: " + ", ".join(SPACES))


def arch(path, space_name: str, rows: list[dict], totals: dict) -> None:
    _table(f"{path} ({space_name})", ("layer", "stage", "op", "c", "mid", "in -> out", "stride", "input", "MFLOPs", "params"),
           [(str(r["layer"]), str(r["stage"]), r["op"], "-" if r["c"] is None else f"{r['c']:.1f}",
             "-" if r["mid"] is None else str(r["mid"]), r["channels"], str(r["stride"]), r["input"],
             f"{r['flops'] / 1e6:.2f}", f"{r['params']:,}") for r in rows], right=("MFLOPs", "params", "mid"))
    out.print(f"total: {totals['flops'] / 1e6:.2f} MFLOPs (stem {totals['stem_flops'] / 1e6:.2f}, head "
              f"{totals['head_flops'] / 1e6:.2f}), {totals['params']:,} parameters")


def profile(s: dict, protocol: dict | None = None) -> None:
    v, m = s["validation"], s["model"]
    out.print(f"[bold]{s['profile']}[/bold]  ({s['path']})")
    out.print(f"device {s['device']['name']}: batch {s['device']['batch_size']}, backend {s['backend']['name']} "
              f"{s['backend']['options']}, machine {s['machine']}" + (f", GPU {s['gpu']}" if s.get("gpu") else "")
              + (f", power mode {s['power_mode']}" if s.get("power_mode") else ""))
    out.print(f"{s['entries']} LUT entries, stem + head {s['fixed_ms']:.4f} ms, model {m['kind']}: {m['description']}; "
              f"reachable {s['reachable_ms'][0]:.3f} .. {s['reachable_ms'][1]:.3f} ms; calibrated in {s['calibration_seconds']} s")
    if v.get("archs"):
        out.print(f"held-out ({v['archs']} archs, mean {v['mean_measured_ms']:.3f} ms): RMSE {v['rmse_ms']:.4f} ms, "
                  f"MAPE {v['mape_pct']:.1f}%, within 5% {v['within_5_pct']:.0f}%, within 10% {v['within_10_pct']:.0f}%; "
                  f"noise floor {v['noise_floor_ms']:.4f} ms ({v['noise_floor_pct']:.1f}%)")
    if t := s.get("transfer"):
        rho, src = (lambda x: "n/a" if x is None else f"{x:.3f}"), t["source_as_is"]  # noqa: E731
        out.print(f"transferred from {t['from']} with {t['networks']} {t['design']} networks, mapping {t['mapping']}: held-out "
                  f"Spearman {rho(t['candidates'][t['mapping']]['spearman'])}; the source as it is: RMSE {src['rmse_ms']:.4f} "
                  f"ms, within 10% {src['within_10_pct']:.0f}%, Spearman {rho(src['spearman'])}")
    if protocol:
        out.print(f"protocol: {protocol['statistic']}")


def profiles(doc: dict) -> None:
    out.print(f"device presets in {doc['root']}: {', '.join(doc['presets']) or 'none'}")

    def row(r):
        ok = r.get("ok")
        f = lambda k, fmt: (fmt % r[k]) if ok and r.get(k) is not None else "-"  # noqa: E731
        return (r["device"], r["space"], r["version"], (r.get("created") or "-")[:19], f("mean_ms", "%.3f"), f("rmse_ms", "%.4f"),
                f("noise_floor_ms", "%.4f"), f("within_10_pct", "%.0f%%"), "ok" if ok else f"[red]{r.get('error')}[/red]")

    _table("calibrated profiles", ("device", "space", "version", "created", "mean ms", "RMSE ms", "noise ms", "within 10%",
                                   "status"), [row(r) for r in doc["profiles"]])


def validated(rows: list[dict]) -> None:
    for r in rows:
        out.print(f"{r['path']}: " + ("ok" if r["ok"] else f"[red]{r['error']}[/red]"))


def drift(res, device: str, space_name: str) -> None:
    _table(f"{res.profile} measured again here", ("stored ms", "now ms", "drift", "status"),
           [(f"{r['stored_ms']:.4f}", f"{r['now_ms']:.4f}", f"{r['drift_pct']:+.1f}%", r["status"]) for r in res.archs])
    out.print(f"{res.describe()}\n({res.identity})")
    if res.outcome in ("uniform", "changed"):
        out.print(f"act on it: hsconas profiles check {device} --space {space_name} --fix "
                  f"({'writes a rescaled version' if res.outcome == 'uniform' else 'recalibrates'}); run, search and shrink do "
                  "this by themselves")


def refit(new, summary: dict) -> None:
    for kind, f in summary["model"]["held_out"].items():
        out.print(f"{kind}: RMSE {f['rmse_ms']:.4f} ms on the held-out archs' first pass, the selection set "
                  f"({f['rmse_over_floor']:.2f} x the noise floor), MAPE {f['mape_pct']:.1f}%")
    v = new.validation
    out.print(f"chosen {summary['model']['kind']}: RMSE {v['rmse_ms']:.4f} ms on their second pass, which the choice did not see "
              f"({v['rmse_over_floor']:.2f} x the noise floor)")
    out.print(f"wrote {new.name} ({new.path}): {new.describe_model()}")


def prediction(arch_path, doc: dict, genes) -> None:
    _table(f"{arch_path} on {doc['profile']}", ("layer", "op", "c", "ms"),
           [(str(i + 1), op, "-" if c is None else f"{c:.1f}", f"{ms:.4f}") for i, ((op, c), ms) in enumerate(zip(genes, doc["layers_ms"]))],
           right=("ms",))
    formula, _, ms = doc["formula"].rpartition(" = ")
    out.print(f"{formula} = [bold]{ms}[/bold]")


def measurement(arch_path, prof, res: dict) -> None:
    out.print(f"{arch_path} on {prof.name}: " + describe_measurement(res))
    if res["reference_now_ms"] is not None:
        out.print(f"(measured against the profile's reference network: {res['reference_profile_ms']:.4f} ms at calibration, "
                  f"{res['reference_now_ms']:.4f} ms now, {res['reference_drift_pct']:+.1f}%; a plain median of runs now gives "
                  f"{res['raw_median_ms']:.4f} ms; hsconas profiles check {prof.device.name} --space {prof.space.name} tells whether "
                  "the profile still holds)")


def trained(res: dict) -> None:
    """A supernet's training, or an HSCoNet's (which has a test top-1)."""
    if "test_top1" in res:
        return out.print(f"trained {res['epochs']} epochs: test top-1 [bold]{100 * res['test_top1']:.2f}%[/bold] "
                         f"(validation {100 * res['val_top1']:.2f}%); checkpoint {res['checkpoint']}")
    last = res["history"][-1] if res["history"] else {}
    out.print(f"trained {res['epochs']} epochs ({res['steps']} steps): loss {last.get('loss', float('nan')):.3f}, "
              f"train acc {last.get('train_acc', float('nan')):.3f}, {last.get('img_per_s', 0):.0f} img/s; "
              f"checkpoint {res['checkpoint']}")


def shrunk(doc: dict, out_dir: Path, describe_decision) -> None:
    t = doc["target"]
    out.print(f"target T = {t['target_ms']:.4f} ms on {doc['profile']} (reachable {t['reachable_ms'][0]:.4f} .. "
              f"{t['reachable_ms'][1]:.4f} ms; T at {100 * t['position']:.0f}% of that range)")
    rows = [(str(st["stage"]), layer, "  ".join(f"{op} {v['Q']:.4f}+-{v['se'] or 0:.4f}" for op, v in st["scores"].get(layer, {}).items()),
             describe_decision(d)) for st in doc["stages"] for layer, d in st["decisions"].items()]
    _table("progressive space shrinking: Q = mean F over the same sampled archs (+- 1 SE)", ("stage", "layer", "Q per op", "decision"), rows)
    sizes = [doc["initial_size"]] + [st["size_after"] for st in doc["stages"]]
    out.print("space size (distinct networks): " + " -> ".join(s["distinct_text"] for s in sizes) + "; gene strings: "
              + " -> ".join(s["gene_strings_text"] for s in sizes) + f"\nwrote {out_dir / 'shrunk-space.json'}; fine-tuned "
              f"supernet {doc['supernet']}")


def searched(res: dict, out_dir: Path) -> None:
    t = res["target"]
    out.print(f"target T = {t['target_ms']:.4f} ms; this space reaches {t['reachable_ms'][0]:.4f} .. {t['reachable_ms'][1]:.4f} ms "
              f"on {res['profile']} (T at {100 * t['position']:.0f}% of that range, above {t['percentile_of_random_archs']:.0f}% of "
              "the whole space's random archs)" + (f"\n{t['note']}" if t.get("note") else ""))
    out.print(f"winner of {res['evaluated']} archs: accuracy [bold]{100 * res['acc']:.2f}%[/bold], predicted "
              f"[bold]{res['predicted_ms']:.4f} ms[/bold] ({100 * (res['predicted_ms'] / t['target_ms'] - 1):+.1f}% vs T), F {res['F']:.4f}")
    if sel := res.get("selection"):
        from hsconas_cli.selection import describe as describe_selection

        out.print("[bold]how the winner was chosen[/bold]")
        out.print("\n".join("  " + line for line in describe_selection(sel)), highlight=False)
    if loop := res.get("closed_loop"):
        from hsconas_cli.closed_loop import CANDIDATE_COLUMNS, candidate_rows

        _table(f"the {len(loop['candidates'])} best candidates measured on this device", CANDIDATE_COLUMNS, candidate_rows(loop))
        out.print(loop["reason"] + "\nchosen: " + describe_measurement(res["verify"], t["target_ms"]))
    search_value(res["search_value"])
    out.print(f"wrote {out_dir / 'result.json'}, evaluated.jsonl, pareto.json, fig6-search.png")


def search_value(doc: dict) -> None:
    from hsconas_cli.search_value import describe

    out.print("[bold]what the search bought[/bold]")
    out.print("\n".join("  " + line for line in describe(doc)), highlight=False)


def fleet(out_dir: Path) -> None:
    out.print((out_dir / "report.md").read_text() + f"\nwrote {out_dir / 'result.json'}, report.md, evaluated.jsonl",
              markup=False, highlight=False)


def parity_line(p: dict) -> str:
    return (f"{p['images']} real images, relative difference {p['max_rel_diff']:.2e}, "
            f"top-1 agreement {100 * p['top1_agreement']:.1f}%")


def exported(rep: dict) -> None:
    if onnx_rep := (rep if rep["format"] == "onnx" else rep.get("onnx")):
        out.print(f"wrote [bold]{onnx_rep['path']}[/bold]: opset {onnx_rep['opset']}, input {onnx_rep['input']['shape']}, "
                  f"{len(onnx_rep['ops'])} op types ({', '.join(onnx_rep['ops'])}), onnx.checker clean"
                  + (", simplified with onnxslim" if onnx_rep["slimmed"] else "") + f"\nonnxruntime vs PyTorch on "
                  f"{onnx_rep['checked_images']} real images: max abs difference {onnx_rep['max_abs_diff']:.2e}")
        for prec, f in [(p, f) for p, f in onnx_rep["files"].items() if p != "fp32"]:
            out.print(f"wrote [bold]{f['path']}[/bold] ({prec}): " + parity_line(f["parity"]))
    t = rep.get("timing")
    if rep["format"] == "trt":
        out.print(f"TensorRT engine ({rep['precision']}) vs PyTorch on {rep['check']['batches']} batches: " + parity_line(rep["check"]))
        out.print(f"wrote [bold]{rep['path']}[/bold] (TensorRT {rep['tensorrt']}) and {rep['sidecar']}: median {t['median_ms']:.3f} ms, "
                  f"p90 {t['p90_ms']:.3f} ms, p99 {t['p99_ms']:.3f} ms ({t['timer']})")
    if rep["format"] in ("openvino", "pte"):
        what = {"openvino": f"OpenVINO {rep.get('openvino')}", "pte": f"ExecuTorch {rep.get('executorch')}"}[rep["format"]]
        out.print(f"{what} vs PyTorch: " + parity_line(rep["check"]))
        out.print(f"wrote [bold]{rep['path']}[/bold] and {rep['sidecar']}: median {t['median_ms']:.3f} ms, "
                  f"p90 {t['p90_ms']:.3f} ms over {t['runs']} runs here ({t['timer']}, {t.get('threads')} thread(s))")
    if lat := rep.get("latency"):
        out.print(f"latency on this device ({lat['profile']}): " + describe_measurement(lat))
    if rep["metadata"].get("accuracy") is not None:
        out.print(f"accuracy: {100 * rep['metadata']['accuracy']:.2f}% ({rep['metadata']['accuracy_kind']})")


def run_summary(res: dict, out_dir: Path) -> None:
    from hsconas_cli.pipeline import summary_rows

    _table(f"hsconas run: {out_dir}", ("stage", "result"), summary_rows(res))
