"""Inpaint mode and the placement prior (augment.placement, augment.inpainting): lesions on real
budget backgrounds, inside the field of view, clear of the existing lesion, with the background
kept byte for byte outside the region, recorded provenance and exact regeneration."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from augment.config import validate
from augment.data.images import read_image, read_mask
from augment.data.manifest import read_manifest
from augment.data.phantom import phantom_pair
from augment.errors import DataError
from augment.inpainting import jittered_shape, paste, scene
from augment.masks import JitterConfig
from augment.placement import Backgrounds, PlacementConfig, arrange, dilate, field_of_view, margin_px
from augment.sampling import SampleConfig, regenerate, sample
from tests.conftest import TINY_CVAE, train_tiny_cvae

CFG = PlacementConfig()


def _circle(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """An endoscope-like frame: black outside a centred circle."""
    n = mask.shape[0]
    yy, xx = np.mgrid[0:n, 0:n]
    inside = (yy - (n - 1) / 2) ** 2 + (xx - (n - 1) / 2) ** 2 <= (0.42 * n) ** 2
    out = image.copy()
    out[~inside] = 0
    return out, (mask * inside).astype(np.uint8)


def _backgrounds(n: int = 12, size: int = 32, rgb: bool = False, circle: bool = False) -> Backgrounds:
    pairs = [phantom_pair(i, (0, 1, 2)[i % 3], size, 0, rgb) for i in range(n)]
    if circle:
        pairs = [_circle(*p) for p in pairs]
    return Backgrounds.of([f"r{i}" for i in range(n)], [p[0] for p in pairs], [p[1] for p in pairs],
                          [(0, 1, 2)[i % 3] for i in range(n)], CFG)


def test_field_of_view_is_the_circle_of_an_endoscope_frame_with_its_dark_lesions_inside():
    image, mask = _circle(*phantom_pair(1, 1, 64, 0, True))
    fov = field_of_view(image, CFG.fov_threshold)
    n = 64
    yy, xx = np.mgrid[0:n, 0:n]
    r2 = (yy - 31.5) ** 2 + (xx - 31.5) ** 2
    assert not fov[r2 > (0.45 * n) ** 2].any()  # nothing on the black surround
    assert fov[r2 < (0.35 * n) ** 2].all()  # the whole inner disc, dark lesion included
    assert fov[mask > 0].mean() > 0.9


@pytest.mark.parametrize("rgb,circle", [(False, False), (True, True)])
def test_placements_stay_inside_the_view_and_clear_of_the_background_lesion(rgb, circle):
    bg = _backgrounds(24, 32, rgb, circle)
    lesions = [i for i, m in enumerate(bg.masks) if m.any()]
    r = margin_px(CFG, 32)
    for seed in range(30):
        src = lesions[seed % len(lesions)]
        s = scene(bg, bg.labels[src], bg.ids[src], jittered_shape(bg.masks[src], JitterConfig(), seed), True, CFG, seed, "t")
        assert s.region.any() and (s.given > 0).any()
        assert not (s.region & ~bg.fovs[s.background]).any()
        assert not (s.region & dilate(bg.masks[s.background] > 0, r)).any()
        assert (s.region >= (s.given > 0)).all()


def test_copy_paste_keeps_the_background_outside_the_region_and_unites_the_masks():
    bg = _backgrounds(12, 32, True, True)
    for seed in range(8):
        image, mask, record = paste(bg, 1, JitterConfig(), CFG, seed, "t")
        b = bg.index(record["background"])
        assert record["background"] != "r1" and record["shape"] == "r1"
        y0, x0, y1, x1 = record["region"]
        outside = np.ones(mask.shape, bool)
        outside[y0:y1, x0:x1] = False
        assert np.array_equal(image[outside], bg.images[b][outside])  # byte for byte
        assert ((mask > 0) >= (bg.masks[b] > 0)).all() and (mask > 0).sum() > (bg.masks[b] > 0).sum()
        assert image.shape == bg.images[b].shape and image.dtype == np.uint8


def _lesion_free(bg: Backgrounds, b: int) -> bool:
    return not bg.masks[b].any()


def test_matching_backgrounds_keep_every_pair_s_image_true_to_its_label():
    # classes 0 (lesion-free), 1 and 2 (lesions): a class-1 pair may show no class-2 lesion, a
    # class-0 pair no lesion at all, because the output mask is the background's plus the placed one
    bg = _backgrounds(24, 32)
    lesions = [i for i, m in enumerate(bg.masks) if m.any()]
    anywhere = PlacementConfig(backgrounds="any")
    foreign = 0
    for seed in range(40):
        src = lesions[seed % len(lesions)]
        shape, label = jittered_shape(bg.masks[src], JitterConfig(), seed), bg.labels[src]
        s = scene(bg, label, bg.ids[src], shape, True, CFG, seed, "t")
        assert _lesion_free(bg, s.background) or bg.labels[s.background] == label
        normal = scene(bg, 0, bg.ids[src], shape, False, CFG, seed, "t")
        assert _lesion_free(bg, normal.background) and not normal.given.any()
        # any: every budget image, drawn exactly as before the setting existed
        a = scene(bg, label, bg.ids[src], shape, True, anywhere, seed, "t")
        b, placement = arrange(shape, bg, anywhere, seed, "t")
        assert (a.background, a.placement) == (b, placement)
        foreign += not _lesion_free(bg, a.background) and bg.labels[a.background] != label
    assert foreign > 0  # so the setting changes something on this budget


def test_matching_copy_paste_puts_a_lesion_only_where_its_label_stays_true():
    bg = _backgrounds(12, 32)
    for source in (1, 2, 4, 5):
        for seed in range(6):
            _, _, record = paste(bg, source, JitterConfig(), CFG, seed, "t")
            b = bg.index(record["background"])
            assert b != source and (_lesion_free(bg, b) or bg.labels[b] == bg.labels[source])
    # a lone lesion of its class on a budget without lesion-free images goes back on its own image
    lone = _backgrounds(12, 64).subset([1, 2, 5])  # classes 1, 2, 2; room beside its own lesion at 64 px
    _, _, record = paste(lone, 0, JitterConfig(), CFG, 0, "t")
    assert record["background"] == bg.ids[1]
    with pytest.raises(DataError, match="no budget image may be its background.*placement.backgrounds is `matching`"):
        scene(lone, 0, "x", np.ones((4, 4), np.uint8), False, CFG, 0, "sample syn_c0_000000")


def test_a_saved_config_from_before_the_backgrounds_setting_keeps_any(tmp_path):
    from augment.config import load_json, save_json
    from augment.pipeline import PipelineConfig, load_pipeline, run_pipeline

    cfg = load_pipeline(Path(__file__).parents[1] / "pipelines" / "busi_inpaint.yaml")
    assert cfg.balance.placement.backgrounds == "matching" == cfg.evaluate.copypaste.placement.backgrounds
    out = tmp_path / "run"
    out.mkdir()
    save_json(cfg, out / "pipeline.json")
    saved = json.loads((out / "pipeline.json").read_text())
    del saved["balance"]["placement"]["backgrounds"], saved["evaluate"]["copypaste"]["placement"]["backgrounds"]
    (out / "pipeline.json").write_text(json.dumps(saved))
    old = load_json(PipelineConfig, out / "pipeline.json")
    assert old.balance.placement.backgrounds == "any" == old.evaluate.copypaste.placement.backgrounds
    assert old.balance.placement.margin == cfg.balance.placement.margin
    # resuming such a folder under today's default is refused, not silently mixed
    with pytest.raises(DataError, match=r"different pipeline spec \(changed: balance, evaluate\)"):
        run_pipeline(cfg, out)


def test_a_budget_without_lesions_and_a_lesion_that_fits_nowhere_are_one_clear_line_each():
    pairs = [phantom_pair(i, 0, 32, 0) for i in range(4)]
    with pytest.raises(DataError, match="no image with a lesion mask"):
        Backgrounds.of(["a", "b", "c", "d"], [p[0] for p in pairs], [p[1] for p in pairs], [0] * 4, CFG)
    bg = _backgrounds(6, 32)
    huge = np.ones((60, 60), np.uint8)
    with pytest.raises(DataError, match="larger than every background"):
        scene(bg, 1, "x", huge, True, CFG, 0, "sample syn_c1_000000")
    tight = PlacementConfig(min_scale=1.0, max_scale=1.0, tries=4)
    with pytest.raises(DataError, match=r"sample syn_c1_000000: the lesion could not be placed .* after 4 tries"):
        scene(bg, 1, "x", np.ones((20, 20), np.uint8), True, tight, 0, "sample syn_c1_000000")


@pytest.fixture(scope="module")
def inpaint_run(phantom_dir, tmp_path_factory):
    return train_tiny_cvae(phantom_dir, tmp_path_factory.mktemp("inpaint_run") / "run", "inpaint")


@pytest.fixture(scope="module")
def inpaint_syn(inpaint_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("inpaint_syn") / "syn"
    cfg = validate(SampleConfig, {"generator": inpaint_run, "out": out, "batch_size": 4,
                                  "balance": {"strategy": "ratio", "ratio": 1.0, "mask_source": "real"}}, "sample")
    sample(cfg, echo=lambda *_: None)
    return out


def test_inpainted_pairs_keep_their_background_outside_the_region_and_record_the_placement(inpaint_syn, inpaint_run):
    from augment.generators.artifact import load_run

    info = load_run(inpaint_run)
    rows = info.rows.set_index("id")
    df = read_manifest(inpaint_syn)
    assert set(df["background_id"]) <= set(rows.index)  # a budget image, never val/test
    changed = 0
    for r in df.itertuples():
        record = json.loads(r.placement)
        assert record["background"] == r.background_id and record["shape"] in rows.index
        background = read_image(info.data_dir / rows.loc[r.background_id, "image"])
        bmask = read_mask(info.data_dir / rows.loc[r.background_id, "mask"])
        if bmask.any():  # placement.backgrounds: matching (the default): a lesion only on its own class's scan
            assert int(rows.loc[r.background_id, "label"]) == r.label
        image, mask = read_image(inpaint_syn / r.image), read_mask(inpaint_syn / r.mask)
        y0, x0, y1, x1 = record["region"]
        outside = np.ones(mask.shape, bool)
        outside[y0:y1, x0:x1] = False
        assert np.array_equal(image[outside], background[outside])
        assert ((mask > 0) >= (bmask > 0)).all()  # the background's own lesion is kept
        assert ((mask > 0).sum() > (bmask > 0).sum()) == record["lesion"]  # a lesion class gains its placed lesion
        changed += not np.array_equal(image, background)
    assert changed == len(df)


def test_an_inpainted_row_regenerates_byte_for_byte(inpaint_syn):
    from augment.placement import Placement

    p = Placement((12.123456789012345, 3.3333333333333335), 0.7071067811865476, (1, 2, 3, 4))
    assert Placement.from_record(json.loads(json.dumps(p.record()))) == p  # recorded without rounding
    df = read_manifest(inpaint_syn)
    for rid in df["id"]:  # every row: a boundary pixel of any placement would show
        row = df.set_index("id").loc[rid]
        image, mask = regenerate(inpaint_syn, rid)
        assert np.array_equal(image, read_image(inpaint_syn / row["image"]))
        assert np.array_equal(mask, read_mask(inpaint_syn / row["mask"]))


def test_the_copy_paste_arm_trains_on_pasted_budget_lesions_and_records_them(phantom_dir, tmp_path):
    import pandas as pd

    from augment.data.manifest import load_data
    from augment.data.splits import select_budget
    from augment.evaluate import EvaluateConfig, evaluate
    from tests.conftest import TINY_TASK

    cfg = validate(EvaluateConfig, {"data": phantom_dir, "out": tmp_path / "r", "budget": 24, "budget_seed": 0,
                                    "arms": ["real+classic", "real+copypaste+classic"], "seeds": [0],
                                    "segmentation": TINY_TASK, "copypaste": {"ratio": 2.0}}, "evaluate")
    evaluate(cfg, echo=lambda *_: None)
    rows = pd.read_csv(tmp_path / "r" / "results.csv")
    assert set(rows["arm"]) == {"real+classic", "real+copypaste+classic"} and set(rows["generator"]) == {"none"}
    result = json.loads((tmp_path / "r" / "runs" / "segmentation__real_copypaste_classic__seed0.json").read_text())
    assert result["n_synthetic"] == 48 and result["n_train"] == 24 + 48
    provenance = pd.read_csv(tmp_path / "r" / "copypaste" / "seed0.csv")
    df, _ = load_data(phantom_dir)
    budget = set(select_budget(df, 24, 0)["id"])
    assert len(provenance) == 48 and set(provenance["shape"]) | set(provenance["background"]) <= budget
    assert (provenance["shape"] != provenance["background"]).all()
    # the real budget's lesions are pasted evenly (ratio 2 over its lesion images: each 2-3 times)
    counts = provenance["shape"].value_counts()
    assert counts.max() - counts.min() <= 1


def test_copy_paste_on_a_set_without_masks_is_refused(tmp_path):
    from augment.errors import ConfigError
    from augment.evaluate import EvaluateConfig, evaluate
    from tests.conftest import write_folder

    from augment.api import prepare
    from augment.config import PrepareConfig

    src = write_folder(tmp_path / "src", {0: 8, 1: 8}, masks=False)
    prepare(PrepareConfig(source=str(src), out=tmp_path / "p"))
    cfg = validate(EvaluateConfig, {"data": tmp_path / "p", "out": tmp_path / "r", "task": "classification",
                                    "arms": ["real+copypaste+classic"], "seeds": [0]}, "evaluate")
    with pytest.raises(ConfigError, match=r"real\+copypaste\+classic. pastes lesions by their masks"):
        evaluate(cfg, echo=lambda *_: None)
    assert not (tmp_path / "r").exists()


def test_the_audit_judges_an_inpainted_image_against_other_train_images_not_its_own_background(inpaint_syn, phantom_dir):
    from augment.audit import _own_backgrounds
    from augment.placement import region_boxes
    from augment.data.manifest import load_data
    from augment.data.dataset import load_tensors
    from augment.metrics import nearest_ssim

    real, _ = load_data(phantom_dir)
    train = real[real["split"] == "train"].reset_index(drop=True)
    syn = read_manifest(inpaint_syn)
    train_x, _ = load_tensors(train, phantom_dir, masks=False)
    syn_x, syn_m = load_tensors(syn, inpaint_syn)
    own = _own_backgrounds(syn, train)
    assert (own >= 0).all() and (train["id"].to_numpy()[own.numpy()] == syn["background_id"].to_numpy()).all()
    _, plain = nearest_ssim(syn_x, train_x)
    assert (plain == own).float().mean() > 0.8  # without the exclusion the kept background is the nearest image
    _, other = nearest_ssim(syn_x, train_x, exclude=own)
    assert (other != own).all()
    inside = region_boxes(syn, tuple(syn_m.shape[-2:]))
    for k, text in enumerate(syn["placement"]):
        y0, x0, y1, x1 = json.loads(text)["region"]
        assert int(inside[k].sum()) == (y1 - y0) * (x1 - x0) and int(inside[k, y0:y1, x0:x1].min()) == 1


def test_inpainting_an_rgb_endoscope_like_set_places_lesions_inside_the_circle(tmp_path):
    from augment.api import prepare, train
    from augment.config import PrepareConfig
    from augment.data.images import write_png
    from augment.generators import TrainConfig

    src = tmp_path / "src"
    (src / "images").mkdir(parents=True)
    (src / "masks").mkdir()
    rows = []
    for i in range(40):
        label = (0, 1, 2)[i % 3]
        image, mask = _circle(*phantom_pair(i, label, 32, 0, True))
        write_png(image, src / "images" / f"f{i:03d}.png")
        write_png(mask, src / "masks" / f"f{i:03d}.png")
        rows.append(f"f{i:03d},{label}")
    (src / "labels.csv").write_text("id,label\n" + "\n".join(rows) + "\n")
    (src / "classes.csv").write_text("label,name\n0,normal\n1,round\n2,irregular\n")
    data = prepare(PrepareConfig(source=str(src), out=tmp_path / "data")).out
    run = train(validate(TrainConfig, {"data": data, "out": tmp_path / "run", "budget": 20, "seed": 0,
                                       "generator": {**TINY_CVAE, "mode": "inpaint"},
                                       "train": {"max_steps": 4, "batch_size": 8, "checkpoint_every": 1000}}, "train")).out
    syn = sample(validate(SampleConfig, {"generator": run, "out": tmp_path / "syn", "batch_size": 4,
                                         "balance": {"strategy": "ratio", "ratio": 1.0, "mask_source": "real"}}, "sample"),
                 echo=lambda *_: None)
    df = read_manifest(syn)
    yy, xx = np.mgrid[0:32, 0:32]
    outside_circle = (yy - 15.5) ** 2 + (xx - 15.5) ** 2 > (0.42 * 32) ** 2
    manifest = read_manifest(data).set_index("id")
    for r in df.itertuples():
        image, mask = read_image(syn / r.image), read_mask(syn / r.mask)
        assert image.shape == (32, 32, 3)
        background = read_image(data / manifest.loc[r.background_id, "image"])
        assert np.array_equal(image[outside_circle], background[outside_circle])  # the black surround is untouched
        assert not mask[outside_circle].any()  # and no lesion lies on it


def test_the_segmenter_filter_judges_an_inpainted_pair_inside_its_region():
    import pandas as pd
    import torch

    from augment.placement import region_boxes
    from augment.recipes import segmenter_scores

    class Echo(torch.nn.Module):  # "predicts" a fixed mask: the background's lesion plus the placed one
        def forward(self, x):
            pred = torch.zeros((len(x), 2, 16, 16))
            pred[:, 1, 2:6, 2:6] = 1.0  # the background's own lesion, found
            pred[:, 1, 10:13, 10:13] = 1.0  # most of the placed lesion
            return pred

    masks = torch.zeros((2, 16, 16), dtype=torch.int64)
    masks[:, 2:6, 2:6] = 1
    masks[:, 10:14, 10:14] = 1
    rows = pd.DataFrame({"placement": [json.dumps({"region": [8, 8, 16, 16]}), ""]})
    inside = torch.from_numpy(region_boxes(rows, (16, 16)))
    scores = segmenter_scores(Echo(), torch.zeros((2, 1, 16, 16)), masks, inside)
    assert scores["dice"][0] == pytest.approx(2 * 9 / (9 + 16))  # the placed lesion alone
    assert scores["dice"][1] == pytest.approx(2 * 25 / (25 + 32))  # a whole image without a placement


def test_a_placement_that_cannot_fit_stops_sampling_with_one_line_and_leaves_nothing(inpaint_run, tmp_path):
    from tests.conftest import run_cli

    res = run_cli("sample", "--generator", inpaint_run, "--balance",
                  Path(__file__).resolve().parents[1] / "manifests" / "ratio_1.yaml", "--out", tmp_path / "s",
                  "--set", "balance.mask_source=real", "--set", "balance.placement.margin=0.5")
    assert res.returncode == 2
    assert "larger than every background" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "s").exists()


def test_the_lesion_colour_check_judges_the_placed_lesion_not_the_background_s_own():
    import torch

    from augment.audit import _lesion_colours

    red, blue = torch.tensor([0.8, 0.2, 0.2]), torch.tensor([0.1, 0.3, 0.8])
    train_x = red.view(1, 3, 1, 1).expand(2, 3, 8, 8).clone()
    train_m = torch.zeros(2, 8, 8, dtype=torch.int64)
    train_m[0, :2] = 1  # image 0 has a lesion in its top rows, image 1 none
    syn_x, syn_m = train_x[:1].clone(), train_m[:1].clone()
    syn_x[0, :, :2] = blue.view(3, 1, 1)  # the background's own lesion, recoloured: not the generator's work
    syn_m[0, 4:6] = 1  # the placed lesion: half red, half blue
    syn_x[0, :, 5] = blue.view(3, 1)
    row = _lesion_colours(train_x, train_m, train_x[:1], train_m[:1], syn_x, syn_m, own=torch.tensor([0]))
    assert row["metric"] == "lesion_off_gamut_fraction" and row["value"] == 0.5 and row["baseline"] == 0.0
    whole = _lesion_colours(train_x, train_m, train_x[:1], train_m[:1], syn_x, syn_m, own=torch.tensor([-1]))
    assert whole["value"] == 0.75  # a whole-image pair: every lesion pixel of it is generated
    none = _lesion_colours(train_x, train_m, train_x[:1], train_m[:1], syn_x, torch.zeros_like(syn_m), own=torch.tensor([-1]))
    assert none["value"] is None and "synthetic lesions have none" in none["undefined"]
