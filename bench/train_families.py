"""Benchmark: training milliseconds per step of each generator family, per phase, at the
architecture and loop settings a pipeline spec gives it (default pipelines/busi_compare.yaml).

Each entry of the spec is trained for ``--steps`` steps per phase on the built-in phantom at
``--size`` px through ``augment train``'s own loop (so the figure is what a pipeline pays: the
family's forward and backward, its optimizers, for the GAN both the discriminator and the
generator step), at the spec's batch size. The loop logs steps per second every ``log_every``
steps; the first log of each phase (start-up, first allocations) is dropped and the median of
the rest is reported, as ms per step. Entries that share a trained generator are timed once.

    python bench/train_families.py [--spec pipelines/busi_compare.yaml] [--names cvae_mask gan_mask]
        [--steps 60] [--size 64] [--json PATH]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import pandas as pd

from augment.api import prepare
from augment.config import PrepareConfig
from augment.generators.plan import phase_settings
from augment.pipeline import load_pipeline

from _results import conditions, default_json, describe, table, write  # bench/_results.py
from sample_families import _train_on_phantom  # bench/sample_families.py

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--spec", type=Path, default=ROOT / "pipelines" / "busi_compare.yaml")
    ap.add_argument("--names", nargs="+", default=None, help="generator entries of the spec (default: every trained one)")
    ap.add_argument("--steps", type=int, default=60, help="steps per phase (logged every 10)")
    ap.add_argument("--size", type=int, default=64, help="phantom side in px")
    ap.add_argument("--json", type=Path, default=default_json("train_families"))
    args = ap.parse_args()
    if args.steps < 30:
        raise SystemExit("--steps must be at least 30: the first log of a phase is dropped and two remain to take a median of")

    spec = load_pipeline(args.spec)
    names = args.names or [n for n in spec.generators if spec.trainer(n) == n]
    unknown = [n for n in names if n not in spec.generators]
    if unknown:
        raise SystemExit(f"{unknown[0]} is not a generator of {args.spec} (it has: {', '.join(spec.generators)})")
    cond, rows = conditions(), []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        prepare(PrepareConfig(source="phantom", out=data, image_size=args.size))
        for name in names:
            entry = spec.generators[name]
            run = _train_on_phantom(name, entry, data, Path(tmp), spec.budgets[-1], args.steps)
            log = pd.read_csv(run / "loss.csv")
            for phase, part in log.groupby("phase", sort=False):
                rates = part["steps_per_s"].dropna().tolist()[1:]
                ms = 1000.0 / statistics.median(rates)
                batch = phase_settings(entry.train, phase).batch_size
                rows.append({"name": name, "family": entry.generator.family, "mode": getattr(entry.generator, "mode", "joint"),
                             "phase": phase, "batch_size": batch, "side": args.size, "ms_per_step": round(ms, 1),
                             "logs": len(rates)})
                print(f"{name} {phase}: {ms:.0f} ms/step", flush=True)
    print(f"\ntraining, {args.spec.name} settings, {args.steps} steps per phase on the {args.size} px phantom "
          f"(first log of each phase dropped, median of the rest); {describe(cond)}")
    print(table(rows, [("generator", "name", "s"), ("family", "family", "s"), ("mode", "mode", "s"), ("phase", "phase", "s"),
                       ("batch", "batch_size", "d"), ("ms/step", "ms_per_step", ".0f")]))
    write({"benchmark": "train_families", "spec": str(args.spec), "conditions": cond, "rows": rows}, args.json)


if __name__ == "__main__":
    main()
