"""The one atomic-write helper and the claim/publish helper every stage writes through."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from augment.errors import DataError
from augment.output import atomic_path, building, write_json


def test_atomic_write_gives_ordinary_modes_and_all_or_nothing(tmp_path):
    target = tmp_path / "a.json"
    write_json({"x": 1}, target)
    mode = stat.S_IMODE(os.stat(target).st_mode)
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o644 & ~umask  # not mkstemp's 0600
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed mid-write")
    assert target.read_text().strip().startswith("{") and '"x": 1' in target.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]  # no temporary left behind


def test_building_publishes_whole_folders_or_nothing(tmp_path):
    out = tmp_path / "out"
    with building(out, overwrite=False, verb="prepare") as tmp:
        (tmp / "f.txt").write_text("1")
        (tmp / "run.json").write_text('{"stage": "prepare"}')
    assert (out / "f.txt").read_text() == "1"
    with pytest.raises(DataError, match="already exists and is not empty"):
        with building(out, overwrite=False, verb="prepare"):
            pass
    with pytest.raises(RuntimeError):
        with building(out, overwrite=True, verb="prepare") as tmp:
            (tmp / "f.txt").write_text("2")
            raise RuntimeError("disk full")
    assert (out / "f.txt").read_text() == "1"  # the previous complete state is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("where", ["cwd", "parent", "home", "root"])
def test_overwrite_refuses_the_working_directory_its_parents_home_and_root(where, tmp_path, monkeypatch):
    work = tmp_path / "work" / "inner"
    work.mkdir(parents=True)
    (work / "thesis.tex").write_text("years of work")
    (work / "run.json").write_text('{"stage": "prepare"}')  # even a folder that looks like an output
    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", str(work))
    out = {"cwd": Path("."), "parent": Path(".."), "home": Path("~").expanduser(), "root": Path("/")}[where]
    before = _files(tmp_path)
    with pytest.raises(DataError, match="choose a new sub-folder"):
        with building(out, overwrite=True, verb="prepare"):
            pass
    assert _files(tmp_path) == before


def test_overwrite_replaces_only_an_output_of_the_same_verb(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="has no readable run.json"):
        with building(out, overwrite=True, verb="prepare"):
            pass
    (out / "run.json").write_text('{"stage": "train"}')
    with pytest.raises(DataError, match="not made by `augment prepare` but by `augment train`"):
        with building(out, overwrite=True, verb="prepare"):
            pass
    assert (out / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_an_output_that_is_a_symbolic_link_is_refused_and_its_target_kept(tmp_path):
    target = tmp_path / "target"
    target.mkdir()
    (target / "run.json").write_text('{"stage": "prepare"}')
    link = tmp_path / "link"
    link.symlink_to(target)
    for overwrite in (False, True):
        with pytest.raises(DataError, match="is a symbolic link"):
            with building(link, overwrite=overwrite, verb="prepare"):
                pass
    assert _files(target) == {"run.json": b'{"stage": "prepare"}'} and link.is_symlink()


def test_json_records_never_hold_nan_or_infinity(tmp_path):
    import json

    import numpy as np

    write_json({"a": float("nan"), "b": [1.0, float("inf"), {"c": np.float32("nan")}], "d": np.float64(2.5)}, tmp_path / "r.json")
    text = (tmp_path / "r.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"a": None, "b": [1.0, None, {"c": None}], "d": 2.5}
