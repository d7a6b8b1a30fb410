"""Contract test over the generator registry: a new family is covered by adding it there
(and a tiny config to TINY in tests/conftest.py; a family without one fails this test on
purpose). Every mode of a family is a variant (``family`` for joint generation, ``family/mask``
for images made for given masks, ``family/inpaint`` for the lesion region of a given background)."""

from __future__ import annotations

import os

import pytest
import torch

from augment.api import train
from augment.config import validate
from augment.generators import REGISTRY, TrainConfig
from augment.generators.artifact import load_generator
from augment.generators.base import Context, disk_dilate
from tests.conftest import TINY

#: every mode a family has; the contract runs over each
MODES = {"cvae": ("joint", "mask", "inpaint"), "gan": ("mask", "inpaint"), "ldm": ("joint", "mask", "inpaint"), "vqvae2": ("joint", "mask", "inpaint")}
LOOP = {"max_steps": 2, "batch_size": 4, "checkpoint_every": 1000, "log_every": 1}
VARIANTS = [f"{f}/{m}" if m != "joint" else f for f in sorted(REGISTRY) for m in MODES.get(f, ("joint",))]


def test_every_family_has_a_tiny_config_and_its_modes():
    for family in REGISTRY:
        assert family in TINY, f"add a tiny config for family `{family}` to TINY in tests/conftest.py"
        assert family in MODES, f"list the modes of family `{family}` in MODES"


@pytest.fixture(scope="module", params=VARIANTS)
def trained(request, phantom_dir, tmp_path_factory):
    family, _, mode = request.param.partition("/")
    extra = {"mode": mode} if mode else {}
    out = tmp_path_factory.mktemp(family) / "run"
    cfg = validate(
        TrainConfig,
        {"data": phantom_dir, "out": out, "budget": 12, "seed": 0, "generator": {"family": family, **TINY[family], **extra},
         "train": LOOP},
        "train",
    )
    train(cfg)
    return family, out


def _masks(n, size, seed=0):
    g = torch.Generator().manual_seed(seed)
    masks = torch.zeros(n, size, size, dtype=torch.int64)
    for i in range(n):
        r, c = torch.randint(2, size - 6, (2,), generator=g).tolist()
        masks[i, r:r + 4, c:c + 4] = 1
    return masks


def _context(masks, seed=0):
    """Backgrounds (noise) and regions (each mask dilated by 2 px) for an inpainting family."""
    g = torch.Generator().manual_seed(1000 + seed)
    images = torch.rand((len(masks), 1, *masks.shape[1:]), generator=g)
    return Context(images, disk_dilate(masks > 0, 2))


def _call(gen, labels, g, masks, settings=None, seed=0):
    """``sample`` with the context an inpainting family needs (backgrounds made from ``seed``)."""
    if getattr(gen.model, "inpaints", False):
        return gen.model.sample(labels, g, masks, settings, context=_context(masks, seed))
    return gen.model.sample(labels, g, masks, settings)


def _sample(run, labels, seed, generator=None, settings=None):
    gen = load_generator(run)
    masks = _masks(len(labels), gen.spec.image_size) if gen.model.mask_conditioned else None
    g = generator if generator is not None else torch.Generator().manual_seed(seed)
    return _call(gen, torch.tensor(labels), g, masks, settings), gen


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
    if gen.model.mask_conditioned:  # the image is made for the given mask, which comes back unchanged
        assert torch.equal(s.masks, _masks(5, size))


def test_mask_argument_follows_the_mode(trained):
    _, run = trained
    gen = load_generator(run)
    size, labels, g = gen.spec.image_size, torch.tensor([1, 2]), torch.Generator().manual_seed(0)
    wrong = None if gen.model.mask_conditioned else _masks(2, size)
    with pytest.raises(ValueError, match="mask"):
        gen.model.sample(labels, g, wrong)
    if getattr(gen.model, "inpaints", False):  # an inpainting family needs its backgrounds and regions
        with pytest.raises(ValueError, match="Context"):
            gen.model.sample(labels, g, _masks(2, size))
    elif gen.model.mask_conditioned:  # and no other family takes them
        with pytest.raises((ValueError, TypeError)):
            gen.model.sample(labels, g, _masks(2, size), None, context=_context(_masks(2, size)))


def test_an_inpainting_family_fills_the_region_from_its_noise_and_reads_the_background(trained):
    _, run = trained
    gen = load_generator(run)
    if not getattr(gen.model, "inpaints", False):
        pytest.skip("not an inpainting mode")
    size = gen.spec.image_size
    masks = _masks(2, size)
    ctx = _context(masks)
    a = gen.model.sample(torch.tensor([1, 2]), [torch.Generator().manual_seed(1) for _ in range(2)], masks, context=ctx)
    b = gen.model.sample(torch.tensor([1, 2]), [torch.Generator().manual_seed(2) for _ in range(2)], masks, context=ctx)
    inside = ctx.regions[:, None].expand_as(a.images)
    assert not torch.equal(a.images[inside], b.images[inside])  # other noise, other lesion
    other = Context(1.0 - ctx.images, ctx.regions)  # another background, the same regions and noise
    c = gen.model.sample(torch.tensor([1, 2]), [torch.Generator().manual_seed(1) for _ in range(2)], masks, context=other)
    assert not torch.equal(a.images, c.images)


