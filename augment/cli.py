"""The CLI is a shell: parse, load config, apply ``--set``, call one API function, say where
the output went. Any :class:`AugmentError` becomes one line on stderr and exit code 2, and so
do a full disk, a denied permission, a read-only file system and running out of memory."""

from __future__ import annotations

import argparse
import errno
import os
import re
import sys
from typing import Any

from augment.errors import AugmentError, ConfigError

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and exit code 2 (no usage dump)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _config_from(args: argparse.Namespace, cli: dict[str, Any]) -> dict[str, Any]:
    from augment.config import load_yaml, merge, parse_overrides

    base = load_yaml(args.config) if getattr(args, "config", None) else {}
    given = {k: v for k, v in cli.items() if v is not None}
    return merge(merge(base, given), parse_overrides(args.set))


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="YAML", help="options from a YAML file (CLI flags and --set win)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", default=[], help="override any option, e.g. --set split.val=0.15 (repeatable)")


def _main_process() -> bool:
    """Under a multi-process launcher only rank 0 prints (``RANK`` is set by torchrun/accelerate)."""
    return os.environ.get("RANK", "0") == "0"


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

    if not args.balance:
        raise ConfigError("--balance is required (a balancing manifest, e.g. manifests/match_max.yaml)")
    data = _config_from(args, {
        "generator": args.generator, "out": args.out, "seed": args.seed,
        "batch_size": args.batch_size, "filter": args.filter or None,
    })
    given = data.get("balance") or {}  # --set balance.KEY=VALUE wins over the manifest file
    if not isinstance(given, dict):
        raise ConfigError("--balance names the manifest file; change its keys with --set balance.KEY=VALUE")
    data["balance"] = merge(load_yaml(args.balance), given)
    result = api.sample(validate(api.SampleConfig, data, "sample"), resume=args.resume)
    if _main_process():
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
    from augment.config import parse_overrides

    print(api.run(args.spec, args.out, parse_overrides(args.set)).summary)


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
    if _main_process():
        print(result.summary)


