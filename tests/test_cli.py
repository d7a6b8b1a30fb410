"""A few end-to-end CLI runs: the shell around the API, its exit codes and its one-line errors."""

from __future__ import annotations

import errno
import subprocess
import sys

import pytest

from augment.cli import main
from augment.data.manifest import read_manifest


def _run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "augment", *args], capture_output=True, text=True, cwd=cwd)


def test_prepare_phantom_end_to_end(tmp_path):
    res = _run("prepare", "--source", "phantom", "--out", str(tmp_path / "d"), "--count", "30",
               "--image-size", "16", "--set", "split.val=0.2", "--set", "split.test=0.1")
    assert res.returncode == 0, res.stderr
    assert "all" in res.stdout and "wrote" in res.stdout and "(30 images)" in res.stdout
    df = read_manifest(tmp_path / "d")
    assert len(df) == 30
    assert abs((df["split"] == "val").mean() - 0.2) < 0.1


@pytest.mark.parametrize(
    "args,needle",
    [
        (["prepare", "--source", "phantom", "--out", "{t}/d", "--set", "colour=red"], "unknown key `colour`"),
        (["prepare", "--source", "{t}/missing", "--out", "{t}/d"], "source `{t}/missing` does not exist"),
        (["prepare", "--source", "phantom", "--out", "{t}/d", "--image-size", "2"], "`image_size`"),
        (["prepare", "--source", "phantom", "--out", "{t}/d", "--set", "novalue"], "must look like key=value"),
        (["prepare", "--source", "phantom", "--out", "{t}/d", "--count", "x"], "invalid int value"),
        (["prepare", "--out", "{t}/d"], "`source` is required"),
        (["nosuchverb"], "invalid choice"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, needle):
    t = str(tmp_path)
    res = _run(*[a.format(t=t) for a in args])
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert needle.format(t=t) in lines[0]
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "d").exists()


def test_config_file_and_flags(tmp_path, capsys):
    (tmp_path / "p.yaml").write_text(f"source: phantom\nout: {tmp_path / 'd'}\ncount: 12\nimage_size: 8\n")
    assert main(["prepare", "--config", str(tmp_path / "p.yaml"), "--count", "15"]) == 0
    assert len(read_manifest(tmp_path / "d")) == 15  # the flag wins over the file
    assert main(["validate", str(tmp_path / "d")]) == 0
    assert "all files present" in capsys.readouterr().out


def test_validate_reports_tampering(tmp_path, capsys):
    assert main(["prepare", "--source", "phantom", "--out", str(tmp_path / "d"), "--count", "10", "--image-size", "8"]) == 0
    df = read_manifest(tmp_path / "d")
    (tmp_path / "d" / df["image"][3]).write_bytes((tmp_path / "d" / df["image"][4]).read_bytes())
    assert main(["validate", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert f"{df['id'][3]}: image `{df['image'][3]}` does not match its sha256" in err


def test_export_hf(tmp_path):
    assert main(["prepare", "--source", "phantom", "--out", str(tmp_path / "d"), "--count", "9", "--image-size", "8"]) == 0
    assert main(["export", str(tmp_path / "d"), "--format", "hf", "--out", str(tmp_path / "hf")]) == 0
    import datasets

    assert len(datasets.load_from_disk(str(tmp_path / "hf"))) == 9
    assert main(["export", str(tmp_path / "d"), "--out", str(tmp_path / "hf")]) == 2


def test_help_lists_verbs():
    res = _run("--help")
    assert res.returncode == 0 and "prepare" in res.stdout
    res = _run("prepare", "--help")
    assert res.returncode == 0 and "--image-size" in res.stdout and "--set" in res.stdout


@pytest.mark.parametrize("error,needle", [
    (OSError(errno.ENOSPC, "No space left on device", "/x/.d.partial-0a1b2c3d/images/a.png"),
     "disk full while writing `/x/d/images/a.png` (No space left on device); free some space and run again"),
    (OSError(errno.EDQUOT, "Disk quota exceeded", "/x/d/run.json"), "disk full while writing `/x/d/run.json`"),
    (PermissionError(errno.EACCES, "Permission denied", "/x/d"), "permission denied: `/x/d` (Permission denied)"),
    (OSError(errno.EROFS, "Read-only file system", "/x/d"), "`/x/d` is on a read-only file system"),
    (MemoryError(), "out of memory; use smaller settings"),
])
def test_system_limits_are_one_line_and_exit_2(monkeypatch, capsys, error, needle):
    from augment import api

    def fail(*_args, **_kwargs):
        raise error

    monkeypatch.setattr(api, "validate_data", fail)
    assert main(["validate", "somewhere"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("augment validate: error: ") and needle in lines[0]


def test_an_unexpected_os_error_is_not_hidden(monkeypatch):
    from augment import api

    def fail(*_args, **_kwargs):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(api, "validate_data", fail)
    with pytest.raises(OSError, match="Input/output error"):
        main(["validate", "somewhere"])
