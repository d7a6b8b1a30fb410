"""``augment status OUT``: where a pipeline run stands, read from the files in OUT alone (so it
works from any machine that sees the folder, while a cluster runs the stages, and after).

A stage is ``done`` when its marker is there (as ``augment run`` judges it); ``running`` while its
span (``OUT/executor/spans``, written by the stage as it starts) has no end, with where it runs
and since when; ``queued`` when the driver has submitted it and it has not started (a Slurm job
waiting in the queue); ``failed`` with the error and the log the driver recorded; ``left out``
when a stage it needs failed; else ``waiting``, with how many of the stages it needs are done.
A span without an end whose process is gone (same host, pid not alive) reads ``stopped``: the
run was killed there, and the next ``augment run`` resumes the stage.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from augment.errors import ConfigError
from augment.output import read_json

STATES = ("done", "running", "queued", "failed", "left out", "stopped", "waiting")


@dataclass(frozen=True)
class StageStatus:
    name: str
    state: str
    detail: str = ""


def _alive(where: str) -> bool | None:
    """Whether the process a span names (``host pid N, ...``) is alive; None on another host."""
    try:
        host, rest = where.split(" pid ", 1)
        pid = int(rest.split(",", 1)[0])
    except ValueError:
        return None
    if host != socket.gethostname():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _ago(t: float) -> str:
    s = max(0, int(time.time() - t))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def stage_states(out: str | Path) -> list[StageStatus]:
    """Every stage of the run in ``out``, in the serial order, with its state (see the module docstring)."""
    from augment.config import load_json
    from augment.dispatch import span_path
    from augment.gather import _done
    from augment.pipeline import PipelineConfig, _stages

    out = Path(out)
    if not (out / "pipeline.json").is_file():
        raise ConfigError(f"`{out}` is not the output of `augment run` (no pipeline.json)")
    stages = _stages(load_json(PipelineConfig, out / "pipeline.json"), out)
    driver = out / "executor" / "state.json"
    submitted = (read_json(driver, "executor state").get("stages") or {}) if driver.is_file() else {}
    result: dict[str, StageStatus] = {}
    for s in stages:
        span_file, sub = span_path(out, s.name), submitted.get(s.name) or {}
        span = read_json(span_file, "stage span") if span_file.is_file() else {}
        if _done(s.folder, s.marker):
            took = f"{span['end'] - span['start']:.0f} s on {span['where']}" if span.get("end") else ""
            result[s.name] = StageStatus(s.name, "done", took)
        elif span and "end" not in span:
            alive = _alive(span.get("where", ""))
            state = "stopped" if alive is False else "running"
            result[s.name] = StageStatus(s.name, state, f"{span.get('where')}, started {_ago(span['start'])} ago")
        elif span.get("ok") is False or sub.get("state") == "failed":
            why = span.get("error") or sub.get("error") or "failed"
            result[s.name] = StageStatus(s.name, "failed", f"{why}" + (f"; log: {sub['log']}" if sub.get("log") else ""))
        elif sub.get("state") == "left out":
            result[s.name] = StageStatus(s.name, "left out", f"needs `{sub.get('needs')}`, which failed")
        elif sub.get("state") == "submitted":
            result[s.name] = StageStatus(s.name, "queued", f"job {sub.get('job')}, submitted {_ago(sub['submitted'])} ago")
        else:
            ready = sum(result[n].state == "done" for n in s.needs if n in result)
            result[s.name] = StageStatus(s.name, "waiting", f"{ready}/{len(s.needs)} of the stages it needs are done")
    return list(result.values())


def summary(rows: list[StageStatus], every: bool = False) -> str:
    """Counts per state, then one line per stage that is not done or waiting (every stage with ``every``)."""
    counts = {k: sum(r.state == k for r in rows) for k in STATES}
    head = ", ".join(f"{n} {k}" for k, n in counts.items() if n) + f" (of {len(rows)} stages)"
    shown = [r for r in rows if every or r.state not in ("done", "waiting")]
    width = max((len(r.state) for r in shown), default=0)
    return "\n".join([head, *(f"  {r.state:<{width}}  {r.name}" + (f": {r.detail}" if r.detail else "") for r in shown)])
