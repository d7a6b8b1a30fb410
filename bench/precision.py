"""Benchmark: ms per training step under each numeric setting, for the models a BUSI comparison
spends its time in: the cVAE and the LDM denoiser (batch 32) and the downstream MONAI UNet
segmenter (batch 16), all at 64x64 on the prepared phantom (or a BUSI-layout folder).

Settings: ``fp32``; ``channels_last`` (the model and its input in NHWC); ``bf16`` (the forward
under bfloat16 autocast, weights and optimiser in float32: what ``train.mixed_precision=bf16``
and ``evaluate.segmentation.precision=bf16`` do); ``bf16+cl`` (both). Each setting trains a fresh
copy of the same model from the same weights for ``--steps`` steps (``--warmup`` untimed first);
settings alternate within each repeat so a busy machine slows them alike; the table gives the
fastest repeat and the speed-up over fp32. The loss after the last step is printed beside it as a
sanity check (bf16 changes numerics; whether quality holds is measured on BUSI, see README).

    python bench/precision.py [--source phantom|../shared/data/busi] [--steps 30] [--repeats 3]
        [--models cvae ldm unet] [--json bench/results/precision.json]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import sys
import tempfile
import time
from pathlib import Path

import torch

from augment.api import prepare
from augment.config import PrepareConfig, validate
from augment.data.guard import load_training_set
from augment.downstream import TASKS, Shapes
from augment.generators import DataSpec, TrainConfig, build
from augment.seeding import mix_seed

from _results import conditions, default_json, describe, write  # bench/_results.py

SETTINGS = ("fp32", "channels_last", "bf16", "bf16+cl")


def _training_set(data: Path):
    ts = load_training_set(data, 64, 0)
    return ts, (ts.images, ts.masks, ts.labels)


def _generator_step(family: str, data: Path, batch: int):
    """(model, step(net, i, channels_last) -> loss) for a generator's last phase: the cVAE's one
    phase, the LDM's denoiser (its autoencoder left at initialisation and frozen: a step costs the
    same)."""
    ts, tensors = _training_set(data)
    images, masks, labels = tensors
    spec = DataSpec(image_size=images.shape[-1], channels=images.shape[1], num_classes=max(ts.classes) + 1,
                    mask_classes=max(2, int(masks.max()) + 1))
    cfg = validate(TrainConfig, {"data": str(data), "out": "unused", "budget": 64, "seed": 0,
                                 "generator": {"family": family}}, "bench")
    torch.manual_seed(0)
    model = build(cfg.generator, spec)
    phase = model.phases[-1]
    for earlier in model.phases[:-1]:
        for m in model.phase_modules(earlier):
            m.requires_grad_(False).eval()
    hook = getattr(model, "on_phase_start", None)
    if hook is not None:
        with torch.no_grad():
            hook(phase, tensors)

    def step(net, i: int, channels_last: bool):
        idx = torch.randint(0, len(labels), (batch,), generator=torch.Generator().manual_seed(i))
        x = images[idx].contiguous(memory_format=torch.channels_last) if channels_last else images[idx]
        noise = torch.Generator().manual_seed(mix_seed(0, i))
        return net(x, masks[idx], labels[idx], phase=phase, step=i, generator=noise)[0]

    return model, step


def _unet_step(data: Path, batch: int):
    """The downstream segmenter (MONAI UNet, DiceCE) on the same set, as evaluation trains it."""
    ts, (images, masks, labels) = _training_set(data)
    shapes = Shapes(channels=images.shape[1], num_classes=max(ts.classes) + 1, mask_classes=max(2, int(masks.max()) + 1))
    task = TASKS["segmentation"]
    torch.manual_seed(0)
    model = task.build(shapes, 16)
    loss_fn = task.loss(shapes, labels)

    def step(net, i: int, channels_last: bool):
        idx = torch.randint(0, len(labels), (batch,), generator=torch.Generator().manual_seed(i))
        x = images[idx].contiguous(memory_format=torch.channels_last) if channels_last else images[idx]
        return loss_fn(lambda v: net(v).float(), x, masks[idx], labels[idx])

    return model, step


def time_setting(model, step, setting: str, steps: int, warmup: int) -> tuple[float, float]:
    """(seconds per timed step, last loss) for a fresh copy of ``model`` under ``setting``."""
    net = copy.deepcopy(model)
    cl = "cl" in setting or setting == "channels_last"
    if cl:
        net = net.to(memory_format=torch.channels_last)
    bf16 = setting.startswith("bf16")
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-4)
    net.train()
    t0 = None
    for i in range(steps + warmup):
        if i == warmup:
            t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
            loss = step(net, i, cl)
        loss.float().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return (time.perf_counter() - t0) / steps, float(loss.detach())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--source", default="phantom", help="phantom (default) or a BUSI-layout folder")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--models", nargs="+", default=["cvae", "ldm", "unet"], choices=["cvae", "ldm", "unet"])
    ap.add_argument("--json", type=Path, default=default_json("precision"))
    args = ap.parse_args()
    if args.source != "phantom" and not Path(args.source).exists():
        sys.exit(f"source {args.source} is absent; pass --source phantom")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, bf16 kernels: "
          f"{torch.backends.mkldnn.is_available() and 'avx512_bf16' in Path('/proc/cpuinfo').read_text()}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        prepare(validate(PrepareConfig, {"source": args.source, "out": str(data), "image_size": 64, "drop_near_duplicates": True,
                                         **({"count": 200} if args.source == "phantom" else {})}, "bench"))
        for name in args.models:
            model, step = _unet_step(data, 16) if name == "unet" else _generator_step(name, data, 32)
            best = {s: (float("inf"), float("nan")) for s in SETTINGS}
            for _ in range(args.repeats):
                for s in SETTINGS:
                    sec, loss = time_setting(model, step, s, args.steps, args.warmup)
                    best[s] = min(best[s], (sec, loss), key=lambda v: v[0])
            for s in SETTINGS:
                rows.append({"model": name, "setting": s, "ms_per_step": round(1000 * best[s][0], 1),
                             "speedup_vs_fp32": round(best["fp32"][0] / best[s][0], 2), "last_loss": round(best[s][1], 4)})
    cond = conditions()
    print(f"\nfastest of {args.repeats} runs of {args.steps - args.warmup} timed steps; {describe(cond)}")
    print(f"{'model':6} {'setting':14} {'ms/step':>8} {'x fp32':>7} {'last loss':>10}")
    for r in rows:
        print(f"{r['model']:6} {r['setting']:14} {r['ms_per_step']:8.1f} {r['speedup_vs_fp32']:7.2f} {r['last_loss']:10.4f}")
    write({"benchmark": "precision", "steps": args.steps, "warmup": args.warmup, "repeats": args.repeats,
           "conditions": cond, "rows": rows}, args.json)


if __name__ == "__main__":
    main()
