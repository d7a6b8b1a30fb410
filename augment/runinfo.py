"""What every stage writes beside its output: ``run.json`` (config, inputs' hashes, versions,
the machine, git commit, timings), so the next stage can check its inputs against it."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from augment.output import write_json

__all__ = ["git_commit", "machine", "package_versions", "run_record", "write_json"]

_PACKAGES = ("augment", "torch", "numpy", "pandas", "pillow", "diffusers", "monai", "accelerate", "datasets", "pydantic")


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip() or None
    except OSError:
        pass
    return platform.processor() or None


def machine() -> dict[str, Any]:
    """The machine a run's numbers came from. The same config and seed give the same bytes on the
    same machine; another CPU's vector instructions (torch's ``cpu_capability``: AVX2, AVX512, ...)
    round floats differently, so a result that differs from another machine's in its later digits
    can be told from a changed input."""
    out: dict[str, Any] = {"platform": platform.platform(), "cpu": _cpu_model(), "cores": os.cpu_count()}
    torch = sys.modules.get("torch")  # only when the stage already uses it: importing torch costs seconds
    if torch is not None:
        out["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
        out["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_initialized():  # never start CUDA just to name it (forked workers could not)
            out["cuda_device"] = torch.cuda.get_device_name(torch.cuda.current_device())
    return out


def git_commit() -> str | None:
    """Commit of the augment checkout, when it is one (an installed wheel has none)."""
    here = Path(__file__).resolve().parent.parent
    try:
        res = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout.strip() or None if res.returncode == 0 else None




def run_record(stage: str, config: dict[str, Any], started: float, **fields: Any) -> dict[str, Any]:
    """The common part of every ``run.json``."""
    return {
        "stage": stage,
        "config": config,
        "versions": package_versions(),
        "machine": machine(),
        "git_commit": git_commit(),
        "command": sys.argv,
        "started_unix": round(started, 3),
        "wall_seconds": round(time.time() - started, 3),
        **fields,
    }
