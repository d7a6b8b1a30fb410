"""Sampling under a balancing manifest: exact counts, provenance, byte-exact regeneration,
resume after a real kill, 2-process sharding, filtering, export, and the bad-input rules."""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from augment.api import export_folder, training_manifest
from augment.config import validate
from augment.data.images import read_mask, sha256_file, write_png
from augment.data.manifest import load_data, read_manifest, validate_manifest
from augment.errors import AugmentError, ConfigError, DataError
from augment import sampling
from augment.sampling import SampleConfig, passes, regenerate, sample
from tests.conftest import augment_cmd, kill_when, run_cli, run_ddp

ROOT = Path(__file__).resolve().parents[1]


def _cfg(run, out, balance=None, **kw):
    return validate(SampleConfig, {"generator": run, "out": out, "balance": balance or {"strategy": "match_max"},
                                   "batch_size": 4, **kw}, "sample")


@pytest.fixture(scope="module")
def syn(tiny_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("syn") / "syn"
    sample(_cfg(tiny_run, out, {"strategy": "ratio", "ratio": 1.0}), echo=lambda *_: None)
    return out


def test_counts_follow_the_plan_and_rows_carry_provenance(syn, tiny_run):
    df, classes = load_data(syn, check_files=True)
    run = json.loads((tiny_run / "run.json").read_text())
    real = {int(k): v for k, v in run["class_counts"].items()}
    assert df["label"].value_counts().to_dict() == real  # ratio 1: one synthetic per real
    assert df["id"].is_unique and (df["split"] == "train").all()
    assert (df["source"] == "synthetic").all() and (df["generator"] == "cvae").all()
    assert (df["generator_sha256"] == run["weights_sha256"]).all()
    assert df["seed"].astype(int).nunique() == len(df)
    settings = json.loads(df["sampler"].iloc[0])
    assert settings == {"attempt": 0, "batch_size": 4, "mask_source": "generated", "temperature": 1.0}
    validate_manifest(df, syn, classes, check_files=True, check_hashes=True)
    info = json.loads((syn / "run.json").read_text())
    assert info["n_synthetic"] == len(df) and info["generator_sha256"] == run["weights_sha256"]
    assert not (syn / ".journal").exists()
    assert pd.read_csv(syn / "plan.csv")["synthetic"].sum() == len(df)


def test_one_row_regenerates_byte_for_byte(syn, tmp_path):
    df = read_manifest(syn)
    for rid in df["id"].iloc[[0, 5, -1]]:
        image, mask = regenerate(syn, rid)
        write_png(image, tmp_path / "i.png")
        write_png(mask, tmp_path / "m.png")
        row = df[df["id"] == rid].iloc[0]
        assert (tmp_path / "i.png").read_bytes() == (syn / row["image"]).read_bytes()
        assert (tmp_path / "m.png").read_bytes() == (syn / row["mask"]).read_bytes()


def test_same_seed_same_set_other_seed_other_set(syn, tiny_run, tmp_path):
    again = sample(_cfg(tiny_run, tmp_path / "a", {"strategy": "ratio", "ratio": 1.0}, batch_size=3), echo=lambda *_: None)
    other = sample(_cfg(tiny_run, tmp_path / "b", {"strategy": "ratio", "ratio": 1.0}, seed=1), echo=lambda *_: None)
    a, b, c = read_manifest(syn), read_manifest(again), read_manifest(other)
    assert a["sha256"].tolist() == b["sha256"].tolist()  # batch size does not change any pair
    assert a["sha256"].tolist() != c["sha256"].tolist()


def test_rerun_of_a_finished_run_is_a_no_op_and_other_runs_are_refused(syn, tiny_run):
    before = (syn / "manifest.csv").read_bytes()
    msgs = []
    sample(_cfg(tiny_run, syn, {"strategy": "ratio", "ratio": 1.0}), echo=msgs.append)
    assert "already complete" in msgs[0] and (syn / "manifest.csv").read_bytes() == before
    with pytest.raises(DataError, match=r"already holds a different sampling run"):
        sample(_cfg(tiny_run, syn, {"strategy": "match_max"}), echo=lambda *_: None)


def test_not_a_synthetic_folder_is_refused(tiny_run, tmp_path):
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "x.txt").write_text("x")
    with pytest.raises(DataError, match=r"is not empty and is not a synthetic set"):
        sample(_cfg(tiny_run, tmp_path / "o"), echo=lambda *_: None)


