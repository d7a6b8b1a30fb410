"""The CLI is a shell: parse, load config, apply ``--set``, call one API function, say where
the output went. Any :class:`AugmentError` becomes one line on stderr and exit code 2, and so
do a full disk, a denied permission, a read-only file system and running out of memory. A
mistyped command or option is one line with a "did you mean"; every verb's help ends in examples
that the tests parse."""

from __future__ import annotations

import argparse
import copy
import difflib
import errno
import os
import re
import sys
import textwrap
from typing import Any

from augment.errors import AugmentError, ConfigError
from augment.seeding import rank_zero

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and exit code 2 (no usage dump)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


class _Help(argparse.RawDescriptionHelpFormatter):
    """Keeps the examples' line breaks (:func:`_verb` wraps the descriptions) and shows the
    options marked by :func:`_needed` bare in the usage line, like required ones."""

    def add_usage(self, usage, actions, groups, prefix=None):  # type: ignore[no-untyped-def]
        shown = []
        for action in actions:
            if getattr(action, "needed", False):
                action = copy.copy(action)
                action.required = True
            shown.append(action)
        super().add_usage(usage, shown, groups, prefix)


def _needed(p: argparse.ArgumentParser, flag: str, **kw: Any) -> None:
    """An option the verb cannot run without that ``--config`` may give instead, so not argparse's
    ``required`` (argparse cannot see the YAML): its help says so, the usage line shows it bare
    and :func:`_config_from` names it when it is still missing after merging."""
    kw["help"] += " (required unless in --config)"
    action = p.add_argument(flag, **kw)
    action.needed = True  # type: ignore[attr-defined]
    p.set_defaults(needed={**(p.get_default("needed") or {}), action.dest: flag})


def _config_from(args: argparse.Namespace, cli: dict[str, Any]) -> dict[str, Any]:
    from augment.config import load_yaml, merge, parse_overrides

    base = load_yaml(args.config) if getattr(args, "config", None) else {}
    given = {k: v for k, v in cli.items() if v is not None}
    data = merge(merge(base, given), parse_overrides(args.set))
    for key, flag in getattr(args, "needed", {}).items():
        if data.get(key) is None:
            raise ConfigError(f"`{key}` is required: give {flag}, or `{key}:` in the --config YAML")
    return data


def _set_help(what: str, example: str) -> str:
    return (f"{what}, e.g. --set {example}; one KEY=VALUE per --set (repeat it); values are YAML, "
            "and a comma list of numbers (0,1) is a list")


def _add_common(p: argparse.ArgumentParser, example: str) -> None:
    p.add_argument("--config", metavar="YAML", help="options from a YAML file, named like the flags with _ for - "
                   "(batch_size: 16); flags and --set win")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", default=[], help=_set_help("set any option", example))


def cmd_prepare(args: argparse.Namespace) -> None:
    from augment import api
    from augment.config import validate

    data = _config_from(args, {
        "source": args.source, "out": args.out, "image_size": args.image_size,
        "seed": args.seed, "count": args.count, "rgb": args.rgb or None,
        "overwrite": args.overwrite or None,
    })
    result = api.prepare(validate(api.PrepareConfig, data, "prepare"))
    print(result.summary)
    for a, b in result.record.get("duplicate_images_across_splits", []):
        print(f"warning: `{a}` and `{b}` are byte-identical images in different splits (leakage; consider dropping one)", file=sys.stderr)


def cmd_validate(args: argparse.Namespace) -> None:
    from augment import api

    print(api.validate_data(args.data).summary)


def cmd_export(args: argparse.Namespace) -> None:
    from augment import api

    print(api.export(args.data, args.out, args.format).summary)


def cmd_sample(args: argparse.Namespace) -> None:
    from augment import api
    from augment.config import load_yaml, merge, validate

    data = _config_from(args, {
        "generator": args.generator, "out": args.out, "seed": args.seed,
        "batch_size": args.batch_size, "filter": args.filter or None,
    })
    given = data.get("balance") or {}  # --set balance.KEY=VALUE wins over the manifest file
    if not isinstance(given, dict):
        raise ConfigError("--balance names the manifest file; change its keys with --set balance.KEY=VALUE")
    data["balance"] = merge(load_yaml(args.balance), given)
    result = api.sample(validate(api.SampleConfig, data, "sample"), resume=args.resume)
    if rank_zero():
        print(result.summary)


