"""VQ-VAE-2: the moving-average codebooks and their restarts, both priors, train-vs-val prior
figures, resume inside each phase, and config errors.

The registry's contract test (tests/test_generators.py) covers the sampling contract and
byte-exact regeneration for every mode with the default (maskgit) prior; these check what is
particular to vector quantisation and token priors."""

from __future__ import annotations

import pytest
import torch

from augment.config import validate
from augment.errors import ConfigError
from augment.generators import DataSpec, TrainConfig, build
from augment.generators.base import Context
from augment.generators.vqvae2 import Quantizer, VQVAE2Config, VQVAE2Sampler
from tests.conftest import TINY, run_ddp, set_args

SPEC = DataSpec(image_size=16, channels=1, num_classes=3, mask_classes=2)


def _model(seed=0, **kw):
    torch.manual_seed(seed)
    return build(VQVAE2Config(**{**TINY["vqvae2"], **kw}), SPEC).eval()


def _batch(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    masks = torch.zeros(n, 16, 16, dtype=torch.int64)
    masks[:, 4:10, 5:11] = 1
    return torch.rand(n, 1, 16, 16, generator=g), masks, torch.randint(0, 3, (n,), generator=g)


def test_code_maps_are_at_a_quarter_and_an_eighth_of_the_side():
    model = build(VQVAE2Config(), DataSpec(image_size=64, channels=1, num_classes=3, mask_classes=2)).eval()
    x = torch.rand(2, 1, 64, 64)
    m = torch.zeros(2, 64, 64, dtype=torch.int64)
    top, bottom = model.encode(x, m)
    assert top.shape == (2, 8, 8) and bottom.shape == (2, 16, 16)
    images, logits = model.decode(top, bottom)
    assert images.shape == (2, 1, 64, 64) and logits.shape == (2, 2, 64, 64)
    assert float(images.min()) >= 0 and float(images.max()) <= 1


@pytest.mark.parametrize("mode,prior", [("joint", "maskgit"), ("mask", "autoregressive")])
def test_heldout_parts_and_their_measures(mode, prior):
    """What the model exposes (codes, round trip, prior logits at scored positions) and what
    generator_heldout makes of it, checked against the formulas written out here."""
    import numpy as np

    from augment.metrics import generator_heldout

    model = _model(mode=mode, prior=prior)
    g = torch.Generator().manual_seed(1)  # spread the codebooks so several codes are used
    for q in (model.quant_top, model.quant_bottom):
        q.embed.copy_(torch.randn(q.embed.shape, generator=g) * 0.1)
    images, masks, labels = _batch(6)
    codes = model.codes(images, masks)
    assert codes["top"].shape == (6, 2, 2) and codes["bottom"].shape == (6, 4, 4) and codes["top"].dtype == torch.int64
    assert model.codebook_sizes == {"top": 8, "bottom": 8}
    rec, decoded = model.reconstruct(images, masks)
    assert rec.shape == images.shape and (decoded is None) == (mode == "mask")
    logits = model.prior_logits(images, masks, labels, torch.Generator().manual_seed(0))
    for level, (lg, target) in logits.items():
        assert lg.shape == (len(target), 8) and lg.dtype == torch.float32
        if prior == "autoregressive":  # every next token is scored
            assert torch.equal(target, codes[level].flatten())
        else:  # a random share of each map, at least one position per map
            assert 6 <= len(target) <= codes[level].numel() and set(target.tolist()) <= set(codes[level].flatten().tolist())

    got = generator_heldout(model, images, masks, labels, train=(images, masks, labels))
    assert all(type(v) is float for v in got.values()) and got["n_pairs"] == 6
    assert ("autoencoder_mask_dice" in got) == (mode == "joint")  # mask mode: the decoder is given the mask
    for level in ("top", "bottom"):
        c = codes[level].flatten().numpy()
        freq = np.bincount(c, minlength=8) / c.size
        assert got[f"{level}_codebook_usage"] == len(set(c.tolist())) / 8
        nz = freq[freq > 0]
        assert got[f"{level}_perplexity"] == pytest.approx(float(np.exp(-(nz * np.log(nz)).sum())), rel=1e-6)
        lg, target = (v.double().numpy() for v in logits[level])  # the same masking draw (seed 0)
        logp = lg - np.log(np.exp(lg - lg.max(1, keepdims=True)).sum(1, keepdims=True)) - lg.max(1, keepdims=True)
        assert got[f"prior_{level}_nll_val"] == pytest.approx(-logp[np.arange(len(target)), target.astype(int)].mean(), rel=1e-5)
        assert got[f"prior_{level}_accuracy_val"] == pytest.approx(float((lg.argmax(1) == target).mean()))
        # measured alike: the same pairs as "training" pairs give the same figures
        for measure in ("nll", "accuracy"):
            assert got[f"prior_{level}_{measure}_train"] == got[f"prior_{level}_{measure}_val"]
    without = generator_heldout(model, images, masks)
    assert not any(k.startswith("prior_") for k in without) and "top_codebook_usage" in without


def test_codebook_moves_to_the_mean_of_its_assigned_vectors():
    q = Quantizer(codes=2, dim=2, decay=0.5, threshold=0.0).train()
    q.embed.copy_(torch.tensor([[0.0, 0.0], [10.0, 10.0]]))
    q.embed_sum.copy_(q.embed)
    q.cluster_size.fill_(1.0)
    z = torch.tensor([[1.0, 1.0], [2.0, 0.0], [9.0, 11.0]]).t().reshape(1, 2, 1, 3)  # (B=1, D=2, h=1, w=3)
    _, codes, commit, logs = q(z, torch.Generator().manual_seed(0))
    assert codes.flatten().tolist() == [0, 0, 1]
    # cluster_size = 0.5 * 1 + 0.5 * counts; embed_sum = 0.5 * old + 0.5 * sums; embed = their ratio
    assert torch.allclose(q.cluster_size, torch.tensor([1.5, 1.0]))
    assert torch.allclose(q.embed[0], torch.tensor([1.5, 0.5]) / 1.5, atol=1e-4)
    assert torch.allclose(q.embed[1], torch.tensor([9.5, 10.5]), atol=1e-4)
    p = torch.tensor([2 / 3, 1 / 3])
    assert logs["usage"] == 1.0 and abs(logs["perplexity"] - float(torch.exp(-(p * p.log()).sum()))) < 1e-4
    assert float(commit) > 0


def test_eval_mode_leaves_the_codebook_alone():
    q = Quantizer(codes=4, dim=3, decay=0.9, threshold=1.0).eval()
    before = {k: v.clone() for k, v in q.state_dict().items()}
    q(torch.randn(2, 3, 4, 4), torch.Generator().manual_seed(0))
    assert all(torch.equal(before[k], v) for k, v in q.state_dict().items())


def test_dead_codes_restart_on_batch_vectors_drawn_with_the_generator():
    def run(seed):
        torch.manual_seed(0)
        q = Quantizer(codes=8, dim=3, decay=0.99, threshold=1.0).train()
        z = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(5))
        _, _, _, logs = q(z, torch.Generator().manual_seed(seed))
        return q, z, logs

    q, z, logs = run(1)
    assert logs["restarts"] == 8  # counts start at zero: every code restarts on the first step
    vectors = z.permute(0, 2, 3, 1).reshape(-1, 3)
    assert all(any(torch.equal(e, v) for v in vectors) for e in q.embed)  # each code is now an encoder output
    assert torch.equal(run(1)[0].embed, q.embed) and not torch.equal(run(2)[0].embed, q.embed)


