"""Contract test over the generator registry: a new family is covered by adding it there
(and a tiny config here; a family without one fails this test on purpose)."""

from __future__ import annotations

import pytest
import torch

from augment.api import train
from augment.config import validate
from augment.generators import REGISTRY, TrainConfig
from augment.generators.artifact import load_generator

TINY = {
    "cvae": {"base_channels": 4, "max_channels": 8, "latent_dim": 4},
}
LOOP = {"max_steps": 2, "batch_size": 4, "checkpoint_every": 1000, "log_every": 1}


@pytest.fixture(scope="module", params=sorted(REGISTRY))
def trained(request, phantom_dir, tmp_path_factory):
    family = request.param
    assert family in TINY, f"add a tiny config for family `{family}` to TINY"
    out = tmp_path_factory.mktemp(family) / "run"
    cfg = validate(
        TrainConfig,
        {"data": phantom_dir, "out": out, "budget": 12, "seed": 0, "generator": {"family": family, **TINY[family]}, "train": LOOP},
        "train",
    )
    train(cfg)
    return family, out


def _sample(run, labels, seed):
    gen = load_generator(run)
    return gen.model.sample(torch.tensor(labels), torch.Generator().manual_seed(seed)), gen


def test_sample_contract(trained):
    family, run = trained
    labels = [0, 1, 2, 2, 1]
    s, gen = _sample(run, labels, seed=0)
    size = gen.spec.image_size
    assert gen.spec.channels == 1 and size == 16
    assert s.images.shape == (5, 1, size, size) and s.images.dtype == torch.float32
    assert float(s.images.min()) >= 0.0 and float(s.images.max()) <= 1.0
    assert s.masks.shape == (5, size, size) and s.masks.dtype == torch.int64
    assert int(s.masks.min()) >= 0 and int(s.masks.max()) < gen.spec.mask_classes
    assert s.labels.tolist() == labels and s.labels.dtype == torch.int64


def test_same_seed_same_samples_different_seed_different(trained):
    _, run = trained
    a, _ = _sample(run, [0, 1, 2], seed=7)
    b, _ = _sample(run, [0, 1, 2], seed=7)
    c, _ = _sample(run, [0, 1, 2], seed=8)
    assert torch.equal(a.images, b.images) and torch.equal(a.masks, b.masks)
    assert not torch.equal(a.images, c.images)


def test_labels_are_honoured(trained):
    # The same noise with a different label must give a different image: the label conditions.
    _, run = trained
    a, _ = _sample(run, [1, 1], seed=3)
    b, _ = _sample(run, [2, 2], seed=3)
    assert not torch.equal(a.images, b.images)


def test_run_folder_is_self_describing(trained):
    family, run = trained
    import json

    info = json.loads((run / "run.json").read_text())
    assert info["family"] == family and info["steps"] == 2 and info["budget"] == 12
    assert len(info["trained_on"]) == 12 and all(len(t["sha256"]) == 64 for t in info["trained_on"])
    for key in ("data_manifest_sha256", "versions", "git_commit", "wall_seconds", "weights_sha256", "data_spec"):
        assert key in info
    gen = load_generator(run)
    assert gen.config.generator.family == family and gen.run["weights_sha256"] == gen.weights_sha256
    assert (run / "loss.csv").read_text().startswith("step,phase,loss")
