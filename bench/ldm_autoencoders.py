"""Benchmark: which autoencoder the `ldm` family should use, by reconstruction and speed.

Trains each candidate on the same label budget of a prepared dataset (image + one-hot mask in,
the same L1 + mask cross-entropy loss, a small KL term for the KL models, the commitment loss
for the VQ model), all at matched widths and a 4-channel latent at 1/4 of the side, then prints
the val split's reconstruction (PSNR, SSIM, mask Dice over lesion images; val pairs are only
measured), milliseconds per training step, and decode milliseconds per sample.

    python bench/ldm_autoencoders.py --data DATA [--budget 64] [--steps 300] [--widths 16 32 64]
        [--only diffusers-kl,diffusers-kl-attn,diffusers-vq,monai-kl] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from augment.data.dataset import load_tensors
from augment.data.guard import load_training_set
from augment.data.manifest import load_data
from augment.generators.base import one_hot_masks
from augment.metrics import ssim_pairs


class Candidate(torch.nn.Module):
    """One autoencoder behind encode(x) -> (latent, aux loss) and decode(z) -> output."""

    def __init__(self, kind: str, channels: int, widths: tuple[int, ...], size: int) -> None:
        super().__init__()
        self.kind = kind
        groups = next(g for g in (32, 16, 8, 4, 2, 1) if all(w % g == 0 for w in widths))
        n = len(widths)
        if kind.startswith("diffusers-kl"):
            from diffusers import AutoencoderKL

            self.net = AutoencoderKL(in_channels=channels, out_channels=channels, latent_channels=4,
                                     down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
                                     block_out_channels=widths, layers_per_block=1, norm_num_groups=groups, sample_size=size,
                                     mid_block_add_attention=kind.endswith("attn"))
        elif kind == "diffusers-vq":
            from diffusers import VQModel

            self.net = VQModel(in_channels=channels, out_channels=channels, latent_channels=4, num_vq_embeddings=256,
                               down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
                               block_out_channels=widths, layers_per_block=1, norm_num_groups=groups, sample_size=size,
                               mid_block_add_attention=False)
        elif kind == "monai-kl":
            from monai.networks.nets import AutoencoderKL

            self.net = AutoencoderKL(spatial_dims=2, in_channels=channels, out_channels=channels, channels=widths,
                                     num_res_blocks=1, attention_levels=(False,) * n, latent_channels=4, norm_num_groups=groups,
                                     with_encoder_nonlocal_attn=False, with_decoder_nonlocal_attn=False)
        else:
            raise SystemExit(f"unknown candidate {kind}")

    def encode(self, x: torch.Tensor, generator: torch.Generator | None):
        if self.kind.startswith("diffusers-kl"):
            d = self.net.encode(x).latent_dist
            z = d.mean if generator is None else d.mean + d.std * torch.randn(d.mean.shape, generator=generator)
            return z, 0.5 * (d.mean**2 + d.var - 1 - d.logvar).mean() * 1e-4
        if self.kind == "monai-kl":
            mu, sigma = self.net.encode(x)
            z = mu if generator is None else mu + sigma * torch.randn(mu.shape, generator=generator)
            return z, 0.5 * (mu**2 + sigma**2 - 1 - torch.log(sigma**2 + 1e-8)).mean() * 1e-4
        return self.net.encode(x).latents, torch.zeros(())

    def decode(self, z: torch.Tensor):
        if self.kind == "diffusers-vq":
            out = self.net.decode(z)
            return out.sample, out.commit_loss.mean() if out.commit_loss is not None else torch.zeros(())
        if self.kind == "monai-kl":
            return self.net.decode(z), torch.zeros(())
        return self.net.decode(z).sample, torch.zeros(())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True, type=Path)
    ap.add_argument("--budget", type=int, default=64)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--widths", type=int, nargs="+", default=[16, 32, 64])
    ap.add_argument("--only", default="diffusers-kl,diffusers-kl-attn,diffusers-vq,monai-kl")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    train = load_training_set(args.data, args.budget, 0)
    manifest, classes = load_data(args.data)
    val = manifest[(manifest["split"] == "val") & (manifest["mask"] != "")]
    vx, vm = load_tensors(val, args.data)
    k = max(2, int(train.masks.max()) + 1)
    c, size = train.images.shape[1], train.images.shape[-1]

    def pack(x, m):
        return torch.cat([x * 2 - 1, one_hot_masks(m, k)], 1)

    print(f"{len(train.labels)} training pairs, {len(vx)} val pairs, {size}x{size}, widths {args.widths}, "
          f"{args.steps} steps at batch {args.batch_size}, {torch.get_num_threads()} threads")
    rows = []
    for kind in args.only.split(","):
        torch.manual_seed(0)
        model = Candidate(kind, c + k, tuple(args.widths), size)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        g = torch.Generator().manual_seed(0)
        t0 = time.perf_counter()
        for step in range(args.steps):
            idx = torch.randint(0, len(train.labels), (args.batch_size,), generator=g)
            x, m = train.images[idx], train.masks[idx]
            z, aux = model.encode(pack(x, m), g)
            out, commit = model.decode(z)
            loss = (out[:, :c] - (x * 2 - 1)).abs().mean() + F.cross_entropy(out[:, c:], m) + aux + commit
            opt.zero_grad()
            loss.backward()
            opt.step()
        step_ms = 1000 * (time.perf_counter() - t0) / max(args.steps, 1)
        model.eval()
        with torch.no_grad():
            z, _ = model.encode(pack(vx, vm), None)
            out, _ = model.decode(z)
            rec, pred = ((out[:, :c] + 1) / 2).clamp(0, 1), out[:, c:].argmax(1)
            batch = z[:64]
            model.decode(batch)  # warm-up
            t = time.perf_counter()
            for _ in range(3):
                model.decode(batch)
            decode_ms = 1000 * (time.perf_counter() - t) / (3 * len(batch))
        mse = (rec - vx).pow(2).flatten(1).mean(1).clamp_min(1e-10)
        fg_p, fg_t = pred > 0, vm > 0
        has = fg_t.flatten(1).any(1)
        dice = 2 * (fg_p & fg_t).flatten(1).sum(1) / (fg_p.flatten(1).sum(1) + fg_t.flatten(1).sum(1)).clamp_min(1)
        rows.append({"autoencoder": kind, "params": sum(p.numel() for p in model.parameters()),
                     "latent": list(z.shape[1:]), "val_psnr": float((10 * torch.log10(1 / mse)).mean()),
                     "val_ssim": float(ssim_pairs(rec, vx).mean()), "val_mask_dice": float(dice[has].float().mean()),
                     "train_ms_per_step": step_ms, "decode_ms_per_sample": decode_ms})
        r = rows[-1]
        print(f"{kind:<18} params {r['params']:>8}  latent {r['latent']}  PSNR {r['val_psnr']:6.2f}  SSIM {r['val_ssim']:.3f}  "
              f"mask Dice {r['val_mask_dice']:.3f}  train {step_ms:6.1f} ms/step  decode {decode_ms:5.2f} ms/sample", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
