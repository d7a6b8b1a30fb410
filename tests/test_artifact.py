"""load_run: the one way to read a generator run, with the exact rows it was trained on."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest

from augment.errors import DataError
from augment.generators.artifact import load_run


def test_load_run_returns_the_recorded_training_rows(tiny_run):
    info = load_run(tiny_run)
    record = json.loads((tiny_run / "run.json").read_text())
    assert info.rows["id"].tolist() == [t["id"] for t in record["trained_on"]]
    assert info.rows["sha256"].tolist() == [t["sha256"] for t in record["trained_on"]]
    assert (info.rows["split"] == "train").all() and len(info.rows) == 24
    assert info.family == "cvae" and info.config.budget == 24 and info.spec.image_size == 16


def test_a_changed_dataset_or_a_corrupt_record_is_refused(tiny_run, phantom_dir, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(phantom_dir, data)
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    record = json.loads((run / "run.json").read_text())
    record["data_dir"] = str(data)
    (run / "run.json").write_text(json.dumps(record))
    assert load_run(run).data_dir == data
    df = pd.read_csv(data / "manifest.csv", dtype=str, keep_default_na=False)
    first = record["trained_on"][0]["id"]
    df.loc[df["id"] == first, "sha256"] = "0" * 64
    df.to_csv(data / "manifest.csv", index=False)
    with pytest.raises(DataError, match=f"changed since generator .* row {first} has another sha256"):
        load_run(run)
    (run / "run.json").write_text("{not json")
    with pytest.raises(DataError, match="is not a generator run record"):
        load_run(run)
