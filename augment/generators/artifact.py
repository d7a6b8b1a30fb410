"""A generator run folder: self-describing, and loaded with one call.

``RUN/config.json`` (the TrainConfig), ``RUN/model.safetensors`` (final weights, EMA when
enabled), ``RUN/run.json`` (data spec, data manifest sha256, budget, seed, the sha256 of every
training image, versions, git commit, steps, wall time, weights sha256), ``RUN/loss.csv`` and
``RUN/state/`` (checkpoints for ``--resume``). ``run.json`` is written last: its presence marks a
finished run.

:func:`augment.runs.read_run` reads a run as plain data (no family registry): its config and
record as JSON and the exact rows it was trained on (checked against the data manifest by
sha256); the audit, the evaluation and the report use that. :func:`load_run` adds the config
validated by the family's schema, and :func:`load_generator` the network with its (hash-checked)
weights: what sampling needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from augment.config import load_json
from augment.data.images import sha256_file
from augment.errors import DataError
from augment.output import atomic_path
from augment.generators import DataSpec, GeneratorModel, TrainConfig, build
from augment.runs import CONFIG, LOSS, RUN, WEIGHTS, read_run

__all__ = ["CONFIG", "LOSS", "RUN", "WEIGHTS", "GeneratorRun", "LoadedGenerator", "load_generator", "load_run", "save_weights"]


@dataclass
class GeneratorRun:
    """A finished generator run: ``rows`` are the data manifest's rows it was trained on, in
    training order (paths relative to ``data_dir``)."""

    path: Path
    config: TrainConfig
    spec: DataSpec
    run: dict[str, Any]
    data_dir: Path
    rows: pd.DataFrame

    @property
    def family(self) -> str:
        return self.config.generator.family


@dataclass
class LoadedGenerator:
    model: GeneratorModel
    config: TrainConfig
    spec: DataSpec
    run: dict[str, Any]
    weights_sha256: str
    info: GeneratorRun


def save_weights(state: dict[str, torch.Tensor], path: Path) -> str:
    """Atomic safetensors write; returns the file's sha256."""
    with atomic_path(path) as tmp:
        save_file(state, str(tmp))
    return sha256_file(path)


def load_run(run_dir: str | Path) -> GeneratorRun:
    """A finished generator run (:func:`augment.runs.read_run`) with its config validated by
    its family's schema and its data spec: what loading the network needs."""
    plain = read_run(run_dir)
    d = plain.path
    config = load_json(TrainConfig, d / CONFIG, what=f"`{d / CONFIG}`")
    try:
        spec = DataSpec.model_validate(plain.record["data_spec"])
    except ValueError:
        raise DataError(f"`{d / RUN}` is not a generator run record (corrupt or from another tool)") from None
    return GeneratorRun(d, config, spec, plain.record, plain.data_dir, plain.rows)


def load_generator(run_dir: str | Path, device: str | torch.device = "cpu") -> LoadedGenerator:
    """Load a finished generator run: its network with final weights, in eval mode."""
    info = load_run(run_dir)
    d, config, run, spec = info.path, info.config, info.run, info.spec
    digest = sha256_file(d / WEIGHTS)
    if digest != run.get("weights_sha256"):
        raise DataError(f"generator weights `{d / WEIGHTS}` do not match the sha256 recorded in its run.json")
    model = build(config.generator, spec)
    try:
        weights = load_file(d / WEIGHTS, device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise DataError(f"generator weights `{d / WEIGHTS}` are not a readable safetensors file "
                        f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    # A weight that is NaN or infinite samples all-black pairs with no error: refuse the run instead.
    broken = sorted(name for name, t in weights.items() if t.is_floating_point() and not bool(torch.isfinite(t).all()))
    if broken:
        raise DataError(f"generator weights `{d / WEIGHTS}` hold non-finite values (NaN or inf) in {len(broken)} tensor(s), "
                        f"first `{broken[0]}`; retrain the generator")
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        raise DataError(f"generator weights `{d / WEIGHTS}` do not fit its config ({str(exc).splitlines()[0]})") from None
    return LoadedGenerator(model.to(device).eval(), config, spec, run, digest, info)
