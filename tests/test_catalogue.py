"""A catalogue of hostile inputs, across every verb, run through the CLI: each ends with exit
code 2, exactly one line on stderr naming the culprit, no traceback, and nothing left behind
(the case's whole temporary folder, output, inputs, lock files and victims beside them, is
byte for byte as the setup left it; the shared fixtures too).

A case is ``(id, setup, argv, needle)``: ``setup(ctx)`` builds what the case needs in ``ctx["t"]``
(copies: the shared fixtures stay intact), ``argv`` may name ``{t}``, ``{data}``, ``{run}``,
``{syn}``, ``{cvae}``, ``{ldm}``, ``{vqvae2}``, ``{other}`` and what the setup put in ``ctx``,
and ``needle`` (or any one of a tuple of needles) must be in the error line: the culprit key or
file, not the wording, which changes. Settings that would be costly if a hostile value were
wrongly accepted are always given tiny (a few steps, 16 px), so a case that fails is still cheap.
A case commented ``debatable`` expects a refusal where accepting the input could be argued for.
"""

from __future__ import annotations

import collections
import csv
import fcntl
import hashlib
import json
import os
import shutil
import signal
import stat
from pathlib import Path

import pytest
from PIL import Image

from augment.cli import _verbs, build_parser, main
from tests.conftest import TINY, forged_png, set_args, write_folder

ROOT = Path(__file__).resolve().parents[1]
TINY_ARGS = [*set_args(TINY["cvae"], "generator"), *set_args({"batch_size": 8, "max_steps": 4, "checkpoint_every": 2}, "train")]
#: each family at its smallest, two steps per phase
FAMILY_ARGS = {family: [*set_args(config, "generator"), *set_args({"batch_size": 8, "max_steps": 2, "checkpoint_every": 1000}, "train")]
               for family, config in TINY.items()}
EVAL = ["--set", "seeds=[0]", "--set", "segmentation.steps=2", "--set", "segmentation.base_channels=4"]
AUD = ["--set", "encoder_steps=2", "--set", "segmenter_steps=2", "--set", "kid_subsets=2", "--set", "kid_subset_size=2",
       "--set", "max_pairs=4"]
SCORE = ["--set", "scorer.steps=2", "--set", "scorer.batch_size=4", "--set", "scorer.base_channels=4"]
SPEC = """data: {{source: phantom, image_size: 16, count: 60}}
generator: {{family: cvae}}
budgets: [12]
balance: {balance}
"""
#: a spec that, if a hostile value in it were wrongly accepted, still runs end to end in seconds
SAFE_SPEC = """data: {{source: phantom, image_size: 16, count: 60}}
generator: {{family: cvae, base_channels: 4, max_channels: 8, latent_dim: 4}}
train: {{max_steps: 2, batch_size: 8, checkpoint_every: 1000}}
budgets: [12]
seeds: [0]
balance: {balance}
audit: {{encoder_steps: 2, segmenter_steps: 2, kid_subsets: 2, kid_subset_size: 2, max_pairs: 4}}
evaluate: {{segmentation: {{steps: 2, batch_size: 8, eval_every: 1, base_channels: 4}}}}
"""
CASE_SECONDS = 90  # a case that hangs (a FIFO read, a runaway loop) fails instead of stalling the suite
#: cases whose one line must also be short (a YAML alias bomb must not be echoed back expanded)
SHORT = {"prepare-config-alias-bomb", "run-spec-alias-bomb", "run-train-alias-bomb", "train-config-alias-bomb"}


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


@pytest.fixture(scope="module")
def runs(phantom_dir, tiny_run, tmp_path_factory) -> dict[str, Path]:
    """A finished tiny run of every family (the cVAE is the session's ``tiny_run``)."""
    out = {"cvae": tiny_run}
    for family in ("ldm", "vqvae2", "gan"):
        out[family] = tmp_path_factory.mktemp("cat") / family
        assert main(["train", "--data", str(phantom_dir), "--generator", family, "--out", str(out[family]), "--budget", "24",
                     *FAMILY_ARGS[family]]) == 0
    return out


@pytest.fixture(scope="module")
def other_data(tmp_path_factory) -> Path:
    """Another phantom dataset (another seed): not the data the shared synthetic set comes from."""
    out = tmp_path_factory.mktemp("cat") / "other"
    assert main(["prepare", "--source", "phantom", "--out", str(out), "--image-size", "16", "--count", "60", "--seed", "4"]) == 0
    return out


# --- what each case builds before it runs (inputs are copies: the shared fixtures stay intact) ---

def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _edit_json(path: Path, **changes) -> None:
    record = json.loads(path.read_text())
    record.update(changes)
    path.write_text(json.dumps(record))


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _edit_manifest(folder: Path, edit) -> None:
    """Rewrite ``folder/manifest.csv`` as ``edit(rows)`` (rows as dicts of strings, as written)."""
    path = folder / "manifest.csv"
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        fields, rows = reader.fieldnames, list(reader)
    rows = edit(rows)
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fields)
        writer.writeheader()
        writer.writerows(rows)


def _first_row(folder: Path, **changes) -> dict:
    """Change the first manifest row of ``folder``; returns it as it was."""
    kept = {}

    def edit(rows):
        kept.update(rows[0])
        rows[0] = {**rows[0], **changes}
        return rows
    _edit_manifest(folder, edit)
    return kept


def _forged_png(path: Path, width: int = 20000, height: int = 20000) -> None:
    path.write_bytes(forged_png(width, height))


def _forge_first_image(ctx, folder: Path) -> None:
    """The first row's image becomes a forged 20000x20000 header, its sha256 updated to match."""
    row = _first_row(folder)
    _forged_png(folder / row["image"])
    _first_row(folder, sha256=_sha(folder / row["image"]))
    ctx["culprit"] = Path(row["image"]).name


def _unfinished_copy(ctx, mutate=None) -> None:
    run = _copy(ctx["unfinished"], ctx["t"] / "out")
    _edit_json(run / "config.json", out=str(run))  # the copy resumes as itself
    if mutate is not None:
        mutate(run / "state" / "step_00000002")


def _balance(text: str):
    return lambda ctx: (ctx["t"] / "b.yaml").write_text(text)


def _spec(balance: str = "{strategy: match_max}", extra: str = ""):
    return lambda ctx: (ctx["t"] / "p.yaml").write_text(SPEC.format(balance=balance) + extra)


