"""A generator run folder: self-describing, and loaded with one call.

``RUN/config.json`` (the TrainConfig), ``RUN/model.safetensors`` (final weights, EMA when
enabled), ``RUN/run.json`` (data spec, data manifest sha256, budget, seed, the sha256 of every
training image, versions, git commit, steps, wall time, weights sha256), ``RUN/loss.csv`` and
``RUN/state/`` (checkpoints for ``--resume``). ``run.json`` is written last: its presence marks a
finished run.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from augment.config import load_json
from augment.data.images import sha256_file
from augment.errors import DataError
from augment.generators import DataSpec, GeneratorModel, TrainConfig, build

CONFIG, WEIGHTS, RUN, LOSS = "config.json", "model.safetensors", "run.json", "loss.csv"


@dataclass
class LoadedGenerator:
    model: GeneratorModel
    config: TrainConfig
    spec: DataSpec
    run: dict[str, Any]
    weights_sha256: str


def save_weights(state: dict[str, torch.Tensor], path: Path) -> str:
    """Atomic safetensors write; returns the file's sha256."""
    fd, tmp = tempfile.mkstemp(prefix=".model.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(state, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return sha256_file(path)


def load_generator(run_dir: str | Path, device: str | torch.device = "cpu") -> LoadedGenerator:
    """Load a finished generator run: its network with final weights, in eval mode."""
    d = Path(run_dir)
    if not d.is_dir():
        raise DataError(f"generator folder `{d}` does not exist")
    missing = [f for f in (CONFIG, WEIGHTS, RUN) if not (d / f).is_file()]
    if missing:
        hint = " (training did not finish; resume it with --resume)" if RUN in missing and (d / CONFIG).is_file() else ""
        raise DataError(f"generator folder `{d}` is incomplete: missing {', '.join(missing)}{hint}")
    config = load_json(TrainConfig, d / CONFIG, what=f"`{d / CONFIG}`")
    run = json.loads((d / RUN).read_text())
    spec = DataSpec.model_validate(run["data_spec"])
    digest = sha256_file(d / WEIGHTS)
    if digest != run["weights_sha256"]:
        raise DataError(f"generator weights `{d / WEIGHTS}` do not match the sha256 recorded in its run.json")
    model = build(config.generator, spec)
    try:
        model.load_state_dict(load_file(d / WEIGHTS, device=str(device)))
    except RuntimeError as exc:
        raise DataError(f"generator weights `{d / WEIGHTS}` do not fit its config ({str(exc).splitlines()[0]})") from None
    return LoadedGenerator(model.to(device).eval(), config, spec, run, digest)
