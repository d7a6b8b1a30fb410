"""The shared training loop: schedule, data order, exact resume after a real kill, 2-process
data parallel, non-finite losses, the held-out hash check and the run-folder rules."""

from __future__ import annotations

import json
import shutil
import signal

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from augment.api import prepare, train
from augment.config import PrepareConfig, validate
from augment.errors import ConfigError, DataError
from augment.generators import TrainConfig
from augment.generators.loop import DataOrder, LoopConfig, TrainingError, lr_at, make_accelerator, train_loop
from tests.conftest import TINY, TINY_CVAE, augment_cmd, kill_when, run_cli, run_ddp, set_args, write_folder

TINY_ARGS = set_args(TINY["cvae"], "generator")


def _cfg(data, out, budget=None, **train_opts):
    loop = {"max_steps": 4, "batch_size": 4, "checkpoint_every": 2, "log_every": 1, **train_opts}
    return validate(TrainConfig, {
        "data": data, "out": out, "budget": budget, "generator": TINY_CVAE,
        "train": loop,
    }, "train")


def test_lr_schedule():
    cfg = LoopConfig(max_steps=100, lr=1.0, warmup_steps=10, schedule="cosine")
    assert lr_at(cfg, 0) == pytest.approx(0.1) and lr_at(cfg, 9) == pytest.approx(1.0)
    assert lr_at(cfg, 10) == pytest.approx(1.0)
    assert lr_at(cfg, 55) == pytest.approx(0.5)
    assert lr_at(cfg, 100) == pytest.approx(0.0, abs=1e-12)
    assert lr_at(LoopConfig(lr=0.3, schedule="constant"), 1234) == 0.3


def test_data_order_is_a_pure_function_and_shards_disjointly():
    a = DataOrder(10, 3, world=1, rank=0, seed=1)
    assert torch.equal(a.indices(5), DataOrder(10, 3, 1, 0, 1).indices(5))
    epoch = torch.cat([a.indices(j) for j in range(10)])  # 30 positions = 3 epochs
    for e in range(3):
        assert sorted(epoch[e * 10:(e + 1) * 10].tolist()) == list(range(10))
    r0, r1 = DataOrder(10, 1, 2, 0, 1), DataOrder(10, 1, 2, 1, 1)
    both = torch.cat([torch.cat([r0.indices(j), r1.indices(j)]) for j in range(5)])
    assert sorted(both.tolist()) == list(range(10))  # one epoch, split between the two ranks
    assert not torch.equal(DataOrder(10, 3, 1, 0, 2).indices(0), a.indices(0))


class _Exploding(torch.nn.Module):
    phases = ("main",)

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1))

    def phase_modules(self, phase):
        return [self]

    def forward(self, images, masks, labels, phase, step, generator):
        loss = (self.w * images.mean()) ** 2
        return (loss * float("nan") if step >= 2 else loss), {}


def test_non_finite_loss_stops_with_the_step(tmp_path):
    cfg = LoopConfig(max_steps=10, batch_size=2, checkpoint_every=100)
    data = (torch.rand(4, 1, 8, 8), torch.zeros(4, 8, 8, dtype=torch.int64), torch.zeros(4, dtype=torch.int64))
    with pytest.raises(TrainingError, match=r"loss became nan at step 3 \(phase `main`\)"):
        train_loop(make_accelerator(cfg, _Exploding.phases), _Exploding(), data, cfg, 0, tmp_path, resume=False)


def test_non_finite_weights_with_a_finite_loss_stop_the_run_and_leave_nothing(phantom_dir, tmp_path, monkeypatch):
    """A weight that turns NaN while the loss is still finite (here: a buffer the forward pass does
    not read in training mode) would be saved and sample black images: the loop stops at that step."""
    real_step = torch.optim.AdamW.step

    def step_then_poison(self, *args, **kwargs):
        out = real_step(self, *args, **kwargs)
        with torch.no_grad():
            self.param_groups[0]["params"][0].view(-1)[0] = float("nan")
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", step_then_poison)
    with pytest.raises(TrainingError, match=r"became non-finite \(NaN or inf\) at step 1 \(phase `main`\); lower train.lr"):
        train(_cfg(phantom_dir, tmp_path / "run", budget=12))
    assert not (tmp_path / "run").exists()