def test_training_uses_the_codebooks_and_logs_both_levels(phantom_dir, tmp_path):
    import pandas as pd

    from augment.api import train

    cfg = validate(TrainConfig, {
        "data": phantom_dir, "out": tmp_path / "run", "budget": 12, "seed": 0, "generator": {"family": "vqvae2", **TINY["vqvae2"]},
        "train": {"max_steps": 30, "batch_size": 4, "checkpoint_every": 1000, "log_every": 1, "lr": 0.003}}, "train")
    result = train(cfg)
    loss = pd.read_csv(tmp_path / "run" / "loss.csv")
    vq = loss[loss["phase"] == "vqvae"]
    for level in ("top", "bottom"):
        assert vq[f"{level}_usage"].between(0, 1).all() and (vq[f"{level}_perplexity"] >= 1).all()
        assert vq[f"{level}_perplexity"].iloc[-1] > 1.5  # restarts spread the batch over several codes
    assert vq["loss"].iloc[-5:].mean() < vq["loss"].iloc[:5].mean()
    prior = loss[loss["phase"] == "prior"]
    assert {"top_ce", "bottom_ce", "top_acc", "bottom_acc"} <= set(prior.columns)
    assert prior["loss"].iloc[-5:].mean() < prior["loss"].iloc[:5].mean()
    # The trained parts on the val split, and the priors on their own training pairs beside it.
    from augment.data.dataset import load_tensors
    from augment.data.guard import load_training_set
    from augment.data.manifest import load_data
    from augment.generators.artifact import load_generator
    from augment.metrics import generator_heldout

    manifest, _ = load_data(phantom_dir)
    val = manifest[manifest["split"] == "val"]
    images, masks = load_tensors(val, phantom_dir)
    data = load_training_set(phantom_dir, 12, 0)
    got = generator_heldout(load_generator(result.out).model, images, masks, torch.tensor(val["label"].to_numpy()),
                            train=(data.images, data.masks, data.labels))
    assert 0 < got["top_codebook_usage"] <= 1 and 0 < got["bottom_codebook_usage"] <= 1
    for split in ("train", "val"):
        for level in ("top", "bottom"):
            assert 0 <= got[f"prior_{level}_accuracy_{split}"] <= 1 and got[f"prior_{level}_nll_{split}"] > 0


