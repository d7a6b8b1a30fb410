"""Pipeline stages handed to submitit (augment.dispatch): two local workers run independent stages
at once and give the serial run's results; a failed stage is reported with its log while the rest
of the graph finishes, and the next run resumes it; the Slurm path runs through submitit with its
parameters rendered into a real sbatch script; ``augment status`` reads a run from its files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from augment.dispatch import ExecutorConfig, SlurmSettings, slurm_parameters
from augment.pipeline import load_pipeline, run_pipeline
from augment.status import stage_states
from tests.conftest import TINY, TINY_SPEC_TASK, run_cli, yaml_items

ROOT = Path(__file__).resolve().parents[1]
QUIET = {"echo": lambda *_: None}


def _spec(tmp_path: Path) -> Path:
    """Two budgets, one tiny cVAE: after `prepare`, four stages (two real-arm evaluations, two
    trainings) need nothing but the data, so two workers always have two to run."""
    p = tmp_path / "p.yaml"
    p.write_text(f"""data: {{source: phantom, image_size: 16, count: 60, seed: 1}}
budgets: [12, 16]
seeds: [0]
balance: {ROOT / 'manifests' / 'match_max.yaml'}
train: {{max_steps: 6, batch_size: 8, checkpoint_every: 100}}
generators:
  g: {{family: cvae, {yaml_items(TINY['cvae'])}}}
audit: {{enabled: false}}
evaluate: {{arms: [real, real+classic], recipes: {{frac50: {{mix: fraction, synthetic_fraction: 0.5}}}},
           segmentation: {{{yaml_items(TINY_SPEC_TASK)}}}}}
""")
    return p


def _run(spec: Path, out: Path, **executor):
    return run_pipeline(load_pipeline(spec, {"executor": executor} if executor else None), out, **QUIET)


def _results(out: Path) -> dict:
    """What a run computed, without where and when: every evaluation's results, every synthetic
    manifest and every generator's weights."""
    got = {}
    for csv in sorted(out.glob("evaluate/*/*/results.csv")):
        got[str(csv.relative_to(out))] = pd.read_csv(csv).to_dict("list")
    for man in sorted(out.glob("generators/*/*/synthetic/manifest.csv")):
        got[str(man.relative_to(out))] = pd.read_csv(man)["sha256"].tolist()
    for w in sorted(out.glob("generators/*/*/generator/model.safetensors")):
        got[str(w.relative_to(out))] = {k: v.tolist() for k, v in load_file(w).items()}
    return got


def test_two_local_workers_run_stages_at_once_and_match_the_serial_run(tmp_path):
    spec = _spec(tmp_path)
    serial, local = tmp_path / "serial", tmp_path / "local"
    # one torch thread in the serial run and in each worker: CPU kernels may sum in another order
    # with another thread count
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _run(spec, serial)
    finally:
        torch.set_num_threads(threads)
    _run(spec, local, kind="local", workers=2, threads=1, poll_seconds=0.2)
    assert _results(local) == _results(serial) and len(_results(serial)) == 2 * 2 + 2 + 2
    report = {k: v for k, v in json.loads((local / "report.json").read_text()).items() if k != "timings"}
    assert report["downstream"] == json.loads((serial / "report.json").read_text())["downstream"]
    spans = json.loads((local / "timings.json").read_text())["spans"]
    assert len(spans) == 9 and all("local worker" in s["where"] for s in spans.values())
    overlapping = [(a, b) for a in spans for b in spans if a < b
                   and spans[a]["start"] < spans[b]["end"] and spans[b]["start"] < spans[a]["end"]]
    assert overlapping, spans  # two stages ran at once
    for a, b in overlapping:  # never a stage beside one it needs
        assert "prepare" not in (a, b)
    serial_spans = json.loads((serial / "timings.json").read_text())["spans"]
    ordered = sorted(serial_spans.values(), key=lambda s: s["start"])
    assert all(x["end"] <= y["start"] for x, y in zip(ordered, ordered[1:]))  # serial: one after another
    assert {r.state for r in stage_states(local)} == {"done"}
    assert json.loads((local / "executor" / "state.json").read_text())["executor"] == "local"


def test_a_failed_stage_leaves_out_only_what_needs_it_and_the_next_run_resumes(tmp_path, monkeypatch):
    import augment.training
    from augment.dispatch import StageFailed

    spec, out = _spec(tmp_path), tmp_path / "out"
    real_train = augment.training.train

    def train(cfg, **kw):
        if cfg.budget == 12:
            raise RuntimeError("out of memory, on purpose")
        return real_train(cfg, **kw)

    monkeypatch.setattr(augment.training, "train", train)
    with pytest.raises(StageFailed, match=r"1 stage\(s\) failed: train \(g budget 12 gseed 0\) \(log: .*\.err\); "
                                          r"2 stage\(s\) that need them did not run; the rest finished"):
        _run(spec, out, kind="debug")
    states = {r.name: r for r in stage_states(out)}
    assert states["train (g budget 12 gseed 0)"].state == "failed"
    assert "RuntimeError: out of memory, on purpose; log: " in states["train (g budget 12 gseed 0)"].detail
    assert {states[n].state for n in ("sample (g budget 12 gseed 0)", "evaluate (g budget 12 seed 0)")} == {"left out"}
    assert {states[n].state for n in states if "16" in n or "prepare" in n or "real arms" in n} == {"done"}
    shown = run_cli("status", out)
    text = shown.stdout
    assert shown.returncode == 0 and "6 done, 1 failed, 2 left out (of 9 stages)" in text and "out of memory, on purpose" in text
    kept = json.loads((out / "timings.json").read_text())["spans"]
    monkeypatch.setattr(augment.training, "train", real_train)
    _run(spec, out)  # serial this time: a run resumes whatever executor ran the one before
    final = json.loads((out / "timings.json").read_text())["spans"]
    assert {n: final[n] for n in kept} == kept  # what finished before did not run again
    assert set(final) - set(kept) == {f"{v} (g budget 12 {s})" for v, s in (("train", "gseed 0"), ("sample", "gseed 0"),
                                                                            ("evaluate", "seed 0"))}
    assert {r.state for r in stage_states(out)} == {"done"} and (out / "report.json").is_file()