def test_unknown_phase_is_refused_before_the_run_folder_is_made(phantom_dir, tmp_path):
    with pytest.raises(ConfigError, match=r"train.phases has unknown phase `prior` \(this generator's phases: `main`\)"):
        train(_cfg(phantom_dir, tmp_path / "run", phases={"prior": {"max_steps": 1}}))
    assert not (tmp_path / "run").exists()


def test_leaked_heldout_image_is_refused(tmp_path):
    src = write_folder(tmp_path / "src", {0: 8, 1: 8})
    labels = pd.read_csv(src / "labels.csv")
    train_id = labels.loc[labels["split"] == "train", "id"].iloc[0]
    test_id = labels.loc[labels["split"] == "test", "id"].iloc[0]
    shutil.copy(src / "images" / f"{test_id}.png", src / "images" / f"{train_id}.png")
    with pytest.raises(DataError, match=rf"train image `{train_id}` is a near-duplicate of test image `{test_id}`"):
        prepare(PrepareConfig(source=str(src), out=tmp_path / "refused"))  # prepare refuses it first ...
    # ... and a copy accepted there as a near-duplicate is still refused by training as an exact one
    data = prepare(PrepareConfig(source=str(src), out=tmp_path / "data", allow_near_duplicates=True)).out
    with pytest.raises(DataError, match=rf"training image {train_id} is byte-identical to test image {test_id}"):
        train(_cfg(data, tmp_path / "run", max_steps=1))
    assert not (tmp_path / "run").exists()


def test_image_changed_after_prepare_is_refused(phantom_dir, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(phantom_dir, data)
    df = pd.read_csv(data / "manifest.csv")
    row = df[df["split"] == "train"].iloc[0]
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(data / row["image"])
    cfg = _cfg(data, tmp_path / "run", max_steps=1)
    with pytest.raises(DataError, match=rf"image `{row['image']}` \({row['id']}\) changed since prepare"):
        train(cfg)


def test_classification_only_data_trains_with_empty_masks_and_partly_masked_data_is_refused(tmp_path):
    from augment.api import sample
    from augment.sampling import SampleConfig

    src = write_folder(tmp_path / "src", {0: 8, 1: 8}, masks=False)
    data = prepare(PrepareConfig(source=str(src), out=tmp_path / "data")).out
    run = train(_cfg(data, tmp_path / "run", max_steps=2)).out
    syn = sample(validate(SampleConfig, {"generator": run, "out": tmp_path / "syn", "balance": {"strategy": "ratio", "ratio": 1}},
                          "sample")).out
    rows = pd.read_csv(syn / "manifest.csv")
    assert len(rows) and set(rows["label"]) <= {0, 1}
    assert all(not np.asarray(Image.open(syn / m)).any() for m in rows["mask"])  # a classification set: empty masks
    # one image with a mask among unmasked ones is a mistake, named with the counts
    manifest = pd.read_csv(data / "manifest.csv", dtype=str, keep_default_na=False)
    first = manifest.index[manifest["split"] == "train"][0]
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(data / "first_mask.png")
    manifest.loc[first, "mask"] = "first_mask.png"
    manifest.to_csv(data / "manifest.csv", index=False)
    with pytest.raises(DataError, match=r"has no mask for 7 of 8 training image\(s\).*or none for a classification set"):
        train(_cfg(data, tmp_path / "run2", max_steps=1))


def test_run_folder_rules(phantom_dir, tmp_path):
    run = tmp_path / "run"
    train(_cfg(phantom_dir, run, max_steps=2))
    with pytest.raises(DataError, match="already holds a finished generator run"):
        train(_cfg(phantom_dir, run, max_steps=2), resume=True)
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    shutil.copy(run / "config.json", unfinished / "config.json")
    with pytest.raises(DataError, match="holds an unfinished run; pass --resume"):
        train(_cfg(phantom_dir, unfinished, max_steps=2))
    with pytest.raises(DataError, match=r"--resume with a different config .*train.lr: 0.001 -> 0.01"):
        train(_cfg(phantom_dir, unfinished, max_steps=2, lr=0.01), resume=True)
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="is not empty and is not a generator run"):
        train(_cfg(phantom_dir, other, max_steps=2))


