"""Downstream evaluation and the end-to-end pipeline on tiny phantom data."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from augment.config import validate
from augment.errors import ConfigError, DataError
from augment.downstream import cls_metrics, seg_metrics
from augment.evaluate import EvaluateConfig, evaluate
from augment.sampling import SampleConfig, sample
from tests.conftest import TINY, TINY_SPEC_TASK, TINY_TASK, run_cli, yaml_items

ROOT = Path(__file__).resolve().parents[1]


def test_seg_metrics_known_values():
    target = torch.zeros(3, 4, 4, dtype=torch.int64)
    target[0, :2, :2] = 1  # lesion image
    pred = torch.zeros_like(target)
    pred[0, :2, :1] = 1  # half of the lesion: dice 2*2/(2+4)
    pred[2, 3, 3] = 1  # a false positive on an empty image
    m = seg_metrics(pred, target)
    assert m["dice"] == pytest.approx(2 / 3) and m["fpr"] == pytest.approx(0.5)


def test_cls_metrics_known_values():
    labels = torch.tensor([0, 0, 0, 1, 2, 2])
    logits = torch.nn.functional.one_hot(torch.tensor([0, 0, 1, 1, 2, 0]), 3).float()
    m = cls_metrics(logits, labels, 3, rare=1)
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 1 + 1 / 2) / 3)
    assert m["minority_recall"] == pytest.approx(1.0)
    assert 0 <= m["auroc"] <= 1 and 0 <= m["macro_f1"] <= 1


@pytest.fixture(scope="module")
def syn(tiny_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("ev") / "syn"
    sample(validate(SampleConfig, {"generator": tiny_run, "out": out, "balance": {"strategy": "match_max"}}, "s"),
           echo=lambda *_: None)
    return out


def test_evaluate_all_arms_and_resume(phantom_dir, syn, tmp_path):
    cfg = validate(EvaluateConfig, {"data": phantom_dir, "synthetic": syn, "out": tmp_path / "ev", "task": "both",
                                    "seeds": [0, 1], "segmentation": TINY_TASK, "classification": TINY_TASK}, "evaluate")
    evaluate(cfg, echo=lambda *_: None)
    rows = pd.read_csv(tmp_path / "ev" / "results.csv")
    assert set(rows["arm"]) == {"real", "real+classic", "real+synthetic", "real+synthetic+classic", "synthetic"}
    assert set(rows["metric"]) == {"dice", "fpr", "balanced_accuracy", "macro_f1", "minority_recall", "auroc"}
    assert len(rows) == 5 * 2 * (2 + 4) and (rows["budget"] == 24).all()
    run = json.loads((tmp_path / "ev" / "run.json").read_text())
    assert run["checkpoint_rule"] == {"segmentation": "best_val", "classification": "best_val"}
    first = json.loads((tmp_path / "ev" / "runs" / "segmentation__real__seed0.json").read_text())
    assert first["n_train"] == 24 and 1 <= first["selected_step"] <= 6
    synth = json.loads((tmp_path / "ev" / "runs" / "segmentation__real_synthetic__seed0.json").read_text())
    assert synth["n_train"] == 24 + run["n_synthetic"]
    # a finished arm is not trained again: its result file is reused as is
    marker = tmp_path / "ev" / "runs" / "segmentation__real__seed0.json"
    data = json.loads(marker.read_text())
    data["metrics"]["dice"] = 0.123456
    marker.write_text(json.dumps(data))
    evaluate(cfg, echo=lambda *_: None)
    rows = pd.read_csv(tmp_path / "ev" / "results.csv")
    assert rows.query("arm == 'real' and seed == 0 and metric == 'dice'")["value"].item() == 0.123456
    # the same checkpoints' val scores, in their own file (what a pipeline picks by), same columns
    val = pd.read_csv(tmp_path / "ev" / "val_results.csv")
    assert list(val.columns) == list(rows.columns) and set(val["arm"]) == set(rows["arm"])
    assert val.query("arm == 'real' and seed == 0 and metric == 'dice'")["value"].item() == data["val_metrics"]["dice"]
    assert not val["value"].equals(rows["value"])  # val is scored on the val split, not a copy of test
    # a result kept from before val scores were recorded still resumes; its arm has no val rows
    del data["val_metrics"], data["val_undefined"]
    marker.write_text(json.dumps(data))
    evaluate(cfg, echo=lambda *_: None)
    val = pd.read_csv(tmp_path / "ev" / "val_results.csv")
    assert val.query("arm == 'real' and seed == 0 and task == 'segmentation'").empty
    assert len(val.query("arm == 'real' and seed == 1 and task == 'segmentation'")) == 2


def test_same_seed_same_result(phantom_dir, syn, tmp_path):
    results = []
    for name in ("a", "b"):
        cfg = validate(EvaluateConfig, {"data": phantom_dir, "synthetic": syn, "out": tmp_path / name, "arms": ["real+classic"],
                                        "seeds": [4], "segmentation": TINY_TASK}, "evaluate")
        evaluate(cfg, echo=lambda *_: None)
        results.append(pd.read_csv(tmp_path / name / "results.csv"))
    pd.testing.assert_frame_equal(results[0], results[1])


def test_pipeline_end_to_end_skips_complete_stages(tmp_path):
    spec = tmp_path / "p.yaml"
    spec.write_text(f"""