def cmd_audit(args: argparse.Namespace) -> None:
    from augment import api
    from augment.config import validate

    cfg = validate(api.AuditConfig, _config_from(args, {
        "data": args.data, "synthetic": args.synthetic, "out": args.out,
        "inception_weights": args.inception_weights, "drop_copies": args.drop_copies or None,
        "overwrite": args.overwrite or None,
    }), "audit")
    print(api.audit(cfg).summary)


def cmd_evaluate(args: argparse.Namespace) -> None:
    from augment import api
    from augment.config import validate

    cfg = validate(api.EvaluateConfig, _config_from(args, {
        "data": args.data, "synthetic": args.synthetic, "out": args.out, "task": args.task, "budget": args.budget,
    }), "evaluate")
    print(api.evaluate(cfg).summary)


def cmd_score(args: argparse.Namespace) -> None:
    from augment import api
    from augment.config import validate

    cfg = validate(api.ScoreConfig, _config_from(args, {
        "data": args.data, "out": args.out, "split": args.split, "seed": args.seed, "overwrite": args.overwrite or None,
    }), "score")
    print(api.score(cfg, top=args.top).summary)


def cmd_run(args: argparse.Namespace) -> None:
    from augment import api
    from augment.config import merge, parse_overrides

    overrides = parse_overrides(args.set)
    if args.executor or args.workers:  # shorthands for --set executor.kind=... executor.workers=...
        overrides = merge(overrides, {"executor": {k: v for k, v in (("kind", args.executor), ("workers", args.workers)) if v}})
    print(api.run(args.spec, args.out, overrides).summary)


def cmd_status(args: argparse.Namespace) -> None:
    from augment import api

    print(api.status(args.out, every=args.all).summary)


def cmd_report(args: argparse.Namespace) -> None:
    from augment import api

    print(api.report(args.out).summary)


def cmd_train(args: argparse.Namespace) -> None:
    from augment import api
    from augment.config import validate

    cli = {"data": args.data, "out": args.out, "budget": args.budget, "seed": args.seed}
    if args.generator:
        cli["generator"] = {"family": args.generator}
    result = api.train(validate(api.TrainConfig, _config_from(args, cli), "train"), resume=args.resume)
    if rank_zero():
        print(result.summary)


def _verb(sub: Any, name: str, summary: str, about: str, examples: list[str]) -> argparse.ArgumentParser:
    """A subcommand: ``summary`` is its line in ``augment --help``; ``about`` (paragraphs split by a
    blank line) and ``examples`` (command lines, checked by the tests) make ``augment NAME --help``."""
    text = "\n\n".join(textwrap.fill(" ".join(par.split()), 79) for par in about.split("\n\n"))
    return sub.add_parser(name, help=summary, description=text, epilog=_examples(examples), formatter_class=_Help)


def _examples(lines: list[str]) -> str:
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)