def test_the_mask_conditions_the_image(trained):
    _, run = trained
    gen = load_generator(run)
    if not gen.model.mask_conditioned:
        pytest.skip("joint mode: the generator makes its own mask")
    size = gen.spec.image_size
    a = _call(gen, torch.tensor([2]), [torch.Generator().manual_seed(1)], _masks(1, size, seed=0))
    b = _call(gen, torch.tensor([2]), [torch.Generator().manual_seed(1)], _masks(1, size, seed=5))
    assert not torch.equal(a.images, b.images)


def test_sampler_settings_have_a_schema_with_defaults(trained):
    _, run = trained
    gen = load_generator(run)
    defaults = gen.model.Sampler()
    assert isinstance(defaults.model_dump(), dict)
    a, _ = _sample(run, [1, 2], seed=3)
    b, _ = _sample(run, [1, 2], seed=3, settings=defaults)
    assert torch.equal(a.images, b.images)  # no settings = the schema's defaults


def test_one_generator_per_item_makes_items_independent_of_the_batch(trained):
    _, run = trained
    gen = load_generator(run)
    size = gen.spec.image_size
    masks = _masks(4, size) if gen.model.mask_conditioned else None
    gens = [torch.Generator().manual_seed(100 + i) for i in range(4)]
    full = _call(gen, torch.tensor([0, 1, 2, 1]), gens, masks)
    # item 2 alone, padded with other items to the same batch size (oneDNN differs across batch sizes)
    other = [torch.Generator().manual_seed(7) for _ in range(3)]
    if getattr(gen.model, "inpaints", False):
        ctx = _context(masks)
        order = [2, 0, 1, 3]
        again = gen.model.sample(torch.tensor([2, 0, 0, 0]), [torch.Generator().manual_seed(102)] + other, masks[order],
                                 context=Context(ctx.images[order], ctx.regions[order]))
    else:
        again = gen.model.sample(torch.tensor([2, 0, 0, 0]), [torch.Generator().manual_seed(102)] + other,
                                 None if masks is None else torch.cat([masks[2:3], masks[:3]]))
    assert torch.equal(full.images[2], again.images[0]) and torch.equal(full.masks[2], again.masks[0])


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
    phases = load_generator(run).model.phases
    assert info["family"] == family and info["steps"] == 2 * len(phases) and info["budget"] == 12  # 2 steps a phase
    assert len(info["trained_on"]) == 12 and all(len(t["sha256"]) == 64 for t in info["trained_on"])
    for key in ("data_manifest_sha256", "versions", "machine", "git_commit", "wall_seconds", "weights_sha256", "data_spec"):
        assert key in info
    # the CPU the weights came from: another CPU's vector instructions give other digits (README)
    assert info["machine"]["torch_cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert info["machine"]["cores"] == os.cpu_count() and info["machine"]["torch_threads"] >= 1
    gen = load_generator(run)
    assert gen.config.generator.family == family and gen.run["weights_sha256"] == gen.weights_sha256
    own = info["heldout_metrics"]  # a flat {name: float} whatever the family
    assert all(isinstance(k, str) and isinstance(v, float) for k, v in own.items())
    if hasattr(gen.model, "reconstruct"):  # two-stage families: the autoencoder measured on val
        assert own["n_pairs"] == 6 and own["autoencoder_psnr"] > 0 and -1 <= own["autoencoder_ssim"] <= 1
        if gen.model.mask_conditioned and "autoencoder_mask_dice" not in own:  # the decoder is given the mask: nothing to score
            assert family == "vqvae2"
        else:
            assert 0 <= own["autoencoder_mask_dice"] <= 1
    else:
        assert own == {} and info["heldout_not_measured"] is None
    assert (run / "loss.csv").read_text().startswith("step,phase,loss")


def test_one_row_regenerates_byte_for_byte_through_sampling(trained, tmp_path):
    from augment.data.images import write_png
    from augment.data.manifest import read_manifest
    from augment.sampling import SampleConfig, regenerate, sample

    _, run = trained
    source = "real" if load_generator(run).model.mask_conditioned else "generated"
    cfg = validate(SampleConfig, {"generator": run, "out": tmp_path / "syn", "batch_size": 3,
                                  "balance": {"strategy": "ratio", "ratio": 0.5, "mask_source": source}}, "sample")
    syn = sample(cfg, echo=lambda *_: None)
    df = read_manifest(syn)
    assert len(df) >= 3
    for rid in df["id"].iloc[[0, -1]]:
        image, mask = regenerate(syn, rid)
        row = df[df["id"] == rid].iloc[0]
        write_png(image, tmp_path / "i.png")
        write_png(mask, tmp_path / "m.png")
        assert (tmp_path / "i.png").read_bytes() == (syn / row["image"]).read_bytes()
        assert (tmp_path / "m.png").read_bytes() == (syn / row["mask"]).read_bytes()
