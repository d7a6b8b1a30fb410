"""A few end-to-end CLI runs: the shell around the API, its exit codes and its one-line errors."""

from __future__ import annotations

import errno
import shlex
from pathlib import Path

import pytest

from augment.cli import _verbs, build_parser, main
from augment.config import parse_overrides
from augment.data.manifest import read_manifest
from tests.conftest import run_cli

ROOT = Path(__file__).resolve().parents[1]


def test_prepare_phantom_end_to_end(tmp_path):
    res = run_cli("prepare", "--source", "phantom", "--out", tmp_path / "d", "--count", "30",
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
        (["prepare", "--out", "{t}/d"], "`source` is required: give --source, or `source:` in the --config YAML"),
        (["train", "--data", "{t}/d", "--out", "{t}/d"], "`generator` is required: give --generator"),
        (["sample", "--generator", "{t}/r", "--out", "{t}/d"], "the following arguments are required: --balance"),
        (["nosuchverb"], "unknown command 'nosuchverb' (commands: prepare, train, sample,"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, needle):
    t = str(tmp_path)
    res = run_cli(*[a.format(t=t) for a in args])
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
    res = run_cli("--help")
    assert res.returncode == 0 and "prepare" in res.stdout
    res = run_cli("prepare", "--help")
    assert res.returncode == 0 and "--image-size N" in res.stdout and "--set" in res.stdout


def _examples(parser):
    help_text = parser.format_help()
    assert "\nexamples:\n" in help_text, f"`{parser.prog} --help` has no examples"
    return [line.strip() for line in help_text.split("\nexamples:\n")[1].splitlines() if line.startswith("  augment ")]


@pytest.mark.parametrize("verb", [None, *_verbs(build_parser())])
def test_every_help_example_parses(verb):
    parser = build_parser() if verb is None else _verbs(build_parser())[verb]
    assert parser.description
    examples = _examples(parser)
    assert 1 <= len(examples) <= (4 if verb is None else 3)
    for line in examples:
        words = shlex.split(line)
        args = build_parser().parse_args(words[1:])
        assert verb is None or args.command == verb, line
        parse_overrides(getattr(args, "set", []))  # a --set in an example is well formed
        for word in words:
            if word.startswith(("pipelines/", "manifests/")):
                assert (ROOT / word).is_file(), f"{line}: no file `{word}` in the repository"


@pytest.mark.parametrize("verb,shown", [
    ("prepare", "--source SOURCE --out DATA [--image-size N]"),
    ("train", "--data DATA --generator FAMILY --out RUN [--budget N]"),
    ("sample", "--generator RUN --balance YAML --out SYN [--seed N]"),
    ("audit", "--data DATA --synthetic SYN --out AUD [--inception-weights FILE]"),
    ("evaluate", "--data DATA --out EVAL [--synthetic SYN]"),
    ("score", "--out OUT [--split"),
    ("run", "--out OUT [--set KEY=VALUE] [--executor {serial,local,slurm,debug}] [--workers N] SPEC"),
    ("status", "augment status [-h] [--all] OUT"),
    ("export", "--out OUT DATA"),
])
def test_usage_shows_what_a_verb_needs_without_brackets(verb, shown):
    usage = " ".join(_verbs(build_parser())[verb].format_usage().split())
    assert shown in usage


@pytest.mark.parametrize("argv,line", [
    (["sampel"], "augment: error: unknown command 'sampel'; did you mean 'sample'? (see `augment --help`)"),
    (["evalute", "--data", "d"], "augment: error: unknown command 'evalute'; did you mean 'evaluate'?"),
    (["prepare", "--source", "phantom", "--otu", "d"], "augment prepare: error: unknown option '--otu'; did you mean '--out'?"),
    (["train", "--budjet=3"], "augment train: error: unknown option '--budjet'; did you mean '--budget'?"),
    (["prepare", "--source", "phantom", "--set", "split.val=0.1", "split.test=0.2"],
     "augment prepare: error: unexpected `split.test=0.2`: each override needs its own --set (--set split.test=0.2)"),
    (["validate", "a", "b"], "augment validate: error: unexpected argument 'b'"),
])
def test_typos_get_one_line_a_suggestion_and_exit_2(capsys, argv, line):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(line), err


def test_run_accepts_a_comma_list_of_budgets(monkeypatch, tmp_path):
    from augment import pipeline

    class Stop(Exception):
        pass

    seen = []

    def stop(cfg, out, echo=print):
        seen.append(cfg.budgets)
        raise Stop

    monkeypatch.setattr(pipeline, "run_pipeline", stop)
    with pytest.raises(Stop):
        main(["run", str(ROOT / "pipelines/quickstart.yaml"), "--out", str(tmp_path / "o"), "--set", "budgets=16,32"])
    assert seen == [[16, 32]]


def test_run_with_a_bad_list_says_how_to_write_one(capsys, tmp_path):
    assert main(["run", str(ROOT / "pipelines/quickstart.yaml"), "--out", str(tmp_path / "o"), "--set", "budgets=16,x"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "`budgets`: Input should be a valid list (got '16,x'); write a list as [a, b]" in err[0]
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("error,needle", [
    (OSError(errno.ENOSPC, "No space left on device", "/x/.d.partial-0a1b2c3d/images/a.png"),
     "disk full while writing `/x/d/images/a.png` (No space left on device); free some space and run again"),
    (OSError(errno.EDQUOT, "Disk quota exceeded", "/x/d/run.json"), "disk full while writing `/x/d/run.json`"),
    (PermissionError(errno.EACCES, "Permission denied", "/x/d"), "permission denied: `/x/d` (Permission denied)"),
    (OSError(errno.EROFS, "Read-only file system", "/x/d"), "`/x/d` is on a read-only file system"),
    (MemoryError(), "out of memory; use smaller settings"),
    (RuntimeError("[enforce fail at alloc_cpu.cpp:121] DefaultCPUAllocator: can't allocate memory: you tried to allocate 10 GB"),
     "out of memory ([enforce fail at alloc_cpu.cpp:121] DefaultCPUAllocator: can't allocate memory"),
    (OSError(errno.ENAMETOOLONG, "File name too long", "/x/" + "d" * 300), "is too long (File name too long); choose a shorter path"),
    (OSError(errno.ELOOP, "Too many levels of symbolic links", "/x/d"), "`/x/d` is a loop of symbolic links"),
    (FileExistsError(errno.EEXIST, "File exists", "/x/f.txt"), "part of the path is a file, not a folder"),
])
def test_system_limits_are_one_line_and_exit_2(monkeypatch, capsys, error, needle):
    from augment import api

    def fail(*_args, **_kwargs):
        raise error

    monkeypatch.setattr(api, "validate_data", fail)
    assert main(["validate", "somewhere"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("augment validate: error: ") and needle in lines[0]


def test_a_runtime_error_that_is_not_about_memory_is_still_a_traceback(monkeypatch):
    from augment import api

    def fail(*_args, **_kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(api, "validate_data", fail)
    with pytest.raises(RuntimeError, match="a bug"):  # a bug must stay visible, not become a polite line
        main(["validate", "somewhere"])


def test_an_unexpected_os_error_is_not_hidden(monkeypatch):
    from augment import api

    def fail(*_args, **_kwargs):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(api, "validate_data", fail)
    with pytest.raises(OSError, match="Input/output error"):
        main(["validate", "somewhere"])


def test_a_verb_destroys_the_process_group_it_ran_in(phantom_dir, tmp_path):
    """Left for interpreter exit, gloo's threads have aborted ranks with SIGABRT after a finished run."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        assert main(["validate", str(phantom_dir)]) == 0
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
