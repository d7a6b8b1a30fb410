"""Benchmark: latent-diffusion sampling speed and quality per solver setting.

For a trained `ldm` run, draws the same N pairs (balanced over classes, the same per-pair noise
seeds) with each solver setting, guidance on, and prints milliseconds per sample (amortised over
batches of --batch-size, after one warm-up batch) and the Fréchet distance to the real train
split on the audit's domain encoder (a SmallCNN label classifier trained on the real train split,
cached in the user cache, augment.audit.cache_root), beside the real-vs-real baseline (test vs train). Writes the table as JSON.

    python bench/sample_ldm.py --generator RUN [--n 512] [--batch-size 64] [--guidance 2.0]
        [--settings dpm++:10 dpm++:20 ddim:50] [--json OUT.json]

Target (issue 11): <= 100 ms per sample at 64x64 with the fast solver, at a Fréchet distance
within 10% of 50-step DDIM.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from augment.generators.artifact import load_generator

from _sampling import Reference, conditions, timed_draw  # bench/_sampling.py


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--generator", required=True, help="an ldm run folder")
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--guidance", type=float, default=2.0)
    ap.add_argument("--settings", nargs="+", default=["dpm++:10", "dpm++:20", "ddim:50"])
    ap.add_argument("--encoder-steps", type=int, default=300)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    gen = load_generator(args.generator)
    if gen.config.generator.family != "ldm":
        raise SystemExit(f"{args.generator} is a {gen.config.generator.family} run, not ldm")
    model = gen.model
    real = Reference(gen.info.data_dir, args.encoder_steps)
    labels, masks = conditions(gen, args.n, real.classes)
    side, threads = gen.spec.image_size, torch.get_num_threads()
    print(f"ldm {gen.config.generator.mode} mode, {side}x{side}, {args.n} samples in batches of {args.batch_size}, "
          f"guidance {args.guidance}, {threads} threads; real test-vs-train Fréchet baseline {real.baseline:.2f}")
    rows = []
    for setting in args.settings:
        solver, steps = setting.split(":")
        settings = model.Sampler(solver=solver, steps=int(steps), guidance=args.guidance)
        images, ms = timed_draw(model, labels, masks, settings, args.batch_size)
        rows.append({"solver": solver, "steps": int(steps), "guidance": args.guidance, "ms_per_sample": ms,
                     "frechet_domain": real.frechet(images), "baseline_frechet_domain": real.baseline, "n": args.n,
                     "batch_size": args.batch_size, "threads": threads})
    ref = next((r["frechet_domain"] for r in rows if r["solver"] == "ddim" and r["steps"] == 50), None)
    print(f"{'solver':<8}{'steps':>6}{'ms/sample':>11}{'Fréchet':>9}{'vs ddim-50':>12}")
    for r in rows:
        rel = "" if ref is None else f"{100 * (r['frechet_domain'] / ref - 1):+.1f}%"
        print(f"{r['solver']:<8}{r['steps']:>6}{r['ms_per_sample']:>11.1f}{r['frechet_domain']:>9.2f}{rel:>12}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