@pytest.mark.parametrize("mode", ["joint", "mask"])
def test_autoregressive_prior_keeps_the_contract(mode):
    model = _model(mode=mode, prior="autoregressive")
    _, masks, _ = _batch(4)
    given = masks if mode == "mask" else None
    gens = [torch.Generator().manual_seed(10 + i) for i in range(4)]
    full = model.sample(torch.tensor([0, 1, 2, 1]), gens, given)
    again = model.sample(torch.tensor([2, 0, 0, 0]), [torch.Generator().manual_seed(12)] + gens[:3],
                         None if given is None else given[[2, 0, 1, 2]])
    assert torch.equal(full.images[2], again.images[0]) and torch.equal(full.masks[2], again.masks[0])
    other = model.sample(torch.tensor([0, 1, 2, 1]), [torch.Generator().manual_seed(50 + i) for i in range(4)], given)
    assert not torch.equal(full.images, other.images)


def _spread(model, seed=1):
    """Spread the codebooks so that several codes are used (a fresh model maps all to a few)."""
    g = torch.Generator().manual_seed(seed)
    for q in (model.quant_top, model.quant_bottom):
        q.embed.copy_(torch.randn(q.embed.shape, generator=g) * 0.1)
    return model


def test_inpainting_keeps_the_background_codes_and_redraws_only_the_region():
    model = _spread(_model(mode="inpaint"))
    assert model.inpaints and model.mask_conditioned and not _model(mode="mask").inpaints
    backgrounds, masks, labels = _batch(4)
    regions = torch.zeros(4, 16, 16, dtype=torch.bool)
    regions[:, 4:8, 4:12] = True  # bottom tokens (4 px) rows 1, cols 1-2; top tokens (8 px) row 0, cols 0-1
    top0, bottom0 = model.encode(backgrounds, masks)
    inside_b = torch.zeros(4, 4, 4, dtype=torch.bool)
    inside_b[:, 1, 1:3] = True
    inside_t = torch.zeros(4, 2, 2, dtype=torch.bool)
    inside_t[:, 0, :] = True
    drawn = [model.draw_codes(labels, [torch.Generator().manual_seed(s + i) for i in range(4)], masks, VQVAE2Sampler(),
                              Context(backgrounds, regions)) for s in (0, 10)]
    for top, bottom in drawn:  # outside the region: the background's own codes
        assert torch.equal(top[~inside_t], top0[~inside_t]) and torch.equal(bottom[~inside_b], bottom0[~inside_b])
    (ta, ba), (tb, bb) = drawn
    assert not torch.equal(ba[inside_b], bb[inside_b])  # other noise, other region tokens
    # the sample is the decoder's image of those codes, with the given masks back
    s = model.sample(labels, [torch.Generator().manual_seed(i) for i in range(4)], masks, context=Context(backgrounds, regions))
    assert torch.equal(s.images, model.decode(ta, ba, masks)[0]) and torch.equal(s.masks, masks)
    # an empty region changes nothing: the background's own codes decoded
    kept = model.sample(labels, [torch.Generator().manual_seed(i) for i in range(4)], masks,
                        context=Context(backgrounds, torch.zeros_like(regions)))
    assert torch.equal(kept.images, model.decode(top0, bottom0, masks)[0])


