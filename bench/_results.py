"""Shared by the benchmark scripts: where results go (``bench/results/<name>.json`` unless
``--json`` says otherwise), the conditions a number was taken under (threads, CPU count, load
average, commit), and a PASS/MISS line against a target."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch

from augment.runinfo import git_commit, machine

RESULTS = Path(__file__).resolve().parent / "results"


def default_json(name: str) -> Path:
    return RESULTS / f"{name}.json"


def conditions() -> dict:
    """What a timing depends on besides the code: a load average more than half a CPU above the
    CPU count means the figures were taken on a contended machine and are upper bounds (the
    benchmark's own threads alone bring the load up to the CPU count)."""
    load = [round(x, 2) for x in os.getloadavg()]
    return {"threads": torch.get_num_threads(), "cpus": os.cpu_count(), "load_average_1_5_15": load,
            "machine": machine(), "git_commit": git_commit(), "unix_time": round(time.time())}


def describe(cond: dict) -> str:
    load = cond["load_average_1_5_15"]
    busy = " (contended: other work shares the CPUs)" if load[0] > cond["cpus"] + 0.5 else ""
    return f"{cond['threads']} torch threads, {cond['cpus']} CPUs, load average {load[0]:.2f}{busy}"


def table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """``rows`` as a text table: each column is ``(header, key, format spec)``, as wide as its
    widest cell; text (``s``) is aligned left, numbers right, two spaces apart."""
    cells = [[format(r[key], spec) for _, key, spec in columns] for r in rows]
    widths = [max([len(head)] + [len(c[i]) for c in cells]) for i, (head, _, _) in enumerate(columns)]
    left = [spec.endswith("s") for _, _, spec in columns]

    def line(parts: list[str]) -> str:
        return "  ".join(p.ljust(w) if lft else p.rjust(w) for p, w, lft in zip(parts, widths, left)).rstrip()

    return "\n".join([line([head for head, _, _ in columns])] + [line(c) for c in cells])


def verdict(met: bool, what: str) -> str:
    return f"{'PASS' if met else 'MISS'}  {what}"


def write(payload: dict, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {path}")
    return path