def _train_args(data, out, steps):
    return ["train", "--data", data, "--generator", "cvae", "--out", out, "--budget", "24", *TINY_ARGS,
            "--set", f"train.max_steps={steps}", "--set", "train.checkpoint_every=10", "--set", "train.batch_size=8",
            "--set", "train.grad_accum=2", "--set", "train.ema=true", "--set", "train.ema_decay=0.9"]


def test_kill_and_resume_gives_the_same_weights(phantom_dir, tmp_path):
    steps = 200
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    rc = kill_when(augment_cmd(*_train_args(phantom_dir, killed, steps)), lambda: any((killed / "state").glob("step_*")))
    assert rc == -signal.SIGKILL, "the run finished before it could be killed; raise `steps`"
    assert not (killed / "run.json").exists()
    ckpts = sorted(p.name for p in (killed / "state").glob("step_*"))
    assert ckpts, "no checkpoint was written before the kill"

    res = run_cli(*_train_args(phantom_dir, killed, steps), "--resume")
    assert res.returncode == 0, res.stderr
    run_cli(*_train_args(phantom_dir, clean, steps), check=True)

    info = json.loads((killed / "run.json").read_text())
    assert info["resumed_from_step"] >= 10 and info["steps"] == steps
    a, b = load_file(killed / "model.safetensors"), load_file(clean / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    la, lb = pd.read_csv(killed / "loss.csv"), pd.read_csv(clean / "loss.csv")
    assert la["step"].tolist() == lb["step"].tolist()  # no lost or duplicated log rows
    np.testing.assert_array_equal(la["loss"], lb["loss"])


def test_two_process_data_parallel_keeps_replicas_identical(phantom_dir, tmp_path):
    out = tmp_path / "ddp"
    res = run_ddp("train", "--data", phantom_dir, "--generator", "cvae", "--out", out,
                  "--budget", "24", *TINY_ARGS, "--set", "train.max_steps=6", "--set", "train.batch_size=4",
                  "--set", "train.checkpoint_every=3")
    assert res.returncode == 0, res.stderr[-3000:]
    info = json.loads((out / "run.json").read_text())
    assert info["processes"] == 2
    sums = info["replica_checksums"]
    assert len(sums) == 2 and sums[0] == sums[1]
    assert res.stdout.count("trained cvae") == 1  # only the main process reports


def test_cli_unknown_family_is_one_line(phantom_dir, tmp_path):
    res = run_cli("train", "--data", phantom_dir, "--generator", "flow", "--out", tmp_path / "r")
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        "augment train: error: train: `generator` has unknown 'family' 'flow' (allowed: 'cvae', 'gan', 'ldm', 'vqvae2')"
    ]
    assert not (tmp_path / "r").exists()


def test_heldout_figures_read_the_same_for_any_family():
    from augment.training import describe_heldout

    line = describe_heldout({"autoencoder_psnr": 21.5, "top_codebook_usage": 0.75, "prior_top_accuracy_val": 0.3125, "n_pairs": 6.0})
    assert line == ("generator parts on 6 val pairs (measured after training, never trained on): autoencoder_psnr 21.5, "
                    "top_codebook_usage 0.75, prior_top_accuracy_val 0.3125")
    assert describe_heldout({}) == ""  # a family that exposes nothing to measure (cvae)
    assert describe_heldout({}, "no val pair with a mask at 64x64 px (val pairs: 3)").endswith("(val pairs: 3)")


def test_vqvae2_train_summary_and_record_carry_the_flat_heldout_figures(phantom_dir, tmp_path):
    cfg = validate(TrainConfig, {"data": phantom_dir, "out": tmp_path / "run", "budget": 12, "generator": {"family": "vqvae2", **TINY["vqvae2"]},
                                 "train": {"max_steps": 2, "batch_size": 4, "checkpoint_every": 100}}, "train")
    result = train(cfg)
    own = result.record["heldout_metrics"]
    assert {"autoencoder_psnr", "top_codebook_usage", "prior_top_accuracy_val", "prior_top_accuracy_train"} <= set(own)
    assert all(isinstance(v, float) for v in own.values())
    assert f"top_codebook_usage {own['top_codebook_usage']:.4g}" in result.summary.splitlines()[-1]
