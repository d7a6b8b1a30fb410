"""Benchmark: latent-diffusion sampling speed and quality per solver setting.

For a trained `ldm` run, draws the same N pairs (balanced over classes, the same per-pair noise
seeds) with each solver setting, guidance on, and prints milliseconds per sample (amortised over
batches of --batch-size, after one warm-up batch) and the Fréchet distance to the real train
split on the audit's domain encoder (a SmallCNN label classifier trained on the real train split,
cached in DATA/.cache), beside the real-vs-real baseline (test vs train). Writes the table as JSON.

    python bench/sample_ldm.py --generator RUN [--n 512] [--batch-size 64] [--guidance 2.0]
        [--settings dpm++:10 dpm++:20 ddim:50] [--json OUT.json]

Target (issue 11): <= 100 ms per sample at 64x64 with the fast solver, at a Fréchet distance
within 10% of 50-step DDIM.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from augment.audit import AuditConfig, _features, domain_encoder
from augment.data.dataset import load_tensors
from augment.data.manifest import load_data
from augment.generators.artifact import load_generator
from augment.metrics import frechet_distance
from augment.seeding import mix_seed


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
    model, data = gen.model, gen.info.data_dir
    manifest, classes = load_data(data)
    train_df = manifest[manifest["split"] == "train"].reset_index(drop=True)
    test_df = manifest[manifest["split"] == "test"].reset_index(drop=True)
    train_x, _ = load_tensors(train_df, data, masks=False)
    test_x, _ = load_tensors(test_df, data, masks=False)
    encoder, _ = domain_encoder(data, train_x, torch.tensor(train_df["label"].to_numpy()), max(classes) + 1,
                                AuditConfig(data=data, synthetic=data, out=data, encoder_steps=args.encoder_steps))
    f_train = _features(encoder, train_x)
    baseline = frechet_distance(_features(encoder, test_x), f_train)

    labels = torch.tensor([sorted(classes)[i % len(classes)] for i in range(args.n)])
    masks = None
    if model.mask_conditioned:  # the generator's own budget masks, in turn, unjittered
        _, budget_masks = load_tensors(gen.info.rows, data)
        by_class = {c: budget_masks[torch.tensor((gen.info.rows["label"] == c).to_numpy())] for c in classes}
        masks = torch.stack([by_class[int(c)][i % len(by_class[int(c)])] for i, c in enumerate(labels.tolist())])
    side, threads = gen.spec.image_size, torch.get_num_threads()
    print(f"ldm {gen.config.generator.mode} mode, {side}x{side}, {args.n} samples in batches of {args.batch_size}, "
          f"guidance {args.guidance}, {threads} threads; real test-vs-train Fréchet baseline {baseline:.2f}")
    rows = []
    for setting in args.settings:
        solver, steps = setting.split(":")
        settings = model.Sampler(solver=solver, steps=int(steps), guidance=args.guidance)
        images, seconds, timed = [], 0.0, 0
        for b, start in enumerate(range(0, args.n, args.batch_size)):
            idx = range(start, min(start + args.batch_size, args.n))
            gens = [torch.Generator().manual_seed(mix_seed(0, i)) for i in idx]
            t = time.perf_counter()
            out = model.sample(labels[list(idx)], gens, None if masks is None else masks[list(idx)], settings)
            if b > 0 or args.n <= args.batch_size:  # the first batch warms up allocators and kernels
                seconds, timed = seconds + time.perf_counter() - t, timed + len(idx)
            images.append(out.images)
        fd = frechet_distance(_features(encoder, torch.cat(images)), f_train)
        rows.append({"solver": solver, "steps": int(steps), "guidance": args.guidance, "ms_per_sample": 1000 * seconds / timed,
                     "frechet_domain": fd, "baseline_frechet_domain": baseline, "n": args.n, "batch_size": args.batch_size,
                     "threads": threads})
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