name: tiny
data: {{source: phantom, image_size: 16, count: 60, seed: 1}}
generator: {{family: cvae, {yaml_items(TINY['cvae'])}}}
train: {{max_steps: 4, batch_size: 8, checkpoint_every: 2}}
budgets: [12, 24]
seeds: [0, 1]
balance: {ROOT / 'manifests' / 'match_max.yaml'}
audit: {{encoder_steps: 5, segmenter_steps: 5}}
evaluate: {{segmentation: {{{yaml_items(TINY_SPEC_TASK)}}}}}
""")
    cmd = ["run", spec, "--out", tmp_path / "out"]
    res = run_cli(*cmd)
    assert res.returncode == 0, res.stderr[-3000:]
    rep = json.loads((tmp_path / "out" / "report.json").read_text())
    assert {r["budget"] for r in rep["downstream"]} == {12, 24} and {r["seed"] for r in rep["downstream"]} == {0, 1}
    assert any(r["metric"] == "frechet_distance" for r in rep["quality"])
    assert {(r["budget"], r["arm"]) for r in rep["summary"] if r["metric"] == "dice"} >= {(12, "real"), (24, "real+synthetic")}
    html = (tmp_path / "out" / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 4 and "dice" in html
    assert "dice" in res.stdout and "report.html" in res.stdout
    again = run_cli(*cmd)
    # prepare + per (budget, seed): real arms, train, sample, audit, generator arms
    assert again.returncode == 0 and again.stdout.count("[skip]") == 1 + 4 * 5 and "[run]" not in again.stdout
    changed = run_cli(*cmd, "--set", "generator.latent_dim=8")
    assert changed.returncode == 2 and "different pipeline spec (changed: generators)" in changed.stderr


def test_real_arms_need_no_synthetic_set_and_use_the_budget_subset(phantom_dir, tmp_path):
    from augment.data.manifest import load_data
    from augment.data.splits import select_budget

    cfg = validate(EvaluateConfig, {"data": phantom_dir, "out": tmp_path / "r", "budget": 24, "budget_seed": 0,
                                    "arms": ["real"], "seeds": [0], "segmentation": TINY_TASK}, "evaluate")
    evaluate(cfg, echo=lambda *_: None)
    rows = pd.read_csv(tmp_path / "r" / "results.csv")
    assert set(rows["generator"]) == {"none"} and set(rows["arm"]) == {"real"}
    run = json.loads((tmp_path / "r" / "run.json").read_text())
    df, _ = load_data(phantom_dir)
    assert run["real_ids"] == select_budget(df, 24, 0)["id"].tolist() and run["n_synthetic"] == 0
    assert run["git_commit"] is None or len(run["git_commit"]) == 40
    with pytest.raises(ConfigError, match=r"arm `real\+synthetic` needs --synthetic"):
        evaluate(validate(EvaluateConfig, {"data": phantom_dir, "out": tmp_path / "x", "arms": ["real", "real+synthetic"]}, "e"))
    assert not (tmp_path / "x").exists()


def test_real_rows_are_the_generators_own(phantom_dir, syn, tiny_run, tmp_path):
    from augment.generators.artifact import load_run

    cfg = validate(EvaluateConfig, {"data": phantom_dir, "synthetic": syn, "out": tmp_path / "g", "arms": ["real"],
                                    "seeds": [0], "segmentation": TINY_TASK}, "evaluate")
    evaluate(cfg, echo=lambda *_: None)
    run = json.loads((tmp_path / "g" / "run.json").read_text())
    assert run["real_ids"] == load_run(tiny_run).rows["id"].tolist() and run["generator"] == "cvae"


def test_a_generator_that_saw_test_images_is_refused(phantom_dir, syn, tmp_path):
    import shutil

    from augment.data.images import sha256_file
    from augment.data.manifest import load_data

    leaky = tmp_path / "leaky"
    shutil.copytree(syn, leaky)
    record = json.loads((leaky / "run.json").read_text())
    df, _ = load_data(phantom_dir)
    test_image = df[df["split"] == "test"]["image"].iloc[0]
    record["generator_trained_on_sha256"].append(sha256_file(phantom_dir / test_image))
    (leaky / "run.json").write_text(json.dumps(record))
    cfg = validate(EvaluateConfig, {"data": phantom_dir, "synthetic": leaky, "out": tmp_path / "e", "arms": ["real+synthetic"],
                                    "seeds": [0], "segmentation": TINY_TASK}, "evaluate")
    with pytest.raises(DataError, match=r"saw 1 val/test image\(s\)"):
        evaluate(cfg, echo=lambda *_: None)
    assert not (tmp_path / "e").exists()


def test_a_real_folder_is_not_a_synthetic_set(phantom_dir, tmp_path):
    cfg = validate(EvaluateConfig, {"data": phantom_dir, "synthetic": phantom_dir, "out": tmp_path / "e", "arms": ["real+synthetic"],
                                    "seeds": [0], "segmentation": TINY_TASK}, "evaluate")
    with pytest.raises(DataError, match=r"is not a synthetic set made by `augment sample`"):
        evaluate(cfg, echo=lambda *_: None)
    assert not (tmp_path / "e").exists()



def test_bf16_precision_runs_the_segmenter_in_bfloat16_and_learns_like_fp32():
    """precision=bf16: the convolutions see bfloat16 activations, the weights stay float32, the
    returned model predicts in float32, and on a learnable toy problem it fits as well as fp32."""
    from augment.downstream import TASKS, Shapes, TaskConfig, fit

    g = torch.Generator().manual_seed(0)
    m = torch.zeros(32, 16, 16, dtype=torch.int64)
    for i in range(32):
        r, c = divmod(i % 16, 4)
        m[i, 3 * r:3 * r + 5, 3 * c:3 * c + 5] = 1
    x = torch.rand(32, 1, 16, 16, generator=g) * 0.3 + 0.6 * m.unsqueeze(1)
    y = torch.zeros(32, dtype=torch.int64)
    shapes = Shapes(channels=1, num_classes=1, mask_classes=2)
    fitted, seen = {}, {}
    for precision in ("fp32", "bf16"):
        dtypes = seen.setdefault(precision, set())

        def record(module, inputs, output):
            if isinstance(module, torch.nn.Conv2d) and module.training:
                dtypes.add(output.dtype)

        handle = torch.nn.modules.module.register_module_forward_hook(record)
        try:
            cfg = TaskConfig(steps=40, batch_size=8, eval_every=20, base_channels=8, precision=precision)
            fitted[precision] = fit(TASKS["segmentation"], shapes, lambda idx: (x[idx], m[idx], y[idx]), 32, y, cfg, seed=0,
                                    val=(x, m, y))
        finally:
            handle.remove()
    assert seen == {"fp32": {torch.float32}, "bf16": {torch.bfloat16}}
    model = fitted["bf16"].model
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert model(x[:2]).dtype == torch.float32
    assert fitted["fp32"].val_score > 0.8 and abs(fitted["bf16"].val_score - fitted["fp32"].val_score) < 0.05
