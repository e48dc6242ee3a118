"""DDP as the README documents it: ``torchrun --nproc_per_node 2 -m hsconas_cli train ...`` on CPU (gloo).

Two real torchrun launches of the CLI on a tiny space and 256 Fashion-MNIST images per epoch (2 ranks x 4 steps of
32): one epoch, then ``--resume`` to two. tests/ddp_probe.py runs the CLI module unchanged and records per rank
what the product keeps no per-rank record of (sampled paths, sampler state, batches, parameters).
"""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TINY28
from hsconas_cli.checkpoint import load_checkpoint

PROBE = Path(__file__).with_name("ddp_probe.py")
STEPS = 4  # per epoch: --limit 256 split over 2 ranks, --batch-size 32
HANG_S = 1200  # a guard against a launch that hangs (about 15 s here), not a speed bound


def digest(t) -> str:  # as tests/ddp_probe.py digests a tensor
    return hashlib.sha256(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]


def torchrun(tmp: Path, name: str, *args: str) -> tuple[dict, dict[int, list[dict]]]:
    """The CLI under ``torchrun --nproc_per_node 2`` with the probe; returns its --json summary and each rank's events."""
    probe = tmp / f"probe-{name}"
    probe.mkdir()
    cmd = [str(Path(sys.executable).with_name("torchrun")), "--standalone", "--nproc_per_node", "2", str(PROBE),
           "train", "--data", "fashion-mnist", "--space", str(tmp / "tiny.json"), "--limit", "256", "--batch-size", "32",
           "--out", str(tmp / "run"), "--json", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HSCONAS_DDP_PROBE": str(probe)}
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=HANG_S, env=env)
    assert p.returncode == 0, (p.stdout[-2000:], p.stderr[-4000:])
    summary = json.loads(p.stdout[p.stdout.index("{"):])
    events = {r: [json.loads(l) for l in (probe / f"rank{r}.jsonl").read_text().splitlines()] for r in (0, 1)}
    return summary, events


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    (tmp / "tiny.json").write_text(json.dumps(TINY28.to_dict()))
    first = torchrun(tmp, "first", "--epochs", "1")
    ckpt1 = load_checkpoint(tmp / "run" / "checkpoint.pt", cached=False)
    metrics1 = (tmp / "run" / "metrics.jsonl").read_text().splitlines()
    resumed = torchrun(tmp, "resumed", "--epochs", "2", "--resume")
    ckpt2 = load_checkpoint(tmp / "run" / "checkpoint.pt", cached=False)
    metrics2 = [json.loads(l) for l in (tmp / "run" / "metrics.jsonl").read_text().splitlines()]
    return {"first": first, "resumed": resumed, "ckpt1": ckpt1, "ckpt2": ckpt2, "metrics1": metrics1, "metrics2": metrics2}


def split(events: list[dict]) -> tuple[dict, list[dict], dict]:
    start, *steps, end = events
    assert start["event"] == "start" and end["event"] == "end" and all(e["event"] == "step" for e in steps)
    return start, steps, end


@pytest.mark.parametrize("which", ["first", "resumed"])
def test_ranks_sample_the_same_paths_and_end_with_identical_weights(runs, which):
    summary, events = runs[which]
    ckpt = runs["ckpt1" if which == "first" else "ckpt2"]
    (s0, steps0, e0), (s1, steps1, e1) = split(events[0]), split(events[1])
    assert s0["world"] == s1["world"] == 2
    assert len(steps0) == len(steps1) == STEPS
    # every step, both ranks sampled the same path from the same sampler state ...
    for a, b in zip(steps0, steps1):
        assert a["step"] == b["step"] and a["lr"] == b["lr"]
        assert a["samples"] == b["samples"], (a["step"], a["samples"], b["samples"])
        assert len(a["samples"]) == 1
        # ... on different data: each rank trains on its own share of the batch
        assert a["x"] != b["x"]
    assert len({json.dumps(s["samples"][0]["arch"]) for s in steps0}) > 1  # the path does change from step to step
    # both ranks start and end with identical parameters; training changed them; the checkpoint holds them
    assert s0["params"] == s1["params"]
    assert e0["params"] == e1["params"]
    assert e0["params"] != s0["params"]
    assert e0["params"] == {name: digest(ckpt["model"][name]) for name in e0["params"]}
    assert summary["ranks_in_sync"] is True  # the product's own digest check agrees


def test_resume_continues_where_the_checkpoint_left_off(runs):
    (summary1, ev1), (summary2, ev2) = runs["first"], runs["resumed"]
    ckpt1, ckpt2 = runs["ckpt1"], runs["ckpt2"]
    assert (ckpt1["state"]["epoch"], ckpt1["state"]["batch"], ckpt1["state"]["step"]) == (1, 0, STEPS)
    assert summary1["steps"] == STEPS and summary2["steps"] == 2 * STEPS and summary2["epochs"] == 2
    assert (ckpt2["state"]["epoch"], ckpt2["state"]["step"]) == (2, 2 * STEPS)
    for r in (0, 1):
        _, steps1, end1 = split(ev1[r])
        start2, steps2, _ = split(ev2[r])
        # counters continue: the resumed run trains steps 4..7 of epoch 2, not 0..3 again
        assert [s["step"] for s in steps1] == list(range(STEPS))
        assert start2["step"] == STEPS
        assert [(s["step"], s["epoch"], s["batch"]) for s in steps2] == [(STEPS + i, 1, i) for i in range(STEPS)]
        # the weights it starts from are those the first run ended with (and saved) ...
        assert start2["params"] == end1["params"] == {n: digest(ckpt1["model"][n]) for n in end1["params"]}
        # ... and the path sampler picks up where it stopped instead of being reseeded
        assert steps2[0]["samples"][0]["rng_before"] == steps1[-1]["samples"][0]["rng_after"]
        assert steps2[0]["samples"][0]["rng_before"] != steps1[0]["samples"][0]["rng_before"]
        # epoch 2 shuffles differently from epoch 1
        assert {s["x"] for s in steps2}.isdisjoint({s["x"] for s in steps1})
    # metrics.jsonl: the first run's epoch line is kept and the resumed run appends epoch 2 after it
    m = runs["metrics2"]
    assert [json.loads(l) for l in runs["metrics1"]] == m[:1]
    assert [(r["epoch"], r["step"]) for r in m] == [(1, STEPS), (2, 2 * STEPS)]
    assert [h["step"] for h in ckpt2["state"]["history"]] == [STEPS, 2 * STEPS]
    assert summary2["history"][0] == m[0]


def _agree(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist

    from hsconas_cli.train import stop_agreed

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    answers = [stop_agreed(rank == 1 and step == 2, world) for step in range(4)]  # rank 1 alone hears Ctrl-C at step 2
    dist.destroy_process_group()
    Path(out, f"rank{rank}.json").write_text(json.dumps(answers))


def test_every_rank_stops_after_the_step_one_rank_was_interrupted_in(tmp_path):
    """Issue 24 item 6: under torchrun a Ctrl-C seen by one rank stops every rank after the same step (then rank 0
    saves, behind a barrier), rather than rank 0 saving one step while another rank trains on into the next."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_agree, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    for r in (0, 1):
        assert json.loads((tmp_path / f"rank{r}.json").read_text()) == [False, False, True, False]
