"""The evaluation stage refuses what would make its numbers wrong (issue 24): settings outside
their range, a task model that diverged, metrics that are undefined on the test split, empty
synthetic sets, val/test images among the training data, and inputs replaced under a resumed
evaluation. Each refusal is one stderr line and exit code 2, and leaves the output folder absent
or as it was."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image, PngImagePlugin

from augment.cli import main
from augment.config import validate
from augment.data.images import sha256_file
from augment.data.manifest import read_manifest
from augment.errors import DataError
from augment.evaluate import EvaluateConfig, evaluate
from augment.sampling import SampleConfig, sample
from tests.conftest import TINY_TASK, write_folder

ROOT = Path(__file__).resolve().parents[1]
EVAL = ["--set", "seeds=[0]", "--set", "segmentation.steps=2", "--set", "segmentation.base_channels=4",
        "--set", "segmentation.eval_every=1"]
QUIET = lambda *_: None  # noqa: E731


def _sample(run: Path, out: Path, seed: int = 0) -> Path:
    sample(validate(SampleConfig, {"generator": run, "out": out, "balance": {"strategy": "match_max"}, "seed": seed}, "s"),
           echo=QUIET)
    return out


@pytest.fixture(scope="module")
def syn(tiny_run, tmp_path_factory) -> Path:
    return _sample(tiny_run, tmp_path_factory.mktemp("rel") / "syn")


def _snapshot(path: Path) -> dict[str, bytes] | None:
    if not path.exists():
        return None
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def _refused(argv: list[str], capsys, needle: str) -> str:
    """Run the CLI; it must end with exit 2 and exactly one stderr line holding ``needle``."""
    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert rc == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert needle in lines[0], lines[0]
    return lines[0]


# ---- 1a. float settings are finite and inside a stated range ----------------------------------

@pytest.mark.parametrize("key,value,needle", [
    ("recipes.w.synthetic_weight", ".inf", "recipes.w.synthetic_weight"),
    ("recipes.w.synthetic_weight", "1e9", "in [0.001, 100]"),
    ("recipes.w.synthetic_weight", "1e-300", "in [0.001, 100]"),
    ("recipes.w.synthetic_weight", "0", "in [0.001, 100]"),
    ("recipes.w.synthetic_weight", "-1", "in [0.001, 100]"),
    ("recipes.w.filter_drop", "1", "in [0, 1)"),
    ("recipes.w.filter_drop", "-0.1", "in [0, 1)"),
    ("recipes.w.filter_percentile", "101", "in (0, 100]"),
    ("recipes.w.filter_percentile", "0", "in (0, 100]"),
    ("recipes.w.pretrain_share", "1", "in (0, 1)"),
    ("segmentation.lr", "0", "in [1e-07, 1]"),
    ("segmentation.lr", "1e-300", "in [1e-07, 1]"),
    ("classification.lr", "1e6", "in [1e-07, 1]"),
    ("segmentation.lr", ".nan", "segmentation.lr"),
    ("seeds", "[-1]", "seeds"),
])
def test_float_settings_outside_their_range_are_refused(phantom_dir, tmp_path, capsys, key, value, needle):
    out = tmp_path / "out"
    line = _refused(["evaluate", "--data", phantom_dir, "--out", out, "--budget", "12", *EVAL, "--set", f"{key}={value}"],
                    capsys, needle)
    assert f"`{key}" in line
    assert not out.exists()


def test_fraction_recipe_range_is_stated(phantom_dir, tmp_path):
    from augment.errors import ConfigError

    with pytest.raises(ConfigError, match=r"`recipes\.f\.synthetic_fraction`: must be a finite number in \(0, 1\)"):
        validate(EvaluateConfig, {"data": phantom_dir, "out": tmp_path / "x",
                                  "recipes": {"f": {"mix": "fraction", "synthetic_fraction": 1.5}}}, "e")


# ---- 1b. a diverged task model stops the run, naming where ------------------------------------

def _toy():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(8, 1, 16, 16, generator=g)
    m = (x[:, 0] > 0.7).to(torch.int64)
    y = torch.zeros(8, dtype=torch.int64)
    return x, m, y


def test_fit_stops_on_a_non_finite_loss():
    from augment.downstream import TASKS, Diverged, Shapes, TaskConfig, fit

    x, m, y = _toy()
    cfg = TaskConfig(steps=4, batch_size=4, base_channels=4)
    with pytest.raises(Diverged, match=r"the loss is nan at step 1 of 4") as info:
        fit(TASKS["segmentation"], Shapes(1, 1, 2), lambda idx: (x[idx], m[idx], y[idx]), 8, y, cfg, 0,
            weights=np.full(8, np.inf))
    assert info.value.step == 1 and isinstance(info.value, DataError)


def test_fit_stops_when_the_weights_stop_being_finite():
    """A finite loss whose gradient is not finite (sqrt at 0) leaves NaN weights after the step."""
    from augment.downstream import Diverged, Shapes, Task, TaskConfig, fit

    def loss(shapes, labels):
        return lambda model, x, m, y, w=None: torch.sqrt((model.weight - model.weight.detach()).abs()).sum()

    task = Task("toy", lambda s, w: torch.nn.Linear(2, 2), loss, lambda *a: {"v": 0.0}, "v", ("v",), False)
    y = torch.zeros(4, dtype=torch.int64)
    with pytest.raises(Diverged, match=r"weights are not finite after step 1 of 3"):
        fit(task, Shapes(1, 2, 2), lambda idx: (torch.zeros(len(idx), 2), None, y[idx]), 4, y, TaskConfig(steps=3, batch_size=2), 0)


def test_a_diverged_recipe_is_named_and_nothing_is_written(phantom_dir, syn, tmp_path):
    from augment.recipes import RecipeConfig

    # a weight the settings now refuse, built around them: the training loop must still stop
    bad = RecipeConfig.model_construct(**{**RecipeConfig().model_dump(), "synthetic_weight": float("inf")})
    cfg = validate(EvaluateConfig, {"data": phantom_dir, "synthetic": syn, "out": tmp_path / "ev", "arms": [], "seeds": [3],
                                    "segmentation": TINY_TASK, "recipes": {"w": bad}}, "e")
    with pytest.raises(DataError, match=r"segmentation recipe `w` seed 3: the loss is nan at step 1 of 6; "
                                        r"lower segmentation\.lr or recipes\.w\.synthetic_weight"):
        evaluate(cfg, echo=QUIET)
    assert not (tmp_path / "ev").exists()


def test_a_non_finite_metric_is_never_written(phantom_dir, tmp_path, monkeypatch, capsys):
    import augment.downstream

    real = augment.downstream.seg_metrics

    def broken(pred, target):
        return {**real(pred, target), "dice": float("nan")}

    out = tmp_path / "out"
    assert main(["evaluate", "--data", str(phantom_dir), "--out", str(out), "--budget", "12", "--set", "arms=[real]", *EVAL]) == 0
    before = _snapshot(out)
    monkeypatch.setattr(augment.downstream, "seg_metrics", broken)
    _refused(["evaluate", "--data", phantom_dir, "--out", out, "--budget", "12", "--set", "arms=[real,real+classic]", *EVAL],
             capsys, "segmentation arm `real+classic` seed 0: test metric dice is nan")
    assert _snapshot(out) == before  # no result file, and the folder's config and results as they were


# ---- 2. metrics a test split cannot define ---------------------------------------------------

def _rank_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Mann-Whitney AUC with tied scores counted half (sklearn's roc_auc_score for one class)."""
    from scipy.stats import rankdata

    r = rankdata(scores)
    n1, n0 = positive.sum(), (~positive).sum()
    return float((r[positive].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def test_auroc_is_macro_one_vs_rest_and_undefined_without_every_class():
    from augment.downstream import cls_metrics

    g = torch.Generator().manual_seed(1)
    logits = torch.randn(30, 3, generator=g)
    labels = torch.tensor([0, 1, 2] * 10)
    probs = logits.softmax(1).numpy()
    expected = np.mean([_rank_auc(probs[:, c], labels.numpy() == c) for c in range(3)])
    m = cls_metrics(logits, labels, 3, rare=2)
    assert m["auroc"] == pytest.approx(expected, abs=1e-6) and m["minority_recall"] is not None
    # class 2 has no test image: AUROC over all classes and the recall of class 2 are undefined, not 0
    m = cls_metrics(logits[labels < 2], labels[labels < 2], 3, rare=2)
    assert m["auroc"] is None and m["minority_recall"] is None
    assert m["balanced_accuracy"] is not None and m["macro_f1"] is not None
    # a label that classes.csv does not list (classes 0 and 2) is not a missing class
    two = torch.tensor([0, 2] * 10)
    m = cls_metrics(logits[:20], two, 3, rare=2, classes=(0, 2))
    expected = np.mean([_rank_auc(logits[:20].softmax(1).numpy()[:, c], two.numpy() == c) for c in (0, 2)])
    assert m["auroc"] == pytest.approx(expected, abs=1e-6)


@pytest.fixture(scope="module")
def no_test_of_class_2(tmp_path_factory) -> Path:
    """A prepared folder whose class 2 (malignant) has train and val images but no test image."""
    from augment.api import prepare
    from augment.config import PrepareConfig

    base = tmp_path_factory.mktemp("absent")
    src = write_folder(base / "src", {0: 8, 1: 8, 2: 3}, size=16)  # class 2: train, train, val
    return prepare(PrepareConfig(source=str(src), out=base / "data")).out


def test_an_absent_test_class_makes_auroc_and_minority_recall_undefined(no_test_of_class_2, tmp_path):
    from augment.verdicts import ranking, summarize

    cfg = validate(EvaluateConfig, {"data": no_test_of_class_2, "out": tmp_path / "ev", "task": "classification",
                                    "arms": ["real", "real+classic"], "seeds": [0, 1], "classification": TINY_TASK}, "e")
    lines = []
    evaluate(cfg, echo=lines.append)
    result = json.loads((tmp_path / "ev" / "runs" / "classification__real__seed0.json").read_text())
    assert result["metrics"]["auroc"] is None and result["metrics"]["minority_recall"] is None
    assert result["undefined"] == {"auroc": "class 2 (malignant) has no test images",
                                   "minority_recall": "the rarest training class 2 (malignant) has no test images"}
    text = (tmp_path / "ev" / "results.csv").read_text()
    assert "nan" not in text.lower()
    rows = pd.read_csv(tmp_path / "ev" / "results.csv")
    assert set(rows["metric"]) == {"balanced_accuracy", "macro_f1"} and rows["value"].notna().all()
    assert any("auroc undefined" in line for line in lines)
    # what the report does with these rows: summaries and a ranking of a synthetic arm against them
    rows = rows.assign(budget=10)  # (without --budget the column is empty, and summaries group by it)
    summary = summarize(rows)
    assert set(summary["metric"]) == {"balanced_accuracy", "macro_f1"}
    syn_rows = rows[rows["arm"] == "real"].assign(arm="real+synthetic", generator="g")
    table = ranking(pd.concat([rows, syn_rows]), "classification")
    assert len(table) == 1 and table["verdict_minority_recall"].item() == "unknown"
    # resumed: the stored undefined metrics are read back, not refused as corrupt
    evaluate(cfg, echo=QUIET)


def test_an_undefined_metric_in_a_stored_result_needs_its_reason(no_test_of_class_2, tmp_path):
    cfg = validate(EvaluateConfig, {"data": no_test_of_class_2, "out": tmp_path / "ev", "task": "classification",
                                    "arms": ["real"], "seeds": [0], "classification": TINY_TASK}, "e")
    evaluate(cfg, echo=QUIET)
    path = tmp_path / "ev" / "runs" / "classification__real__seed0.json"
    data = json.loads(path.read_text())
    del data["undefined"]
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match="has no metrics"):
        evaluate(cfg, echo=QUIET)
    data["metrics"]["macro_f1"] = float("nan")
    path.write_text(json.dumps(data))  # json writes NaN
    with pytest.raises(DataError, match="has no metrics"):
        evaluate(cfg, echo=QUIET)


# ---- 3. empty synthetic sets and recipes that keep no pair -----------------------------------

@pytest.mark.parametrize("arms", ["arms=[real+synthetic]", "arms=[synthetic]", "arms=[real]"])
def test_an_empty_synthetic_set_is_refused_before_anything_is_written(phantom_dir, syn, tmp_path, capsys, arms):
    empty = shutil.copytree(syn, tmp_path / "syn")
    manifest = read_manifest(empty)
    manifest.iloc[:0].to_csv(empty / "manifest.csv", index=False)
    out = tmp_path / "out"
    _refused(["evaluate", "--data", phantom_dir, "--synthetic", empty, "--out", out, "--set", arms, *EVAL], capsys,
             f"manifest in `{empty}` has no rows (a set with no pairs)")
    assert not out.exists()


def test_a_recipe_whose_filters_keep_no_pair_trains_on_the_real_budget_and_says_so(phantom_dir, syn, tmp_path, monkeypatch):
    import augment.recipes

    def drop_all(real, synthetic, percentile):
        return np.zeros(len(synthetic), bool), {"filter": "reconstruction", "judged": len(synthetic), "dropped": len(synthetic),
                                                "threshold": 0.0, "why": "test"}

    monkeypatch.setattr(augment.recipes, "reconstruction_keep", drop_all)
    cfg = validate(EvaluateConfig, {"data": phantom_dir, "synthetic": syn, "out": tmp_path / "ev", "arms": [], "seeds": [0],
                                    "segmentation": TINY_TASK, "scorer": {"steps": 2},
                                    "recipes": {"r": {"filters": ["reconstruction"], "mix": "fraction", "synthetic_fraction": 0.5}}},
                   "e")
    lines = []
    evaluate(cfg, echo=lines.append)
    result = json.loads((tmp_path / "ev" / "runs" / "segmentation__r__seed0.json").read_text())
    assert result["n_synthetic"] == 0 and result["n_train"] == 24
    assert result["note"].startswith("the filters kept none of the")
    assert any("kept none of the" in line for line in lines)


# ---- 4. val/test images never reach a task model ---------------------------------------------

def test_real_arms_refuse_a_train_file_that_is_a_test_image(phantom_dir, tmp_path, capsys):
    d = shutil.copytree(phantom_dir, tmp_path / "data")
    df = read_manifest(d)
    test_row = df[df["split"] == "test"].iloc[0]
    i = int(np.flatnonzero(df["split"] == "train")[0])
    shutil.copyfile(d / test_row["image"], d / df["image"][i])
    df.loc[i, "sha256"] = test_row["sha256"]
    df.to_csv(d / "manifest.csv", index=False)
    out = tmp_path / "out"
    _refused(["evaluate", "--data", d, "--out", out, "--set", "arms=[real]", *EVAL], capsys,
             f"training image {df['id'][i]} is byte-identical to test image {test_row['id']}")
    assert not out.exists()


def _replace_with_test_image(how: str):
    def mutate(syn_dir: Path, data: Path) -> str:
        df = read_manifest(syn_dir)
        real = read_manifest(data)
        test_row = real[real["split"] == "test"].iloc[0]
        target = syn_dir / df["image"][1]
        if how == "bytes":
            shutil.copyfile(data / test_row["image"], target)
        elif how == "pixels":
            info = PngImagePlugin.PngInfo()
            info.add_text("Comment", "re-saved")
            with Image.open(data / test_row["image"]) as im:
                im.save(target, compress_level=0, pnginfo=info)
        else:  # the row points outside its folder, at the dataset's own test image, recorded as a reference
            import os

            rel = os.path.relpath(data / test_row["image"], syn_dir)
            df.loc[1, "image"] = rel
            (syn_dir / "references.json").write_text(json.dumps({"references": {rel: test_row["sha256"]}}))
            target = data / test_row["image"]
        df.loc[1, "sha256"] = sha256_file(target)
        df.to_csv(syn_dir / "manifest.csv", index=False)
        if how == "outside":  # refused before any pixel is compared: a synthetic row may not leave its set
            return f"{df['id'][1]}: image `{rel}` resolves to `{target}`, outside the synthetic set's folder"
        return f"synthetic pair {df['id'][1]}: its image is {'pixel' if how == 'pixels' else 'byte'}-identical"
    return mutate


@pytest.mark.parametrize("how", ["bytes", "pixels", "outside"])
def test_a_synthetic_set_holding_a_test_image_is_refused(phantom_dir, syn, tmp_path, capsys, how):
    copy = shutil.copytree(syn, tmp_path / "syn")
    needle = _replace_with_test_image(how)(copy, phantom_dir)
    out = tmp_path / "out"
    line = _refused(["evaluate", "--data", phantom_dir, "--synthetic", copy, "--out", out, "--set", "arms=[real+synthetic]", *EVAL],
                    capsys, needle)
    assert "test image" in line or how == "outside"
    assert not out.exists()


# ---- 5. a resumed evaluation notices that its inputs changed ---------------------------------

def test_a_resumed_evaluation_refuses_a_resampled_synthetic_set(phantom_dir, tiny_run, tmp_path, capsys):
    first = _sample(tiny_run, tmp_path / "syn", seed=0)
    other = _sample(tiny_run, tmp_path / "other", seed=1)
    assert read_manifest(first)["id"].tolist() == read_manifest(other)["id"].tolist()
    out = tmp_path / "out"
    args = ["evaluate", "--data", phantom_dir, "--synthetic", first, "--out", out, "--set", "arms=[]", *EVAL,
            "--set", "recipes.r.filters=[reconstruction]", "--set", "scorer.steps=2"]
    assert main([str(a) for a in args]) == 0
    before = _snapshot(out)
    shutil.rmtree(first)
    shutil.copytree(other, first)  # another sampling run in its place: same ids, new pixels
    _refused([*args, "--set", "recipes.s.mix=pretrain"], capsys, f"`{out}` was made from synthetic set `{first}` with sha256 ")
    assert _snapshot(out) == before


def test_a_resumed_evaluation_refuses_a_changed_dataset(phantom_dir, tmp_path, capsys):
    d = shutil.copytree(phantom_dir, tmp_path / "data")
    out = tmp_path / "out"
    args = ["evaluate", "--data", d, "--out", out, "--budget", "12", "--set", "arms=[real]", *EVAL]
    assert main([str(a) for a in args]) == 0
    before = _snapshot(out)
    df = read_manifest(d)
    i = int(np.flatnonzero(df["split"] == "test")[0])
    pixels = np.asarray(Image.open(d / df["image"][i]))
    Image.fromarray(255 - pixels).save(d / df["image"][i])
    df.loc[i, "sha256"] = sha256_file(d / df["image"][i])
    df.to_csv(d / "manifest.csv", index=False)
    _refused([*args, "--set", "arms=[real,real+classic]"], capsys, f"`{out}` was made from data `{d}` with sha256 ")
    assert _snapshot(out) == before


def test_filter_caches_are_keyed_by_their_inputs(phantom_dir, syn, tmp_path):
    cfg = validate(EvaluateConfig, {"data": phantom_dir, "synthetic": syn, "out": tmp_path / "ev", "arms": [], "seeds": [0],
                                    "segmentation": TINY_TASK, "scorer": {"steps": 2},
                                    "recipes": {"r": {"filters": ["reconstruction"]}}}, "e")
    evaluate(cfg, echo=QUIET)
    names = [p.name for p in (tmp_path / "ev" / "filters").iterdir()]
    inputs = json.loads((tmp_path / "ev" / "inputs.json").read_text())
    assert len(names) == 1 and names[0].startswith("reconstruction__seed0__") and names[0] != "reconstruction__seed0.csv"
    assert set(inputs) == {"data", "synthetic"} and all(len(v["sha256"]) == 64 for v in inputs.values())


def test_a_folder_that_does_not_record_its_inputs_is_not_resumed(phantom_dir, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["evaluate", "--data", phantom_dir, "--out", out, "--budget", "12", "--set", "arms=[real]", *EVAL]
    assert main([str(a) for a in args]) == 0
    (out / "inputs.json").unlink()  # as an evaluation made before inputs were recorded
    before = _snapshot(out)
    _refused(args, capsys, f"`{out}` does not record which data and synthetic set its results were made from")
    assert _snapshot(out) == before


def test_a_synthetic_set_holding_a_flipped_test_image_is_refused_unless_allowed(phantom_dir, syn, tmp_path, capsys):
    copy = shutil.copytree(syn, tmp_path / "syn")
    df, real = read_manifest(copy), read_manifest(phantom_dir)
    test_row = real[real["split"] == "test"].iloc[0]
    target = copy / df["image"][1]
    Image.fromarray(np.ascontiguousarray(np.asarray(Image.open(phantom_dir / test_row["image"]))[:, ::-1])).save(target)
    df.loc[1, "sha256"] = sha256_file(target)
    df.to_csv(copy / "manifest.csv", index=False)
    args = ["evaluate", "--data", phantom_dir, "--synthetic", copy, "--out", tmp_path / "out", "--set", "arms=[real+synthetic]", *EVAL]
    _refused(args, capsys, f"synthetic image `{df['id'][1]}` is a near-duplicate of test image `{test_row['id']}`")
    assert not (tmp_path / "out").exists()
    assert main([str(a) for a in [*args, "--set", "allow_near_duplicates=true"]]) == 0


def test_without_a_budget_the_whole_train_split_is_the_budget_and_the_summary_is_not_empty(phantom_dir, tmp_path, capsys):
    """The budget column was left empty, and the summary (grouped by budget) came out empty."""
    out = tmp_path / "out"
    assert main([str(a) for a in ["evaluate", "--data", phantom_dir, "--out", out, "--set", "arms=[real]", *EVAL]]) == 0
    printed = capsys.readouterr().out
    n_train = int((read_manifest(phantom_dir)["split"] == "train").sum())
    results = pd.read_csv(out / "results.csv")
    assert set(results["budget"]) == {n_train}
    from augment.verdicts import summarize

    summary = summarize(results)
    assert len(summary) and set(summary["budget"]) == {n_train}
    assert any(line.split()[:5] == ["segmentation", str(n_train), "none", "real", "dice"] for line in printed.splitlines())
