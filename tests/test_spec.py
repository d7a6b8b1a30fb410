"""Pipeline specs are built from the stage configs: every prepare, sample and audit setting is
reachable from a spec, and the whole spec (each entry's sampler and train phases included) is
checked when it loads, before any stage runs."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from augment.audit import AuditSettings
from augment.config import PrepareSettings
from augment.errors import ConfigError
from augment.pipeline import _stages, load_pipeline
from augment.sampling import SampleSettings
from tests.conftest import TINY, TINY_SPEC_TASK, run_cli, yaml_items

ROOT = Path(__file__).resolve().parents[1]
BALANCE = ROOT / "manifests" / "match_max.yaml"


def _spec(tmp_path: Path, body: str, data: str = "{source: phantom, image_size: 16, count: 60, seed: 1}",
          balance: str = str(BALANCE), budget: int = 12) -> Path:
    p = tmp_path / "p.yaml"
    p.write_text(f"data: {data}\nbudgets: [{budget}]\nseeds: [0]\nbalance: {balance}\n" + body)
    return p


def _configs(cfg, out: Path) -> dict[str, object]:
    """The first stage config of each kind that the pipeline would run."""
    found = {}
    for name, _, call, _, _ in _stages(cfg, out):
        found.setdefault(name.split(" (")[0].split()[0], call.args[0])
    return found


def test_every_prepare_sample_and_audit_setting_reaches_its_stage(tmp_path):
    spec = _spec(tmp_path, f"""generator: {{family: cvae, {yaml_items(TINY['cvae'])}}}
sample: {{batch_size: 7, filter: true, max_attempts: 3}}
audit: {{encoder_steps: 5, segmenter_steps: 6, kid_subsets: 4, kid_subset_size: 9, max_pairs: 11, copy_percentile: 2.5}}
""", data="{source: phantom, image_size: 16, count: 60, seed: 1, rgb: true, priors: [0.6, 0.3, 0.1], split: {train: 0.6, val: 0.2, test: 0.2}}")
    cfg = load_pipeline(spec)
    stages = _configs(cfg, tmp_path / "o")
    prep, sample, audit = stages["prepare"], stages["sample"], stages["audit"]
    assert prep.rgb and prep.priors == [0.6, 0.3, 0.1] and prep.split.val == 0.2 and prep.count == 60
    assert (sample.batch_size, sample.filter, sample.max_attempts) == (7, True, 3)
    assert (audit.encoder_steps, audit.segmenter_steps, audit.kid_subsets, audit.kid_subset_size, audit.max_pairs,
            audit.copy_percentile) == (5, 6, 4, 9, 11, 2.5)
    # one definition per setting: the spec sections are the stage configs' own settings
    assert set(PrepareSettings.model_fields) < set(type(cfg.data).model_fields)
    assert set(AuditSettings.model_fields) < set(type(cfg.audit).model_fields)
    assert type(cfg.sample) is SampleSettings


@pytest.mark.parametrize("body, message", [
    ("generator: {family: cvae, sampler: {temprature: 0.5}}\n",
     r"generators.cvae.sampler \(cvae\): unknown key `temprature` \(allowed: temperature\)"),
    ("generators: {a: {family: cvae}, b: {family: ldm, sampler: {stepz: 5}}}\n",
     r"generators.b.sampler \(ldm\): unknown key `stepz`"),
    ("generator: {family: cvae}\ntrain: {phases: {prior: {max_steps: 3}}}\n",
     r"generators.cvae: train.phases has unknown phase `prior` \(this generator's phases: `main`\)"),
    ("generator: {family: cvae}\naudit: {kid_subsetz: 3}\n", r"unknown key `audit.kid_subsetz` \(allowed: .*kid_subsets"),
    ("generator: {family: cvae}\nsample: {max_attempt: 3}\n", r"unknown key `sample.max_attempt` \(allowed: .*max_attempts"),
    ("generator: {family: vqvae2, bottom_halvings: 3, top_halvings: 2}\n",
     r"generators.vqvae2: generator.bottom_halvings \+ top_halvings = 5 halvings need the side to be a multiple of 32, but the images are 16 px"),
    ("generator: {family: ldm, ae_channels: [8, 8, 8, 8, 8]}\n", r"generators.ldm: generator.unet_channels has 3 widths, too many halvings"),
    ("generator: {family: ldm, sampler: {guidance: .inf}}\n", r"`guidance` must be a finite number \(got inf\)"),
    ("generator: {family: vqvae2, sampler: {temperature: 1.0e-300}}\n", r"`temperature`: Input should be greater than or equal to 0.01"),
])
def test_a_typo_anywhere_in_a_spec_fails_at_load(tmp_path, body, message):
    with pytest.raises(ConfigError, match=message):
        load_pipeline(_spec(tmp_path, body))


def test_a_misspelt_sampler_key_fails_before_any_stage_runs(tmp_path):
    spec = _spec(tmp_path, f"generator: {{family: cvae, {yaml_items(TINY['cvae'])}, sampler: {{temprature: 0.5}}}}\n")
    started = time.time()
    res = run_cli("run", spec, "--out", tmp_path / "o")
    seconds = time.time() - started
    assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
    assert "unknown key `temprature` (allowed: temperature)" in res.stderr
    assert not (tmp_path / "o").exists() and "[run]" not in res.stdout
    assert seconds < 60  # before training (which this spec would run for minutes), whatever the machine's load


def _plain_jpeg_folder(root: Path, n: int = 24, size: int = 16) -> None:
    """A plain segmentation folder (images/ and masks/ only) whose masks are lossy JPEGs of 0/255."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        m = np.zeros((size, size), np.uint8)
        m[3:3 + size // 2, 4:4 + size // 2] = 255
        Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8)).save(root / "images" / f"case_{i:02d}.jpg", quality=90)
        Image.fromarray(m).save(root / "masks" / f"case_{i:02d}.jpg", quality=75)


