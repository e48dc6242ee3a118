"""The whole pipeline at a tiny budget, from a clean folder, killed in one stage and resumed."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import onnxruntime as ort
import torch

from conftest import FAST_PROTOCOL, TINY28, assert_one_line_error, run_cli_all
from hsconas_cli.checkpoint import load_checkpoint

STAGES = ("profile", "supernet", "shrink", "search", "finetune", "export", "report")
# The stage killed: a fixed choice, so a failure reproduces. Search has stages done before it (to be skipped on
# resume) and stages after it (to run once), and it runs for about 2 s here (shrink: 0.6 s), time enough to be
# killed in its work and not after it.
VICTIM = "search"
# A guard against a run that hangs, not a speed bound: the stages before the search take about 20 s here, and a
# busy neighbour or a slower CPU must never be what fails this test.
HANG_S = 1200


def _start(args, env, stderr=subprocess.PIPE):
    exe = Path(sys.executable).with_name("hsconas")
    return subprocess.Popen([str(exe), *map(str, args)], env={**os.environ, **env}, stdout=subprocess.PIPE,
                            stderr=stderr, text=True)


def _all_files_whole(run: Path) -> None:
    for f in run.rglob("*"):
        assert not f.name.endswith(".tmp") or f.name.startswith("."), f
        if f.suffix == ".json":
            json.loads(f.read_text())  # never half-written
        elif f.suffix == ".pt" and not f.name.startswith("."):
            load_checkpoint(f)


def test_run_killed_in_a_stage_resumes_and_leaves_every_artefact(tmp_path):
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "tinycpu.json").write_text(json.dumps({"name": "tinycpu", "batch_size": 1, "backend": "onnxruntime",
                                                        "backend_options": {"threads": 1, "protocol": FAST_PROTOCOL}}))
    space = tmp_path / "tiny.json"
    space.write_text(json.dumps(TINY28.to_dict()))
    run = tmp_path / "run"
    args = ["run", "--device", "tinycpu", "--latency", "50%", "--space", space, "--preset", "smoke", "--out", run]
    env = {"HSCONAS_PROFILES": str(profiles)}

    def recorded() -> dict:
        try:
            return json.loads((run / "run.json").read_text())["stages"]
        except (OSError, ValueError):
            return {}

    log = tmp_path / "killed-run.log"  # a file, not a pipe nobody reads while the run goes on
    with log.open("w") as f:
        proc = _start(args, env, stderr=f)
    deadline = time.time() + HANG_S
    while time.time() < deadline and proc.poll() is None and not recorded():
        time.sleep(0.05)
    # a second command on the folder while the first holds it: refused at once, naming the process that holds it
    second = run_cli_all(tuple(args), ("train", "--space", space, "--limit", "64", "--out", run), env=env, process=True)
    assert proc.poll() is None, f"the run ended before a second command could meet it: {log.read_text()[-500:]}"
    for p in second:
        assert_one_line_error(p, f"{run} is in use by another hsconas process (pid {proc.pid}, hsconas run")
    while time.time() < deadline and proc.poll() is None:
        if VICTIM in recorded():  # the stage has started (run.json counts a run before the stage's work)
            time.sleep(0.2)  # into its work
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait(timeout=HANG_S)
    assert proc.returncode == -signal.SIGKILL, f"the run ended before it could be killed in {VICTIM}: {log.read_text()[-500:]}"
    _all_files_whole(run)
    before = recorded()
    k = STAGES.index(VICTIM)
    done_before = list(STAGES[:k])
    assert [s for s in STAGES if before.get(s, {}).get("done")] == done_before, before
    assert before[VICTIM]["runs"] == 1 and not before[VICTIM].get("done"), f"killed too late: {before[VICTIM]}"
    assert not set(before) & set(STAGES[k + 1:]), before  # nothing after it had started

    again = _start([*args, "--json"], env)  # the killed run's lock is gone with it: this one takes the folder over
    out, err = again.communicate(timeout=HANG_S)
    assert again.returncode == 0, err[-2000:]
    shown = [int(m) for m in re.findall(r"^\[\s*[\d.]+s\] hsconas run: .* (\d+)%$", err, re.M)]
    assert len(shown) >= 4 and shown == sorted(shown) and shown[-1] == 100, shown  # the bar never goes back
    res = json.loads(out)
    record = json.loads((run / "run.json").read_text())
    assert set(record["stages"]) == set(STAGES)
    for s in STAGES:
        assert record["stages"][s]["done"], s
    # what resume must do: skip what was done, run the killed stage again, run the rest once
    assert {s: record["stages"][s]["runs"] for s in STAGES} == {s: 2 if s == VICTIM else 1 for s in STAGES}
    for s in done_before:
        assert record["stages"][s] == before[s], s  # untouched: neither rerun nor rewritten
    said = re.findall(rf"^({'|'.join(STAGES)}): (done before, skipped|resuming|starting)\s*$", err, re.M)
    assert said == [(s, "done before, skipped") for s in done_before] + [(VICTIM, "resuming")] + [
        (s, "starting") for s in STAGES[k + 1:]], err[-2000:]
    assert not list(run.rglob(".*.tmp"))
    _all_files_whole(run)

    # every artefact of the pipeline, usable
    prof = Path(res["profile"]["path"])
    assert prof.is_relative_to(profiles) and json.loads(prof.read_text())["kind"] == "hsconas-device-profile"
    assert load_checkpoint(run / "supernet" / "checkpoint.pt")["kind"] == "supernet"
    shrunk = json.loads((run / "shrink" / "shrunk-space.json").read_text())
    assert shrunk["kind"] == "hsconas-shrunk-space" and len(shrunk["stages"]) == 2
    result = json.loads((run / "search" / "result.json").read_text())
    assert result["kind"] == "hsconas-search-result" and result["arch"] == res["search"]["arch"]
    loop = result["closed_loop"]  # the best candidates measured here; the result is the chosen one
    assert loop["candidates"] and result["arch"] == loop["candidates"][loop["chosen"]]["arch"]
    ck = load_checkpoint(run / "hsconet" / "checkpoint.pt")
    assert ck["kind"] == "hsconet" and ck["arch"] == result["arch"] and 0 <= ck["test_top1"] <= 1
    session = ort.InferenceSession(str(run / "export" / "hsconet.onnx"))
    assert session.run(None, {"input": torch.zeros(1, 1, 28, 28).numpy()})[0].shape == (1, 10)
    assert res["export"]["latency"]["measured_ms"] > 0 and res["export"]["latency"]["verdict"]["uncertainty_pct"] > 0
    report = (run / "report.md").read_text()
    for needle in ("## Summary", "latency here", "## Closed loop", "figures/predictor-fig3.png", "figures/shrink-q-scores.png",
                   "fig6-search.png", "## What the search bought", "random archs within +-3% of its latency", "ShuffleNetV2"):
        assert needle in report, needle
    assert result["search_value"]["arch"] == result["arch"]
    for st in shrunk["stages"]:  # each layer's decision, in the report's shrink table
        for layer in st["decisions"]:
            assert re.search(rf"^\| {layer} \| (free: best )?(shuffle3|shuffle5|shuffle7|xception|skip)", report, re.M), layer
    for fig in ("predictor-fig2.png", "predictor-fig3.png", "shrink-q-scores.png", "supernet-training.png"):
        assert (run / "figures" / fig).stat().st_size > 1000
    assert (run / "search" / "fig6-search.png").exists()


def test_the_progress_bar_tracks_the_demos_time():
    """Each stage's span on the bar is its share of a measured demo's time: contiguous from 0 to 1, and the
    fine-tuning, about half the time, is about half the bar (it used to be one seventh, and the bar read 71% when
    only the export and the report were left)."""
    from hsconas_cli.pipeline import STAGE_SECONDS, STAGES as PIPELINE_STAGES, stage_span

    assert PIPELINE_STAGES == STAGES
    spans = [stage_span(s) for s in STAGES]
    assert spans[0][0] == 0 and abs(sum(spans[-1]) - 1) < 1e-12
    assert all(abs(a[0] + a[1] - b[0]) < 1e-12 for a, b in zip(spans, spans[1:]))
    assert stage_span("finetune")[1] == STAGE_SECONDS["finetune"] / sum(STAGE_SECONDS.values())
    assert stage_span("export")[0] > 0.95


def test_a_preset_without_shrinking_searches_the_whole_space_and_says_why(tmp_path, monkeypatch):
    """The demo's preset does not shrink (pipeline.SHRINK_SKIPPED): the search gets the whole space and the
    supernet as trained, and the run's record and report say the stage was skipped and why."""
    from dataclasses import replace

    from hsconas_cli import pipeline

    monkeypatch.setitem(pipeline.PRESETS, "smoke", replace(pipeline.PRESETS["smoke"], shrink_samples=0))
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "tinycpu.json").write_text(json.dumps({"name": "tinycpu", "batch_size": 1, "backend": "onnxruntime",
                                                        "backend_options": {"threads": 1, "protocol": FAST_PROTOCOL}}))
    shown = []
    res = pipeline.run_pipeline("tinycpu", "50%", "fashion-mnist", tmp_path / "run", space=TINY28, preset="smoke",
                                profiles_root=profiles, progress=lambda desc, done, total: shown.append((done, total, desc)))
    assert [d for d, _, _ in shown] == sorted(d for d, _, _ in shown) and {t for _, t, _ in shown} == {1000}, shown
    heads = list(dict.fromkeys(desc.split(" ")[0] for _, _, desc in shown))  # shrink is skipped: no progress of its own
    assert heads == ["profile", "supernet", "search", "finetune", "export", "report", "done"] and shown[-1][0] == 1000
    assert res["shrink"]["skipped"] == pipeline.SHRINK_SKIPPED and res["shrink"]["supernet"] == res["supernet"]["checkpoint"]
    result = json.loads((tmp_path / "run" / "search" / "result.json").read_text())
    assert result["subspace"] == TINY28.full().to_dict() and not (tmp_path / "run" / "shrink").exists()
    report = (tmp_path / "run" / "report.md").read_text()
    assert f"Skipped: {pipeline.SHRINK_SKIPPED}." in report and "## What the search bought" in report