def build_parser() -> argparse.ArgumentParser:
    from augment import __version__

    parser = _Parser(prog="augment", description="Enlarge and rebalance scarce labelled medical image sets with generative models.")
    parser.add_argument("--version", action="version", version=f"augment {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("prepare", help="turn a source into a canonical dataset folder (manifest.csv)",
                       description="Turn phantom, a folder (BUSI layout: images/, masks/, labels.csv, classes.csv; or plain "
                                   "images/ + masks/ paired by file stem, one class `lesion`, renamed with --set class_name=NAME), "
                                   "a MedMNIST .npz or a saved HF dataset into DATA/manifest.csv. Lossy (JPEG) masks: "
                                   "--set mask_threshold=128; 0/255 masks: --set binary_masks=true.")
    p.add_argument("--source", help="phantom | FOLDER (BUSI layout, or plain images/ + masks/) | FILE.npz | saved HF dataset folder")
    p.add_argument("--out", help="output folder DATA")
    p.add_argument("--image-size", type=int, help="resize to N x N (images bilinear, masks nearest)")
    p.add_argument("--seed", type=int, help="seed for the phantom and for splits (default 0)")
    p.add_argument("--count", type=int, help="phantom only: number of pairs (default 300)")
    p.add_argument("--rgb", action="store_true", help="phantom only: RGB images")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    _add_common(p)
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("train", help="train a generator family on the label budget of a prepared dataset",
                       description="Train a generator (cvae, ldm, vqvae2) on the label-budget subset of DATA's train split.")
    p.add_argument("--data", help="prepared dataset folder DATA")
    p.add_argument("--generator", help="generator family: cvae, ldm or vqvae2")
    p.add_argument("--out", help="run folder RUN")
    p.add_argument("--budget", type=int, help="label budget: stratified subset of the train split (default: all)")
    p.add_argument("--seed", type=int, help="seed for the budget, init, data order and noise (default 0)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from its last checkpoint")
    _add_common(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("sample", help="sample synthetic image+mask pairs under a balancing manifest",
                       description="Sample a synthetic set from a trained generator RUN under a balancing manifest.")
    p.add_argument("--generator", help="trained generator run folder RUN")
    p.add_argument("--balance", help="balancing manifest YAML (e.g. manifests/match_max.yaml)")
    p.add_argument("--out", help="output folder SYN")
    p.add_argument("--seed", type=int, help="run seed (default: the manifest's seed)")
    p.add_argument("--batch-size", type=int, help="pairs per batch (default 16)")
    p.add_argument("--filter", action="store_true", help="drop and redraw implausible pairs (empty lesion masks, lesion area outside the real range)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted sampling run")
    _add_common(p)
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("audit", help="quality, diversity, memorisation and provenance audit of a synthetic set",
                       description="Compare a synthetic set SYN with the real data DATA it was made from.")
    p.add_argument("--data", help="prepared dataset folder DATA")
    p.add_argument("--synthetic", help="synthetic set folder SYN (from augment sample)")
    p.add_argument("--out", help="output folder AUD")
    p.add_argument("--inception-weights", help="TorchScript FID Inception file (inception-2015-12-05.pt); never downloaded")
    p.add_argument("--drop-copies", action="store_true", help="also write AUD/synthetic_without_copies/ (a manifest without the copies)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    _add_common(p)
    p.set_defaults(func=cmd_audit)

    p = sub.add_parser("evaluate", help="train task models on each arm and test them on the real test split",
                       description="Downstream evaluation of one synthetic set: arms x seeds, tested on DATA's test split. "
                                   "Recipes (mixing, filters, pre-training, checkpoint rules; see README) come from --config YAML "
                                   "under `recipes:` or --set recipes.NAME.KEY=VALUE, e.g. --set recipes.frac25.mix=fraction "
                                   "--set recipes.frac25.synthetic_fraction=0.25.")
    p.add_argument("--data", help="prepared dataset folder DATA")
    p.add_argument("--synthetic", help="synthetic set folder SYN (from augment sample); without it only the real arms run")
    p.add_argument("--budget", type=int, help="without --synthetic: the label budget of the real arms (default: all train)")
    p.add_argument("--out", help="output folder EVAL (resumes when it exists)")
    p.add_argument("--task", choices=["segmentation", "classification", "both"], help="default: segmentation")
    _add_common(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("score", help="rank a dataset's images by how anomalous they look (VAE reconstruction error)",
                       description="Train a small VAE on DATA's images and rank them by reconstruction error, most anomalous "
                                   "first: corrupt, mislabelled or out-of-protocol images tend to come first. Writes OUT/scores.csv. "
                                   "Scorer settings: --set scorer.steps=N, scorer.latent_dim=N, ...")
    p.add_argument("data", help="prepared dataset folder DATA (one image size)")
    p.add_argument("--out", help="output folder")
    p.add_argument("--split", choices=["all", "train", "val", "test"], help="which images to score (default: all)")
    p.add_argument("--seed", type=int, help="seed of the scorer (default 0)")
    p.add_argument("--top", type=int, default=10, help="how many of the most anomalous images to print (default 10)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    _add_common(p)
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("run", help="run a pipeline spec end to end (skips complete stages, resumes the rest)",
                       description="prepare -> train -> sample -> audit -> evaluate -> report for every budget and seed.")
    p.add_argument("spec", help="pipeline YAML, e.g. pipelines/quickstart.yaml")
    p.add_argument("--out", required=True, help="output folder OUT")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", default=[], help="override the spec, e.g. --set data.source=PATH")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("report", help="rebuild the report of a pipeline output folder")
    p.add_argument("out", help="output folder of augment run")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("validate", help="check a dataset folder: files, sizes, mask values, hashes")
    p.add_argument("data", help="dataset folder holding manifest.csv and classes.csv")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("export", help="export a dataset or synthetic set to a HF dataset or a folder")
    p.add_argument("data", help="dataset folder holding manifest.csv and classes.csv")
    p.add_argument("--format", choices=["hf", "folder"], default="hf", help="hf: datasets save_to_disk; folder: BUSI layout")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=cmd_export)
    return parser


def _os_problem(exc: OSError, args: argparse.Namespace) -> str | None:
    """One line for the operating-system errors a user can cause or fix (no space, no
    permission, a read-only disk); None for the rest (a bug or broken hardware: traceback)."""
    where = str(exc.filename or getattr(args, "out", None) or "the output")
    where = re.sub(r"\.([^/]+)\.partial-[0-9a-f]{8}(?=/|$)", r"\1", where)  # the folder being built, by its final name
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"disk full while writing `{where}` ({exc.strerror}); free some space and run again (finished work is kept)"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"permission denied: `{where}` ({exc.strerror}); choose a path you may write to"
    if exc.errno == errno.EROFS:
        return f"`{where}` is on a read-only file system; choose another output"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except AugmentError as exc:
        print(f"augment {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        line = _os_problem(exc, args)
        if line is None:
            raise
        print(f"augment {args.command}: error: {line}", file=sys.stderr)
        return 2
    except MemoryError:
        print(f"augment {args.command}: error: out of memory; use smaller settings (fewer or smaller images, "
              "a smaller batch_size)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"augment {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