def test_the_slurm_path_runs_through_submitit_and_renders_its_sbatch_script(tmp_path, monkeypatch):
    import submitit

    import augment.dispatch

    settings = {"partition": "gpu", "account": "lab", "time_minutes": 90, "cpus_per_task": 1, "gpus": 1, "mem_gb": 16,
                "setup": ["source .venv/bin/activate"], "additional": {"constraint": "a100"}}
    # what sbatch would get, from the parameters the Slurm path passes to submitit (submitit's Slurm
    # executor wants an `srun` on the PATH before it renders anything: an empty one stands in)
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "srun").write_text("#!/bin/sh\nexit 1\n")
    (fake / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")
    ex = submitit.AutoExecutor(tmp_path / "render", cluster="slurm")
    ex.update_parameters(**slurm_parameters(SlurmSettings(**settings)), name="augment-x")
    script = ex._executor._make_submission_file_text("python -m submitit.core._submit", "uid")
    for line in ("#SBATCH --partition=gpu", "#SBATCH --account=lab", "#SBATCH --time=90", "#SBATCH --cpus-per-task=1",
                 "#SBATCH --gpus-per-node=1", "#SBATCH --mem=16GB", "#SBATCH --constraint=a100", "source .venv/bin/activate"):
        assert line in script, line
    # the same path, run: submitit's local cluster stands in for Slurm
    monkeypatch.setattr(augment.dispatch, "SLURM_CLUSTER", "local")
    spec, out = _spec(tmp_path), tmp_path / "out"
    cfg = load_pipeline(spec, {"executor": {"kind": "slurm", "workers": 2, "poll_seconds": 0.2, "slurm": settings}})
    run_pipeline(cfg, out, **QUIET)
    spans = json.loads((out / "timings.json").read_text())["spans"]
    assert len(spans) == 9 and all(s["where"].endswith("1 GPU(s), 1 CPUs") for s in spans.values())
    state = json.loads((out / "executor" / "state.json").read_text())
    assert state["executor"] == "slurm" and {s["state"] for s in state["stages"].values()} == {"done"}
    assert all(Path(s["log"]).is_file() for s in state["stages"].values())


def test_the_executor_is_not_part_of_the_experiment_and_is_checked(tmp_path):
    from augment.errors import ConfigError

    spec = _spec(tmp_path)
    cfg = load_pipeline(spec, {"executor": {"kind": "local", "workers": 3}})
    assert cfg.executor == ExecutorConfig(kind="local", workers=3)
    with pytest.raises(ConfigError, match="executor.kind"):
        load_pipeline(spec, {"executor": {"kind": "ray"}})
    with pytest.raises(ConfigError, match="executor.slurm.gpu"):
        load_pipeline(spec, {"executor": {"kind": "slurm", "slurm": {"gpu": 1}}})


def test_status_reads_running_stopped_queued_and_waiting_stages_from_the_files(tmp_path):
    import socket
    import subprocess
    import sys

    from augment.config import save_json
    from augment.dispatch import span_path
    from augment.output import write_json

    out = tmp_path / "out"
    out.mkdir()
    cfg = load_pipeline(_spec(tmp_path))
    save_json(cfg, out / "pipeline.json")
    here = socket.gethostname()
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    write_json({"stage": "prepare", "where": f"{here} pid {os.getpid()}, cpu x1 (local worker 0)", "start": 1.0},
               span_path(out, "prepare"))
    write_json({"stage": "x", "where": f"{here} pid {gone}, serial", "start": 1.0}, span_path(out, "train (g budget 12 gseed 0)"))
    write_json({"executor": "slurm", "stages": {"evaluate real arms (budget 12 seed 0)": {"state": "submitted", "job": "4242",
                                                                                          "submitted": 1.0}}},
               out / "executor" / "state.json")
    states = {r.name: r for r in stage_states(out)}
    assert states["prepare"].state == "running" and f"pid {os.getpid()}, cpu x1 (local worker 0), started" in states["prepare"].detail
    assert states["train (g budget 12 gseed 0)"].state == "stopped"  # its process is gone: the next run resumes it
    assert states["evaluate real arms (budget 12 seed 0)"].state == "queued" and "job 4242" in states["evaluate real arms (budget 12 seed 0)"].detail
    assert states["sample (g budget 12 gseed 0)"].state == "waiting" and states["sample (g budget 12 gseed 0)"].detail.startswith("0/1")
    shown = run_cli("status", out, "--all")
    assert shown.returncode == 0 and shown.stdout.startswith("1 running, 1 queued, 1 stopped, 6 waiting (of 9 stages)")
    assert shown.stdout.count("\n  ") == 9  # --all: a line per stage
    missing = run_cli("status", tmp_path / "nowhere")
    assert missing.returncode == 2 and "is not the output of `augment run` (no pipeline.json)" in missing.stderr
