"""A catalogue of hostile inputs, across every verb, run through the CLI: each ends with exit
code 2, exactly one line on stderr naming the culprit, no traceback, and nothing left behind
(the output folder absent or byte-for-byte unchanged, nothing beside it)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from augment.cli import main
from tests.conftest import TINY, set_args, write_folder

ROOT = Path(__file__).resolve().parents[1]
TINY_ARGS = [*set_args(TINY["cvae"], "generator"), *set_args({"batch_size": 8, "max_steps": 4, "checkpoint_every": 2}, "train")]
EVAL = ["--set", "seeds=[0]", "--set", "segmentation.steps=2", "--set", "segmentation.base_channels=4"]
SPEC = """data: {{source: phantom, image_size: 16, count: 60}}
generator: {{family: cvae}}
budgets: [12]
balance: {balance}
"""


@pytest.fixture(scope="module")
def syn(tiny_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cat") / "syn"
    assert main(["sample", "--generator", str(tiny_run), "--balance", str(ROOT / "manifests" / "match_max.yaml"),
                 "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def unfinished(phantom_dir, tmp_path_factory) -> Path:
    """A generator run killed after its step-2 checkpoint (no weights, no run.json)."""
    out = tmp_path_factory.mktemp("cat") / "unfinished"
    assert main(["train", "--data", str(phantom_dir), "--generator", "cvae", "--out", str(out), "--budget", "24", *TINY_ARGS]) == 0
    for name in ("run.json", "model.safetensors", "loss.csv"):
        (out / name).unlink()
    shutil.rmtree(out / "state" / "step_00000004", ignore_errors=True)
    return out


# --- what each case builds before it runs (inputs are copies: the shared fixtures stay intact) ---

def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _edit_json(path: Path, **changes) -> None:
    record = json.loads(path.read_text())
    record.update(changes)
    path.write_text(json.dumps(record))


def _unfinished_copy(ctx, mutate=None) -> None:
    run = _copy(ctx["unfinished"], ctx["t"] / "out")
    _edit_json(run / "config.json", out=str(run))  # the copy resumes as itself
    if mutate is not None:
        mutate(run / "state" / "step_00000002")


def _balance(text: str):
    return lambda ctx: (ctx["t"] / "b.yaml").write_text(text)


def _spec(balance: str = "{strategy: match_max}", extra: str = ""):
    return lambda ctx: (ctx["t"] / "p.yaml").write_text(SPEC.format(balance=balance) + extra)


def _gen_copy(mutate):
    def setup(ctx):
        mutate(_copy(ctx["run"], ctx["t"] / "gen"))
    return setup


def _syn_copy(mutate):
    def setup(ctx):
        mutate(_copy(ctx["syn"], ctx["t"] / "syn"))
    return setup


def _data_copy(ctx) -> None:
    _copy(ctx["data"], ctx["t"] / "out")


def _corrupt_folder_image(ctx) -> None:
    src = write_folder(ctx["t"] / "src", {0: 4, 1: 4})
    (src / "images" / "c1_002.png").write_bytes(b"not a png")


def _evaluation_with_corrupt_result(ctx) -> None:
    out = ctx["t"] / "out"
    assert main(["evaluate", "--data", str(ctx["data"]), "--out", str(out), "--budget", "12", "--set", "arms=[real]", *EVAL]) == 0
    (out / "run.json").unlink()
    (out / "runs" / "segmentation__real__seed0.json").write_text('{"metrics": ')


D, R, S, O = "{data}", "{run}", "{syn}", "{t}/out"
M = str(ROOT / "manifests" / "match_max.yaml")

CASES = [
    # prepare
    ("prepare-unknown-key", None, ["prepare", "--source", "phantom", "--out", O, "--set", "colour=red"], "unknown key `colour`"),
    ("prepare-missing-source", None, ["prepare", "--source", "{t}/nowhere", "--out", O], "`{t}/nowhere` does not exist"),
    ("prepare-tiny-image-size", None, ["prepare", "--source", "phantom", "--out", O, "--image-size", "2"], "`image_size`"),
    ("prepare-count-not-int", None, ["prepare", "--source", "phantom", "--out", O, "--count", "x"], "invalid int value"),
    ("prepare-count-huge", None, ["prepare", "--source", "phantom", "--out", O, "--count", "100000000000"], "less than or equal to 1000000"),
    ("prepare-split-sum", None, ["prepare", "--source", "phantom", "--out", O, "--set", "split.train=0.9"], "must sum to 1"),
    ("prepare-out-not-empty", _data_copy, ["prepare", "--source", "phantom", "--out", O, "--count", "9"], "already exists and is not empty"),
    ("prepare-config-missing", None, ["prepare", "--config", "{t}/p.yaml"], "config file `{t}/p.yaml` does not exist"),
    ("prepare-config-not-yaml", lambda c: (c["t"] / "p.yaml").write_text("a: [1,\n"), ["prepare", "--config", "{t}/p.yaml"], "not valid YAML"),
    ("prepare-corrupt-image", _corrupt_folder_image, ["prepare", "--source", "{t}/src", "--out", O], "c1_002.png"),
    # validate, export
    ("validate-no-manifest", None, ["validate", "{t}"], "manifest.csv` does not exist"),
    ("validate-garbage-manifest", lambda c: (c["t"] / "manifest.csv").write_bytes(b"\x00\xff\xfe"), ["validate", "{t}"], "not a readable CSV"),
    ("export-out-exists", _data_copy, ["export", D, "--out", O, "--format", "folder"], "already exists"),
    ("export-not-a-dataset", None, ["export", "{t}/nowhere", "--out", O], "does not exist"),
    ("export-bad-format", None, ["export", D, "--out", O, "--format", "zip"], "invalid choice: 'zip'"),
    # train
    ("train-unknown-family", None, ["train", "--data", D, "--generator", "gan", "--out", O], "unknown 'family' 'gan'"),
    ("train-zero-steps", None, ["train", "--data", D, "--generator", "cvae", "--out", O, "--set", "train.max_steps=0"], "`train.max_steps`"),
    ("train-nan-lr", None, ["train", "--data", D, "--generator", "cvae", "--out", O, "--set", "train.lr=.nan"], "`train.lr`"),
    ("train-budget-too-big", None, ["train", "--data", D, "--generator", "cvae", "--out", O, "--budget", "999"], "larger than the train split"),
    ("train-out-is-finished-run", lambda c: _copy(c["run"], c["t"] / "out"), ["train", "--data", D, "--generator", "cvae", "--out", O],
     "already holds a finished generator run"),
    ("train-out-is-a-dataset", _data_copy, ["train", "--data", D, "--generator", "cvae", "--out", O], "is not a generator run"),
    ("train-unfinished-no-resume", _unfinished_copy, ["train", "--data", D, "--generator", "cvae", "--out", O, "--budget", "24", *TINY_ARGS],
     "pass --resume"),
    ("train-resume-other-config", _unfinished_copy,
     ["train", "--data", D, "--generator", "cvae", "--out", O, "--budget", "24", *TINY_ARGS, "--set", "train.lr=0.5", "--resume"],
     "--resume with a different config"),
    ("train-resume-corrupt-trainer-json", lambda c: _unfinished_copy(c, lambda s: (s / "trainer.json").write_text("{oops")),
     ["train", "--data", D, "--generator", "cvae", "--out", O, "--budget", "24", *TINY_ARGS, "--resume"], "trainer.json` is not JSON"),
    ("train-resume-trainer-json-wrong-types", lambda c: _unfinished_copy(c, lambda s: (s / "trainer.json").write_text('{"format": 1, "step": "2"}')),
     ["train", "--data", D, "--generator", "cvae", "--out", O, "--budget", "24", *TINY_ARGS, "--resume"], "is not a trainer record"),
    ("train-resume-garbage-weights", lambda c: _unfinished_copy(c, lambda s: (s / "model.safetensors").write_bytes(b"junk")),
     ["train", "--data", D, "--generator", "cvae", "--out", O, "--budget", "24", *TINY_ARGS, "--resume"], "is not a safetensors file"),
    ("train-resume-state-is-a-file", lambda c: _unfinished_copy(c, lambda s: (shutil.rmtree(s.parent), s.parent.write_text("x"))),
     ["train", "--data", D, "--generator", "cvae", "--out", O, "--budget", "24", *TINY_ARGS, "--resume"], "checkpoint folder but is a file"),
    # sample
    ("sample-ratio-nan", _balance("strategy: ratio\nratio: .nan\n"), ["sample", "--generator", R, "--balance", "{t}/b.yaml", "--out", O],
     "`ratio` must be a finite number (got nan)"),
    ("sample-ratio-inf", _balance("strategy: ratio\nratio: .inf\n"), ["sample", "--generator", R, "--balance", "{t}/b.yaml", "--out", O],
     "`ratio` must be a finite number (got inf)"),
    ("sample-weights-nan", _balance("strategy: total\ntotal: 9\nweights: {0: .nan, 1: 1}\n"),
     ["sample", "--generator", R, "--balance", "{t}/b.yaml", "--out", O], "`weights` must be a finite number"),
    ("sample-total-huge", _balance("strategy: total\ntotal: 1000000000\n"), ["sample", "--generator", R, "--balance", "{t}/b.yaml", "--out", O],
     "above max_synthetic_total (1000000)"),
    ("sample-ratio-huge", _balance("strategy: ratio\nratio: 1.0e+300\n"), ["sample", "--generator", R, "--balance", "{t}/b.yaml", "--out", O],
     "the plan asks for over 1e+16 synthetic pairs"),
    ("sample-no-balance", None, ["sample", "--generator", R, "--out", O], "required: --balance"),
    ("sample-unknown-sampler-key", None, ["sample", "--generator", R, "--balance", M, "--out", O, "--set", "sampler.foo=1"],
     "unknown key `foo` (allowed: temperature)"),
    ("sample-corrupt-run-json", _gen_copy(lambda g: (g / "run.json").write_text("{garbage")),
     ["sample", "--generator", "{t}/gen", "--balance", M, "--out", O], "gen/run.json` is not a generator run record"),
    ("sample-run-json-without-classes", _gen_copy(lambda g: _edit_json(g / "run.json", classes=[1, 2])),
     ["sample", "--generator", "{t}/gen", "--balance", M, "--out", O], "gen/run.json` is not a generator run record"),
    ("sample-tampered-weights", _gen_copy(lambda g: (g / "model.safetensors").write_bytes(b"xx")),
     ["sample", "--generator", "{t}/gen", "--balance", M, "--out", O], "do not match the sha256"),
    ("sample-generator-is-a-dataset", None, ["sample", "--generator", D, "--balance", M, "--out", O], "its run.json is from `augment prepare`"),
    ("sample-out-is-a-dataset", _data_copy, ["sample", "--generator", R, "--balance", M, "--out", O], "is not a synthetic set"),
    # audit
    ("audit-real-folder-as-synthetic", None, ["audit", "--data", D, "--synthetic", D, "--out", O], "is not a synthetic set made by `augment sample`"),
    ("audit-corrupt-sampling-record", _syn_copy(lambda s: (s / "run.json").write_text("[]")),
     ["audit", "--data", D, "--synthetic", "{t}/syn", "--out", O], "syn/run.json` is not a JSON object"),
    ("audit-sampling-record-without-keys", _syn_copy(lambda s: (s / "run.json").write_text('{"stage": "sample"}')),
     ["audit", "--data", D, "--synthetic", "{t}/syn", "--out", O], "is not a sampling record"),
    ("audit-inception-missing", None, ["audit", "--data", D, "--synthetic", S, "--out", O, "--inception-weights", "{t}/no.pt"],
     "`{t}/no.pt` does not exist"),
    ("audit-out-would-replace-data", _data_copy, ["audit", "--data", O, "--synthetic", S, "--out", O, "--overwrite"],
     "would replace the --data folder"),
    # evaluate
    ("evaluate-synthetic-arm-without-synthetic", None, ["evaluate", "--data", D, "--out", O, "--set", "arms=[real+synthetic]"],
     "arm `real+synthetic` needs --synthetic"),
    ("evaluate-duplicate-arms", None, ["evaluate", "--data", D, "--out", O, "--set", "arms=[real,real]"], "'real' is listed twice"),
    ("evaluate-unknown-arm", None, ["evaluate", "--data", D, "--out", O, "--set", "arms=[fake]"], "(got 'fake')"),
    ("evaluate-duplicate-seeds", None, ["evaluate", "--data", D, "--out", O, "--set", "seeds=[0,0]"], "0 is listed twice"),
    ("evaluate-real-folder-as-synthetic", None, ["evaluate", "--data", D, "--synthetic", D, "--out", O], "is not a synthetic set"),
    ("evaluate-budget-and-synthetic", None, ["evaluate", "--data", D, "--synthetic", S, "--out", O, "--budget", "4"], "give one or the other"),
    ("evaluate-out-is-a-dataset", _data_copy, ["evaluate", "--data", D, "--out", O, "--set", "arms=[real]", *EVAL],
     "is not an evaluation folder"),
    ("evaluate-corrupt-result-file", _evaluation_with_corrupt_result,
     ["evaluate", "--data", D, "--out", O, "--budget", "12", "--set", "arms=[real]", *EVAL], "segmentation__real__seed0.json` is not readable JSON"),
    # run, report
    ("run-missing-spec", None, ["run", "{t}/p.yaml", "--out", O], "`{t}/p.yaml` does not exist"),
    ("run-unknown-key", _spec(extra="colour: red\n"), ["run", "{t}/p.yaml", "--out", O], "unknown key `colour`"),
    ("run-train-not-a-mapping", _spec(extra="train: [1, 2]\n"), ["run", "{t}/p.yaml", "--out", O], "`train` must be a mapping"),
    ("run-ratio-nan", _spec("{strategy: ratio, ratio: .nan}"), ["run", "{t}/p.yaml", "--out", O], "must be a finite number"),
    ("run-duplicate-budgets", _spec(extra="seeds: [0]\n"), ["run", "{t}/p.yaml", "--out", O, "--set", "budgets=[12,12]"], "12 is listed twice"),
    ("run-negative-budget", _spec(), ["run", "{t}/p.yaml", "--out", O, "--set", "budgets=[-1]"], "`budgets.0`"),
    ("run-out-is-a-dataset", lambda c: (_spec()(c), _data_copy(c)), ["run", "{t}/p.yaml", "--out", O], "is not the output of `augment run`"),
    ("report-not-a-run", None, ["report", D], "no pipeline.json"),
    ("report-corrupt-pipeline-json", lambda c: (c["t"] / "out").mkdir() or (c["t"] / "out" / "pipeline.json").write_text("{"),
     ["report", O], "pipeline.json` is not valid JSON"),
]


def _snapshot(folder: Path) -> dict[str, str] | None:
    if not folder.exists():
        return None
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(folder.rglob("*"))}


def test_catalogue_covers_every_verb():
    verbs = {argv[0] for _, _, argv, _ in CASES}
    assert verbs == {"prepare", "validate", "export", "train", "sample", "audit", "evaluate", "run", "report"}
    assert len(CASES) >= 40


@pytest.mark.parametrize("setup,argv,needle", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_hostile_input_is_one_line_exit_2_and_leaves_nothing(setup, argv, needle, tmp_path, phantom_dir, tiny_run, syn,
                                                             unfinished, capsys):
    ctx = {"t": tmp_path, "data": phantom_dir, "run": tiny_run, "syn": syn, "unfinished": unfinished}
    if setup is not None:
        setup(ctx)
    out = tmp_path / "out"
    before, shared = _snapshot(out), [_snapshot(p) for p in (phantom_dir, tiny_run, syn)]
    capsys.readouterr()
    names = {k: str(v) for k, v in ctx.items()}
    try:
        rc = main([a.format(**names) for a in argv])
    except SystemExit as exc:  # argparse errors
        rc = exc.code
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert rc == 2, err
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert lines[0].startswith(f"augment {argv[0]}: error: ") or lines[0].startswith("augment: error: ")
    assert needle.format(**names) in lines[0]
    assert _snapshot(out) == before  # absent, or byte for byte as it was
    assert not list(tmp_path.glob(".out*"))  # no temporary folder, lock or partial file beside it
    assert [_snapshot(p) for p in (phantom_dir, tiny_run, syn)] == shared


def test_a_failed_evaluation_into_an_empty_folder_leaves_it_empty(phantom_dir, tmp_path, capsys, monkeypatch):
    import augment.evaluate
    from augment.errors import DataError

    def fail(*_args, **_kwargs):
        raise DataError("the task model could not be trained")

    monkeypatch.setattr(augment.evaluate, "train_arm", fail)
    (tmp_path / "out").mkdir()
    assert main(["evaluate", "--data", str(phantom_dir), "--out", str(tmp_path / "out"), "--budget", "12",
                 "--set", "arms=[real]", *EVAL]) == 2
    assert "could not be trained" in capsys.readouterr().err
    assert (tmp_path / "out").is_dir() and not list((tmp_path / "out").iterdir())
