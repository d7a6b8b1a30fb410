"""A generator run folder: self-describing, and loaded with one call.

``RUN/config.json`` (the TrainConfig), ``RUN/model.safetensors`` (final weights, EMA when
enabled), ``RUN/run.json`` (data spec, data manifest sha256, budget, seed, the sha256 of every
training image, versions, git commit, steps, wall time, weights sha256), ``RUN/loss.csv`` and
``RUN/state/`` (checkpoints for ``--resume``). ``run.json`` is written last: its presence marks a
finished run.

:func:`load_run` is the one way to read a run: its validated config, its record and the exact
rows it was trained on (as recorded at train time, checked against the data manifest by sha256),
so sampling, the audit, the evaluation and the report never recompute the budget subset.
:func:`load_generator` adds the network with its (hash-checked) weights.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from safetensors.torch import load_file, save_file

from augment.config import load_json
from augment.data.images import sha256_file
from augment.errors import DataError
from augment.output import atomic_path
from augment.generators import DataSpec, GeneratorModel, TrainConfig, build

CONFIG, WEIGHTS, RUN, LOSS = "config.json", "model.safetensors", "run.json", "loss.csv"


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
    """Read a finished generator run without its weights; its training rows are looked up in the
    data manifest it recorded and must match the recorded sha256 of every training image."""
    from augment.data.manifest import load_data

    d = Path(run_dir)
    if not d.is_dir():
        raise DataError(f"generator folder `{d}` does not exist")
    missing = [f for f in (CONFIG, WEIGHTS, RUN) if not (d / f).is_file()]
    stage = _stage(d / RUN) if (d / RUN).is_file() else None
    if stage not in (None, "train"):
        raise DataError(f"`{d}` is not a generator run (its run.json is from `augment {stage}`); "
                        "give the folder `augment train` wrote")
    if missing:
        hint = " (training did not finish; resume it with --resume)" if RUN in missing and (d / CONFIG).is_file() else ""
        raise DataError(f"generator folder `{d}` is incomplete: missing {', '.join(missing)}{hint}")
    config = load_json(TrainConfig, d / CONFIG, what=f"`{d / CONFIG}`")
    try:
        run = json.loads((d / RUN).read_text())
        spec = DataSpec.model_validate(run["data_spec"])
        trained_on = [(str(t["id"]), str(t["sha256"])) for t in run["trained_on"]]
        recorded_dir = Path(run["data_dir"])
        # What sampling reads: class names and the real count per class of the budget subset.
        names = {int(k): v for k, v in run["classes"].items() if isinstance(v, str)}
        counts = {int(k): v for k, v in run["class_counts"].items() if isinstance(v, int) and v >= 0}
        if len(names) != len(run["classes"]) or len(counts) != len(run["class_counts"]) or not names:
            raise ValueError("classes or class_counts")
        if not isinstance(run["weights_sha256"], str):
            raise ValueError("weights_sha256")
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
        raise DataError(f"`{d / RUN}` is not a generator run record (corrupt or from another tool)") from None
    data_dir = recorded_dir if recorded_dir.is_dir() else Path(config.data)
    manifest, _ = load_data(data_dir)
    by_id = manifest.set_index("id", drop=False)
    absent = [i for i, _ in trained_on if i not in by_id.index]
    if absent:
        raise DataError(f"generator `{d}` was trained on {len(absent)} row(s) that `{data_dir}` no longer has (e.g. {absent[0]})")
    rows = by_id.loc[[i for i, _ in trained_on]].reset_index(drop=True)
    changed = [i for (i, sha), now in zip(trained_on, rows["sha256"]) if sha != now]
    if changed:
        raise DataError(f"`{data_dir}` changed since generator `{d}` was trained: row {changed[0]} has another sha256")
    return GeneratorRun(d, config, spec, run, data_dir, rows)


def _stage(path: Path) -> str | None:
    """The ``stage`` a run.json records (None when it records none or is not a JSON object)."""
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    stage = record.get("stage") if isinstance(record, dict) else None
    return stage if isinstance(stage, str) else None


def load_generator(run_dir: str | Path, device: str | torch.device = "cpu") -> LoadedGenerator:
    """Load a finished generator run: its network with final weights, in eval mode."""
    info = load_run(run_dir)
    d, config, run, spec = info.path, info.config, info.run, info.spec
    digest = sha256_file(d / WEIGHTS)
    if digest != run.get("weights_sha256"):
        raise DataError(f"generator weights `{d / WEIGHTS}` do not match the sha256 recorded in its run.json")
    model = build(config.generator, spec)
    try:
        model.load_state_dict(load_file(d / WEIGHTS, device=str(device)))
    except RuntimeError as exc:
        raise DataError(f"generator weights `{d / WEIGHTS}` do not fit its config ({str(exc).splitlines()[0]})") from None
    return LoadedGenerator(model.to(device).eval(), config, spec, run, digest, info)
