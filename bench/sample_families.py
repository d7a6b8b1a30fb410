"""Benchmark: sampling milliseconds per 64 px pair for each generator family, at the sampler
settings a pipeline spec gives it (default pipelines/busi_compare.yaml: cVAE at temperature 1;
LDM DPM-Solver++ 20 steps, guidance 2; VQ-VAE-2 maskgit, 8 iterations per level; each in joint
and mask mode; ``--spec pipelines/busi_inpaint.yaml`` times the inpaint modes, given budget
backgrounds and each mask's dilated lesion as its region).

Each generator of the spec is built with the spec's own architecture and trained for only
``--train-steps`` steps per phase on the built-in phantom (sampling cost depends on the network
and the sampler, not on how well it was trained), unless ``--generator NAME=RUN`` gives a
trained run for that entry (e.g. a BUSI run's ``generators/NAME/b16_g0/generator``), which is
then sampled at the same entry's settings. The timed call is the model's ``sample`` on batches of
the spec's sampling batch size, one per-pair seeded generator each (as ``augment sample`` draws);
the first batch of every pass is a warm-up and not timed. Mask-mode entries are given their own
budget masks, unjittered. Not timed: jittering masks, PNG encoding and writing (see
bench/sample_memory.py for the whole ``augment sample`` path). Reported: the fastest of
``--repeats`` passes (the least disturbed by other work on the machine) and their median.

    python bench/sample_families.py [--spec pipelines/busi_compare.yaml] [--names ldm_mask vqvae2_mask]
        [--generator ldm_mask=RUN] [--n 64] [--repeats 3] [--train-steps 5] [--json PATH]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path


from augment.api import prepare, train
from augment.config import PrepareConfig, validate
from augment.generators import TrainConfig
from augment.generators.artifact import load_generator
from augment.pipeline import load_pipeline

from _results import conditions, default_json, describe, table, write  # bench/_results.py
from _sampling import conditions as draw_conditions, context, timed_draw  # bench/_sampling.py

ROOT = Path(__file__).resolve().parents[1]


def _few_steps(train_cfg: dict, steps: int) -> dict:
    """The entry's loop settings with every phase cut to ``steps`` steps (one checkpoint, at the end)."""
    phases = {name: {**(p or {}), "max_steps": steps} for name, p in (train_cfg.get("phases") or {}).items()}
    return {**train_cfg, "max_steps": steps, "checkpoint_every": steps, "phases": phases}


def _train_on_phantom(name: str, entry, data: Path, out: Path, budget: int, steps: int) -> Path:
    cfg = validate(TrainConfig, {"data": str(data), "out": str(out / name), "budget": budget, "seed": 0,
                                 "generator": entry.generator.model_dump(mode="json"),
                                 "train": _few_steps(entry.train.model_dump(mode="json"), steps)}, f"bench: {name}")
    train(cfg)
    return out / name


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--spec", type=Path, default=ROOT / "pipelines" / "busi_compare.yaml",
                    help="pipeline spec whose generators (architecture, sampler) are timed")
    ap.add_argument("--names", nargs="+", default=None, help="generator entries of the spec (default: all)")
    ap.add_argument("--generator", action="append", default=[], metavar="NAME=RUN",
                    help="sample this trained run for entry NAME instead of training one on the phantom")
    ap.add_argument("--size", type=int, default=64, help="phantom side in px (used when training here)")
    ap.add_argument("--train-steps", type=int, default=5, help="steps per phase when training here")
    ap.add_argument("--n", type=int, default=64, help="pairs per pass (the first batch is the untimed warm-up)")
    ap.add_argument("--batch-size", type=int, default=None, help="default: the spec's sample.batch_size")
    ap.add_argument("--repeats", type=int, default=3, help="timed passes; the fastest and the median are reported")
    ap.add_argument("--json", type=Path, default=default_json("sample_families"))
    args = ap.parse_args()

    spec = load_pipeline(args.spec)
    given = dict(item.split("=", 1) for item in args.generator)
    names = args.names or list(spec.generators)
    unknown = [n for n in [*names, *given] if n not in spec.generators]
    if unknown:
        raise SystemExit(f"{unknown[0]} is not a generator of {args.spec} (it has: {', '.join(spec.generators)})")
    batch = args.batch_size or spec.sample.batch_size
    if args.n <= batch:
        raise SystemExit(f"--n {args.n} leaves no timed batch after the warm-up batch of {batch}; give --n > {batch}")
    cond = conditions()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        if any(n not in given for n in names):
            data = Path(tmp) / "data"
            prepare(PrepareConfig(source="phantom", out=data, image_size=args.size))
        for name in names:
            entry = spec.generators[name]
            run = Path(given[name]) if name in given else _train_on_phantom(name, entry, data, Path(tmp), spec.budgets[0], args.train_steps)
            gen = load_generator(run)
            if gen.config.generator.family != entry.generator.family:
                raise SystemExit(f"{run} is a {gen.config.generator.family} run but {name} in {args.spec} is {entry.generator.family}")
            settings = gen.model.Sampler(**entry.sampler)
            labels, masks = draw_conditions(gen, args.n, {int(k) for k in gen.run["classes"]})
            ctx = None if masks is None else context(gen, masks)
            ms = [timed_draw(gen.model, labels, masks, settings, batch, ctx)[1] for _ in range(args.repeats)]
            rows.append({"name": name, "family": entry.generator.family, "mode": getattr(gen.config.generator, "mode", "joint"),
                         "sampler": settings.model_dump(), "side": gen.spec.image_size,
                         "params": sum(p.numel() for p in gen.model.parameters()),
                         "generator": str(run) if name in given else f"{args.train_steps} steps per phase on the phantom",
                         "ms_per_sample_min": round(min(ms), 2), "ms_per_sample_median": round(statistics.median(ms), 2),
                         "ms_per_sample": [round(v, 2) for v in ms], "n": args.n, "batch_size": batch})
            print(f"{name}: {min(ms):.1f} ms/sample (fastest of {args.repeats})", flush=True)
    print(f"\nsampling, {args.spec.name} settings, {args.n} pairs per pass in batches of {batch} "
          f"(first batch untimed), {args.repeats} passes; {describe(cond)}")
    shown = [{**r, "setting": ", ".join(f"{k}={v}" for k, v in r["sampler"].items())} for r in rows]
    print(table(shown, [("generator", "name", "s"), ("family", "family", "s"), ("mode", "mode", "s"), ("px", "side", "d"),
                        ("params", "params", "d"), ("ms/sample min", "ms_per_sample_min", ".1f"),
                        ("median", "ms_per_sample_median", ".1f"), ("sampler", "setting", "s")]))
    write({"benchmark": "sample_families", "spec": str(args.spec), "conditions": cond, "rows": rows}, args.json)


if __name__ == "__main__":
    main()
