"""The audit on a read-only dataset (caches outside it, keyed by content), its settings' ranges,
and sets where a measure is undefined (one synthetic pair, constant images): never NaN."""

from __future__ import annotations

import builtins
import hashlib
import io
import json
import math
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from augment.audit import AuditConfig, audit
from augment.config import validate
from augment.data.images import sha256_file
from augment.errors import ConfigError, DataError
from augment.sampling import SampleConfig, sample
from tests.conftest import own_cache, run_cli, set_args, set_copy

FAST = {"encoder_steps": 30, "segmenter_steps": 20, "kid_subsets": 5, "kid_subset_size": 20}


@pytest.fixture(scope="module", autouse=True)
def _own_cache(tmp_path_factory):
    with own_cache(tmp_path_factory):
        yield


@pytest.fixture(scope="module")
def syn(tiny_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("edges") / "syn"
    sample(validate(SampleConfig, {"generator": tiny_run, "out": out, "balance": {"strategy": "ratio", "ratio": 0.5}}, "s"),
           echo=lambda *_: None)
    return out


def _snapshot(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder``, hidden ones included, by relative path."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() or p.is_symlink()}


def _run(data: Path, syn: Path, out: Path, **extra) -> dict:
    audit(validate(AuditConfig, {"data": data, "synthetic": syn, "out": out, **FAST, **extra}, "audit"), echo=lambda *_: None)
    return json.loads((out / "audit.json").read_text())


def _finite_everywhere(out: Path) -> None:
    """Nothing non-finite in audit.json (a JSON NaN / Infinity) or nearest.csv."""
    text = (out / "audit.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    rep = json.loads(text)
    for r in rep["metrics"]:
        for key in ("value", "baseline", "std", "baseline_std"):
            v = r.get(key)
            assert v is None or (isinstance(v, (int, float)) and math.isfinite(v)), (r["metric"], key, v)
        if r["value"] is None:
            assert r.get("undefined"), r  # an undefined value says why
    nearest = pd.read_csv(out / "nearest.csv")
    numeric = nearest.select_dtypes("number")
    assert np.isfinite(numeric.to_numpy(dtype=float)).all()


def test_the_dataset_folder_is_byte_for_byte_unchanged_by_an_audit(phantom_dir, syn, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(phantom_dir, data, ignore=shutil.ignore_patterns(".cache"))
    before = _snapshot(data)
    rep = _run(data, syn, tmp_path / "a")
    assert _snapshot(data) == before
    from augment.audit import cache_root

    cache = Path(rep["extractors"]["domain"]["cache"])
    assert cache.is_relative_to(cache_root()) and (cache / "encoder.safetensors").is_file()
    assert list(cache_root().rglob("nearest-ssim-*.safetensors"))


def _refuse_writes_under(mp: pytest.MonkeyPatch, folder: Path) -> None:
    """Every Python-level way of writing, creating, moving or deleting a file under ``folder``
    raises PermissionError, as on a read-only mount (we run as root: chmod would not stop us)."""
    root = str(folder.resolve())

    def inside(path) -> bool:
        try:
            return os.path.realpath(os.fspath(path)).startswith(root)
        except TypeError:
            return False  # a file descriptor

    def guard(fn, writes=lambda *a, **k: True):
        def wrapped(path, *args, **kwargs):
            if inside(path) and writes(*args, **kwargs):
                raise PermissionError(13, "Read-only file system", os.fspath(path))
            return fn(path, *args, **kwargs)
        return wrapped

    def writing_mode(mode="r", *_, **__):
        return any(c in mode for c in "wax+")

    def writing_flags(flags, *_, **__):
        return bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND))

    mp.setattr(builtins, "open", guard(builtins.open, writing_mode))
    mp.setattr(io, "open", guard(io.open, writing_mode))
    mp.setattr(os, "open", guard(os.open, writing_flags))
    for name in ("mkdir", "makedirs", "remove", "unlink", "rmdir", "utime", "chmod"):
        mp.setattr(os, name, guard(getattr(os, name)))
    for name in ("replace", "rename"):
        original = getattr(os, name)
        mp.setattr(os, name, lambda src, dst, *a, _f=original, **k: (_ for _ in ()).throw(PermissionError(13, "Read-only file system", dst))
                   if inside(src) or inside(dst) else _f(src, dst, *a, **k))


def test_the_audit_runs_on_a_dataset_folder_it_cannot_write(phantom_dir, syn, tmp_path, monkeypatch):
    data = tmp_path / "readonly"
    shutil.copytree(phantom_dir, data, ignore=shutil.ignore_patterns(".cache"))
    before = _snapshot(data)
    with monkeypatch.context() as mp:
        _refuse_writes_under(mp, data)
        with pytest.raises(PermissionError):
            (data / "probe").write_text("x")  # the guard works
        rep = _run(data, syn, tmp_path / "a")
    assert _snapshot(data) == before and rep["provenance"]["ok"] is True


def test_caches_are_keyed_by_content_and_settings(phantom_dir, syn, tmp_path):
    data = tmp_path / "copy"
    shutil.copytree(phantom_dir, data, ignore=shutil.ignore_patterns(".cache"))
    first = _run(data, syn, tmp_path / "a")["extractors"]["domain"]
    again = _run(phantom_dir, syn, tmp_path / "b")["extractors"]["domain"]  # another folder, the same manifest
    assert again["cache"] == first["cache"] and again["cached"] is True
    other = _run(data, syn, tmp_path / "c", encoder_steps=31)["extractors"]["domain"]
    assert other["cache"] != first["cache"] and other["cached"] is False
    assert sha256_file(data / "manifest.csv")[:16] in Path(first["cache"]).name


def test_the_cache_folder_follows_augment_cache_then_xdg_then_home(monkeypatch, tmp_path):
    from augment.audit import cache_root

    monkeypatch.setenv("AUGMENT_CACHE", str(tmp_path / "mine"))
    assert cache_root() == tmp_path / "mine"
    monkeypatch.delenv("AUGMENT_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "augment"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "augment"


def test_an_unusable_cache_folder_is_one_clear_error(phantom_dir, syn, tmp_path, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("AUGMENT_CACHE", str(blocker))
    with pytest.raises(DataError, match=r"audit cache folder `.*a_file/audit` cannot be created .*set AUGMENT_CACHE to a writable folder"):
        _run(phantom_dir, syn, tmp_path / "a")
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize("value", [0, -1, 50, 1e300, 1e-300, float("nan"), float("inf"), "-inf"])
def test_copy_percentile_outside_its_range_is_one_config_error(value, tmp_path):
    with pytest.raises(ConfigError, match=r"^audit: `copy_percentile`") as err:
        validate(AuditConfig, {"data": tmp_path, "synthetic": tmp_path, "out": tmp_path / "o", "copy_percentile": value}, "audit")
    assert "\n" not in str(err.value)


def test_copy_percentile_range_at_the_cli(phantom_dir, syn, tmp_path):
    res = run_cli("audit", "--data", phantom_dir, "--synthetic", syn, "--out", tmp_path / "a", "--set", "copy_percentile=1e-300")
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1 and "copy_percentile" in res.stderr
    assert "0.01" in res.stderr and not (tmp_path / "a").exists()


def test_one_synthetic_pair_gives_undefined_distances_not_a_crash(phantom_dir, syn, tmp_path):
    one = set_copy(syn, tmp_path / "one", keep=1)
    rep = _run(phantom_dir, one, tmp_path / "a")
    _finite_everywhere(tmp_path / "a")
    rows = {r["metric"]: r for r in rep["metrics"] if r["extractor"] in ("domain", "pixels", "pixels+domain")}
    for metric in ("frechet_distance", "kid"):
        assert rows[metric]["value"] is None and "synthetic set has 1" in rows[metric]["undefined"]
        assert rows[metric]["baseline"] is not None  # real test vs train is still measured
    assert rows["memorisation_fraction"]["value"] is not None and rows["nearest_real_ssim"]["n_synthetic"] == 1
    frd = next(r for r in rep["metrics"] if r["metric"] == "frd")
    assert frd["value"] is None and "the synthetic set has 1" in frd["undefined"] and frd["baseline"] is not None
    assert rows["precision"]["value"] is None and "more than k=5" in rows["precision"]["undefined"] and rows["precision"]["baseline"] is not None
    res = run_cli("audit", "--data", phantom_dir, "--synthetic", one, "--out", tmp_path / "cli", *set_args(FAST))
    assert res.returncode == 0, res.stderr[-2000:]
    assert not re.search(r"\bnan\b", res.stdout, re.IGNORECASE) and "frechet_distance (domain): undefined: the Fréchet distance" in res.stdout


@pytest.mark.parametrize("fill", [0, 255])
def test_constant_synthetic_images_leave_no_nan(phantom_dir, syn, tmp_path, fill):
    flat = set_copy(syn, tmp_path / "flat", fill=fill)
    rep = _run(phantom_dir, flat, tmp_path / "a")
    _finite_everywhere(tmp_path / "a")
    diversity = [r for r in rep["metrics"] if r["metric"].startswith("diversity_")]
    assert diversity and all(r["value"] == pytest.approx(1.0, abs=1e-5) for r in diversity)  # identical images
    assert all(r["value"] is not None for r in rep["metrics"] if r["metric"] in ("frechet_distance", "kid", "precision", "coverage"))
    frd = next(r for r in rep["metrics"] if r["metric"] == "frd")  # pyradiomics cannot measure a constant image
    assert frd["value"] is None and f"every pixel {fill}" in frd["undefined"] and frd["baseline"] is not None
