"""Faults: two processes aimed at one output (the lock), a full disk, and a tiny pipeline killed
(SIGKILL) again and again, at points spread over every stage, and resumed with the same command
each time, ending with exactly the outputs of an uninterrupted run."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from augment.cli import main
from augment.lock import LockError, lock_path, output_lock
from tests.conftest import TINY, TINY_SPEC_TASK, augment_cmd, kill_when, run_cli, set_args, yaml_items

ROOT = Path(__file__).resolve().parents[1]
MATCH_MAX = str(ROOT / "manifests" / "match_max.yaml")
TINY_ARGS = [*set_args(TINY["cvae"], "generator"), "--set", "train.batch_size=8"]
HOLD = """import contextlib, sys
from augment.lock import output_lock
with contextlib.ExitStack() as stack:
    for out in sys.argv[2:]:
        stack.enter_context(output_lock(out, sys.argv[1]))
    print("ready", flush=True)
    sys.stdin.read()
"""


@contextlib.contextmanager
def holder(verb: str, *outs: Path):
    """Another process holding the locks of ``outs`` until the block ends."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, verb, *map(str, outs)], cwd=ROOT, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline().strip() == "ready"
        yield proc
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)


VERBS = {
    "prepare": ["prepare", "--source", "phantom", "--out", "{o}"],
    "train": ["train", "--data", "{data}", "--generator", "cvae", "--out", "{o}", "--resume"],
    "sample": ["sample", "--generator", "{run}", "--balance", MATCH_MAX, "--out", "{o}", "--resume"],
    "audit": ["audit", "--data", "{data}", "--synthetic", "{o}", "--out", "{o}"],
    "evaluate": ["evaluate", "--data", "{data}", "--out", "{o}"],
    "run": ["run", "{o}.yaml", "--out", "{o}"],
    "report": ["report", "{o}"],
    "export": ["export", "{data}", "--out", "{o}"],
}


def test_every_writing_verb_fails_at_once_naming_the_process_that_holds_its_output(tmp_path, phantom_dir, tiny_run, capsys):
    outs = {verb: tmp_path / verb for verb in VERBS}
    with holder("run", *outs.values()) as proc:
        for verb, argv in VERBS.items():
            start = time.time()
            rc = main([a.format(o=outs[verb], data=phantom_dir, run=tiny_run) for a in argv])
            lines = capsys.readouterr().err.strip().splitlines()
            assert rc == 2 and len(lines) == 1, lines
            assert f"augment {verb}: error: output `{outs[verb]}` is in use by `augment run` (pid {proc.pid} on host " \
                   f"{socket.gethostname()}, started " in lines[0]
            assert time.time() - start < 5 and not outs[verb].exists()
    assert not list(tmp_path.glob(".*.lock"))  # released on exit