def test_a_plain_folder_with_jpeg_masks_prepares_and_runs(tmp_path):
    src = tmp_path / "endo"
    _plain_jpeg_folder(src)
    lossy = np.unique(np.asarray(Image.open(src / "masks" / "case_00.jpg")))
    assert len(lossy) > 2  # the masks really are lossy: values besides 0 and 255
    task = yaml_items(TINY_SPEC_TASK)
    spec = _spec(tmp_path, f"""generator: {{family: cvae, {yaml_items(TINY['cvae'])}}}
train: {{max_steps: 3, batch_size: 4, checkpoint_every: 100}}
audit: {{enabled: false}}
evaluate: {{task: segmentation, arms: [real, real+synthetic], recipes: {{}}, segmentation: {{{task}}}}}
""", data=f"{{source: {src}, mask_threshold: 128, class_name: polyp}}", balance="{strategy: ratio, ratio: 1}", budget=8)
    out = tmp_path / "o"
    res = run_cli("run", spec, "--out", out)
    assert res.returncode == 0, res.stderr[-3000:]
    classes = pd.read_csv(out / "data" / "classes.csv")
    assert classes.to_dict("records") == [{"label": 0, "name": "polyp"}]
    prepared = json.loads((out / "data" / "run.json").read_text())
    assert prepared["config"]["mask_threshold"] == 128 and prepared["source_kind"] == "folder"
    mask = np.asarray(Image.open(out / "data" / pd.read_csv(out / "data" / "manifest.csv")["mask"][0]))
    assert set(np.unique(mask)) <= {0, 1} and mask.max() == 1  # thresholded to class indices
    results = pd.read_csv(out / "tables" / "downstream.csv")
    assert {"real", "real+synthetic"} <= set(results["arm"])


def test_a_plan_with_no_synthetic_pairs_is_one_clear_line(tmp_path, tiny_run):
    real = json.loads((tiny_run / "run.json").read_text())["class_counts"]  # every class already at its target
    as_is = tmp_path / "b.yaml"
    as_is.write_text("strategy: target\ntarget: {" + ", ".join(f"{k}: {v}" for k, v in real.items()) + "}\n")
    res = run_cli("sample", "--generator", tiny_run, "--balance", as_is, "--out", tmp_path / "s")
    assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
    assert "asks for no synthetic pairs" in res.stderr and not (tmp_path / "s").exists()