def _safe_spec(balance: str = "{strategy: match_max}", extra: str = ""):
    return lambda ctx: (ctx["t"] / "p.yaml").write_text(SAFE_SPEC.format(balance=balance) + extra)


def _text(name: str, text: str):
    return lambda ctx: (ctx["t"] / name).write_text(text)


def _gen_copy(mutate, family: str = "run"):
    def setup(ctx):
        mutate(_copy(ctx[family], ctx["t"] / "gen"))
    return setup


def _syn_copy(mutate):
    def setup(ctx):
        mutate(_copy(ctx["syn"], ctx["t"] / "syn"))
    return setup


def _syn_forged(ctx) -> None:
    _forge_first_image(ctx, _copy(ctx["syn"], ctx["t"] / "syn"))


def _syn_escaping(absolute: bool):
    """The synthetic set's first row points outside its folder, at a real file with the right sha256."""
    def setup(ctx):
        syn = _copy(ctx["syn"], ctx["t"] / "syn")
        row = _first_row(syn)
        outside = ctx["t"] / "outside.png"
        shutil.copy(syn / row["image"], outside)
        _first_row(syn, image=str(outside) if absolute else "../outside.png")
    return setup


def _data_copy(ctx) -> None:
    _copy(ctx["data"], ctx["t"] / "out")


def _data_rows(n: int):
    """A copy of the phantom dataset at ``{t}/d`` that keeps only its first ``n`` manifest rows."""
    def setup(ctx):
        _edit_manifest(_copy(ctx["data"], ctx["t"] / "d"), lambda rows: rows[:n])
    return setup


def _data_mixed_sizes(ctx) -> None:
    d = _copy(ctx["data"], ctx["t"] / "d")
    row = _first_row(d)
    Image.new("L", (12, 12), 40).save(d / row["image"])
    Image.new("L", (12, 12), 0).save(d / row["mask"])
    _first_row(d, sha256=_sha(d / row["image"]))


def _data_forged(ctx) -> None:
    _forge_first_image(ctx, _copy(ctx["data"], ctx["t"] / "d"))


def _data_symlink_outside(ctx) -> None:
    """A dataset copy whose first image is a symbolic link to an identical file outside the folder."""
    d = _copy(ctx["data"], ctx["t"] / "d")
    row = _first_row(d)
    outside = ctx["t"] / "outside.png"
    shutil.move(d / row["image"], outside)
    os.symlink(outside, d / row["image"])
    ctx["culprit"] = Path(row["image"]).name


def _corrupt_folder_image(ctx) -> None:
    src = write_folder(ctx["t"] / "src", {0: 4, 1: 4})
    (src / "images" / "c1_002.png").write_bytes(b"not a png")


def _forged_folder_image(ctx) -> None:
    src = write_folder(ctx["t"] / "src", {0: 4, 1: 4})
    _forged_png(src / "images" / "c1_002.png")


def _evaluation_with_corrupt_result(ctx) -> None:
    out = ctx["t"] / "out"
    assert main(["evaluate", "--data", str(ctx["data"]), "--out", str(out), "--budget", "12", "--set", "arms=[real]", *EVAL]) == 0
    (out / "run.json").unlink()
    (out / "runs" / "segmentation__real__seed0.json").write_text('{"metrics": ')


def _tampered(family: str, how: str):
    """A copy of ``family``'s finished run at ``{t}/gen`` whose final weights are damaged ``how``,
    with run.json's sha256 updated to match (so only the content can tell)."""
    def setup(ctx):
        from safetensors.torch import load_file, save_file

        gen = _copy(ctx[family], ctx["t"] / "gen")
        weights = gen / "model.safetensors"
        if how == "nan":
            state = load_file(weights)
            floats = [k for k in sorted(state) if state[k].is_floating_point()]
            # one the sampler goes through (the GAN samples from its EMA copy of the generator)
            key = next((k for k in floats if k.startswith("gen_ema.") and "head" in k),
                       next((k for k in floats if "head" in k or "dec" in k), floats[0]))
            state[key].view(-1)[0] = float("nan")
            save_file(state, str(weights))
        elif how == "not-safetensors":
            weights.write_bytes(b"PK\x03\x04 a zip, or anything else that is not a safetensors file\n" * 8)
        else:  # truncated
            weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
        _edit_json(gen / "run.json", weights_sha256=_sha(weights))
    return setup


def _fake_output(verb: str, folder: str = "out"):
    """A folder that looks like a finished ``verb`` output (its run.json says so)."""
    def setup(ctx):
        out = ctx["t"] / folder
        out.mkdir()
        (out / "run.json").write_text(json.dumps({"stage": verb}))
        (out / "precious.txt").write_text("a result the user wants to keep\n")
    return setup


def _chdir(into: str, before=None):
    """Run the case from inside ``{t}/into`` (made by ``before``, or a fresh folder)."""
    def setup(ctx):
        if before is not None:
            before(ctx)
        (ctx["t"] / into).mkdir(parents=True, exist_ok=True)
        ctx["mp"].chdir(ctx["t"] / into)
    return setup


def _symlinked_out(before):
    """``{t}/out`` is a symbolic link to ``{t}/real``, which ``before`` fills (as if it were out)."""
    def setup(ctx):
        (ctx["t"] / "real-parent").mkdir()
        before({**ctx, "t": ctx["t"] / "real-parent"})
        os.rename(ctx["t"] / "real-parent" / "out", ctx["t"] / "real")
        (ctx["t"] / "real-parent").rmdir()
        os.symlink(ctx["t"] / "real", ctx["t"] / "out")
    return setup


def _lock_symlink(ctx) -> None:
    """``.out.lock`` is a symbolic link to a file the user cares about."""
    (ctx["t"] / "victim.txt").write_text("a file the lock must never truncate\n")
    os.symlink(ctx["t"] / "victim.txt", ctx["t"] / ".out.lock")


def _lock_held(env: dict[str, str] | None = None):
    """Another holder has the lock of ``{t}/out`` (an flock on its own open file, with the JSON a
    holder writes); ``env`` is set for the case, e.g. a stray ``RANK=1`` from a scheduler."""
    def setup(ctx):
        path = ctx["t"] / ".out.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, json.dumps({"pid": 1, "host": "elsewhere", "verb": "train", "started": "2024-01-01 00:00:00 UTC",
                                 "argv": ["augment", "train"]}).encode())
        ctx["fds"].append(fd)
        for key, value in (env or {}).items():
            ctx["mp"].setenv(key, value)
    return setup


