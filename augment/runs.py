"""A finished generator run read as plain data: no family registry, no network, no weights.

The audit, the evaluation, the report and the training manifest only need what a run *was*: its
config and record as JSON, the data folder it was trained on and the exact rows it saw. Reading
that through :func:`read_run` keeps them free of the generator families (sampling, which needs
the network, goes through :func:`augment.generators.artifact.load_generator`, which builds on
this). The rows are looked up in the data manifest the run recorded and must match the recorded
sha256 of every training image, so nobody downstream recomputes (or silently changes) the budget
subset. :func:`read_synthetic_record` reads a synthetic set's record (``augment sample``'s
``run.json``) the same way.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from augment.errors import DataError
from augment.output import read_json

CONFIG, WEIGHTS, RUN, LOSS = "config.json", "model.safetensors", "run.json", "loss.csv"


@dataclass(frozen=True)
class RunRecord:
    """A finished generator run as plain data. ``config`` is ``config.json`` (the TrainConfig as
    JSON), ``record`` its ``run.json``; ``rows`` are the data manifest's rows it was trained on,
    in training order (paths relative to ``data_dir``)."""

    path: Path
    config: dict[str, Any]
    record: dict[str, Any]
    data_dir: Path
    rows: pd.DataFrame

    @property
    def family(self) -> str:
        return str(self.config["generator"]["family"])

    @property
    def budget(self) -> int | None:
        return self.config.get("budget")

    @property
    def seed(self) -> int:
        return int(self.config.get("seed", 0))


def read_synthetic_record(syn_dir: str | Path, rows: pd.DataFrame | None = None) -> dict[str, Any]:
    """The ``run.json`` of a synthetic set made by ``augment sample`` (``rows``: its manifest,
    when loaded), checked: a folder that is not one (a real dataset, a generator run) or a corrupt
    record is a DataError naming it."""
    syn_dir = Path(syn_dir)
    not_synthetic = rows is not None and ("source" not in rows.columns or not (rows["source"] == "synthetic").all())
    if not_synthetic or not (syn_dir / "run.json").is_file():
        raise DataError(f"`{syn_dir}` is not a synthetic set made by `augment sample` (no run.json or rows without source=synthetic)")
    record = read_json(syn_dir / "run.json", "run record")
    trained = record.get("generator_trained_on_sha256")
    if (record.get("stage") != "sample" or not isinstance(record.get("generator_run"), str)
            or not isinstance(record.get("generator_sha256"), str)
            or not isinstance(trained, list) or not all(isinstance(t, str) for t in trained)):
        raise DataError(f"`{syn_dir / 'run.json'}` is not a sampling record (corrupt or from another tool)")
    return record


def run_stage(path: Path) -> str | None:
    """The ``stage`` a run.json records (None when it records none or is not a JSON object)."""
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    stage = record.get("stage") if isinstance(record, dict) else None
    return stage if isinstance(stage, str) else None


def _json_object(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text())
    if not isinstance(data, dict):
        raise ValueError(path.name)
    return data


def read_run(run_dir: str | Path) -> RunRecord:
    """Read a finished generator run without its weights (a DataError naming what is wrong: a
    missing or unfinished folder, a record from another stage or tool, training rows the data
    folder no longer has or whose images changed)."""
    from augment.data.manifest import load_data

    d = Path(run_dir)
    if not d.is_dir():
        raise DataError(f"generator folder `{d}` does not exist")
    missing = [f for f in (CONFIG, WEIGHTS, RUN) if not (d / f).is_file()]
    stage = run_stage(d / RUN) if (d / RUN).is_file() else None
    if stage not in (None, "train"):
        raise DataError(f"`{d}` is not a generator run (its run.json is from `augment {stage}`); "
                        "give the folder `augment train` wrote")
    if missing:
        hint = " (training did not finish; resume it with --resume)" if RUN in missing and (d / CONFIG).is_file() else ""
        raise DataError(f"generator folder `{d}` is incomplete: missing {', '.join(missing)}{hint}")
    try:
        config = _json_object(d / CONFIG)
        if not isinstance(config["generator"]["family"], str):
            raise ValueError("family")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError):
        raise DataError(f"`{d / CONFIG}` is not a generator config (corrupt or from another tool)") from None
    try:
        run = _json_object(d / RUN)
        trained_on = [(str(t["id"]), str(t["sha256"])) for t in run["trained_on"]]
        recorded_dir = Path(run["data_dir"])
        # What sampling reads: class names and the real count per class of the budget subset.
        names = {int(k): v for k, v in run["classes"].items() if isinstance(v, str)}
        counts = {int(k): v for k, v in run["class_counts"].items() if isinstance(v, int) and v >= 0}
        if len(names) != len(run["classes"]) or len(counts) != len(run["class_counts"]) or not names:
            raise ValueError("classes or class_counts")
        if not isinstance(run["weights_sha256"], str) or not isinstance(run["data_spec"], dict):
            raise ValueError("weights_sha256 or data_spec")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
        raise DataError(f"`{d / RUN}` is not a generator run record (corrupt or from another tool)") from None
    data_dir = recorded_dir if recorded_dir.is_dir() else Path(str(config.get("data", "")))
    manifest, _ = load_data(data_dir)
    by_id = manifest.set_index("id", drop=False)
    absent = [i for i, _ in trained_on if i not in by_id.index]
    if absent:
        raise DataError(f"generator `{d}` was trained on {len(absent)} row(s) that `{data_dir}` no longer has (e.g. {absent[0]})")
    rows = by_id.loc[[i for i, _ in trained_on]].reset_index(drop=True)
    changed = [i for (i, sha), now in zip(trained_on, rows["sha256"]) if sha != now]
    if changed:
        raise DataError(f"`{data_dir}` changed since generator `{d}` was trained: row {changed[0]} has another sha256")
    return RunRecord(d, config, run, data_dir, rows)
