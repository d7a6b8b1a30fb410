"""The mask-to-image GAN (augment.generators.gan): its config, DiffAugment (on real and fake alike,
the mask moved with the image, before every discriminator call), the discriminator's accuracy in
the logs, the generator EMA that samples, exact resume after a real kill and refused pickles. The
family contract itself runs in tests/test_generators.py (variants gan/mask and gan/inpaint)."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from augment.config import validate
from augment.errors import ConfigError
from augment.generators import TrainConfig
from augment.generators.base import Context, DataSpec, one_hot_masks
from augment.generators.gan import GAN, GANConfig, GANSampler
from augment.generators.loop import LoopConfig, TrainingError, make_accelerator, train_loop
from augment.generators.plan import has_several_parts, phase_settings, plan_phases
from tests.conftest import TINY, augment_cmd, kill_when, run_cli, set_args

SPEC = DataSpec(image_size=16, channels=1, num_classes=3, mask_classes=2)


def _model(**over) -> GAN:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return GAN(GANConfig(**{**TINY["gan"], **over}), SPEC)


def _batch(n: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    masks = torch.zeros(n, 16, 16, dtype=torch.int64)
    for i in range(n):
        r, c = torch.randint(3, 9, (2,), generator=g).tolist()
        masks[i, r:r + 5, c:c + 5] = 1
    return torch.rand(n, 1, 16, 16, generator=g), masks, torch.arange(n) % 3


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_config_has_no_joint_mode_and_checks_its_settings(phantom_dir, tmp_path):
    cfg = GANConfig()
    assert cfg.mode == "mask" and cfg.diffaugment and cfg.loss == "hinge" and cfg.betas == (0.0, 0.99)
    base = {"data": phantom_dir, "out": tmp_path / "run"}
    assert validate(TrainConfig, {**base, "generator": {"family": "gan"}}, "train").generator.mode == "mask"
    for bad, match in (({"mode": "joint"}, "mode"), ({"betas": [0.5, 1.0]}, "betas must be two numbers"),
                       ({"diffaugment_policy": []}, "diffaugment_policy"), ({"diffaugment_policy": ["cutout", "cutout"]}, "each once"),
                       ({"diffaugment_policy": ["flip"]}, "diffaugment_policy"), ({"base_channels": 64, "max_channels": 32}, "max_channels"),
                       ({"r1_weight": -1}, "r1_weight"), ({"spectral_norm": True}, "unknown key")):
        with pytest.raises(ConfigError, match=match):
            validate(TrainConfig, {**base, "generator": {"family": "gan", **bad}}, "train")
    # l1 to the real image: on in inpaint mode, off in mask mode (it would pin the image to its pair), unless set
    assert _model().l1_weight == 0.0 and _model(mode="inpaint").l1_weight == 1.0 and _model(l1_weight=0.5).l1_weight == 0.5


def test_parts_are_the_discriminator_then_the_generator_and_the_ema_trains_in_neither():
    model = _model(d_lr=4e-4, g_lr=1e-4, betas=(0.5, 0.99))
    assert has_several_parts(model)
    (phase,) = plan_phases(model, {"main": phase_settings(LoopConfig(), "main")})
    d, g = phase.parts
    assert (d.name, g.name) == ("d", "g") and (d.settings.lr, g.settings.lr) == (4e-4, 1e-4) and d.betas == g.betas == (0.5, 0.99)
    assert {id(p) for p in d.params} == {id(p) for p in model.disc.parameters()}
    assert {id(p) for p in g.params} == {id(p) for p in model.gen.parameters()}
    assert all(not p.requires_grad for p in model.gen_ema.parameters())
    assert _model(ema_decay=0.0).gen_ema is None


# ---------------------------------------------------------------- DiffAugment


def test_diffaugment_moves_the_mask_with_the_image_and_gives_real_and_fake_the_same_view():
    model = _model(diffaugment_policy=("translation", "cutout"))
    _, masks, _ = _batch(8)
    real = masks[:, None].float()  # an image that is its own mask: lesion white, background black
    fake = torch.rand(real.shape, generator=_gen(5))
    plain_r, _ = _model(diffaugment=False).disc_inputs(real, fake, masks, None, _gen(1))
    assert torch.equal(plain_r, torch.cat([real * 2 - 1, one_hot_masks(masks, 2)], 1))
    r, f = model.disc_inputs(real, fake, masks, None, _gen(1))
    assert r.shape == plain_r.shape and not torch.equal(r, plain_r)
    assert torch.equal((r[:, 0] > 0.5), (r[:, 2] > 0.5))  # the lesion pixels and the lesion mask moved together
    assert not torch.equal(r[:, 1:], plain_r[:, 1:])  # ... and the mask did move
    assert torch.equal(r[:, 1:], f[:, 1:])  # real and fake: the same shift and cutout of their (common) mask
    cut_r, cut_f = (r == 0).all(1), (f == 0).all(1)
    assert cut_r.any() and torch.equal(cut_r, cut_f)  # ... and the same square cut out of both
    r2, _ = model.disc_inputs(real, fake, masks, None, _gen(1))
    r3, _ = model.disc_inputs(real, fake, masks, None, _gen(2))
    assert torch.equal(r, r2) and not torch.equal(r, r3)  # drawn from the step's generator only


def test_diffaugment_colour_touches_the_image_only_and_everything_is_differentiable():
    images, masks, _ = _batch(4)
    model = _model(diffaugment_policy=("colour",))
    plain, _ = _model(diffaugment=False).disc_inputs(images, images, masks, None, _gen(0))
    r, f = model.disc_inputs(images, images, masks, None, _gen(0))
    assert torch.equal(r[:, 1:], plain[:, 1:]) and not torch.allclose(r[:, :1], plain[:, :1])
    assert torch.equal(r, f)  # a fake equal to its real is seen exactly as the real is
    fake = torch.rand(images.shape, generator=_gen(3)).requires_grad_(True)
    _, f = _model().disc_inputs(images, fake, masks, None, _gen(0))  # the whole policy
    f[:, :1].square().sum().backward()
    assert torch.isfinite(fake.grad).all() and float(fake.grad.abs().sum()) > 0


def _seen(model: GAN, part: str, step: int = 0, seed: int = 7, batch=None):
    """What every discriminator call of one ``forward`` gets, and the logs."""
    images, masks, labels = batch or _batch(4)
    seen = []
    hook = model.disc.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().clone()))
    try:
        _, logs = model(images, masks, labels, "main", step, _gen(seed), part=part)
    finally:
        hook.remove()
    return seen, logs


def test_every_discriminator_call_of_both_steps_sees_augmented_pairs():
    images, masks, _ = _batch(4)
    plain_real = torch.cat([images * 2 - 1, one_hot_masks(masks, 2)], 1)
    off = _seen(_model(diffaugment=False), "d")[0]
    assert len(off) == 2 and torch.equal(off[0], plain_real)  # real, then fake
    for part in ("d", "g"):
        on = _seen(_model(), part)[0]
        assert len(on) == 2  # d: real and fake; g: fake and (feature matching) real
        assert all(not torch.equal(x, plain_real) for x in on)
        assert torch.equal(on[0][:, 1:], on[1][:, 1:])  # the same view of the mask for real and fake
    fake_on, fake_off = _seen(_model(), "d")[0][1], off[1]
    assert not torch.equal(fake_on, fake_off)  # the switch changes what the discriminator sees of the fake too


def test_inpaint_fake_is_the_real_background_outside_the_region():
    model = _model(mode="inpaint", diffaugment=False)
    real_in, fake_in = _seen(model, "d")[0]
    assert real_in.shape[1] == 1 + 2 + 1  # image, one-hot mask, region
    region = fake_in[:, 3:4] > 0.5
    assert torch.equal(real_in[:, 1:], fake_in[:, 1:]) and region.any() and (~region).any()
    assert torch.equal(fake_in[:, :1][~region], real_in[:, :1][~region])  # the seam is judged against the real background
    assert not torch.equal(fake_in[:, :1][region], real_in[:, :1][region])


# ---------------------------------------------------------------- losses and logs


@pytest.mark.parametrize("loss", ["hinge", "nonsaturating"])
def test_logs_carry_the_discriminator_accuracy_and_the_losses(loss):
    softplus = torch.nn.functional.softplus
    for v in (2.0, -2.0):  # a discriminator whose every patch logit is v
        model = _model(loss=loss, r1_weight=0.0, feature_matching=0.0)
        with torch.no_grad():
            model.disc.logit.weight.zero_()
            model.disc.logit.bias.fill_(v)
            model.disc.embed.weight.zero_()
        _, d = _seen(model, "d")
        _, g = _seen(model, "g")
        assert d["d_acc_real"] == (1.0 if v > 0 else 0.0) and d["d_acc_fake"] == (0.0 if v > 0 else 1.0)
        t = torch.tensor(v)
        want_d = (max(0.0, 1 - v) + max(0.0, 1 + v)) if loss == "hinge" else float(softplus(-t) + softplus(t))
        want_g = -v if loss == "hinge" else float(softplus(-t))
        assert d["d_loss"] == pytest.approx(want_d) and g["g_adv"] == pytest.approx(want_g)
        assert "d_r1" not in d and "g_fm" not in g and "g_l1" not in g  # all switched off
    _, d = _seen(_model(), "d")
    _, g = _seen(_model(mode="inpaint"), "g")
    assert d["d_r1"] > 0 and 0 <= d["d_acc_real"] <= 1 and 0 <= d["d_acc_fake"] <= 1
    assert {"g_adv", "g_fm", "g_l1"} <= g.keys() and not set(d) & set(g)  # distinct keys per part


def test_the_ema_generator_samples_and_absorbs_each_step_once():
    model = _model()
    init = [p.detach().clone() for p in model.gen.parameters()]
    with torch.no_grad():
        for p in model.gen.parameters():
            p.add_(1.0)  # as if the generator had stepped
    _seen(model, "d", step=1)
    _seen(model, "d", step=1)  # the second micro-batch of the same step: absorbed once only
    decay = min(0.999, 2 / 11)
    for ours, start, live in zip(model.gen_ema.parameters(), init, model.gen.parameters()):
        assert torch.allclose(ours, start + (1 - decay) * (live - start))
    assert int(model.ema_step) == 1
    masks, labels = _batch(2)[1], torch.tensor([1, 2])
    a = model.sample(labels, _gen(0), masks)
    with torch.no_grad():
        for p in model.gen.parameters():
            p.zero_()  # the live generator is not what samples
    assert torch.equal(a.images, model.sample(labels, _gen(0), masks).images)
    plain = _model(ema_decay=0.0)
    b = plain.sample(labels, _gen(0), masks)
    with torch.no_grad():
        for p in plain.gen.parameters():
            p.zero_()
    assert not torch.equal(b.images, plain.sample(labels, _gen(0), masks).images)  # without EMA the generator samples


def test_truncation_and_noise_scale_are_the_only_noise():
    model = _model(mode="inpaint")
    with torch.no_grad():
        for block in model.gen_ema.blocks:
            block.noise_strength.fill_(1.0)
    _, masks, labels = _batch(2)
    ctx = Context(torch.rand(2, 1, 16, 16, generator=_gen(9)), masks > 0)
    still = GANSampler(truncation=0.0, noise_scale=0.0)
    a = model.sample(labels, _gen(1), masks, still, context=ctx)
    b = model.sample(labels, _gen(2), masks, still, context=ctx)
    assert torch.equal(a.images, b.images)  # no noise left: the seed does not matter
    c = model.sample(labels, _gen(1), masks, GANSampler(truncation=0.0, noise_scale=1.0), context=ctx)
    d = model.sample(labels, _gen(1), masks, GANSampler(truncation=1.0, noise_scale=0.0), context=ctx)
    assert not torch.equal(a.images, c.images) and not torch.equal(a.images, d.images)


# ---------------------------------------------------------------- training, resume, pickles


def _train_args(data, out, steps):
    return ["train", "--data", data, "--generator", "gan", "--out", out, "--budget", "24", *set_args(TINY["gan"], "generator"),
            "--set", f"train.max_steps={steps}", "--set", "train.checkpoint_every=10", "--set", "train.batch_size=4",
            "--set", "train.grad_accum=2", "--set", "train.log_every=5"]


def test_kill_and_resume_gives_the_same_weights_and_logs(phantom_dir, tmp_path):
    steps = 80
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    rc = kill_when(augment_cmd(*_train_args(phantom_dir, killed, steps)),
                   lambda: any((p / "trainer.json").is_file() for p in (killed / "state").glob("step_*")))
    assert rc == -signal.SIGKILL, "the run finished before it could be killed; raise `steps`"
    assert not (killed / "run.json").exists()
    res = run_cli(*_train_args(phantom_dir, killed, steps), "--resume")
    assert res.returncode == 0, res.stderr
    res = run_cli(*_train_args(phantom_dir, clean, steps))
    assert res.returncode == 0, res.stderr
    info = json.loads((killed / "run.json").read_text())
    assert info["family"] == "gan" and 10 <= info["resumed_from_step"] < steps and info["steps"] == steps
    a, b = load_file(killed / "model.safetensors"), load_file(clean / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    gen = sorted(k for k in a if k.startswith("gen."))
    assert gen and all(f"gen_ema.{k[4:]}" in a for k in gen) and int(a["ema_step"]) == steps - 1
    assert any(not torch.equal(a[k], a[f"gen_ema.{k[4:]}"]) for k in gen)  # the EMA lags the live generator
    la, lb = pd.read_csv(killed / "loss.csv"), pd.read_csv(clean / "loss.csv")
    assert la.drop(columns="steps_per_s").equals(lb.drop(columns="steps_per_s"))  # no lost or duplicated rows
    assert la["step"].tolist() == list(range(5, steps + 1, 5))
    assert {"loss_d", "loss_g", "d_loss", "d_r1", "d_acc_real", "d_acc_fake", "g_adv", "g_fm"} <= set(la.columns)
    assert la[["d_acc_real", "d_acc_fake"]].stack().between(0, 1).all()


def _loop(run_dir: Path, resume: bool = False):
    model = _model()
    cfg = LoopConfig(max_steps=4, batch_size=4, checkpoint_every=2, log_every=1)
    acc = make_accelerator(cfg, model.phases, several_parts=has_several_parts(model))
    images, masks, labels = _batch(8)
    return train_loop(acc, model, (images, masks, labels), cfg, 0, run_dir, resume)


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("name", ["optimizer.d.safetensors", "optimizer.g.safetensors", "model.safetensors"])
def test_a_pickle_in_the_checkpoint_is_refused_by_name(tmp_path, name):
    run, marker = tmp_path / "run", tmp_path / "marker"
    first = _loop(run)
    assert [r["step"] for r in first.loss_rows] == [1, 2, 3, 4]
    folder = run / "state" / "step_00000002"
    assert {"optimizer.d.safetensors", "optimizer.g.safetensors", "model.safetensors"} <= {p.name for p in folder.iterdir()}
    torch.save({"state": _Evil(marker)}, folder / name)
    with pytest.raises(TrainingError, match=rf"`.*step_00000002/{name}` is not a safetensors file"):
        _loop(run, resume=True)
    assert not marker.exists()


def test_the_report_reads_the_discriminator_accuracies_and_losses_from_the_training_log(tmp_path):
    import pandas as pd

    from augment.gather import _training_rows

    log = pd.DataFrame({"step": range(20), "phase": "main", "loss": 1.0,
                        "d_acc_real": [0.5] * 18 + [0.9, 1.0], "d_acc_fake": [0.5] * 18 + [0.7, 0.8],
                        "d_loss": [2.0] * 18 + [0.2, 0.4], "g_adv": [1.0] * 18 + [3.0, 5.0]})
    log.to_csv(tmp_path / "loss.csv", index=False)
    rows = {r["metric"]: r for r in _training_rows(tmp_path / "loss.csv", {"generator": "gan_mask", "budget": 16, "seed": 0})}
    assert set(rows) == {"final_d_acc_real", "final_d_acc_fake", "final_d_loss", "final_g_adv"}
    assert rows["final_d_acc_real"]["value"] == pytest.approx(0.95)  # the last tenth: 2 of 20 rows
    assert rows["final_g_adv"]["value"] == pytest.approx(4.0) and rows["final_d_loss"]["extractor"] == "training log"
    assert _training_rows(tmp_path / "absent.csv", {}) == []
    pd.DataFrame({"step": [0], "loss": [1.0]}).to_csv(tmp_path / "cvae.csv", index=False)
    assert _training_rows(tmp_path / "cvae.csv", {}) == []  # a family that logs none of them adds no row
