"""Where the stages of ``augment run`` execute: in this process one after another (``serial``, the
default), or handed to submitit (https://github.com/facebookincubator/submitit), which starts each
stage as a job: ``local`` (a subprocess per stage on this machine, each with its own GPU or its
share of the CPU cores), ``slurm`` (one Slurm job per stage: ``sbatch`` with the stage's partition,
time, CPUs and one GPU) or ``debug`` (submitit's in-process executor: the same dispatch, one stage
at a time, to check a spec before a cluster sees it).

The graph is the pipeline's own (:class:`augment.pipeline.Stage`, each naming the stages it
needs). A stage is submitted once every stage it needs is complete, at most ``workers`` at once;
independent stages run concurrently; a stage that fails is reported with its log and only the
stages that need it (directly or not) are left out, the rest of the graph finishes. Completion is
read from the files (a stage's marker), never from a job's state or a pickled result, so a second
``augment run`` into the same folder resumes whatever executor ran the first. A job rebuilds its
stage from ``OUT/pipeline.json`` (the spec the run saved), so it runs exactly the serial stage.

Files under ``OUT/executor/``: ``jobs/`` (submitit's folders: the job's pickled call, written by
this process, and its stdout/stderr logs), ``spans/<stage>.json`` (written by the stage itself:
where it ran, started, ended, whether it failed and why) and ``state.json`` (the driver's view:
each submitted stage's job id, log and state). :func:`augment.status.status` reads them.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from pydantic import Field

from augment.config import Strict
from augment.errors import AugmentError
from augment.output import read_json, write_json

#: a local job's wall-clock limit (submitit's own default is 2 minutes)
LOCAL_TIMEOUT_MIN = 60 * 24 * 7


class SlurmSettings(Strict):
    """One Slurm job per stage (``sbatch`` through submitit). Every stage gets the same request."""

    partition: str | None = Field(None, description="sbatch --partition (None: the cluster's default)")
    account: str | None = Field(None, description="sbatch --account")
    qos: str | None = Field(None, description="sbatch --qos")
    time_minutes: int = Field(720, ge=1, le=60 * 24 * 30, description="sbatch --time per stage, in minutes")
    cpus_per_task: int = Field(8, ge=1, le=1024, description="CPU cores per stage (its torch thread count too)")
    gpus: int = Field(1, ge=0, le=16, description="GPUs per stage (0: a CPU-only partition)")
    mem_gb: int | None = Field(None, ge=1, le=65536, description="sbatch --mem in GB (None: the partition's default)")
    setup: list[str] = Field(default_factory=list, description="shell lines run before the stage, e.g. "
                             "`module load cuda` or `source .venv/bin/activate`")
    additional: dict[str, str | int] = Field(default_factory=dict, description="any other sbatch option, e.g. {constraint: a100}")


class ExecutorConfig(Strict):
    """``augment run --executor KIND [--workers N]``, or ``executor:`` in a spec (not part of the
    experiment: changing it never invalidates finished stages)."""

    kind: Literal["serial", "local", "slurm", "debug"] = Field(
        "serial", description="serial: this process, one stage at a time; local: submitit subprocesses on this machine; "
        "slurm: one Slurm job per stage; debug: submitit's in-process executor")
    workers: int | None = Field(None, ge=1, le=4096, description="stages at once (local: the visible GPUs, or 2 on a "
                                "CPU machine; slurm: 256)")
    threads: int | None = Field(None, ge=1, le=1024, description="torch CPU threads per local stage (default: the "
                                "machine's cores divided among the workers)")
    poll_seconds: float = Field(1.0, gt=0, le=600, description="how often the driver looks at its jobs")
    slurm: SlurmSettings = Field(default_factory=SlurmSettings)


def slug(name: str) -> str:
    """A stage name as a file name: readable, and unique (a short hash of the name itself)."""
    return re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_")[:80] + "-" + hashlib.sha1(name.encode()).hexdigest()[:8]


def span_path(out: Path, name: str) -> Path:
    return out / "executor" / "spans" / f"{slug(name)}.json"


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _gpus() -> list[int]:
    import torch

    return list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []


def begin_span(out: Path, name: str, device: str) -> dict:
    """Write and return the span of stage ``name`` starting now in this process on ``device``."""
    where = f"{socket.gethostname()} pid {os.getpid()}, {device}"
    if os.environ.get("SLURM_JOB_ID"):
        where += f", slurm job {os.environ['SLURM_JOB_ID']}"
    span = {"stage": name, "where": where, "start": round(time.time(), 3)}
    write_json(span, span_path(out, name))
    return span


def end_span(out: Path, span: dict, error: BaseException | None = None) -> dict:
    """Write and return ``span`` ended now, failed with ``error`` when given."""
    done = {**span, "end": round(time.time(), 3), "ok": error is None}
    if error is not None:
        done["error"] = f"{type(error).__name__}: {error}"
    write_json(done, span_path(out, span["stage"]))
    return done


def set_threads(threads: int | None) -> None:
    """A job's torch CPU threads (and its OpenMP/MKL children's)."""
    if threads:
        import torch

        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)


def run_serial(stages: list, out: Path, record: Callable[[str, dict], None], echo=print) -> None:
    """``executor: serial``: every stage not yet complete, in order, in this process; the first
    failure stops the run. Spans are written as under an executor, so ``augment status`` reads
    a serial run the same way."""
    from augment.gather import _done
    from augment.progress import stage

    for s in stages:
        if _done(s.folder, s.marker):
            echo(f"[skip] {s.name}: {s.folder} is complete")
            continue
        echo(f"[run]  {s.name} -> {s.folder}")
        span = begin_span(out, s.name, "serial")
        try:
            with stage(s.name):  # progress lines inside say which stage they belong to
                s.call()
        except Exception as exc:  # an interrupt leaves the span open: `augment status` calls the stage stopped
            end_span(out, span, exc)
            raise
        span = end_span(out, span)
        record(s.name, span)


class StageFailed(AugmentError):
    """One or more stages failed under an executor; the others that could run did."""


#: the submitit cluster ``executor: slurm`` submits to (tests point it at submitit's local executor)
SLURM_CLUSTER = "slurm"


def slurm_parameters(s: SlurmSettings) -> dict:
    """``SlurmSettings`` as submitit ``AutoExecutor`` parameters (generic ones, and ``slurm_``
    ones that only a Slurm cluster reads)."""
    params = {"timeout_min": s.time_minutes, "cpus_per_task": s.cpus_per_task, "gpus_per_node": s.gpus,
              "mem_gb": s.mem_gb, "slurm_partition": s.partition, "slurm_account": s.account, "slurm_qos": s.qos,
              "slurm_setup": list(s.setup) or None, "slurm_additional_parameters": dict(s.additional) or None}
    return {k: v for k, v in params.items() if v is not None}


def _executor(cfg: ExecutorConfig, folder: Path):
    """(submitit executor, workers, per-slot (parameters, device, threads)) for ``cfg``."""
    import submitit

    if cfg.kind == "debug":
        return submitit.AutoExecutor(folder, cluster="debug"), 1, [({}, "this process", None)]
    if cfg.kind == "slurm":
        s = cfg.slurm
        ex = submitit.AutoExecutor(folder, cluster=SLURM_CLUSTER, slurm_max_num_timeout=0)
        ex.update_parameters(**slurm_parameters(s))
        device = (f"{s.gpus} GPU(s), " if s.gpus else "") + f"{s.cpus_per_task} CPUs"
        workers = cfg.workers or 256
        return ex, workers, [({}, device, s.cpus_per_task)] * workers
    gpus = _gpus()
    workers = cfg.workers or (len(gpus) if gpus else 2)
    threads = cfg.threads or max(1, cores() // workers)
    ex = submitit.AutoExecutor(folder, cluster="local")
    ex.update_parameters(timeout_min=LOCAL_TIMEOUT_MIN)
    slots = []
    for i in range(workers):
        if gpus:  # one GPU per stage, round robin when there are more workers than GPUs
            gpu = gpus[i % len(gpus)]
            slots.append(({"gpus_per_node": 1, "local_visible_gpus": [gpu]}, f"cuda:{gpu} (local worker {i})", threads))
        else:
            slots.append(({"gpus_per_node": 0}, f"cpu x{threads} (local worker {i})", threads))
    return ex, workers, slots


class Dispatch:
    """The driver: submits each stage when the stages it needs are complete, watches its jobs,
    and keeps ``OUT/executor/state.json`` current. ``record(name, span)`` is called as each
    stage finishes (the pipeline's timings)."""

    def __init__(self, stages: list, out: Path, cfg: ExecutorConfig, job: Callable[..., bool],
                 record: Callable[[str, dict], None], echo=print) -> None:
        from augment.gather import _done

        self.stages, self.out, self.cfg, self.record, self.echo = {s.name: s for s in stages}, out, cfg, record, echo
        self.job = job  # job(out, name, cwd, threads, device) -> bool: runs one stage in the job's process
        self.is_done = lambda s: _done(s.folder, s.marker)  # as the serial loop judges it
        self.state_file = out / "executor" / "state.json"
        self.state: dict[str, dict] = {}

    def _save(self) -> None:
        write_json({"executor": self.cfg.kind, "driver": f"{socket.gethostname()} pid {os.getpid()}",
                    "updated": round(time.time(), 3), "stages": self.state}, self.state_file)

    def run(self) -> None:
        ex, workers, slots = _executor(self.cfg, self.out / "executor" / "jobs")
        done = {n for n, s in self.stages.items() if self.is_done(s)}
        for n in done:
            self.echo(f"[skip] {n}: {self.stages[n].folder} is complete")
        pending = [n for n in self.stages if n not in done]
        running: dict[str, tuple[object, int]] = {}
        failed: dict[str, str] = {}  # stage -> its log
        left_out: dict[str, str] = {}  # stage -> the failed stage it needed
        free = list(range(workers))
        try:
            while pending or running:
                for name in list(pending):
                    needs = self.stages[name].needs
                    lost = next((left_out.get(n, n) for n in needs if n in failed or n in left_out), None)
                    if lost is not None:
                        pending.remove(name)
                        left_out[name] = lost
                        self.state[name] = {"state": "left out", "needs": lost}
                        self.echo(f"[left out] {name}: it needs `{lost}`, which failed")
                    elif free and all(n in done for n in needs):
                        pending.remove(name)
                        running[name] = self._submit(ex, name, free.pop(0), slots)
                if pending and not running:  # nothing runs and nothing can start: a need outside the graph
                    raise AugmentError(f"stage {pending[0]!r} needs stages that are neither complete nor in the pipeline")
                self._save()
                finished = [n for n, (job, _) in running.items() if job.done()]
                if not finished:
                    time.sleep(self.cfg.poll_seconds)
                for name in finished:
                    job, slot = running.pop(name)
                    free.append(slot)
                    self._finish(name, job, done, failed)
                self._save()
        except BaseException:
            for job, _ in running.values():
                job.cancel(check=False)
            raise
        if failed:
            lines = [f"{n} (log: {log})" for n, log in failed.items()]
            raise StageFailed(f"{len(failed)} stage(s) failed: {'; '.join(lines)}"
                              + (f"; {len(left_out)} stage(s) that need them did not run" if left_out else "")
                              + "; the rest finished. Fix the cause and run the same command again to resume")

    def _submit(self, ex, name: str, slot: int, slots: list):
        params, device, threads = slots[slot]
        ex.update_parameters(name=f"augment-{slug(name)}", **params)
        span_path(self.out, name).unlink(missing_ok=True)  # an earlier try's span is not this one's
        job = ex.submit(self.job, str(self.out.resolve()), name, os.getcwd(), threads, device)
        self.state[name] = {"state": "submitted", "job": str(job.job_id), "log": str(job.paths.stderr),
                            "device": device, "submitted": round(time.time(), 3)}
        self.echo(f"[run]  {name} -> {self.stages[name].folder} (job {job.job_id}, {device})")
        return job, slot

    def _finish(self, name: str, job, done: set, failed: dict) -> None:
        path = span_path(self.out, name)
        span = read_json(path, "stage span") if path.is_file() else {}
        if span.get("ok") and self.is_done(self.stages[name]):
            done.add(name)
            self.state[name] = {**self.state[name], "state": "done"}
            self.record(name, span)
            self.echo(f"[done] {name} ({span['end'] - span['start']:.0f} s)")
            return
        why = span.get("error") or f"the job ended without finishing the stage (state {job.state})"
        failed[name] = str(job.paths.stderr)
        self.state[name] = {**self.state[name], "state": "failed", "error": why}
        self.echo(f"[fail] {name}: {why}; log: {job.paths.stderr}")