def test_inpaint_prior_masks_and_scores_only_training_region_tokens():
    """In training (and held-out scoring) the masked tokens are a share of the tokens covering
    each pair's training region (its lesion dilated by inpaint_margin, an ellipse without one)."""
    from augment.generators.base import training_regions

    model = _spread(_model(mode="inpaint", inpaint_margin=0.08))
    images, masks, labels = _batch(6)
    masks[4:] = 0  # two pairs without a lesion: a random ellipse
    seen = {}
    for name in ("top", "bottom"):
        getattr(model, f"prior_{name}").register_forward_pre_hook(lambda _, args, name=name: seen.__setitem__(name, args[0]))
    logits = model.prior_logits(images, masks, labels, torch.Generator().manual_seed(0))
    regions = training_regions(masks, 0.08, torch.Generator().manual_seed(0))  # drawn first, from the same seed
    top, bottom = model.encode(images, masks)
    for name, side, codes in (("top", 2, top), ("bottom", 4, bottom)):
        region = torch.nn.functional.adaptive_max_pool2d(regions[:, None].float(), side).flatten(1) > 0
        hidden = seen[name] == getattr(model, f"prior_{name}").vocab
        assert hidden.any(1).all() and not (hidden & ~region).any()  # some, and only region tokens, per pair
        assert torch.equal(logits[name][1], codes.flatten(1)[hidden])  # the scored targets are the hidden codes
    assert not region.all()  # the bottom map's region is a part of it: the rest stays visible
    loss, _ = model.train()(images, masks, labels, phase="prior", step=0, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(loss)
    with pytest.raises(ConfigError, match="inpaint needs prior maskgit"):
        validate(TrainConfig, {"data": "d", "out": "o", "generator": {"family": "vqvae2", "mode": "inpaint",
                                                                     "prior": "autoregressive"}}, "train")


def test_the_prior_is_causal_only_when_autoregressive():
    """Changing a later token must not change the autoregressive prior's earlier logits; the
    masked-token prior sees the whole map."""
    for prior, causal in (("autoregressive", True), ("maskgit", False)):
        net = _model(prior=prior).prior_bottom
        tokens = torch.zeros(1, net.length, dtype=torch.int64)
        later = tokens.clone()
        later[0, -1] = 3
        cond = torch.zeros(1, net.length, 4)
        a, b = net(tokens, torch.tensor([0]), cond), net(later, torch.tensor([0]), cond)
        assert torch.equal(a[0, :-1], b[0, :-1]) == causal


def test_sampler_settings_change_samples_and_are_validated():
    model = _model()
    labels = torch.tensor([0, 1, 2])

    def draw(**kw):
        return model.sample(labels, [torch.Generator().manual_seed(i) for i in range(3)], settings=VQVAE2Sampler(**kw))

    base = draw()
    assert torch.equal(base.images, draw().images)
    assert not torch.equal(base.images, draw(temperature=0.3).images)
    assert not torch.equal(base.images, draw(iterations=2).images)
    # top_k=1 takes the likeliest code everywhere: the per-item noise no longer picks the codes
    top, bottom = model.draw_codes(labels, [torch.Generator().manual_seed(i) for i in range(3)], None,
                                   VQVAE2Sampler(top_k=1, iterations=1))
    top2, bottom2 = model.draw_codes(labels, [torch.Generator().manual_seed(9 + i) for i in range(3)], None,
                                     VQVAE2Sampler(top_k=1, iterations=1))
    assert torch.equal(top, top2) and torch.equal(bottom, bottom2)
    for bad in ({"temperature": 0}, {"iterations": 0}, {"top_k": -1}, {"steps": 5}, {"temperature": 1e-300},
                {"temperature": float("inf")}, {"confidence_noise": float("inf")}, {"confidence_noise": 1e300}):
        with pytest.raises(ConfigError):
            validate(VQVAE2Sampler, bad, "sample: sampler (vqvae2)")


def test_each_phase_trains_only_its_own_modules():
    model = _model(mode="mask")
    vq = {id(p) for m in model.phase_modules("vqvae") for p in m.parameters()}
    prior = {id(p) for m in model.phase_modules("prior") for p in m.parameters()}
    everything = {id(p) for p in model.parameters()}
    assert vq and prior and not vq & prior and vq | prior == everything
    with pytest.raises(ValueError, match="phases"):
        model.phase_modules("denoiser")


def test_bad_sizes_are_one_config_line():
    with pytest.raises(ConfigError, match="multiple of 8.*20 px"):
        build(VQVAE2Config(), DataSpec(image_size=20, channels=1, num_classes=2, mask_classes=2))
    with pytest.raises(ConfigError, match="prior_width"):
        build(VQVAE2Config(prior_width=30, prior_heads=4), SPEC)
    with pytest.raises(ConfigError, match="prior"):
        validate(TrainConfig, {"data": "d", "out": "o", "generator": {"family": "vqvae2", "prior": "pixelcnn"}}, "train")


def test_one_bottom_halving_trains_and_samples():
    """bottom_halvings=1 once crashed in the encoder (its one strided conv has the narrow width)."""
    model = _model(bottom_halvings=1, top_halvings=1).train()
    images, masks, labels = _batch()
    for phase in ("vqvae", "prior"):
        loss, _ = model(images, masks, labels, phase=phase, step=0, generator=torch.Generator().manual_seed(0))
        assert torch.isfinite(loss)
    model.eval()
    assert model.bottom_side == 8 and model.top_side == 4
    out = model.sample(labels[:2], [torch.Generator().manual_seed(i) for i in range(2)])
    assert out.images.shape == (2, 1, 16, 16)


@pytest.mark.parametrize("stop", [2, 6], ids=["inside-vqvae", "inside-prior"])
def test_resumed_run_equals_uninterrupted(phantom_dir, tmp_path, stop):
    """Stopped after a checkpoint inside either phase (codebook buffers, restarts drawn from the
    step's generator, the prior's cached training codes recomputed), the run ends with the same weights."""
    import shutil

    from safetensors.torch import load_file

    from augment.api import train
    from augment.config import save_json

    def cfg(out):
        return validate(TrainConfig, {
            "data": phantom_dir, "out": out, "budget": 12, "seed": 0, "generator": {"family": "vqvae2", **TINY["vqvae2"]},
            "train": {"max_steps": 4, "batch_size": 4, "checkpoint_every": 2, "keep_checkpoints": 5}}, "train")

    clean = tmp_path / "clean"
    train(cfg(clean))
    stopped = tmp_path / "stopped"
    stopped.mkdir()
    save_json(cfg(stopped), stopped / "config.json")
    name = f"step_{stop:08d}"
    shutil.copytree(clean / "state" / name, stopped / "state" / name)
    record = train(cfg(stopped), resume=True).record
    assert record["resumed_from_step"] == stop
    a, b = load_file(clean / "model.safetensors"), load_file(stopped / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert "quant_bottom.embed" in a and "quant_bottom.cluster_size" in a


def test_two_process_data_parallel_keeps_one_codebook(phantom_dir, tmp_path):
    """Each process restarts dead codes with its own noise; the assignment statistics are summed
    and the restarts broadcast, so the replicas end with identical weights and codebooks."""
    import json

    from safetensors.torch import load_file

    out = tmp_path / "ddp"
    res = run_ddp("train", "--data", phantom_dir, "--generator", "vqvae2", "--out", out,
                  "--budget", "24", *set_args(TINY["vqvae2"], "generator"), "--set", "train.max_steps=3", "--set", "train.batch_size=4")
    assert res.returncode == 0, res.stderr[-3000:]
    info = json.loads((out / "run.json").read_text())
    assert info["processes"] == 2
    sums = info["replica_checksums"]
    assert len(sums) == 2 and sums[0] == sums[1]
    weights = load_file(out / "model.safetensors")
    assert float(weights["quant_bottom.cluster_size"].sum()) > 0