def test_incomplete_or_tampered_generator_is_refused(tiny_run, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_run, broken)
    (broken / "model.safetensors").unlink()
    with pytest.raises(DataError, match=r"is incomplete: missing model.safetensors"):
        sample(_cfg(broken, tmp_path / "o"), echo=lambda *_: None)
    shutil.copytree(tiny_run, tmp_path / "tampered")
    w = tmp_path / "tampered" / "model.safetensors"
    data = bytearray(w.read_bytes())
    data[-1] ^= 1
    w.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"do not match the sha256 recorded in its run.json"):
        sample(_cfg(tmp_path / "tampered", tmp_path / "o"), echo=lambda *_: None)
    assert not (tmp_path / "o").exists()


def _resealed(run: Path, dst: Path, weights: bytes) -> Path:
    """A copy of ``run`` whose final weights are ``weights``, with run.json's sha256 updated to match
    (what someone who edits the weights on purpose, or a tool that rewrites them, leaves)."""
    shutil.copytree(run, dst)
    (dst / "model.safetensors").write_bytes(weights)
    record = json.loads((dst / "run.json").read_text())
    record["weights_sha256"] = sha256_file(dst / "model.safetensors")
    (dst / "run.json").write_text(json.dumps(record))
    return dst


@pytest.mark.parametrize("damage", ["nan", "inf", "truncated", "not-safetensors"])
def test_final_weights_that_are_non_finite_or_unreadable_are_refused_even_with_a_matching_sha256(damage, tiny_run, tmp_path):
    from safetensors.torch import load_file, save_file

    weights = (tiny_run / "model.safetensors").read_bytes()
    if damage in ("nan", "inf"):
        tensors = load_file(tiny_run / "model.safetensors")
        name = sorted(k for k, v in tensors.items() if v.is_floating_point())[-1]
        tensors[name].view(-1)[0] = float(damage)
        save_file(tensors, tmp_path / "w.safetensors")
        weights = (tmp_path / "w.safetensors").read_bytes()
    else:
        weights = weights[: len(weights) // 2] if damage == "truncated" else b"PK\x03\x04 a zip file"
    run = _resealed(tiny_run, tmp_path / "gen", weights)
    message = "hold non-finite values" if damage in ("nan", "inf") else "are not a readable safetensors file"
    res = run_cli("sample", "--generator", run, "--balance", ROOT / "manifests" / "match_max.yaml", "--out", tmp_path / "o")
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and message in res.stderr, res.stderr
    assert not (tmp_path / "o").exists()


def test_non_finite_pixels_from_a_generator_are_never_written(tiny_run, tmp_path, monkeypatch):
    import torch

    from augment.generators.base import Sample

    def broken(self, labels, generators, masks=None, settings=None):
        n, side = len(labels), 16
        return Sample(torch.full((n, 1, side, side), float("nan")), torch.zeros(n, side, side, dtype=torch.int64), labels)

    from augment.generators.cvae import CVAE
    monkeypatch.setattr(CVAE, "sample", broken)
    with pytest.raises(DataError, match=r"produced non-finite pixels \(NaN or inf\) for class"):
        sample(_cfg(tiny_run, tmp_path / "o"), echo=lambda *_: None)
    assert not (tmp_path / "o").exists()


def test_unknown_class_in_manifest(tiny_run, tmp_path):
    with pytest.raises(ConfigError, match=r"`target` names class 7"):
        sample(_cfg(tiny_run, tmp_path / "o", {"strategy": "target", "target": {7: 3}}), echo=lambda *_: None)
    assert not (tmp_path / "o").exists()


def test_filter_predicate():
    ranges = {0: (0.0, 0.0), 1: (0.05, 0.2)}
    empty, small, ok = np.zeros((10, 10), np.uint8), np.zeros((10, 10), np.uint8), np.zeros((10, 10), np.uint8)
    small[0, 0] = 1
    ok[:3, :4] = 1
    assert passes(empty, 0, ranges) and not passes(ok, 0, ranges)  # normal class: mask must stay empty
    assert not passes(empty, 1, ranges) and not passes(small, 1, ranges) and passes(ok, 1, ranges)


def test_filter_drops_redraws_and_reports(tiny_run, tmp_path, monkeypatch):
    # A predicate that rejects every other draw: many pairs need one or more redraws.
    cfg = _cfg(tiny_run, tmp_path / "f", {"strategy": "ratio", "ratio": 1.0}, filter=True)
    calls = []
    monkeypatch.setattr(sampling, "passes", lambda m, l, r: calls.append(l) or len(calls) % 2 == 0)
    out = sample(cfg, echo=lambda *_: None)
    df = read_manifest(out)
    info = json.loads((out / "run.json").read_text())
    assert len(df) == sum(info["plan"][i]["synthetic"] for i in range(3))  # the plan is still met
    attempts = df["sampler"].map(lambda s: json.loads(s)["attempt"])
    assert attempts.sum() == sum(info["dropped_by_filter"].values()) > 0
    assert len(calls) == len(df) + attempts.sum()
    # a redrawn pair regenerates from its recorded seed, like any other
    rid = df["id"][attempts > 0].iloc[0]
    image, _ = regenerate(out, rid)
    write_png(image, tmp_path / "r.png")
    assert sha256_file(tmp_path / "r.png") == df.loc[df["id"] == rid, "sha256"].iloc[0]


def test_filter_on_real_predicate_keeps_only_plausible_masks(tiny_run, tmp_path, monkeypatch):
    ranges = sampling.lesion_ranges(sampling.load_generator(tiny_run))
    assert ranges[0] == (0.0, 0.0) and ranges[1][0] > 0 and ranges[2][0] > 0
    try:
        out = sample(_cfg(tiny_run, tmp_path / "f", {"strategy": "ratio", "ratio": {0: 1.0}}, filter=True, max_attempts=50),
                     echo=lambda *_: None)
    except AugmentError as exc:  # a 10-step model may never draw an empty mask; then it must say so
        assert "cannot meet the filter" in str(exc) and not (tmp_path / "f").exists()
        return
    for r in read_manifest(out).itertuples():
        assert read_mask(out / r.mask).max() == 0


def _args(run, out, manifest, *extra):
    return ["sample", "--generator", run, "--balance", manifest, "--out", out, "--batch-size", "4", *extra]


@pytest.fixture(scope="module")
def big_manifest(tmp_path_factory) -> Path:
    """A ratio manifest planning 600 pairs, so that a kill lands mid-way (in a temporary folder:
    pytest-xdist workers may run this module's tests at once)."""
    path = tmp_path_factory.mktemp("manifests") / "ratio_big.yaml"
    path.write_text("strategy: ratio\nratio: 25\nseed: 3\n")
    return path


def test_kill_and_resume_ends_with_exactly_the_plan(tiny_run, big_manifest, tmp_path):
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    journal = killed / ".journal" / "rank0.jsonl"
    rc = kill_when(augment_cmd(*_args(tiny_run, killed, big_manifest)),
                   lambda: journal.is_file() and journal.read_text().count("\n") >= 40)
    assert rc == -signal.SIGKILL, "sampling finished before it could be killed"
    assert not (killed / "manifest.csv").exists()
    done_before = journal.read_text().count("\n")

    res = run_cli(*_args(tiny_run, killed, big_manifest, "--resume"))
    assert res.returncode == 0, res.stderr
    run_cli(*_args(tiny_run, clean, big_manifest), check=True)

    df = read_manifest(killed)
    assert df["id"].is_unique and len(df) == 600 and done_before < 600
    assert not list((killed / "images").glob(".*")) and not list((killed / "masks").glob(".*"))
    assert len(list((killed / "images").iterdir())) == 600 == len(list((killed / "masks").iterdir()))
    validate_manifest(df, killed, load_data(killed)[1], check_files=True, check_hashes=True)
    assert (killed / "manifest.csv").read_bytes() == (clean / "manifest.csv").read_bytes()


def test_two_processes_give_the_single_process_manifest(tiny_run, big_manifest, tmp_path):
    single, double = tmp_path / "one", tmp_path / "two"
    run_cli(*_args(tiny_run, single, big_manifest), check=True)
    res = run_ddp(*_args(tiny_run, double, big_manifest))
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads((double / "run.json").read_text())["processes"] == 2
    assert (single / "manifest.csv").read_bytes() == (double / "manifest.csv").read_bytes()


def test_export_folder_and_combined_training_manifest(syn, phantom_dir, tiny_run, tmp_path):
    out = export_folder(syn, tmp_path / "folder")
    labels = pd.read_csv(out / "labels.csv")
    assert {"id", "label", "split", "generator_sha256", "seed"} <= set(labels.columns)
    assert (out / "images" / f"{labels['id'][0]}.png").read_bytes() == (syn / "images" / f"{labels['id'][0]}.png").read_bytes()
    from augment.api import prepare
    from augment.config import PrepareConfig

    back, _ = load_data(prepare(PrepareConfig(source=str(out), out=tmp_path / "back")).out, check_files=True)
    assert len(back) == len(read_manifest(syn))

    gen = json.loads((tiny_run / "run.json").read_text())
    combined = training_manifest(phantom_dir, syn, tmp_path / "combined")
    df, _ = load_data(combined, check_files=True)
    assert (df["source"] == "real").sum() == 24 and (df["source"] == "synthetic").sum() == len(read_manifest(syn))
    real_hashes = set(df.loc[df["source"] == "real", "sha256"])
    assert real_hashes == {t["sha256"] for t in gen["trained_on"]}  # the same budget subset
    assert (df.loc[df["source"] == "real", "generator"] == "").all()


def test_cli_sample_end_to_end(tiny_run, tmp_path):
    manifest = Path(__file__).resolve().parents[1] / "manifests" / "rare_only.yaml"
    res = run_cli("sample", "--generator", tiny_run, "--balance", manifest, "--out", tmp_path / "s",
                  env={**os.environ, "AUGMENT_PROGRESS_SECONDS": "0"})
    assert res.returncode == 0, res.stderr
    assert "class" in res.stdout and "synthetic" in res.stdout and "wrote" in res.stdout
    df = read_manifest(tmp_path / "s")
    assert set(df["label"]) == {2}
    # not a terminal: plain progress lines on stderr (every pair here, as the interval is 0), never on stdout
    n = len(df)
    assert f"sample: 1/{n} pairs" in res.stderr and "ETA" in res.stderr and "pairs/s" in res.stderr
    assert f"sample: {n}/{n} pairs done in" in res.stderr and "sample: " not in res.stdout
    res = run_cli("sample", "--generator", tmp_path / "nope", "--balance", manifest, "--out", tmp_path / "t")
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "does not exist" in res.stderr


# --- sampler settings and mask-conditioned sampling -------------------------------------------


def test_sampler_settings_are_validated_by_the_family_and_recorded(tiny_run, tmp_path):
    out = sample(_cfg(tiny_run, tmp_path / "t", {"strategy": "ratio", "ratio": 1.0}, sampler={"temperature": 0.5}),
                 echo=lambda *_: None)
    df = read_manifest(out)
    assert {json.loads(s)["temperature"] for s in df["sampler"]} == {0.5}
    assert json.loads((out / "run.json").read_text())["sampler"] == {"temperature": 0.5}
    cold = read_manifest(sample(_cfg(tiny_run, tmp_path / "c", {"strategy": "ratio", "ratio": 1.0}), echo=lambda *_: None))
    assert df["sha256"].tolist() != cold["sha256"].tolist()  # the setting reaches the model
    image, _ = regenerate(out, df["id"].iloc[0])
    write_png(image, tmp_path / "r.png")
    assert sha256_file(tmp_path / "r.png") == df["sha256"].iloc[0]
    with pytest.raises(ConfigError, match=r"unknown key `steps` \(allowed: temperature\)"):
        sample(_cfg(tiny_run, tmp_path / "u", sampler={"steps": 20}), echo=lambda *_: None)
    with pytest.raises(ConfigError, match=r"`temperature`"):
        sample(_cfg(tiny_run, tmp_path / "n", sampler={"temperature": -1}), echo=lambda *_: None)
    assert not (tmp_path / "u").exists() and not (tmp_path / "n").exists()


def test_cli_set_reaches_the_balance_and_the_sampler(tiny_run, tmp_path):
    manifest = Path(__file__).resolve().parents[1] / "manifests" / "match_max.yaml"
    res = run_cli("sample", "--generator", tiny_run, "--balance", manifest, "--out", tmp_path / "s",
                  "--set", "balance.classes=[2]", "--set", "sampler.temperature=0.7")
    assert res.returncode == 0, res.stderr
    df = read_manifest(tmp_path / "s")
    assert set(df["label"]) == {2} and {json.loads(s)["temperature"] for s in df["sampler"]} == {0.7}


@pytest.fixture(scope="module")
def mask_syn(tiny_mask_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("mask_syn") / "syn"
    sample(_cfg(tiny_mask_run, out, {"strategy": "ratio", "ratio": 2.0, "mask_source": "real"}), echo=lambda *_: None)
    return out


def test_real_masks_come_from_the_budget_jittered_and_used_evenly(mask_syn, tiny_mask_run):
    from augment.generators.artifact import load_run
    from augment.masks import JitterConfig, jitter_mask

    info = load_run(tiny_mask_run)
    df = read_manifest(mask_syn)
    assert set(df["source_mask_id"]) <= set(info.rows["id"])  # never a val/test mask
    by_label = info.rows.set_index("id")["label"]
    assert (df["source_mask_id"].map(by_label) == df["label"]).all()  # a mask of the same class
    # ratio 2: every real mask of a class is used exactly twice
    assert (df.groupby("source_mask_id").size() == 2).all() and df["source_mask_id"].nunique() == len(info.rows)
    assert {json.loads(s)["mask_source"] for s in df["sampler"]} == {"real"}
    moved = 0
    for r in df.itertuples():
        src = read_mask(info.data_dir / info.rows.set_index("id").loc[r.source_mask_id, "mask"])
        expected = jitter_mask(src, JitterConfig(), int(r.jitter_seed))
        assert np.array_equal(read_mask(mask_syn / r.mask), expected)  # the written mask is the jittered real one
        moved += not np.array_equal(expected, src)
    assert moved > len(df) // 2


def test_mask_conditioned_row_regenerates_byte_for_byte(mask_syn, tmp_path):
    df = read_manifest(mask_syn)
    for rid in df["id"].iloc[[0, -1]]:
        image, mask = regenerate(mask_syn, rid)
        write_png(image, tmp_path / "i.png")
        write_png(mask, tmp_path / "m.png")
        row = df[df["id"] == rid].iloc[0]
        assert (tmp_path / "i.png").read_bytes() == (mask_syn / row["image"]).read_bytes()
        assert (tmp_path / "m.png").read_bytes() == (mask_syn / row["mask"]).read_bytes()


def test_mask_source_must_fit_the_generator(tiny_run, tiny_mask_run, tmp_path):
    with pytest.raises(ConfigError, match=r"makes images for given masks; set `mask_source: real`"):
        sample(_cfg(tiny_mask_run, tmp_path / "a"), echo=lambda *_: None)
    with pytest.raises(ConfigError, match=r"`mask_source: real` needs a mask-conditioned generator"):
        sample(_cfg(tiny_run, tmp_path / "b", {"strategy": "match_max", "mask_source": "real"}), echo=lambda *_: None)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