def build_parser() -> argparse.ArgumentParser:
    from augment import __version__

    parser = _Parser(prog="augment", formatter_class=_Help,
                     description="Enlarge and rebalance scarce labelled medical image sets with generative models.",
                     epilog=_examples([
                         "augment run pipelines/quickstart.yaml --out runs/quickstart",
                         "augment prepare --source phantom --out data/phantom --image-size 32",
                         "augment train --data data/phantom --generator cvae --out runs/cvae --budget 32",
                         "augment sample --generator runs/cvae --balance manifests/match_max.yaml --out syn/cvae",
                     ]) + "\n\n`augment COMMAND --help` tells more about each command.")
    parser.add_argument("--version", action="version", version=f"augment {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    p = _verb(sub, "prepare", "turn a source into a canonical dataset folder (manifest.csv)", """
        Turn a source into a dataset folder DATA (DATA/manifest.csv, classes.csv, images/, masks/).
        A source is the built-in phantom, a folder in the BUSI layout (images/, masks/, labels.csv,
        classes.csv), a plain folder of images/ + masks/ paired by file stem (one class `lesion`,
        renamed with --set class_name=NAME), a MedMNIST .npz or a saved HF dataset.

        Lossy (JPEG) masks: --set mask_threshold=128; 0/255 masks: --set binary_masks=true.
        Without a split in the source: --set split.val=0.15 (and split.train, split.test).""", [
        "augment prepare --source phantom --out data/phantom --count 300 --image-size 32",
        "augment prepare --source ../shared/data/busi --out data/busi --image-size 64",
        "augment prepare --source my_seg/ --out data/seg --set mask_threshold=128 --set class_name=nodule",
    ])
    _needed(p, "--source", metavar="SOURCE", help="phantom | FOLDER (BUSI layout, or plain images/ + masks/) | FILE.npz | saved HF dataset folder")
    _needed(p, "--out", metavar="DATA", help="output folder")
    p.add_argument("--image-size", type=int, metavar="N", help="resize to N x N (images bilinear, masks nearest; default: keep the size)")
    p.add_argument("--seed", type=int, metavar="N", help="seed for the phantom and for splits (default 0)")
    p.add_argument("--count", type=int, metavar="N", help="phantom only: number of pairs (default 300)")
    p.add_argument("--rgb", action="store_true", help="phantom only: RGB images (default grayscale)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    _add_common(p, "split.val=0.15")
    p.set_defaults(func=cmd_prepare)

    p = _verb(sub, "train", "train a generator family on the label budget of a prepared dataset", """
        Train a generator (cvae, ldm, vqvae2 or gan) on the label-budget subset of DATA's train split
        and write it to RUN (weights, config.json, run.json; checkpoints under RUN/state/ so
        --resume can continue after a kill). Family settings: --set generator.KEY=VALUE; training
        loop: --set train.KEY=VALUE (e.g. train.max_steps, train.batch_size, train.lr).""", [
        "augment train --data data/phantom --generator cvae --out runs/cvae --budget 32",
        "augment train --data data/busi --generator ldm --out runs/ldm --budget 64 --set train.max_steps=2000",
        "augment train --data data/busi --generator ldm --out runs/ldm --budget 64 --resume",
    ])
    _needed(p, "--data", metavar="DATA", help="prepared dataset folder")
    _needed(p, "--generator", metavar="FAMILY", help="generator family: cvae, ldm, vqvae2 or gan")
    _needed(p, "--out", metavar="RUN", help="output run folder")
    p.add_argument("--budget", type=int, metavar="N", help="label budget: stratified subset of the train split (default: all)")
    p.add_argument("--seed", type=int, metavar="N", help="seed for the budget, init, data order and noise (default 0)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from its last checkpoint")
    _add_common(p, "train.max_steps=2000")
    p.set_defaults(func=cmd_train)

    p = _verb(sub, "sample", "sample synthetic image+mask pairs under a balancing manifest", """
        Sample a synthetic set SYN from a trained generator RUN under a balancing manifest
        (manifests/: match_max, rare_only, ratio_1, ratio_2, ratio_5). Change a key of the
        manifest with --set balance.KEY=VALUE and a sampler setting with --set sampler.KEY=VALUE.""", [
        "augment sample --generator runs/cvae --balance manifests/match_max.yaml --out syn/cvae",
        "augment sample --generator runs/cvae --balance manifests/ratio_2.yaml --out syn/cvae_r2 --filter",
        "augment sample --generator runs/cvae --balance manifests/rare_only.yaml --out syn/rare --set sampler.temperature=0.8",
    ])
    _needed(p, "--generator", metavar="RUN", help="trained generator run folder, from augment train")
    p.add_argument("--balance", required=True, metavar="YAML", help="balancing manifest, e.g. manifests/match_max.yaml")
    _needed(p, "--out", metavar="SYN", help="output folder")
    p.add_argument("--seed", type=int, metavar="N", help="run seed (default: the manifest's seed)")
    p.add_argument("--batch-size", type=int, metavar="N", help="pairs per batch (default 16)")
    p.add_argument("--filter", action="store_true", help="drop and redraw implausible pairs (empty lesion masks, lesion area outside the real range)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted sampling run")
    _add_common(p, "sampler.temperature=0.8")
    p.set_defaults(func=cmd_sample)

    p = _verb(sub, "audit", "quality, diversity, memorisation and provenance audit of a synthetic set", """
        Compare a synthetic set SYN with the real data DATA it was made from: feature-space
        distances (Frechet, KID) beside real-vs-real baselines (Inception features only with
        --inception-weights), diversity, near-copies of training images, mask-image consistency
        and provenance (every file traced to its generator and to DATA). Writes AUD.""", [
        "augment audit --data data/phantom --synthetic syn/cvae --out audits/cvae",
        "augment audit --data data/phantom --synthetic syn/cvae --out audits/cvae --drop-copies --overwrite",
        "augment audit --data data/busi --synthetic syn/busi --out audits/busi --inception-weights inception-2015-12-05.pt",
    ])
    _needed(p, "--data", metavar="DATA", help="prepared dataset folder")
    _needed(p, "--synthetic", metavar="SYN", help="synthetic set folder, from augment sample")
    _needed(p, "--out", metavar="AUD", help="output folder")
    p.add_argument("--inception-weights", metavar="FILE", help="TorchScript FID Inception file (inception-2015-12-05.pt); never downloaded")
    p.add_argument("--drop-copies", action="store_true", help="also write AUD/synthetic_without_copies/ (a manifest without the copies)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    _add_common(p, "encoder_steps=150")
    p.set_defaults(func=cmd_audit)

    p = _verb(sub, "evaluate", "train task models on each arm and test them on the real test split", """
        Downstream evaluation of one synthetic set: task models trained on each arm (real,
        real+classic, real+synthetic, real+synthetic+classic, synthetic) with each seed, tested
        on DATA's test split. Writes EVAL/results.csv; an existing EVAL is resumed.

        Recipes (mixing, filters, pre-training, checkpoint rules; see README) come from --config
        YAML under `recipes:` or --set recipes.NAME.KEY=VALUE, e.g. --set
        recipes.frac25.mix=fraction --set recipes.frac25.synthetic_fraction=0.25.""", [
        "augment evaluate --data data/phantom --synthetic syn/cvae --out eval/cvae",
        "augment evaluate --data data/phantom --synthetic syn/cvae --out eval/cvae --task both --set seeds=0,1",
        "augment evaluate --data data/phantom --budget 32 --out eval/real --set arms=[real,real+classic]",
    ])
    _needed(p, "--data", metavar="DATA", help="prepared dataset folder")
    _needed(p, "--out", metavar="EVAL", help="output folder, resumed when it exists")
    p.add_argument("--synthetic", metavar="SYN", help="synthetic set folder, from augment sample; without it only the real arms run")
    p.add_argument("--budget", type=int, metavar="N", help="without --synthetic: the label budget of the real arms (default: all train)")
    p.add_argument("--task", choices=["segmentation", "classification", "both"], help="the task models (default: segmentation)")
    _add_common(p, "seeds=0,1,2")
    p.set_defaults(func=cmd_evaluate)

    p = _verb(sub, "score", "rank a dataset's images by how anomalous they look (VAE reconstruction error)", """
        Train a small VAE on DATA's images and rank them by reconstruction error, most anomalous
        first: corrupt, mislabelled or out-of-protocol images tend to come first. Writes
        OUT/scores.csv. Scorer settings: --set scorer.steps=N, scorer.latent_dim=N, ...""", [
        "augment score data/busi --out scores/busi",
        "augment score data/busi --out scores/busi --split train --top 20 --set scorer.steps=800",
    ])
    p.add_argument("data", metavar="DATA", help="prepared dataset folder (one image size)")
    _needed(p, "--out", metavar="OUT", help="output folder")
    p.add_argument("--split", choices=["all", "train", "val", "test"], help="which images to train the scorer on and rank (default: all)")
    p.add_argument("--seed", type=int, metavar="N", help="seed of the scorer (default 0)")
    p.add_argument("--top", type=_count, default=10, metavar="N", help="how many of the most anomalous images to print (default 10)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    _add_common(p, "scorer.steps=800")
    p.set_defaults(func=cmd_score)

    p = _verb(sub, "run", "run a pipeline spec end to end (skips complete stages, resumes the rest)", """
        Run a pipeline spec: prepare -> train -> sample -> audit -> evaluate -> report, for every
        generator, budget and seed, into OUT. Stages already complete are skipped, an
        interrupted one resumes; budgets and seeds may be changed between runs into one OUT.
        Override any key of the spec with --set (e.g. data.source=PATH, budgets=16,32,
        train.max_steps=500).""", [
        "augment run pipelines/quickstart.yaml --out runs/quickstart",
        "augment run pipelines/quickstart.yaml --out runs/quickstart --executor local --workers 2",
        "augment run pipelines/busi_compare.yaml --out runs/busi --executor slurm --set executor.slurm.partition=gpu",
    ])
    p.add_argument("spec", metavar="SPEC", help="pipeline YAML, e.g. pipelines/quickstart.yaml")
    p.add_argument("--out", required=True, metavar="OUT", help="output folder (a later run into it skips what is done)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", default=[],
                   help=_set_help("override a key of the spec", "data.source=PATH"))
    p.add_argument("--executor", choices=["serial", "local", "slurm", "debug"],
                   help="where stages run: serial (this process, the default), local (a subprocess per stage, one GPU or a "
                        "share of the cores each), slurm (a Slurm job per stage; settings: --set executor.slurm.KEY=VALUE), "
                        "debug (submitit in this process)")
    p.add_argument("--workers", type=_count, metavar="N",
                   help="stages at once under an executor (local default: the GPUs, or 2 without one)")
    p.set_defaults(func=cmd_run)

    p = _verb(sub, "status", "show which stages of a pipeline run are done, running (where), queued, failed or waiting", """
        Read OUT (the folder of `augment run`, while it runs on this machine or a cluster, or
        after) and print how many stages are done, running, queued, failed or waiting, then one
        line for every stage running (where, since when), queued, failed (error and log) or
        stopped. Nothing is written.""", [
        "augment status runs/busi",
        "augment status runs/busi --all",
    ])
    p.add_argument("out", metavar="OUT", help="output folder of augment run")
    p.add_argument("--all", action="store_true", help="one line for every stage, done and waiting ones too")
    p.set_defaults(func=cmd_status)

    p = _verb(sub, "report", "rebuild the report of a pipeline output folder", """
        Rebuild OUT/report.json, report.md and report.html of an `augment run` output folder from
        the results already there (nothing is trained).""", [
        "augment report runs/quickstart",
    ])
    p.add_argument("out", metavar="OUT", help="output folder of augment run")
    p.set_defaults(func=cmd_report)

    p = _verb(sub, "validate", "check a dataset folder: files, sizes, mask values, hashes", """
        Check a dataset or synthetic set folder against its manifest: every file present, image and
        mask sizes, mask values, and every sha256 as recorded. Exit code 2 when anything is
        wrong, with one line naming it.""", [
        "augment validate data/phantom",
        "augment validate syn/cvae",
    ])
    p.add_argument("data", metavar="DATA", help="dataset folder holding manifest.csv and classes.csv")
    p.set_defaults(func=cmd_validate)

    p = _verb(sub, "export", "export a dataset or synthetic set to a HF dataset or a folder", """
        Export a dataset or synthetic set folder as a Hugging Face dataset (datasets
        save_to_disk, with Image and ClassLabel features) or as a folder in the BUSI layout
        (images/, masks/, labels.csv, classes.csv).""", [
        "augment export data/phantom --out hf/phantom",
        "augment export syn/cvae --format folder --out syn_folder/cvae",
    ])
    p.add_argument("data", metavar="DATA", help="dataset folder holding manifest.csv and classes.csv")
    p.add_argument("--format", choices=["hf", "folder"], default="hf", help="hf: datasets save_to_disk; folder: BUSI layout (default: hf)")
    p.add_argument("--out", required=True, metavar="OUT", help="output folder")
    p.set_defaults(func=cmd_export)
    return parser


def _count(text: str) -> int:
    """argparse type: a whole number >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more (got {value})")
    return value


def _os_problem(exc: OSError, args: argparse.Namespace) -> str | None:
    """One line for the operating-system errors a user can cause or fix (no space, no
    permission, a read-only disk, a path that is too long, loops or runs through a file); None
    for the rest (a bug or broken hardware: traceback)."""
    where = str(exc.filename or getattr(args, "out", None) or "the output")
    where = re.sub(r"\.([^/]+)\.partial-[0-9a-f]{8}(?=/|$)", r"\1", where)  # the folder being built, by its final name
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"disk full while writing `{where}` ({exc.strerror}); free some space and run again (finished work is kept)"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"permission denied: `{where}` ({exc.strerror}); choose a path you may write to"
    if exc.errno == errno.EROFS:
        return f"`{where}` is on a read-only file system; choose another output"
    if exc.errno == errno.ENAMETOOLONG:
        return f"path `{where[:200]}{'...' if len(where) > 200 else ''}` is too long ({exc.strerror}); choose a shorter path"
    if exc.errno == errno.ELOOP:
        return f"`{where}` is a loop of symbolic links ({exc.strerror}); choose another path"
    if exc.errno in (errno.EEXIST, errno.ENOTDIR):  # a folder was needed where a file is
        return f"`{where}` cannot be used: part of the path is a file, not a folder ({exc.strerror}); choose another path"
    return None


def _verbs(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """COMMAND -> its parser (argparse keeps no public handle on its subparsers)."""
    return next(a.choices for a in parser._actions if a.dest == "command")  # type: ignore[return-value]


def _close(word: str, choices: Any, what: str) -> str:
    """``; did you mean 'sample'?`` for a typo, else the list of what is allowed."""
    near = difflib.get_close_matches(word, list(choices), n=1)
    return f"; did you mean {near[0]!r}?" if near else f" ({what}: {', '.join(choices)})"


def _unexpected(extra: list[str], parser: argparse.ArgumentParser) -> str:
    """One line for the first word argparse could not place (a mistyped option, a second value)."""
    word = extra[0]
    if word.startswith("-"):
        flag = word.partition("=")[0]
        flags = [f for a in parser._actions for f in a.option_strings if f.startswith("--")]
        return f"unknown option {flag!r}" + _close(flag, flags, "options")
    if all("=" in w for w in extra):
        return f"unexpected `{word}`: each override needs its own --set (--set {' --set '.join(extra)})"
    return f"unexpected argument{'s' * (len(extra) > 1)} {' '.join(extra)!r}"


def _close_process_group() -> None:
    """After a verb that ran under torchrun: destroy the process group while the interpreter is
    whole. Left to interpreter exit, gloo's worker threads can be torn down mid-flight and abort
    the rank ("terminate called without an active exception", SIGABRT; pytorch/pytorch#190489).
    Only after success: a rank whose peers failed must not wait on a group that is gone."""
    dist = sys.modules.get("torch.distributed")  # never import torch for a verb that did not
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _one_line(message: str, limit: int = 1000) -> str:
    """An error as one line of reasonable length, whatever a message quoted (a value with a
    newline, a huge input)."""
    line = " ".join(message.split("\n"))
    return line if len(line) <= limit else line[: limit - 3] + "..."


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    verbs = _verbs(parser)
    if argv and not argv[0].startswith("-") and argv[0] not in verbs:
        parser.error(f"unknown command {argv[0]!r}" + _close(argv[0], verbs, "commands"))
    args, extra = parser.parse_known_args(argv)
    if extra:
        verbs[args.command].error(_unexpected(extra, verbs[args.command]))
    try:
        args.func(args)
        _close_process_group()
    except AugmentError as exc:
        print(f"augment {args.command}: error: {_one_line(str(exc))}", file=sys.stderr)
        return 2
    except OSError as exc:
        line = _os_problem(exc, args)
        if line is None:
            raise
        print(f"augment {args.command}: error: {_one_line(line)}", file=sys.stderr)
        return 2
    except MemoryError:
        print(f"augment {args.command}: error: out of memory; use smaller settings (fewer or smaller images, "
              "a smaller batch_size)", file=sys.stderr)
        return 2
    except RuntimeError as exc:  # torch reports a failed allocation as a RuntimeError, not a MemoryError
        if "can't allocate memory" not in str(exc) and "out of memory" not in str(exc):
            raise
        print(f"augment {args.command}: error: out of memory ({_one_line(str(exc), 200)}); use smaller settings "
              "(smaller networks, images or batch_size)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"augment {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