def test_two_train_processes_on_one_run_folder(tmp_path, phantom_dir):
    out = tmp_path / "run"
    args = ["train", "--data", phantom_dir, "--generator", "cvae", "--out", out,
            "--budget", "24", *TINY_ARGS, "--set", "train.max_steps=1000000", "--set", "train.checkpoint_every=1000000"]
    first = subprocess.Popen(augment_cmd(*args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not (out / "config.json").is_file() and time.time() < deadline:  # training has begun
            time.sleep(0.05)
        second = run_cli(*args, "--resume", timeout=120)
        assert first.poll() is None
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert second.returncode == 2 and "Traceback" not in second.stderr
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and f"is in use by `augment train` (pid {first.pid} on host" in lines[0]
    with output_lock(out, "train"):  # the killed holder's lock is stale: taken over, not waited for
        assert json.loads(lock_path(out).read_text())["pid"] == os.getpid()
    assert not lock_path(out).exists()


def test_lock_is_reentrant_rank_zero_only_and_leaves_no_folder(tmp_path, monkeypatch):
    out = tmp_path / "a" / "b" / "out"
    with output_lock(out, "run"), output_lock(out, "prepare"):  # nested stages of one process
        assert lock_path(out).is_file()
    assert not (tmp_path / "a").exists()  # folders made only for the lock file are gone with it
    with holder("train", out):
        with pytest.raises(LockError, match="in use by `augment train`"):
            with output_lock(out, "train"):
                pass
        monkeypatch.setenv("RANK", "1")  # a stray RANK alone (a scheduler's, a shell's) is no launch: still a rival
        with pytest.raises(LockError, match="in use by `augment train`"):
            with output_lock(out, "train"):
                pass
        for var, value in {"LOCAL_RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}.items():
            monkeypatch.setenv(var, value)  # another rank of the same torchrun launch: not a rival
        with output_lock(out, "train"):
            pass


@pytest.mark.parametrize("kind", ["symlink", "folder", "fifo"])
def test_a_lock_file_that_is_not_a_regular_file_is_refused_and_never_followed(kind, tmp_path):
    out = tmp_path / "out"
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    path = lock_path(out)
    {"symlink": lambda: path.symlink_to(victim), "folder": path.mkdir, "fifo": lambda: os.mkfifo(path)}[kind]()
    with pytest.raises(LockError, match="is not a regular file"):
        with output_lock(out, "train"):
            pass
    assert victim.read_text() == "precious" and not out.exists()


def test_a_link_to_an_output_shares_its_lock(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "alias").symlink_to(out)
    assert lock_path(tmp_path / "alias") == lock_path(out)
    with holder("run", out):
        with pytest.raises(LockError, match="in use by `augment run`"):
            with output_lock(tmp_path / "alias", "run"):
                pass


@contextlib.contextmanager
def disk_full_after(monkeypatch, writes: int):
    """Every atomic write after the first ``writes`` fails as on a full disk."""
    import augment.output as output

    real, calls = output.atomic_path, []

    @contextlib.contextmanager
    def full(path):
        calls.append(path)
        with real(path) as tmp:
            yield tmp
            if len(calls) > writes:
                raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(output, "atomic_path", full)
    yield
    monkeypatch.setattr(output, "atomic_path", real)


def test_disk_full_while_preparing_is_one_line_and_leaves_nothing(tmp_path, monkeypatch, capsys):
    out = tmp_path / "data"
    with disk_full_after(monkeypatch, 5):
        assert main(["prepare", "--source", "phantom", "--out", str(out), "--count", "20", "--image-size", "8"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"augment prepare: error: disk full while writing `{out}/")
    assert not out.exists() and not list(tmp_path.iterdir())


def test_disk_full_while_sampling_keeps_finished_pairs_and_resumes_exactly(tmp_path, tiny_run, monkeypatch, capsys):
    argv = ["sample", "--generator", str(tiny_run), "--balance", MATCH_MAX, "--batch-size", "2", "--out"]
    assert main(argv + [str(tmp_path / "clean")]) == 0
    out = tmp_path / "full"
    with disk_full_after(monkeypatch, 6):
        assert main(argv + [str(out)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and f"disk full while writing `{out}/" in lines[0] and "No space left on device" in lines[0]
    assert not (out / "run.json").exists() and not (out / "manifest.csv").exists()
    assert not list(out.rglob("*.tmp")) and (out / ".journal").is_dir()
    assert main(argv + [str(out), "--resume"]) == 0
    assert (out / "manifest.csv").read_bytes() == (tmp_path / "clean" / "manifest.csv").read_bytes()
G0 = "generators/cvae/b12_g0"
SPEC = f"""name: faults
data: {{source: phantom, image_size: 16, count: 60, seed: 1}}
generator: {{family: cvae, {yaml_items(TINY['cvae'])}}}
train: {{max_steps: 6, batch_size: 8, checkpoint_every: 2}}
budgets: [12]
seeds: [0, 1]
generator_seeds: [0]
balance: {{strategy: ratio, ratio: 3, seed: 0}}
sample: {{batch_size: 2}}
audit: {{encoder_steps: 5, segmenter_steps: 5}}
evaluate: {{arms: [real, real+classic, real+synthetic, synthetic], segmentation: {{{yaml_items(TINY_SPEC_TASK)}}}}}
"""

# (where the run is when it is killed, the file whose appearance or growth triggers the kill,
#  the marker of the stage being complete: a point whose stage already finished is passed by)
POINTS = [
    ("prepare, building the data folder", ".data.partial-*", "data/run.json"),
    ("real arms of seed 0, after the first arm", "evaluate/b12_s0/real/runs/*.json", "evaluate/b12_s0/real/run.json"),
    ("train g0, after a checkpoint", f"{G0}/generator/state/step_*", f"{G0}/generator/run.json"),
    ("train g0 resumed, after the next checkpoint", f"{G0}/generator/state/step_*", f"{G0}/generator/run.json"),
    ("sample g0, journal has rows", f"{G0}/synthetic/.journal/rank0.jsonl", f"{G0}/synthetic/run.json"),
    ("sample g0 resumed, journal grew", f"{G0}/synthetic/.journal/rank0.jsonl", f"{G0}/synthetic/run.json"),
    ("audit g0, measuring", f"{G0}/.audit.partial-*", f"{G0}/audit/audit.json"),
    ("generator arms of seed 0, after the first arm", "evaluate/b12_s0/cvae/runs/*.json", "evaluate/b12_s0/cvae/run.json"),
    ("real arms of seed 1, after the first arm", "evaluate/b12_s1/real/runs/*.json", "evaluate/b12_s1/real/run.json"),
    ("generator arms of seed 1, after the first arm", "evaluate/b12_s1/cvae/runs/*.json", "evaluate/b12_s1/cvae/run.json"),
    ("report, writing figures", "figures/*.png", "run.json"),
]


def _found(out: Path, pattern: str) -> dict[Path, int]:
    """Paths matching ``pattern`` with their size (-1 for a folder)."""
    found = {}
    for p in out.glob(pattern):
        try:
            found[p] = -1 if p.is_dir() else p.stat().st_size
        except FileNotFoundError:
            continue
    return found


def _appears_or_grows(out: Path, pattern: str):
    """A predicate: a folder or non-empty file matching ``pattern`` appeared, or a file grew,
    since this call."""
    before = _found(out, pattern)
    return lambda: any((p not in before and size != 0) or size > before.get(p, size) for p, size in _found(out, pattern).items())


def _outcome(out: Path) -> dict:
    """What must be identical between an interrupted and an uninterrupted run."""
    digest = {
        "weights": hashlib.sha256((out / G0 / "generator" / "model.safetensors").read_bytes()).hexdigest(),
        "manifest": (out / G0 / "synthetic" / "manifest.csv").read_bytes(),
        "audit": json.loads((out / G0 / "audit" / "audit.json").read_text())["metrics"],
    }
    for results in sorted(out.glob("evaluate/*/*/results.csv")):
        digest[str(results.relative_to(out))] = pd.read_csv(results).to_dict("records")
    return digest


def test_killed_anywhere_and_resumed_equals_uninterrupted(tmp_path, capsys):
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    assert main(["run", str(spec), "--out", str(reference)]) == 0
    capsys.readouterr()

    cmd = augment_cmd("run", spec, "--out", killed)
    survived = []
    for name, pattern, complete in POINTS:
        if (killed / complete).is_file():
            continue  # the previous kill landed after this stage finished
        rc = kill_when(cmd, _appears_or_grows(killed, pattern))
        assert rc == -signal.SIGKILL, f"the run ended (rc {rc}) before the kill point `{name}`"
        survived.append(name)
    rc = kill_when(cmd, lambda: False, timeout=300)
    assert rc == 0
    assert len(survived) >= 10, survived

    got, want = _outcome(killed), _outcome(reference)
    # The audit's larger matrix algebra (FRD: 398 radiomic features from a few dozen images, a
    # singular covariance) rounds differently with the BLAS thread count, which differs between this
    # process (numpy loaded before the test set one thread) and the killed run's subprocess: seen
    # 1.4e-8 apart, so equal to 1e-6, not to the last bit. Everything else: exact.
    assert [{k: pytest.approx(v, rel=1e-6) if isinstance(v, float) else v for k, v in row.items()} for row in want.pop("audit")] \
        == got.pop("audit")
    assert got == want
    assert not list(killed.rglob("*.partial*")) and not list(killed.rglob(".journal"))
    assert not [p for p in killed.rglob("*.tmp") if "state" not in p.parts]
