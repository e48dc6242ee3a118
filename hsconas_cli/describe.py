"""Plain-data descriptions of spaces and architectures, for the CLI's tables and its --json output."""

from __future__ import annotations

from hsconas_cli.space import Arch, SearchSpace, validate_arch
from hsconas_cli.supernet import arch_cost, cost_table


def space_summary(space: SearchSpace) -> dict:
    full = space.full()
    table = cost_table(space)
    layers, fmin, fmax, pmin, pmax = [], 0, 0, 0, 0
    for l in space.layers:
        mids = [space.mid(l.index, c) for c in space.factors]
        layers.append({
            "layer": l.index + 1,
            "stage": l.stage + 1,
            "input": f"{l.in_size}x{l.in_size}",
            "in_channels": l.in_channels,
            "out_channels": l.out_channels,
            "stride": l.stride,
            "ops": list(l.ops),
            "mids": mids,
            "distinct_choices": full.layer_choices(l.index),
        })
        costs = [v for k, v in table.items() if isinstance(k, tuple) and k[0] == l.index]
        fmin, fmax = fmin + min(f for f, _ in costs), fmax + max(f for f, _ in costs)
        pmin, pmax = pmin + min(p for _, p in costs), pmax + max(p for _, p in costs)
    fixed_f = table["stem"][0] + table["head"][0]
    fixed_p = table["stem"][1] + table["head"][1]
    return {
        "space": space.to_dict(),
        "fingerprint": space.fingerprint,
        "layers": layers,
        "counts": {"distinct": full.count(), "gene_strings": full.gene_count(), "paper": space.paper_count()},
        "flops": {"min": fmin + fixed_f, "max": fmax + fixed_f},
        "params": {"min": pmin + fixed_p, "max": pmax + fixed_p},
    }


def arch_table(space: SearchSpace, arch: Arch) -> tuple[list[dict], dict]:
    arch = validate_arch(space, arch)
    cost = arch_cost(space, arch)
    rows = []
    for l, (op, c), (f, p) in zip(space.layers, arch, cost["layers"]):
        rows.append({
            "layer": l.index + 1,
            "stage": l.stage + 1,
            "op": op,
            "c": c,
            "mid": None if op == "skip" else space.mid(l.index, c),
            "channels": f"{l.in_channels} -> {l.out_channels}",
            "stride": l.stride,
            "input": f"{l.in_size}x{l.in_size}",
            "flops": f,
            "params": p,
        })
    totals = {
        "flops": cost["flops"],
        "params": cost["params"],
        "stem_flops": cost["stem"][0],
        "head_flops": cost["head"][0],
    }
    return rows, totals
