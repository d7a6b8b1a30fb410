"""The one atomic-write helper and the claim/publish helper every stage writes through."""

from __future__ import annotations

import os
import stat

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
    with building(out, overwrite=False) as tmp:
        (tmp / "f.txt").write_text("1")
    assert (out / "f.txt").read_text() == "1"
    with pytest.raises(DataError, match="already exists and is not empty"):
        with building(out, overwrite=False):
            pass
    with pytest.raises(RuntimeError):
        with building(out, overwrite=True) as tmp:
            (tmp / "f.txt").write_text("2")
            raise RuntimeError("disk full")
    assert (out / "f.txt").read_text() == "1"  # the previous complete state is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