def _alias_bomb(depth: int = 6) -> str:
    """A YAML list whose aliases expand to 9**depth leaves (3 MB of text at depth 6): cheap to
    load, huge if anything echoes it back."""
    levels = ["&l0 [x, x, x, x, x, x, x, x, x]"]
    levels += [f"&l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, depth)]
    return "[" + ", ".join(levels) + "]"


def _deep(depth: int = 3000) -> str:
    """A YAML flow list nested ``depth`` deep (a recursive parser's stack runs out long before)."""
    return "[" * depth + "]" * depth


def _chain(*setups):
    def setup(ctx):
        for s in setups:
            s(ctx)
    return setup


D, R, S, O = "{data}", "{run}", "{syn}", "{t}/out"
M = str(ROOT / "manifests" / "match_max.yaml")
#: how a hostile value reads in a case id
LABEL = {"0": "zero", "1": "one", "-1": "negative", "-0.1": "negative", "-0.5": "negative", ".nan": "nan", ".inf": "inf",
         "-.inf": "neg-inf", "1.0e+300": "huge", "1.0e-300": "tiny", "1.5": "above-one", "101": "above-100", "50": "fifty"}
EVERY = ["0", "-1", ".nan", ".inf", "-.inf", "1.0e+300", "1.0e-300"]
LONG = "x" * 300  # a file name longer than any file system allows (255 bytes)


def _id(value: str) -> str:
    return LABEL.get(value, value.strip("[]").replace(",", "-") or "empty")


def _sample(gen: str = R, *extra: str) -> list[str]:
    return ["sample", "--generator", gen, "--balance", M, "--out", O, *extra]


def _train(family: str = "cvae", *extra: str) -> list[str]:
    tiny = TINY_ARGS if family == "cvae" else FAMILY_ARGS[family]
    return ["train", "--data", D, "--generator", family, "--out", O, "--budget", "24", *tiny, *extra]


def _evaluate(*extra: str) -> list[str]:
    return ["evaluate", "--data", D, "--out", O, "--set", "arms=[real]", *EVAL, *extra]


def _recipe(*settings: str) -> list[str]:
    return ["evaluate", "--data", D, "--synthetic", S, "--out", O, *EVAL, *SCORE, "--set", "arms=[real]",
            *[a for s in settings for a in ("--set", f"recipes.r.{s}")]]


def _audit(*extra: str, syn: str = S, data: str = D) -> list[str]:
    return ["audit", "--data", data, "--synthetic", syn, "--out", O, *AUD, *extra]


def _score(data: str = "{t}/d", *extra: str) -> list[str]:
    return ["score", data, "--out", O, *SCORE, *extra]


def _prepare(*extra: str) -> list[str]:
    return ["prepare", "--source", "phantom", "--out", O, "--count", "9", "--image-size", "16", *extra]


#: every sampler setting of every family, at each value its schema must refuse
SAMPLER_BAD = {
    "cvae": {"temperature": ["0", "-1", ".nan", ".inf", "-.inf", "1.0e+300"]},
    "ldm": {"guidance": ["-1", ".nan", ".inf", "-.inf", "1.0e+300"], "steps": EVERY, "solver": ["euler"]},
    "vqvae2": {"temperature": EVERY, "top_k": ["-1", ".nan", ".inf", "-.inf", "1.0e+300", "1.0e-300"], "iterations": EVERY,
               "confidence_noise": ["-1", ".nan", ".inf", "-.inf", "1.0e+300"]},
    "gan": {"truncation": ["-1", ".nan", ".inf", "1.0e+300"], "noise_scale": ["-1", ".nan", ".inf"]},
}
#: a family that only makes images for given masks samples with real ones
OWN_MASKS = {"gan": ["--set", "balance.mask_source=real"]}
SAMPLER_CASES = [(f"sample-{family}-{key.replace('_', '-')}-{_id(v)}", None,
                  _sample(f"{{{family}}}", *OWN_MASKS.get(family, []), "--set", f"sampler.{key}={v}"), key)
                 for family, keys in SAMPLER_BAD.items() for key, values in keys.items() for v in values]

#: the training loop's settings (train.KEY), at values the loop cannot train with
TRAIN_BAD = {
    "lr": [".inf", "-1", "0", "1.0e+300"],
    "weight_decay": ["-1", ".nan", ".inf", "1.0e+300"],
    "grad_clip": ["0", "-1", ".nan", ".inf"],
    "ema_decay": ["0", "1", ".nan", "-0.5"],
    "warmup_steps": ["-1"],
    "batch_size": ["0"],
    "grad_accum": ["0"],
    "checkpoint_every": ["0"],
    "keep_checkpoints": ["0"],
    "mixed_precision": ["fp8"],
}
TRAIN_CASES = [(f"train-{key.replace('_', '-')}-{_id(v)}", None,
                _train("cvae", *(["--set", "train.ema=true"] if key == "ema_decay" else []), "--set", f"train.{key}={v}"), key)
               for key, values in TRAIN_BAD.items() for v in values]

#: each family's own settings (generator.KEY)
FAMILY_BAD = [
    ("cvae", "image_sigma", ["0", ".nan", "1.0e-300"]),  # tiny: the 1 / (2 sigma^2) of the likelihood overflows
    ("cvae", "kl_weight", ["-1", ".inf"]),
    ("cvae", "mask_weight", [".nan"]),
    ("cvae", "latent_dim", ["0"]),
    ("cvae", "kl_warmup_steps", ["-1"]),
    ("cvae", "mode", ["both"]),
    ("ldm", "kl_weight", ["-1", ".inf"]),
    ("ldm", "label_dropout", ["1", ".nan"]),
    ("ldm", "mask_dropout", ["-0.1"]),
    ("ldm", "train_timesteps", ["5"]),
    ("ldm", "latent_channels", ["0"]),
    ("ldm", "ae_channels", ["[2]", "[]", "[8,8,8,8,8,8]"]),  # the last halves 16 px five times
    ("ldm", "unet_channels", ["[8,8,8,8,8]"]),  # four more halvings of an 8 px latent
    ("vqvae2", "codebook_decay", ["0", "1", ".nan"]),
    ("vqvae2", "commitment", [".inf"]),
    ("vqvae2", "dead_code_threshold", ["-1"]),
    ("vqvae2", "channels", ["4"]),
    ("vqvae2", "top_codes", ["1"]),
    ("vqvae2", "prior_dropout", ["1"]),
    ("gan", "mode", ["joint"]),
    ("gan", "r1_weight", ["-1", ".nan"]),
    ("gan", "d_lr", ["0", ".inf"]),
    ("gan", "betas", ["[0.5,1.0]"]),
    ("gan", "diffaugment_policy", ["[]", "[flip]"]),
    ("gan", "ema_decay", ["1"]),
]
FAMILY_CASES = [(f"train-{family}-{key.replace('_', '-')}-{_id(v)}", None, _train(family, "--set", f"generator.{key}={v}"), key)
                for family, key, values in FAMILY_BAD for v in values]

#: the evaluation's task and classic-augmentation settings
EVALUATE_BAD = [
    ("segmentation.lr", [".nan", ".inf", "0", "-1", "1.0e+300"]),
    ("segmentation.batch_size", ["0"]),
    ("segmentation.eval_every", ["0"]),
    ("classic.horizontal_flip", ["1.5", ".nan"]),
    ("classic.rotate", [".inf", "-1"]),
    ("classic.scale", ["1"]),
    ("classic.noise", ["-0.1"]),
    ("scorer.image_sigma", ["0"]),
    ("scorer.folds", ["1"]),
]
EVALUATE_CASES = [(f"evaluate-{key.replace('.', '-').replace('_', '-')}-{_id(v)}", None, _evaluate("--set", f"{key}={v}"), key)
                  for key, values in EVALUATE_BAD for v in values]

#: every recipe setting (evaluate --set recipes.r.KEY=VALUE), with the settings it goes with
RECIPE_BAD = [
    ("synthetic_fraction", ["mix=fraction"], ["0", "1", "-0.5", ".nan", ".inf", "1.0e+300"]),
    ("pretrain_share", ["mix=pretrain"], ["0", "1", "-0.5", ".nan", ".inf"]),
    ("synthetic_weight", [], ["0", "-1", ".nan", ".inf", "1.0e+300"]),  # huge: the synthetic loss overflows
    ("filter_drop", ["filters=[segmenter]"], ["-0.1", "1", ".nan", ".inf"]),
    ("filter_percentile", ["filters=[reconstruction]"], ["0", "101", "-1", ".nan", ".inf"]),
]
RECIPE_CASES = [(f"evaluate-recipe-{key.replace('_', '-')}-{_id(v)}", None, _recipe(*given, f"{key}={v}"), key)
                for key, given, values in RECIPE_BAD for v in values]

#: the audit's settings
AUDIT_BAD = [
    ("copy_percentile", ["0", "50", "-1", ".nan", ".inf"]),
    ("encoder_steps", ["0"]),
    ("segmenter_steps", ["-1"]),
    ("max_pairs", ["0"]),
    ("kid_subsets", ["0"]),
    ("kid_subset_size", ["1"]),
    ("seed", ["-1"]),
]
AUDIT_CASES = [(f"audit-{key.replace('_', '-')}-{_id(v)}", None, _audit("--set", f"{key}={v}"), key) for key, values in AUDIT_BAD for v in values]

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
    ("train-unknown-family", None, ["train", "--data", D, "--generator", "flow", "--out", O], "unknown 'family' 'flow'"),
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
     "ratio` must be a finite number (got nan)"),
    ("sample-ratio-inf", _balance("strategy: ratio\nratio: .inf\n"), ["sample", "--generator", R, "--balance", "{t}/b.yaml", "--out", O],
     "ratio` must be a finite number (got inf)"),
    ("sample-weights-nan", _balance("strategy: total\ntotal: 9\nweights: {0: .nan, 1: 1}\n"),
     ["sample", "--generator", R, "--balance", "{t}/b.yaml", "--out", O], ("`weights` must be a finite number", "weights.0` must be a finite number")),
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

    # ===== the surfaces added since: sampler settings of every family =====
    *SAMPLER_CASES,
    ("sample-cvae-temperature-tiny", None, _sample(R, "--set", "sampler.temperature=1.0e-300"), "temperature"),  # debatable: every draw the same
    ("sample-cvae-temperature-bool", None, _sample(R, "--set", "sampler.temperature=true"), "`temperature` must be a number, not true"),
    ("sample-cvae-temperature-empty", None, _sample(R, "--set", "sampler.temperature="), "temperature"),
    ("sample-vqvae2-top-k-above-codebook", None, _sample("{vqvae2}", "--set", "sampler.top_k=1000"), "`top_k` 1000 is above every codebook"),
    ("sample-cvae-guidance-of-another-family", None, _sample(R, "--set", "sampler.guidance=2"), "guidance"),
    ("sample-sampler-not-a-mapping", None, _sample(R, "--set", "sampler=5"), "sampler"),
    # sample: other settings, empty plans, the balancing file
    ("sample-batch-size-zero", None, _sample(R, "--batch-size", "0"), "batch_size"),
    ("sample-max-attempts-zero", None, _sample(R, "--filter", "--set", "max_attempts=0"), "max_attempts"),
    ("sample-negative-seed", None, _sample(R, "--seed", "-1"), "seed"),
    ("sample-empty-plan-classes", None, _sample(R, "--set", "balance.classes=[0]"), ("synthetic pairs", "classes")),
    ("sample-empty-plan-ratio-zero", _balance("strategy: ratio\nratio: 0\n"), ["sample", "--generator", R, "--balance", "{t}/b.yaml", "--out", O],
     ("synthetic pairs", "ratio")),
    ("sample-max-total-zero", None, _sample(R, "--set", "balance.max_synthetic_total=0"), "max_synthetic_total"),
    ("sample-jitter-nan", None, _sample(R, "--set", "balance.jitter.rotate=.nan"), "rotate"),
    ("sample-balance-empty-file", _balance(""), ["sample", "--generator", R, "--balance", "{t}/b.yaml", "--out", O], "strategy"),
    ("sample-balance-is-a-folder", None, ["sample", "--generator", R, "--balance", "{t}", "--out", O], "{t}"),
    ("sample-balance-set-not-a-mapping", None, _sample(R, "--set", "balance=5"), "balance"),
    ("sample-generator-unfinished", None, _sample("{unfinished}"), "{unfinished}"),
    # sample: tampered final weights of every family (run.json's sha256 updated to match)
    *[(f"sample-{family}-weights-{how}", _tampered(family, how), _sample("{t}/gen", *OWN_MASKS.get(family, [])), "model.safetensors")
      for family in ("cvae", "ldm", "vqvae2", "gan") for how in ("nan", "not-safetensors", "truncated")],

    # ===== train: the loop, phases and each family's settings =====
    *TRAIN_CASES,
    ("train-phase-lr-nan", None, _train("cvae", "--set", "train.phases.main.lr=.nan"), "lr"),
    ("train-phase-ema-decay-one", None, _train("cvae", "--set", "train.phases.main.ema=true", "--set", "train.phases.main.ema_decay=1"),
     "ema_decay"),
    ("train-phase-unknown", None, _train("cvae", "--set", "train.phases.decoder.lr=0.1"), "decoder"),
    ("train-ldm-phase-grad-clip-zero", None, _train("ldm", "--set", "train.phases.denoiser.grad_clip=0"), "grad_clip"),
    *FAMILY_CASES,
    ("train-vqvae2-halvings-3-2", None, _train("vqvae2", "--set", "generator.bottom_halvings=3", "--set", "generator.top_halvings=2"),
     "halvings"),
    ("train-vqvae2-halvings-5-1", None, _train("vqvae2", "--set", "generator.bottom_halvings=5", "--set", "generator.top_halvings=1"),
     "halvings"),
    ("train-vqvae2-prior-heads", None, _train("vqvae2", "--set", "generator.prior_width=16", "--set", "generator.prior_heads=3"), "prior_heads"),
    ("train-budget-zero", None, _train("cvae", "--budget", "0"), "budget"),
    ("train-negative-seed", None, _train("cvae", "--seed", "-1"), "seed"),
    ("train-config-alias-bomb", _text("c.yaml", f"budget: {_alias_bomb()}\n"),
     ["train", "--data", D, "--generator", "cvae", "--out", O, *TINY_ARGS, "--config", "{t}/c.yaml"], ("c.yaml", "budget")),
    ("train-lock-held-stray-rank", _lock_held({"RANK": "1"}), _train("cvae"), "in use"),
    # sizes and seeds past what any machine or RNG takes (a 1e11 batch hung; a 1e20 seed overflowed torch)
    ("train-seed-overflows-torch", None, _train("cvae", "--seed", "100000000000000000000"), "less than or equal to 4294967295"),
    ("train-batch-size-huge", None, _train("cvae", "--set", "train.batch_size=100000000000"), "`train.batch_size`"),
    ("train-grad-accum-huge", None, _train("cvae", "--set", "train.grad_accum=1000000000"), "`train.grad_accum`"),
    ("train-cvae-channels-huge", None, _train("cvae", "--set", "generator.base_channels=1000000"), "`generator.base_channels`"),
    ("train-ldm-widths-huge", None, _train("ldm", "--set", "generator.unet_channels=[8,1000000]"), "`generator.unet_channels`"),
    ("train-vqvae2-codes-huge", None, _train("vqvae2", "--set", "generator.bottom_codes=100000000"), "`generator.bottom_codes`"),
    ("sample-batch-size-huge", None, _sample(R, "--batch-size", "100000000"), "`batch_size`"),
    ("sample-seed-huge", None, _sample(R, "--seed", "99999999999999999999999"), "less than or equal to 4294967295"),
    ("evaluate-seed-huge", None, _evaluate("--set", "seeds=[4294967296]"), "`seeds.0`"),
    ("evaluate-batch-size-huge", None, _evaluate("--set", "segmentation.batch_size=100000000"), "`segmentation.batch_size`"),

    # ===== evaluate: task, classic augmentation, scorer, recipes, synthetic sets =====
    *EVALUATE_CASES,
    ("evaluate-classification-lr-nan", None, _evaluate("--task", "classification", "--set", "classification.lr=.nan",
                                                        "--set", "classification.steps=2"), "lr"),
    ("evaluate-no-seeds", None, _evaluate("--set", "seeds=[]"), "seeds"),
    ("evaluate-negative-seed", None, _evaluate("--set", "seeds=[-1]"), "seeds"),  # debatable: a pipeline's seeds are >= 0
    ("evaluate-budget-zero", None, _evaluate("--budget", "0"), "budget"),
    ("evaluate-nothing-to-train", None, ["evaluate", "--data", D, "--synthetic", S, "--out", O, *EVAL, "--set", "arms=[]",
                                         "--set", "recipes={{}}"], ("nothing to train", "arms")),
    *RECIPE_CASES,
    ("evaluate-recipe-unknown-mix", None, _recipe("mix=blend"), "mix"),
    ("evaluate-recipe-unknown-filter", None, _recipe("filters=[oracle]"), "filters"),
    ("evaluate-recipe-filter-twice", None, _recipe("filters=[segmenter,segmenter]"), "filters"),
    ("evaluate-recipe-unknown-selection", None, _recipe("selection=best_test"), "selection"),
    ("evaluate-recipe-fraction-without-mix", None, _recipe("synthetic_fraction=0.5"), "synthetic_fraction"),
    ("evaluate-recipe-balance-ratio-nan", None, _recipe("balance.strategy=ratio", "balance.ratio=.nan"), "ratio"),
    ("evaluate-recipe-balance-ratio-negative", None, _recipe("balance.strategy=ratio", "balance.ratio=-1"), "ratio"),
    ("evaluate-recipe-reserved-name", None, ["evaluate", "--data", D, "--synthetic", S, "--out", O, *EVAL, "--set", "recipes.real.mix=concat"],
     "real"),
    ("evaluate-recipe-name-with-slash", None, ["evaluate", "--data", D, "--synthetic", S, "--out", O, *EVAL, "--set", "recipes.a/b.mix=concat"],
     "a/b"),
    ("evaluate-empty-synthetic-set", _syn_copy(lambda s: _edit_manifest(s, lambda rows: [])),
     ["evaluate", "--data", D, "--synthetic", "{t}/syn", "--out", O, *EVAL], "{t}/syn"),
    ("evaluate-synthetic-forged-png", _syn_forged, ["evaluate", "--data", D, "--synthetic", "{t}/syn", "--out", O, *EVAL], "{culprit}"),
    ("evaluate-synthetic-path-up", _syn_escaping(False), ["evaluate", "--data", D, "--synthetic", "{t}/syn", "--out", O, *EVAL], "outside.png"),
    ("evaluate-synthetic-path-absolute", _syn_escaping(True), ["evaluate", "--data", D, "--synthetic", "{t}/syn", "--out", O, *EVAL],
     "outside.png"),
    ("evaluate-synthetic-of-other-data", None, ["evaluate", "--data", "{other}", "--synthetic", S, "--out", O, *EVAL], ("{other}", "{syn}")),

    # ===== audit: settings, synthetic sets, outputs =====
    *AUDIT_CASES,
    ("audit-inception-garbage", _text("inc.pt", "not a TorchScript file\n"), _audit("--inception-weights", "{t}/inc.pt"), "inc.pt"),
    ("audit-inception-is-a-folder", None, _audit("--inception-weights", "{t}"), "{t}"),
    ("audit-empty-synthetic-set", _syn_copy(lambda s: _edit_manifest(s, lambda rows: [])), _audit(syn="{t}/syn"), "{t}/syn"),
    ("audit-synthetic-forged-png", _syn_forged, _audit(syn="{t}/syn"), "{culprit}"),
    ("audit-synthetic-path-up", _syn_escaping(False), _audit(syn="{t}/syn"), "outside.png"),
    ("audit-synthetic-path-absolute", _syn_escaping(True), _audit(syn="{t}/syn"), "outside.png"),
    ("audit-synthetic-of-other-data", None, _audit(data="{other}"), ("{other}", "{syn}")),
    ("audit-overwrite-dot", _chdir("out", _fake_output("audit")), ["audit", "--data", D, "--synthetic", S, "--out", ".", *AUD, "--overwrite"],
     "working directory"),
    ("audit-overwrite-symlink", _symlinked_out(_fake_output("audit")), _audit("--overwrite"), "symbolic link"),
    ("audit-overwrite-generator-run", lambda c: _copy(c["run"], c["t"] / "out"), _audit("--overwrite"), "{t}/out"),

    # ===== validate, export: empty, forged, escaping =====
    # debatable (these two): an empty set is well formed, but nothing downstream can use it
    ("validate-empty-synthetic-set", _syn_copy(lambda s: _edit_manifest(s, lambda rows: [])), ["validate", "{t}/syn"], "{t}/syn"),
    ("export-empty-synthetic-set-hf", _syn_copy(lambda s: _edit_manifest(s, lambda rows: [])), ["export", "{t}/syn", "--out", O], "{t}/syn"),
    ("validate-synthetic-forged-png", _syn_forged, ["validate", "{t}/syn"], "{culprit}"),
    ("validate-synthetic-path-up", _syn_escaping(False), ["validate", "{t}/syn"], "outside.png"),
    ("validate-synthetic-path-absolute", _syn_escaping(True), ["validate", "{t}/syn"], "outside.png"),
    ("validate-image-symlink-outside", _data_symlink_outside, ["validate", "{t}/d"], "{culprit}"),
    ("validate-forged-png", _data_forged, ["validate", "{t}/d"], "{culprit}"),
    ("export-synthetic-path-up", _syn_escaping(False), ["export", "{t}/syn", "--out", O, "--format", "folder"], "outside.png"),

    # ===== prepare: forged images, hostile YAML, outputs, locks =====
    ("prepare-forged-png-header", _forged_folder_image, ["prepare", "--source", "{t}/src", "--out", O], "c1_002.png"),
    ("prepare-config-alias-bomb", _text("p.yaml", f"source: phantom\nimage_size: {_alias_bomb()}\n"),
     ["prepare", "--config", "{t}/p.yaml", "--out", O], ("p.yaml", "image_size")),
    ("prepare-config-deeply-nested", _text("p.yaml", f"source: phantom\ncount: {_deep()}\n"), ["prepare", "--config", "{t}/p.yaml", "--out", O],
     "p.yaml"),
    ("prepare-config-python-tag", _text("p.yaml", "source: !!python/object/apply:os.getcwd []\n"), ["prepare", "--config", "{t}/p.yaml", "--out", O],
     "p.yaml"),
    ("prepare-split-val-nan", None, _prepare("--set", "split.val=.nan"), "split.val"),
    ("prepare-split-train-negative", None, _prepare("--set", "split.train=-0.1"), "split.train"),
    ("prepare-priors-zero", None, _prepare("--set", "priors=[0,0,0]"), "priors"),
    ("prepare-priors-negative", None, _prepare("--set", "priors=[-1,1,1]"), "priors"),
    ("prepare-priors-nan", None, _prepare("--set", "priors=[.nan,1,1]"), "priors"),
    ("prepare-image-size-huge", None, _prepare("--image-size", "5000"), "image_size"),
    ("prepare-mask-threshold-zero", lambda c: write_folder(c["t"] / "src", {0: 4, 1: 4}),
     ["prepare", "--source", "{t}/src", "--out", O, "--set", "mask_threshold=0"], "mask_threshold"),
    ("prepare-overwrite-dot", _chdir("out", _data_copy), [*_prepare()[:3], "--out", ".", "--overwrite"], "working directory"),
    ("prepare-overwrite-empty-out", _chdir("out", _data_copy), [*_prepare()[:3], "--out", "", "--overwrite"], ("working directory", "--out")),
    ("prepare-overwrite-parent-of-cwd", _chdir("out/work", _data_copy), _prepare("--overwrite"), "working directory"),
    ("prepare-overwrite-home", lambda c: (_data_copy(c), c["mp"].setenv("HOME", str(c["t"] / "out"))), _prepare("--overwrite"), "home"),
    ("prepare-overwrite-symlink", _symlinked_out(_data_copy), _prepare("--overwrite"), "symbolic link"),
    ("prepare-overwrite-synthetic-set", lambda c: _copy(c["syn"], c["t"] / "out"), _prepare("--overwrite"), "{t}/out"),
    ("prepare-overwrite-own-source", _data_copy, ["prepare", "--source", O, "--out", O, "--overwrite"], "{t}/out"),
    ("prepare-lock-is-symlink-to-victim", _lock_symlink, _prepare(), ".out.lock"),
    ("prepare-lock-is-a-folder", lambda c: (c["t"] / ".out.lock").mkdir(), _prepare(), ".out.lock"),
    ("prepare-lock-is-a-fifo", lambda c: os.mkfifo(c["t"] / ".out.lock"), _prepare(), ".out.lock"),
    ("prepare-lock-held", _lock_held(), _prepare(), "in use"),
    ("prepare-lock-held-stray-rank", _lock_held({"RANK": "1"}), _prepare(), "in use"),
    ("sample-lock-is-symlink-to-victim", _lock_symlink, _sample(R), ".out.lock"),
    ("sample-lock-held-stray-rank", _lock_held({"RANK": "1"}), _sample(R), "in use"),

    # ===== score =====
    *[(f"score-{n}-images", _data_rows(n), _score(), "{t}/d") for n in (1, 2, 3)],
    ("score-mixed-sizes", _data_mixed_sizes, _score(), "{t}/d"),
    # constant images are a correct result (equal, finite scores): tests/test_plausibility.py::test_constant_images_get_finite_scores
    ("score-forged-png", _data_forged, _score(), "{culprit}"),
    ("score-not-a-dataset", None, _score("{t}/nowhere"), "{t}/nowhere"),
    ("score-image-sigma-zero", None, _score(D, "--set", "scorer.image_sigma=0"), "image_sigma"),
    ("score-image-sigma-nan", None, _score(D, "--set", "scorer.image_sigma=.nan"), "image_sigma"),
    ("score-one-fold", None, _score(D, "--set", "scorer.folds=1"), "folds"),
    ("score-lr-inf", None, _score(D, "--set", "scorer.lr=.inf"), "lr"),
    ("score-latent-dim-zero", None, _score(D, "--set", "scorer.latent_dim=0"), "latent_dim"),
    ("score-negative-top", None, _score(D, "--top", "-1"), "top"),
    ("score-overwrite-dot", _chdir("out", _fake_output("score")), ["score", D, "--out", ".", *SCORE, "--overwrite"], "working directory"),
    ("score-overwrite-dataset", _data_copy, _score(D, "--overwrite"), "{t}/out"),

    # ===== outputs a clumsy user names: under a file, a name too long, a symbolic link to itself =====
    *[(f"{argv[0]}-out-under-a-file", _text("f.txt", "a file, not a folder\n"), argv, "f.txt") for argv in (
        ["prepare", "--source", "phantom", "--out", "{t}/f.txt/out", "--count", "9", "--image-size", "16"],
        ["export", D, "--out", "{t}/f.txt/out", "--format", "folder"],
        ["train", "--data", D, "--generator", "cvae", "--out", "{t}/f.txt/out", "--budget", "24", *TINY_ARGS],
        ["sample", "--generator", R, "--balance", M, "--out", "{t}/f.txt/out"],
        ["audit", "--data", D, "--synthetic", S, "--out", "{t}/f.txt/out", *AUD],
        ["evaluate", "--data", D, "--out", "{t}/f.txt/out", "--set", "arms=[real]", *EVAL],
        ["score", D, "--out", "{t}/f.txt/out", *SCORE],
    )],
    ("run-out-under-a-file", _chain(_text("f.txt", "a file, not a folder\n"), _safe_spec()),
     ["run", "{t}/p.yaml", "--out", "{t}/f.txt/out"], "f.txt"),
    *[(f"{argv[0]}-out-name-too-long", None, argv, LONG[:40]) for argv in (
        ["prepare", "--source", "phantom", "--out", "{t}/" + LONG, "--count", "9", "--image-size", "16"],
        ["train", "--data", D, "--generator", "cvae", "--out", "{t}/" + LONG, "--budget", "24", *TINY_ARGS],
        ["sample", "--generator", R, "--balance", M, "--out", "{t}/" + LONG],
    )],
    *[(f"{argv[0]}-out-symlink-loop", lambda c: os.symlink(c["t"] / "out", c["t"] / "out"), argv, "{t}/out") for argv in (
        ["train", "--data", D, "--generator", "cvae", "--out", O, "--budget", "24", *TINY_ARGS],
        ["sample", "--generator", R, "--balance", M, "--out", O],
        ["evaluate", "--data", D, "--out", O, "--set", "arms=[real]", *EVAL],
    )],

    # ===== run, report =====
    ("run-spec-alias-bomb", _text("p.yaml", SAFE_SPEC.format(balance="{strategy: match_max}") + f"name: {_alias_bomb()}\n"),
     ["run", "{t}/p.yaml", "--out", O], ("p.yaml", "name")),
    ("run-train-alias-bomb", _text("p.yaml", SPEC.format(balance="{strategy: match_max}") + f"train: {_alias_bomb()}\n"),
     ["run", "{t}/p.yaml", "--out", O], ("p.yaml", "train")),
    ("run-spec-deeply-nested", _text("p.yaml", f"name: {_deep()}\n"), ["run", "{t}/p.yaml", "--out", O], "p.yaml"),
    ("run-spec-is-a-folder", None, ["run", "{t}", "--out", O], "{t}"),
    ("run-no-arms-and-recipes-emptied", _safe_spec(), ["run", "{t}/p.yaml", "--out", O, "--set", "evaluate.arms=[]",
                                                       "--set", "evaluate.recipes={{}}"], "evaluate"),
    ("run-empty-plan", _safe_spec("{strategy: ratio, ratio: 0}"), ["run", "{t}/p.yaml", "--out", O], ("ratio", "synthetic pairs")),  # debatable
    ("run-sampler-nan", _safe_spec(), ["run", "{t}/p.yaml", "--out", O, "--set", "generator.sampler.temperature=.nan"], "temperature"),
    ("run-train-lr-inf", _safe_spec(), ["run", "{t}/p.yaml", "--out", O, "--set", "train.lr=.inf"], "lr"),
    ("run-recipe-weight-nan", _safe_spec(), ["run", "{t}/p.yaml", "--out", O, "--set", "evaluate.recipes.r.synthetic_weight=.nan"],
     "synthetic_weight"),
    ("run-audit-copy-percentile", _safe_spec(), ["run", "{t}/p.yaml", "--out", O, "--set", "audit.copy_percentile=50"], "copy_percentile"),
    ("run-no-budgets", _safe_spec(), ["run", "{t}/p.yaml", "--out", O, "--set", "budgets=[]"], "budgets"),
    ("report-pipeline-json-a-list", lambda c: (c["t"] / "out").mkdir() or (c["t"] / "out" / "pipeline.json").write_text("[]"),
     ["report", O], "pipeline.json"),
    ("report-out-is-a-file", lambda c: (c["t"] / "out").write_text("x"), ["report", O], "{t}/out"),
    # status reads a run folder and writes nothing; run's executor settings
    ("status-not-a-run", None, ["status", D], "no pipeline.json"),
    ("status-corrupt-pipeline-json", lambda c: (c["t"] / "out").mkdir() or (c["t"] / "out" / "pipeline.json").write_text("{"),
     ["status", O], "pipeline.json` is not valid JSON"),
    ("status-pipeline-json-a-list", lambda c: (c["t"] / "out").mkdir() or (c["t"] / "out" / "pipeline.json").write_text("[]"),
     ["status", O], "pipeline.json"),
    ("run-executor-unknown", _safe_spec(), ["run", "{t}/p.yaml", "--out", O, "--set", "executor.kind=ray"], "executor.kind"),
    ("run-executor-workers-zero", _safe_spec(), ["run", "{t}/p.yaml", "--out", O, "--set", "executor.workers=0"], "executor.workers"),
    ("run-executor-slurm-typo", _safe_spec(), ["run", "{t}/p.yaml", "--out", O, "--set", "executor.slurm.gpu=1"], "executor.slurm.gpu"),
]


