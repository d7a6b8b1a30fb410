"""The VAE plausibility score and `augment score`: planted anomalies rank first."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from augment.plausibility import ScorerConfig, _errors, fit_scorer
from tests.conftest import run_cli, set_copy


@pytest.fixture
def planted(phantom_dir, tmp_path):
    """The phantom set with two train images replaced: a 0/255 checkerboard and uniform noise (a corrupt file)."""
    data = tmp_path / "data"
    shutil.copytree(phantom_dir, data)
    df = pd.read_csv(data / "manifest.csv")
    picks = df[df["split"] == "train"].iloc[[3, 11]]
    size = np.asarray(Image.open(data / picks["image"].iloc[0])).shape[0]
    board = (np.indices((size, size)).sum(0) % 2 * 255).astype(np.uint8)
    noise = np.random.default_rng(0).integers(0, 256, (size, size), dtype=np.uint8)
    for path, pixels in zip(picks["image"], (board, noise)):
        Image.fromarray(pixels).save(data / path)
    return data, picks["id"].tolist()


def test_scorer_is_deterministic_and_ranks_unlike_images_higher():
    torch.manual_seed(0)
    smooth = torch.linspace(0, 1, 16).view(1, 1, 1, 16).expand(40, 1, 16, 16) * torch.rand(40, 1, 1, 1)
    a, b = fit_scorer(smooth, ScorerConfig(steps=60), 3), fit_scorer(smooth, ScorerConfig(steps=60), 3)
    assert np.array_equal(a.score(smooth), b.score(smooth)) and np.array_equal(a.own, b.own) and len(a.models) == 2
    noise = torch.rand(5, 1, 16, 16)
    assert a.score(noise).min() > np.percentile(a.own, 95)
    # each image's own score is one fold VAE's error on it, and the folds split the images
    per_model = np.stack([_errors(m, smooth) for m in a.models])
    match = np.isclose(per_model, a.own[None])
    assert match.any(0).all() and 0 < match[0].sum() < len(smooth)


def test_score_cli_ranks_planted_anomalies_first(planted, tmp_path):
    data, ids = planted
    out = tmp_path / "scores"
    res = run_cli("score", data, "--out", out, "--set", "scorer.steps=100", "--top", "3")
    assert res.returncode == 0, res.stderr[-2000:]
    table = pd.read_csv(out / "scores.csv")
    assert set(table["id"].head(2)) == set(ids) and table["rank"].tolist() == list(range(1, len(table) + 1))
    assert len(table) == len(pd.read_csv(data / "manifest.csv")) and table["score"].is_monotonic_decreasing
    assert ids[0] in res.stdout and "most anomalous first" in res.stdout
    record = json.loads((out / "run.json").read_text())
    assert record["stage"] == "score" and record["n_images"] == len(table)
    again = run_cli("score", data, "--out", out, "--set", "scorer.steps=100", "--top", "3")
    assert again.returncode == 2 and "already exists" in again.stderr and "Traceback" not in again.stderr
    train_only = run_cli("score", data, "--out", tmp_path / "t", "--split", "train", "--set", "scorer.steps=5")
    assert train_only.returncode == 0
    assert set(pd.read_csv(tmp_path / "t" / "scores.csv")["split"]) == {"train"}


def test_score_refuses_mixed_sizes_and_unknown_keys(planted, tmp_path):
    data, _ = planted
    df = pd.read_csv(data / "manifest.csv")
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(data / df["image"].iloc[-1])
    res = run_cli("score", data, "--out", tmp_path / "s")
    assert res.returncode == 2 and "mixes image sizes" in res.stderr and "--image-size" in res.stderr
    bad = run_cli("score", data, "--out", tmp_path / "s", "--set", "scorer.stpes=3")
    assert bad.returncode == 2 and "scorer.stpes" in bad.stderr
    assert not (tmp_path / "s").exists()


# ---- settings' ranges, tiny and degenerate sets: one clear line or a finite result, never NaN ----

@pytest.mark.parametrize("key", ["lr", "image_sigma"])
@pytest.mark.parametrize("value", [0, -1, 1e300, 1e-300, float("nan"), float("inf")])
def test_scorer_float_settings_outside_their_range_are_one_config_error(key, value, tmp_path):
    from augment.config import validate
    from augment.errors import ConfigError
    from augment.plausibility import ScoreConfig

    with pytest.raises(ConfigError, match=rf"^score: `scorer\.{key}`") as err:
        validate(ScoreConfig, {"data": tmp_path, "out": tmp_path / "o", "scorer": {key: value}}, "score")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("setting", ["scorer.lr=1e-300", "scorer.image_sigma=1e300", "scorer.lr=nan"])
def test_scorer_settings_out_of_range_at_the_cli(phantom_dir, tmp_path, setting):
    res = run_cli("score", phantom_dir, "--out", tmp_path / "s", "--set", setting)
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert setting.split("=")[0] in res.stderr and not (tmp_path / "s").exists()


@pytest.mark.parametrize("n", [1, 2, 3])
def test_score_with_too_few_images_is_one_clear_line(phantom_dir, tmp_path, n):
    data = set_copy(phantom_dir, tmp_path / "data", keep=n)
    res = run_cli("score", data, "--out", tmp_path / "s", "--set", "scorer.steps=2")
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert f"has {n} image(s) in split `all`; the scorer needs at least 4" in res.stderr and not (tmp_path / "s").exists()


@pytest.mark.parametrize("fill", [0, 255])
def test_constant_images_get_finite_scores(phantom_dir, tmp_path, fill):
    from augment.config import validate
    from augment.plausibility import ScoreConfig, score

    data = set_copy(phantom_dir, tmp_path / "data", keep=12, fill=fill)
    score(validate(ScoreConfig, {"data": data, "out": tmp_path / "s", "scorer": {"steps": 20}}, "score"))
    table = pd.read_csv(tmp_path / "s" / "scores.csv")
    assert len(table) == 12 and np.isfinite(table["score"]).all()
    record = json.loads((tmp_path / "s" / "run.json").read_text())
    assert all(np.isfinite(record[k]) for k in ("score_p95", "median_score"))


def test_a_diverged_scorer_is_one_clear_error_and_writes_nothing(phantom_dir, tmp_path, monkeypatch):
    from augment.config import validate
    from augment.errors import DataError
    from augment.plausibility import ScoreConfig, _train, score
    from augment import plausibility

    def diverged(images, cfg, seed):
        model = _train(images, cfg.model_copy(update={"steps": 1}), seed)
        with torch.no_grad():
            next(model.parameters()).fill_(float("nan"))  # what an exploding loss leaves behind
        return model

    monkeypatch.setattr(plausibility, "_train", diverged)
    data = set_copy(phantom_dir, tmp_path / "data", keep=8)
    with pytest.raises(DataError, match=r"^the plausibility scorer's training diverged .*lower scorer\.lr"):
        score(validate(ScoreConfig, {"data": data, "out": tmp_path / "s"}, "score"))
    assert not (tmp_path / "s").exists()
