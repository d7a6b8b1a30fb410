"""The audit stage end to end on a tiny synthetic set with a planted copy of a training image."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

from augment.audit import AuditConfig, audit, inception_features
from augment.config import validate
from augment.data.images import sha256_file
from augment.data.manifest import load_data, read_manifest, write_manifest
from augment.errors import DataError
from augment.sampling import SampleConfig, sample
from tests.conftest import own_cache, run_cli, set_args

FAST = {"encoder_steps": 30, "segmenter_steps": 20, "kid_subsets": 5, "kid_subset_size": 20}


@pytest.fixture(scope="module", autouse=True)
def _own_cache(tmp_path_factory):
    with own_cache(tmp_path_factory):  # this module counts cache hits: it starts from an empty cache
        yield


@pytest.fixture(scope="module")
def planted(tiny_run, phantom_dir, tmp_path_factory):
    """A synthetic set in which one image is replaced by a byte copy of a training image."""
    syn = tmp_path_factory.mktemp("aud") / "syn"
    sample(validate(SampleConfig, {"generator": tiny_run, "out": syn, "balance": {"strategy": "ratio", "ratio": 1.0}}, "s"),
           echo=lambda *_: None)
    df = read_manifest(syn)
    real, _ = load_data(phantom_dir)
    gen = json.loads((tiny_run / "run.json").read_text())
    source = real[real["id"] == gen["trained_on"][3]["id"]].iloc[0]
    victim = df.index[df["label"] == source["label"]][0]
    shutil.copyfile(phantom_dir / source["image"], syn / df.loc[victim, "image"])
    shutil.copyfile(phantom_dir / source["mask"], syn / df.loc[victim, "mask"])
    df.loc[victim, "sha256"] = sha256_file(syn / df.loc[victim, "image"])
    write_manifest(df, syn / "manifest.csv")
    return syn, df.loc[victim, "id"], source["id"]


@pytest.fixture(scope="module")
def report(planted, phantom_dir, tmp_path_factory):
    syn, _, _ = planted
    out = tmp_path_factory.mktemp("aud") / "aud"
    audit(validate(AuditConfig, {"data": phantom_dir, "synthetic": syn, "out": out, "drop_copies": True, **FAST}, "audit"),
          echo=lambda *_: None)
    return out, json.loads((out / "audit.json").read_text())


def test_the_planted_copy_and_only_it_is_listed(planted, report):
    _, victim, source = planted
    _, rep = report
    assert [c["synthetic_id"] for c in rep["copies"]] == [victim]
    assert rep["copies"][0]["train_id"] == source
    assert rep["copies"][0]["ssim"] == pytest.approx(1.0, abs=1e-5)


def test_metric_rows_have_the_stable_keys_and_baselines(report):
    _, rep = report
    names = {(r["metric"], r["extractor"]) for r in rep["metrics"]}
    assert {("frechet_distance", "domain"), ("kid", "domain"), ("memorisation_fraction", "pixels+domain"),
            ("nearest_real_ssim", "pixels"), ("nearest_real_distance", "domain"), ("lesion_off_gamut_fraction", "pixels")} <= names
    assert any(m.startswith("mask_dice_class_") for m, _ in names)
    assert any(m.startswith("diversity_ssim_class_") for m, _ in names)
    for r in rep["metrics"]:
        assert {"metric", "extractor", "value", "baseline", "n_real", "n_synthetic"} <= set(r)
    kid_row = next(r for r in rep["metrics"] if r["metric"] == "kid")
    assert "std" in kid_row and kid_row["baseline"] is not None
    assert rep["extractors"]["inception"]["computed"] is False
    assert "not" in rep["extractors"]["inception"]["reason"] or "no --inception" in rep["extractors"]["inception"]["reason"]
    assert rep["provenance"]["ok"] is True
    assert rep["structural_measure"].startswith("ssim (images are 16 px")


def test_drop_copies_writes_a_manifest_without_them(planted, report):
    _, victim, _ = planted
    out, _ = report
    kept, _ = load_data(out / "synthetic_without_copies", check_files=True)
    assert victim not in set(kept["id"]) and len(kept) == len(read_manifest(planted[0])) - 1
    nearest = pd.read_csv(out / "nearest.csv")
    assert nearest.loc[nearest["synthetic_id"] == victim, "copy"].item()


def test_encoder_is_cached_in_the_user_cache_not_in_the_data(report, phantom_dir):
    from augment.audit import cache_root

    _, rep = report
    cache = Path(rep["extractors"]["domain"]["cache"])
    assert cache.is_relative_to(cache_root()) and (cache / "encoder.safetensors").is_file()
    assert not (phantom_dir / ".cache").exists()


def test_tampered_synthetic_file_is_a_provenance_problem(planted, phantom_dir, tmp_path):
    syn = tmp_path / "syn"
    shutil.copytree(planted[0], syn)
    first = read_manifest(syn)["image"][0]
    (syn / first).write_bytes((syn / read_manifest(syn)["image"][1]).read_bytes())
    audit(validate(AuditConfig, {"data": phantom_dir, "synthetic": syn, "out": tmp_path / "a", **FAST}, "audit"), echo=lambda *_: None)
    prov = json.loads((tmp_path / "a" / "audit.json").read_text())["provenance"]
    assert prov["ok"] is False and "does not match its sha256" in prov["problems"][0]


def test_synthetic_set_from_other_data_is_refused(planted, tmp_path):
    from augment.api import prepare
    from augment.config import PrepareConfig

    other = prepare(PrepareConfig(source="phantom", out=tmp_path / "other", image_size=16, count=30, seed=99)).out
    with pytest.raises(DataError, match=r"trained on .* image\(s\) that are not in"):
        audit(validate(AuditConfig, {"data": other, "synthetic": planted[0], "out": tmp_path / "a", **FAST}, "audit"))
    assert not (tmp_path / "a").exists()


def test_inception_weights_must_be_a_torchscript_file(planted, phantom_dir, tmp_path):
    bad = tmp_path / "w.pth"
    bad.write_bytes(b"not a model")
    with pytest.raises(DataError, match=r"is not a TorchScript Inception file"):
        inception_features(bad, torch.rand(2, 1, 16, 16))


class _FakeDetector(torch.nn.Module):
    """Stands in for the TorchScript FID Inception file (same call signature, 4-d features)."""

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        f = x.float().mean(dim=(2, 3))
        return torch.cat([f, f.pow(2) / 255.0], 1)


def test_inception_path_is_used_when_given(planted, phantom_dir, tmp_path):
    path = tmp_path / "inception.pt"
    torch.jit.script(_FakeDetector()).save(str(path))
    audit(validate(AuditConfig, {"data": phantom_dir, "synthetic": planted[0], "out": tmp_path / "a",
                                 "inception_weights": path, **FAST}, "audit"), echo=lambda *_: None)
    rep = json.loads((tmp_path / "a" / "audit.json").read_text())
    assert rep["extractors"]["inception"]["computed"] is True
    assert {"frechet_distance", "kid"} <= {r["metric"] for r in rep["metrics"] if r["extractor"] == "inception"}


def test_cli_prints_the_table(planted, phantom_dir, tmp_path):
    res = run_cli("audit", "--data", phantom_dir, "--synthetic", planted[0], "--out", tmp_path / "a", *set_args(FAST))
    assert res.returncode == 0, res.stderr
    assert "frechet_distance" in res.stdout and "copies: 1 of" in res.stdout and "Inception FID not computed" in res.stdout
    res = run_cli("audit", "--data", phantom_dir, "--synthetic", tmp_path / "x", "--out", tmp_path / "b")
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1


def test_real_nearest_ssim_is_cached_and_equals_the_direct_search(report, phantom_dir, tmp_path):
    from augment.audit import cache_root, real_nearest_ssim
    from augment.data.dataset import load_tensors
    from augment.metrics import nearest_ssim

    real, _ = load_data(phantom_dir)
    train_x, _ = load_tensors(real[real["split"] == "train"].reset_index(drop=True), phantom_dir, masks=False)
    direct, _ = nearest_ssim(train_x, train_x, exclude_self=True)
    entries = list((cache_root() / "audit").glob("nearest-ssim-*.safetensors"))
    assert len(entries) == 1  # written by the audit above
    assert torch.equal(real_nearest_ssim(phantom_dir, train_x), direct)
    entries[0].write_bytes(b"damaged")  # a damaged entry is recomputed and replaced
    assert torch.equal(real_nearest_ssim(phantom_dir, train_x), direct)
    assert entries[0].stat().st_size > len(b"damaged")


def test_prdc_and_frd_rows_are_measured_in_their_spaces_beside_real_vs_real(report, phantom_dir):
    from safetensors.torch import load_file

    from augment.audit import _features, cache_root, prdc_at_size, real_radiomics
    from augment.data.dataset import load_tensors
    from augment.downstream import SmallCNN
    from augment.metrics import frd_from_features

    _, rep = report
    rows = {(r["metric"], r["extractor"]): r for r in rep["metrics"]}
    real, classes = load_data(phantom_dir)
    train_x, _ = load_tensors(real[real["split"] == "train"].reset_index(drop=True), phantom_dir, masks=False)
    test_x, _ = load_tensors(real[real["split"] == "test"].reset_index(drop=True), phantom_dir, masks=False)
    # the baselines, recomputed in the audit's own spaces: the cached domain encoder and radiomic features
    encoder = SmallCNN(train_x.shape[1], max(classes) + 1)
    encoder.load_state_dict(load_file(Path(rep["extractors"]["domain"]["cache"]) / "encoder.safetensors"))
    n_syn = rows[("frechet_distance", "domain")]["n_synthetic"]
    expected = prdc_at_size(_features(encoder.eval(), train_x), _features(encoder, test_x), min(n_syn, len(test_x)), 0)
    for key in ("precision", "recall", "density", "coverage"):
        r = rows[(key, "domain")]
        assert f"both at {min(n_syn, len(test_x))} images" in r["note"]
        assert r["n_synthetic"] == rows[("frechet_distance", "domain")]["n_synthetic"]
        assert r["baseline"] == pytest.approx(expected[key]), key
        assert r["value"] >= 0 and (key == "density" or r["value"] <= 1) and "real test" in r["baseline_is"]
    assert len(list((cache_root() / "audit").glob("radiomics-*-train-*.safetensors"))) == 1
    row = rows[("frd", "radiomics")]
    train_f, test_f = real_radiomics(phantom_dir, "train", train_x), real_radiomics(phantom_dir, "test", test_x)
    assert row["baseline"] == pytest.approx(frd_from_features(train_f, test_f)) and row["value"] > 0
    assert rep["extractors"]["radiomics"]["computed"] is True and rep["extractors"]["radiomics"]["features"] == train_f.shape[1]


def test_prdc_is_compared_at_one_set_size():
    from augment.audit import PRDC_K, prdc_at_size
    from augment.metrics import prdc

    g = torch.Generator().manual_seed(0)
    real, fake = torch.randn(200, 8, generator=g), torch.randn(120, 8, generator=g)
    assert prdc_at_size(real, fake, 120, 0) == prdc(real, fake, k=PRDC_K)  # no larger than the size: as it is
    small, again, full = prdc_at_size(real, fake, 12, 0), prdc_at_size(real, fake, 12, 0), prdc(real, fake, k=PRDC_K)
    assert small == again  # seeded draws
    # one distribution, so the gap is the set size alone: 12 points cover far less of the real set than 120
    assert small["coverage"] < full["coverage"] - 0.3