def _entry(path: Path) -> str:
    """What one path is, without following it: a link's target, a file's sha256, ``dir``, or the
    kind of special file (a FIFO is never opened: reading one would block)."""
    mode = os.lstat(path).st_mode
    if stat.S_ISLNK(mode):
        return f"link -> {os.readlink(path)}"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISREG(mode):
        return _sha(path)
    return f"special {stat.S_IFMT(mode):o}"


def _snapshot(folder: Path) -> dict[str, str] | None:
    """Every path under ``folder`` (symbolic links not followed) -> :func:`_entry`; None when absent."""
    if not os.path.lexists(folder):
        return None
    shot = {".": _entry(folder)}
    if shot["."] == "dir":
        for where, dirs, files in os.walk(folder):
            for name in dirs + files:
                p = Path(where) / name
                shot[str(p.relative_to(folder))] = _entry(p)
    return dict(sorted(shot.items()))


class _Hung(BaseException):
    """Raised by the alarm in a case that runs past CASE_SECONDS (never caught as an error)."""


def _hung(*_args):
    raise _Hung(f"the case ran past {CASE_SECONDS} s")


def test_catalogue_covers_every_verb():
    verbs = {argv[0] for _, _, argv, _ in CASES}
    assert verbs == set(_verbs(build_parser()))
    assert len(CASES) >= 120
    ids = [c[0] for c in CASES]
    assert len(set(ids)) == len(ids), [i for i in ids if ids.count(i) > 1]
    assert SHORT <= set(ids)


