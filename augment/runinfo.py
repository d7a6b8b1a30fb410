"""What every stage writes beside its output: ``run.json`` (config, inputs' hashes, versions,
git commit, timings), so the next stage can check its inputs against it."""

from __future__ import annotations

import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from augment.output import write_json

__all__ = ["git_commit", "package_versions", "run_record", "write_json"]

_PACKAGES = ("augment", "torch", "numpy", "pandas", "pillow", "diffusers", "monai", "accelerate", "datasets", "pydantic")


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
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
        "git_commit": git_commit(),
        "command": sys.argv,
        "started_unix": round(started, 3),
        "wall_seconds": round(time.time() - started, 3),
        **fields,
    }
