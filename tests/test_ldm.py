"""Latent diffusion: guidance, the latent round trip, the latent scale, both solvers, every mode.

The registry's contract test (tests/test_generators.py) covers the family's sampling contract
and byte-exact regeneration; these check what is particular to diffusion."""

from __future__ import annotations

import pytest
import torch

from augment.config import validate
from augment.errors import ConfigError
from augment.generators import DataSpec, TrainConfig, build
from augment.generators.base import Context, disk_dilate
from augment.generators.ldm import LDMConfig, LDMSampler
from tests.conftest import TINY

SPEC = DataSpec(image_size=16, channels=1, num_classes=3, mask_classes=3)


def _model(mode="joint", seed=0):
    torch.manual_seed(seed)
    return build(LDMConfig(mode=mode, **TINY["ldm"]), SPEC).eval()


def _masks(n, size=16):
    m = torch.zeros(n, size, size, dtype=torch.int64)
    m[:, 4:10, 5:11] = 1
    return m


def _context(n, size=16):
    images = torch.rand((n, 1, size, size), generator=torch.Generator().manual_seed(9))
    return Context(images, disk_dilate(_masks(n, size) > 0, 1))


@pytest.mark.parametrize("mode", ["joint", "mask", "inpaint"])
def test_guidance_one_is_the_plain_conditional_path(mode):
    """Guidance 1 equals a DDIM loop written out here that only ever calls the conditional denoiser
    (in inpaint mode its input also holds the blanked background's latent and the region's area)."""
    model = _model(mode)
    labels = torch.tensor([0, 2, 1])
    masks = _masks(3) if mode != "joint" else None
    ctx = _context(3) if mode == "inpaint" else None
    settings = LDMSampler(solver="ddim", steps=4, guidance=1.0)
    got = model.sample(labels, torch.Generator().manual_seed(5), masks, settings, ctx)

    z = torch.randn((3, 2, 8, 8), generator=torch.Generator().manual_seed(5))
    sched = model.scheduler(settings)
    extra = None if masks is None else model._mask_input(masks)
    with torch.no_grad():
        if ctx is not None:
            region = ctx.regions[:, None].float()
            blanked = model.encode(ctx.images * (1 - region), torch.zeros_like(masks))
            extra = torch.cat([extra, blanked, torch.nn.functional.avg_pool2d(region, 2)], 1)
        for t in sched.timesteps:
            x = z if extra is None else torch.cat([z, extra], 1)
            z = sched.step(model.unet(x, t, class_labels=labels).sample, t, z).prev_sample
        images, _ = model.decode(z)
    assert torch.equal(got.images, images.float())