def test_catalogue_counts_per_verb():
    counts = collections.Counter(argv[0] for _, _, argv, _ in CASES)
    print("hostile cases per verb: " + ", ".join(f"{verb} {n}" for verb, n in counts.most_common()) + f"; total {len(CASES)}")
    assert min(counts.values()) >= 3, counts


@pytest.mark.parametrize("setup,argv,needle", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_hostile_input_is_one_line_exit_2_and_leaves_nothing(setup, argv, needle, request, tmp_path, phantom_dir, tiny_run, syn,
                                                             unfinished, runs, other_data, monkeypatch, capsys):
    ctx = {"t": tmp_path, "data": phantom_dir, "run": tiny_run, "syn": syn, "unfinished": unfinished, **runs, "other": other_data,
           "mp": monkeypatch, "fds": []}
    shared_inputs = (phantom_dir, syn, other_data, *runs.values())
    previous = signal.signal(signal.SIGALRM, _hung)
    signal.alarm(CASE_SECONDS)
    try:
        if setup is not None:
            setup(ctx)
        before, shared = _snapshot(tmp_path), [_snapshot(p) for p in shared_inputs]
        capsys.readouterr()
        names = {k: str(v) for k, v in ctx.items() if isinstance(v, (str, Path))}
        try:
            rc = main([a.format(**names) for a in argv])
        except SystemExit as exc:  # argparse errors
            rc = exc.code
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
        for fd in ctx["fds"]:
            os.close(fd)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    with capsys.disabled():  # what each case said, for a reader of ``pytest -s`` (and of a failure)
        print(f"\n[{request.node.callspec.id}] exit {rc}: {lines[-1][:400] if lines else '(no stderr)'}")
    assert rc == 2, err
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert lines[0].startswith(f"augment {argv[0]}: error: ") or lines[0].startswith("augment: error: ")
    needles = (needle,) if isinstance(needle, str) else needle
    assert any(n.format(**names) in lines[0] for n in needles), lines[0]
    if request.node.callspec.id in SHORT:
        assert len(lines[0]) < 500, f"{len(lines[0])} characters: {lines[0][:300]}..."
    # The whole case folder as the setup left it: the output absent or byte for byte as it was,
    # no temporary folder, lock or partial file beside it, inputs and victims untouched.
    assert _snapshot(tmp_path) == before
    assert [_snapshot(p) for p in shared_inputs] == shared


@pytest.mark.parametrize("bottom,top", [(1, 1), (1, 3), (2, 2)])
def test_vqvae2_halvings_that_fit_16px_train_and_sample(bottom, top, phantom_dir, tmp_path):
    """Not hostile after all: 16 px halved 1 + 1 (or 1 + 3, 2 + 2) times fits, and once crashed
    the network (a channel mismatch when bottom_halvings is 1) instead of training."""
    gen = tmp_path / "gen"
    assert main(["train", "--data", str(phantom_dir), "--generator", "vqvae2", "--out", str(gen), "--budget", "24", *FAMILY_ARGS["vqvae2"],
                 "--set", f"generator.bottom_halvings={bottom}", "--set", f"generator.top_halvings={top}"]) == 0
    assert main(["sample", "--generator", str(gen), "--balance", M, "--out", str(tmp_path / "syn")]) == 0
    assert (tmp_path / "syn" / "run.json").is_file()


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
