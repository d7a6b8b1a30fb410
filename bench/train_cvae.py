"""Benchmark: train the cVAE on BUSI (or the phantom) at 64x64 with a label budget and report
steps/s and wall time; save a real-vs-generated grid per class.

    python bench/train_cvae.py [--source ../shared/data/busi] [--steps 2000] [--budget 64] [--out bench_out]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from grid import sample_grid  # noqa: E402

from augment.api import prepare, train  # noqa: E402
from augment.config import PrepareConfig, validate  # noqa: E402
from augment.generators import TrainConfig  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--source", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "busi"))
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--budget", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--out", default="bench_out/cvae")
    ap.add_argument("--set", action="append", default=[], help="generator.KEY=VALUE overrides")
    args = ap.parse_args()
    if args.source != "phantom" and not Path(args.source).exists():
        sys.exit(f"source {args.source} is absent; pass --source phantom")

    out = Path(args.out)
    data = out / "data"
    if not (data / "manifest.csv").exists():
        prepare(PrepareConfig(source=args.source, out=data, image_size=args.size, overwrite=True, drop_near_duplicates=True))
    gen = {"family": "cvae"}
    for item in args.set:
        k, v = item.split("=", 1)
        gen[k.removeprefix("generator.")] = json.loads(v)
    run = out / f"run_{args.steps}"
    cfg = validate(TrainConfig, {
        "data": data, "out": run, "budget": args.budget, "seed": 0, "generator": gen,
        "train": {"max_steps": args.steps, "batch_size": args.batch_size, "checkpoint_every": 500},
    }, "bench")
    t = time.time()
    train(cfg, resume=True)
    wall = time.time() - t
    info = json.loads((run / "run.json").read_text())
    print(f"cvae {args.size}x{args.size} budget {args.budget} batch {args.batch_size}: {info['steps']} steps, "
          f"loop {info['loop_seconds']:.1f} s, wall {wall:.1f} s, "
          f"{info['steps'] / info['loop_seconds']:.2f} steps/s ({1000 * info['loop_seconds'] / info['steps']:.0f} ms/step)")
    import pandas as pd

    loss = pd.read_csv(run / "loss.csv")
    print("loss first/last:", round(loss["loss"].iloc[0], 4), round(loss["loss"].iloc[-1], 4),
          "image_mse last:", round(loss["image_mse"].iloc[-1], 5), "kl last:", round(loss["kl"].iloc[-1], 2))
    print("grid:", sample_grid(run, out / f"grid_{args.steps}.png"))


if __name__ == "__main__":
    main()