def test_guidance_combines_the_conditional_and_null_class_outputs():
    model = _model("mask")
    z = torch.randn(2, 2, 8, 8, generator=torch.Generator().manual_seed(1))
    labels, m = torch.tensor([1, 2]), model._mask_input(_masks(2))
    t = torch.tensor(500)
    with torch.no_grad():
        cond = model.unet(torch.cat([z, m], 1), t, class_labels=labels).sample
        null = torch.full_like(labels, SPEC.num_classes)
        uncond = model.unet(torch.cat([z, torch.zeros_like(m)], 1), t, class_labels=null).sample
        got = model.guided_noise(z, t, labels, m, 3.0)
    torch.testing.assert_close(got, uncond + 3.0 * (cond - uncond), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(got, cond)


@pytest.mark.parametrize("guidance", [0.0, 2.5])
def test_guidance_changes_the_samples(guidance):
    model = _model()
    labels = torch.tensor([1, 2])
    plain = model.sample(labels, torch.Generator().manual_seed(3), settings=LDMSampler(steps=3, guidance=1.0))
    guided = model.sample(labels, torch.Generator().manual_seed(3), settings=LDMSampler(steps=3, guidance=guidance))
    assert not torch.equal(plain.images, guided.images)


def test_latent_round_trip_shapes_and_ranges():
    model = _model()
    images = torch.rand(5, 1, 16, 16)
    masks = _masks(5)
    with torch.no_grad():
        z = model.encode(images, masks)
        rec, logits = model.decode(z)
        drawn = model.encode(images, masks, torch.Generator().manual_seed(0))
    assert z.shape == (5, 2, 8, 8) == drawn.shape and not torch.equal(z, drawn)
    assert rec.shape == images.shape and logits.shape == (5, 3, 16, 16)
    assert float(rec.min()) >= 0 and float(rec.max()) <= 1
    again, decoded = model.reconstruct(images, masks)
    assert torch.equal(again, rec.float()) and torch.equal(decoded, logits.argmax(1))  # the posterior mean, decoded


@pytest.mark.parametrize("mode", ["joint", "mask"])
def test_heldout_measures_the_autoencoder_round_trip(mode):
    """Both modes decode a mask (the autoencoder encodes it), so both have a mask Dice; the
    values are the plain formulas over the round trip, written out here."""
    import numpy as np
    from torchmetrics.functional.image import structural_similarity_index_measure

    from augment.metrics import generator_heldout

    model = _model(mode)
    images, masks = torch.rand(6, 1, 16, 16, generator=torch.Generator().manual_seed(2)), _masks(6)
    masks[0] = 0  # no lesion: left out of the Dice
    got = generator_heldout(model, images, masks, torch.tensor([0, 1, 2, 0, 1, 2]))
    assert set(got) == {"autoencoder_psnr", "autoencoder_ssim", "autoencoder_mask_dice", "n_pairs"}
    assert all(type(v) is float for v in got.values()) and got["n_pairs"] == 6

    rec, decoded = model.reconstruct(images, masks)
    x, r = images.numpy().astype(np.float64), rec.numpy().astype(np.float64)
    psnr = np.mean([10 * np.log10(1 / np.mean((r[i] - x[i]) ** 2)) for i in range(6)])
    p, t = decoded.numpy()[1:] > 0, masks.numpy()[1:] > 0
    dice = np.mean([2 * (a & b).sum() / (a.sum() + b.sum()) for a, b in zip(p, t)])
    ssim = float(structural_similarity_index_measure(rec, images, data_range=1.0))
    assert got["autoencoder_psnr"] == pytest.approx(psnr, rel=1e-5)
    assert got["autoencoder_mask_dice"] == pytest.approx(dice, rel=1e-6)
    assert got["autoencoder_ssim"] == pytest.approx(ssim, rel=1e-5)


def test_denoiser_phase_scales_latents_to_unit_std():
    model = _model()
    images, masks = torch.rand(12, 1, 16, 16) * 0.2, _masks(12)
    with torch.no_grad():
        model.on_phase_start("autoencoder", (images, masks, torch.zeros(12, dtype=torch.int64)))
        assert float(model.latent_scale) == 1.0  # nothing measured before the denoiser
        model.on_phase_start("denoiser", (images, masks, torch.zeros(12, dtype=torch.int64)))
        z = model.encode(images, masks)
    assert float(model.latent_scale) != 1.0
    assert float(z.std()) == pytest.approx(1.0, rel=1e-4)
    assert "latent_scale" in model.state_dict()  # saved with the weights, so sampling decodes right


@pytest.mark.parametrize("solver", ["ddim", "dpm++"])
def test_both_solvers_are_deterministic_and_seed_dependent(solver):
    model = _model()
    labels = torch.tensor([0, 1, 2])
    s = LDMSampler(solver=solver, steps=3)
    a = model.sample(labels, torch.Generator().manual_seed(1), settings=s)
    b = model.sample(labels, torch.Generator().manual_seed(1), settings=s)
    c = model.sample(labels, torch.Generator().manual_seed(2), settings=s)
    assert torch.equal(a.images, b.images) and torch.equal(a.masks, b.masks)
    assert not torch.equal(a.images, c.images)


def test_each_phase_trains_only_its_own_module():
    model = _model()
    ae = {id(p) for p in model.phase_modules("autoencoder")[0].parameters()}
    unet = {id(p) for p in model.phase_modules("denoiser")[0].parameters()}
    assert ae and unet and not ae & unet
    with pytest.raises(ValueError, match="phases"):
        model.phase_modules("prior")


def test_bad_settings_are_one_config_line():
    with pytest.raises(ConfigError, match="solver"):
        validate(LDMSampler, {"solver": "euler"}, "sample: sampler (ldm)")
    with pytest.raises(ConfigError, match="steps"):
        validate(LDMSampler, {"steps": 0}, "sample: sampler (ldm)")
    with pytest.raises(ConfigError, match="ae_channels"):
        validate(TrainConfig, {"data": "d", "out": "o", "generator": {"family": "ldm", "ae_channels": []}}, "train")


def test_a_size_the_autoencoder_cannot_halve_is_refused():
    with pytest.raises(ConfigError, match="ae_channels has 4 widths.*20 px"):
        build(LDMConfig(ae_channels=(8, 8, 8, 8)), DataSpec(image_size=20, channels=1, num_classes=2, mask_classes=2))


def test_resumed_inside_the_denoiser_phase_equals_uninterrupted(phantom_dir, tmp_path):
    """A run stopped after a checkpoint inside the denoiser phase (the latent scale is measured
    again when the phase restarts, then overwritten by the checkpoint's) ends with the same weights."""
    import shutil

    from safetensors.torch import load_file

    from augment.api import train
    from augment.config import save_json

    def cfg(out):
        return validate(TrainConfig, {
            "data": phantom_dir, "out": out, "budget": 12, "seed": 0, "generator": {"family": "ldm", **TINY["ldm"]},
            "train": {"max_steps": 6, "batch_size": 4, "checkpoint_every": 4, "keep_checkpoints": 5,
                      "phases": {"autoencoder": {"max_steps": 2}, "denoiser": {"ema": True, "ema_decay": 0.9}}}}, "train")

    clean = tmp_path / "clean"
    train(cfg(clean))
    stopped = tmp_path / "stopped"
    stopped.mkdir()
    save_json(cfg(stopped), stopped / "config.json")  # what train writes before its first step
    shutil.copytree(clean / "state" / "step_00000004", stopped / "state" / "step_00000004")  # 2 steps into the denoiser
    record = train(cfg(stopped), resume=True).record
    assert record["resumed_from_step"] == 4
    a, b = load_file(clean / "model.safetensors"), load_file(stopped / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert float(a["latent_scale"]) != 1.0


def test_inpaint_denoiser_input_reads_the_background_outside_the_region_only():
    model = _model("inpaint")
    assert model.inpaints and model.mask_conditioned and not _model("mask").inpaints
    assert model.unet.config.in_channels == 2 + 3 + 2 + 1  # noisy latents, mask, blanked background latent, region
    ctx = _context(2)
    inside = ctx.regions[:, None]
    changed_in = Context(torch.where(inside, 1.0 - ctx.images, ctx.images), ctx.regions)
    changed_out = Context(torch.where(inside, ctx.images, 1.0 - ctx.images), ctx.regions)
    with torch.no_grad():
        a, b, c = (model._context_input(x) for x in (ctx, changed_in, changed_out))
    assert a.shape == (2, 3, 8, 8)
    assert torch.equal(a, b)  # the pixels to be generated never reach the denoiser (no leak of the target)
    assert not torch.equal(a, c)
    with pytest.raises(ValueError, match="Context"):
        model.sample(torch.tensor([0, 1]), torch.Generator(), _masks(2))
    with pytest.raises(ValueError, match="context"):
        _model("mask").sample(torch.tensor([0, 1]), torch.Generator(), _masks(2), context=ctx)


@pytest.mark.parametrize("outside", [0.0, 0.1])
def test_inpaint_loss_is_weighted_toward_the_region(monkeypatch, outside):
    """The denoising loss's gradient reaches latent cells touching no region pixel only with
    weight ``OUTSIDE_WEIGHT`` (none at 0). Every image has a lesion, so the training regions are
    the lesions dilated by round(0.08 * 16) = 1 px."""
    from augment.generators import ldm

    monkeypatch.setattr(ldm, "OUTSIDE_WEIGHT", outside)
    model = _model("inpaint").train()
    masks = _masks(3)
    touched = torch.nn.functional.max_pool2d(disk_dilate(masks > 0, 1)[:, None].float(), 2).expand(3, 2, 8, 8) > 0
    outputs = []

    def keep(module, inputs, out):  # returns None: the output is left as it is
        out.sample.retain_grad()
        outputs.append(out.sample)

    model.unet.register_forward_hook(keep)
    loss, logs = model(torch.rand(3, 1, 16, 16), masks, torch.tensor([0, 1, 2]), "denoiser", 0, torch.Generator().manual_seed(0))
    loss.backward()
    grad = outputs[0].grad
    assert bool((grad[touched] != 0).all()) and set(logs) == {"denoise_mse", "region_mse"}
    assert bool((grad[~touched] == 0).all()) == (outside == 0.0)


def test_a_unet_reaching_a_one_pixel_map_with_one_channel_per_group_is_refused_before_training():
    # found by tests/test_property.py: sampling one pair at a time crashed inside GroupNorm
    from augment.errors import ConfigError
    from augment.generators.base import DataSpec
    from augment.generators.ldm import LDM, LDMConfig

    spec = DataSpec(image_size=16, channels=1, num_classes=3, mask_classes=2)
    with pytest.raises(ConfigError, match=r"unet_channels \[8, 8, 8\] reaches a 1x1 px map with one channel per GroupNorm group"):
        LDM(LDMConfig(ae_channels=(8, 8, 8), unet_channels=(8, 8, 8)), spec)
    LDM(LDMConfig(ae_channels=(8, 8, 8), unet_channels=(8, 16)), spec)  # 2x2 at the deepest: fine
