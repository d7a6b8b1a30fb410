"""A seeded property test over random generator configs: for each family, draw configs at 16 px
whose every field is plausible, and some with one or two fields just outside what is allowed,
then ``augment train`` (2-4 steps a phase) and ``augment sample`` (a few pairs) through the CLI.

Whatever the draw, each call returns 0 or 2 and never raises nor prints a traceback; after exit 2
its output folder is absent or still empty and nothing was left beside it; after exit 0 the
output is complete (``run.json``, and a synthetic set holds exactly the planned pairs). Run with
``-s`` to see which draws gave 2 and why. No hypothesis dependency: ``random.Random(seed)``.
"""

from __future__ import annotations

import csv
import json
import random
import time
import traceback
from pathlib import Path

import pytest
import torch

from augment.cli import main
from tests.conftest import set_args

#: draws per family: the three families together take about 25 s on one core (the budget is < 60 s)
DRAWS_PER_FAMILY = 20
SEED = 24

#: field -> (plausible values, values just outside what is allowed); sizes stay tiny at 16 px
FAMILY_SPACE: dict[str, dict[str, tuple[list, list]]] = {
    "cvae": {
        "latent_dim": ([1, 2, 4, 8], [0, -1]),
        "base_channels": ([4, 8], [3, 0]),
        "max_channels": ([4, 8, 16], [3]),
        "deep_below": ([1, 4, 16], [0]),
        "image_sigma": ([0.05, 0.25, 0.5, 1.0], [0.0, -0.1, 1e-9]),
        "mask_weight": ([0.0, 1.0, 2.0], [-1.0]),
        "kl_weight": ([0.0, 0.5, 1.0], [-0.5]),
        "kl_warmup_steps": ([0, 2, 300], [-1]),
        "mode": (["joint", "mask", "inpaint"], ["both"]),
    },
    "ldm": {
        "mode": (["joint", "mask", "inpaint"], ["both"]),
        "ae_channels": ([[8], [8, 8], [4, 8], [8, 8, 8]], [[2], [], [8, 8, 8, 8, 8, 8]]),
        "ae_layers": ([1, 2], [0]),
        "latent_channels": ([1, 2, 4], [0]),
        "kl_weight": ([0.0, 1e-4, 1e-2], [-1e-4]),
        "mask_weight": ([0.0, 1.0], [-1.0]),
        "unet_channels": ([[8], [8, 16], [8, 8, 8]], [[2], [8, 8, 8, 8, 8, 8]]),
        "unet_layers": ([1, 2], [0]),
        "train_timesteps": ([10, 50, 1000], [5]),
        "beta_schedule": (["scaled_linear", "linear", "squaredcos_cap_v2"], ["cosine"]),
        "prediction": (["epsilon", "v_prediction"], ["sample"]),
        "label_dropout": ([0.0, 0.1, 0.5], [1.0, -0.1]),
        "mask_dropout": ([0.0, 0.1, 0.5], [1.0]),
    },
    "vqvae2": {
        "mode": (["joint", "mask", "inpaint"], ["both"]),
        "channels": ([8, 16], [4]),
        "res_blocks": ([0, 1], [-1]),
        "bottom_halvings": ([1, 2], [0, 3, 4]),  # at 16 px: bottom + top <= 4 fits
        "top_halvings": ([1, 2], [0, 3]),
        "code_dim": ([2, 4, 8], [1]),
        "top_codes": ([2, 8, 32], [1]),
        "bottom_codes": ([2, 8, 32], [1]),
        "codebook_decay": ([0.5, 0.9, 0.99], [1.0, 0.0]),
        "dead_code_threshold": ([0.0, 1.0, 2.0], [-1.0]),
        "commitment": ([0.0, 0.25, 1.0], [-0.1]),
        "mask_weight": ([0.0, 1.0], [-1.0]),
        "prior": (["maskgit", "autoregressive"], ["pixelcnn"]),
        "prior_width": ([8, 16, 32], [7]),
        "prior_layers": ([1, 2], [0]),
        "prior_heads": ([1, 2, 4], [0, 3]),
        "prior_dropout": ([0.0, 0.1, 0.5], [1.0]),
        "token_dropout": ([0.0, 0.1, 0.5], [1.0]),
    },
    "gan": {
        "mode": (["mask", "inpaint"], ["joint"]),
        "base_channels": ([4, 8], [3]),
        "max_channels": ([8, 16], [3]),
        "noise_dim": ([1, 4, 16], [0]),
        "d_channels": ([4, 8], [3]),
        "d_max_channels": ([8, 16], [3]),
        "d_layers": ([1, 2, 4], [0, 9]),
        "loss": (["hinge", "nonsaturating"], ["wasserstein"]),
        "diffaugment": ([True, False], []),
        "r1_weight": ([0.0, 1.0, 10.0], [-1.0]),
        "feature_matching": ([0.0, 1.0], [-1.0]),
        "d_lr": ([1e-4, 1e-3], [0.0]),
        "g_lr": ([1e-4, 1e-3], [0.0]),
        "ema_decay": ([0.0, 0.9, 0.999], [1.0]),
    },
}
LOOP_SPACE: dict[str, tuple[list, list]] = {
    "max_steps": ([2, 3, 4], [0]),
    "batch_size": ([2, 4, 8], [0]),
    "lr": ([1e-4, 1e-3, 1e-2], [0.0, -1e-3]),
    "weight_decay": ([0.0, 0.01], [-0.1]),
    "warmup_steps": ([0, 1, 10], [-1]),
    "schedule": (["constant", "cosine"], ["linear"]),
    "grad_clip": ([None, 0.5, 1.0], [0.0]),
    "grad_accum": ([1, 2], [0]),
    "ema": ([False, True], []),
    "ema_decay": ([0.5, 0.9, 0.999], [1.0, 0.0]),
    "checkpoint_every": ([1000], [0]),
}
SAMPLER_SPACE: dict[str, dict[str, tuple[list, list]]] = {
    "cvae": {"temperature": ([0.5, 1.0, 2.0], [0.0, -1.0])},
    "ldm": {"solver": (["dpm++", "ddim"], ["euler"]), "steps": ([1, 2, 4], [0]), "guidance": ([0.0, 1.0, 2.0], [-1.0])},
    "vqvae2": {"temperature": ([0.5, 1.0, 2.0], [0.0]), "top_k": ([0, 1, 4, 100], [-1]), "iterations": ([1, 2, 8], [0]),
               "confidence_noise": ([0.0, 1.0], [-1.0])},
    "gan": {"truncation": ([0.5, 1.0], [-1.0]), "noise_scale": ([0.0, 1.0], [-1.0])},
}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One intra-op thread, as the budget says: on a busy 2-core machine, a second thread per
    process made these tiny models ten times slower, not faster."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def draw(rng: random.Random, family: str) -> tuple[dict, list[str]]:
    """One config: every field plausible, then (half of the time) one or two fields pushed just
    outside (the second part names them). Sections: generator, train, sampler, balance, run."""
    spaces = {**{("generator", k): v for k, v in FAMILY_SPACE[family].items()},
              **{("train", k): v for k, v in LOOP_SPACE.items()},
              **{("sampler", k): v for k, v in SAMPLER_SPACE[family].items()}}
    cfg: dict[str, dict] = {"generator": {}, "train": {}, "sampler": {}}
    for (section, key), (good, _) in spaces.items():
        cfg[section][key] = rng.choice(good)
    real_masks = cfg["generator"]["mode"] in ("mask", "inpaint")
    cfg["balance"] = {**rng.choice([{"strategy": "total", "total": rng.choice([1, 3, 5])}, {"strategy": "ratio", "ratio": 0.1},
                                    {"strategy": "match_max", "max_synthetic_per_class": 2}]),
                      "mask_source": "real" if real_masks else "generated"}
    cfg["run"] = {"budget": rng.choice([12, 24]), "batch_size": rng.choice([1, 4, 16])}
    outside = [(s, k) for (s, k), (_, bad) in spaces.items() if bad]
    pushed = []
    for section, key in rng.sample(outside, rng.choice([0, 0, 1, 2])):
        cfg[section][key] = rng.choice(spaces[section, key][1])
        pushed.append(f"{section}.{key}={cfg[section][key]!r}")
    if rng.random() < 0.1:  # the plan's own settings, just outside too
        cfg["balance"] = rng.choice([{"strategy": "total", "total": 0}, {"strategy": "ratio", "ratio": -0.5},
                                     {**cfg["balance"], "mask_source": "generated" if real_masks else "real"}])
        pushed.append(f"balance={cfg['balance']}")
    return cfg, pushed


def _call(argv: list[str], capsys) -> tuple[int | None, str, str | None]:
    """(exit code, stderr, the exception raised if any) of ``augment ARGV`` run in this process."""
    capsys.readouterr()
    raised = None
    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse
        rc = exc.code
    except Exception as exc:  # noqa: BLE001 -- the property is that nothing is raised: record it, check every draw
        rc, raised = None, "".join(traceback.format_exception_only(exc)).strip() + " at " + \
            "; ".join(f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno}" for f in traceback.extract_tb(exc.__traceback__)[-3:])
    return rc, capsys.readouterr().err, raised


def _last(err: str) -> str:
    lines = err.strip().splitlines()
    return lines[-1] if lines else "(no stderr)"


def _leftovers(folder: Path, keep: set[str], out: str) -> list[str]:
    """What is in ``folder`` beyond ``keep`` and an empty ``out``: a half-made output, a lock, a partial file."""
    left = []
    for p in sorted(folder.iterdir()):
        if p.name in keep or (p.name == out and p.is_dir() and not any(p.iterdir())):
            continue
        left.append(p.name + ("/" + ",".join(sorted(c.name for c in p.iterdir())[:5]) if p.is_dir() else ""))
    return left


def _check(what: str, rc, err: str, raised: str | None, folder: Path, keep: set[str], out: str, problems: list[str]) -> None:
    if raised is not None:
        problems.append(f"{what}: raised {raised}")
    elif rc not in (0, 2):
        problems.append(f"{what}: exit {rc}: {_last(err)}")
    if "Traceback" in err:
        problems.append(f"{what}: printed a traceback: {_last(err)}")
    if rc == 2 and not _last(err).startswith(f"augment {what.split()[-1]}: error:") and not _last(err).startswith("augment: error:"):
        problems.append(f"{what}: exit 2 without an error line: {_last(err)}")
    if rc != 0 and (left := _leftovers(folder, keep, out)):
        problems.append(f"{what}: exit {rc} left {left}")
    if rc == 0 and not (folder / out / "run.json").is_file():
        problems.append(f"{what}: exit 0 without {out}/run.json")


@pytest.mark.parametrize("family", list(FAMILY_SPACE))
def test_random_configs_train_and_sample_exit_0_or_2_and_leave_nothing_half_made(family, phantom_dir, tmp_path, capsys):
    rng = random.Random(f"{SEED}-{family}")
    problems: list[str] = []
    started, completed = time.time(), 0
    for i in range(DRAWS_PER_FAMILY):
        cfg, pushed = draw(rng, family)
        folder = tmp_path / f"draw{i}"
        folder.mkdir()
        (folder / "balance.yaml").write_text(json.dumps(cfg["balance"]))
        gen, syn = folder / "gen", folder / "syn"
        tag = f"{family} draw {i} ({', '.join(pushed) or 'all plausible'})"
        t0 = time.time()

        rc, err, raised = _call(["train", "--data", str(phantom_dir), "--generator", family, "--out", str(gen),
                                 "--budget", str(cfg["run"]["budget"]), *set_args(cfg["generator"], "generator"),
                                 *set_args(cfg["train"], "train")], capsys)
        _check(f"{tag}: train", rc, err, raised, folder, {"balance.yaml"}, "gen", problems)
        said = f"train exit {rc}" + (f" ({_last(err)})" if rc != 0 else "")
        if rc == 0:
            rc, err, raised = _call(["sample", "--generator", str(gen), "--balance", str(folder / "balance.yaml"), "--out", str(syn),
                                     "--batch-size", str(cfg["run"]["batch_size"]), *set_args(cfg["sampler"], "sampler")], capsys)
            _check(f"{tag}: sample", rc, err, raised, folder, {"balance.yaml", "gen"}, "syn", problems)
            said += f"; sample exit {rc}" + (f" ({_last(err)})" if rc != 0 else "")
            if rc == 0:
                with open(syn / "plan.csv", newline="") as fh:
                    planned = sum(int(row["synthetic"]) for row in csv.DictReader(fh))
                with open(syn / "manifest.csv", newline="") as fh:
                    made = sum(1 for _ in csv.DictReader(fh))
                if made != planned:
                    problems.append(f"{tag}: sample made {made} pairs for a plan of {planned}")
                completed += 1
        with capsys.disabled():
            print(f"\n{tag}: {said[:400]} [{time.time() - t0:.1f} s]")
    with capsys.disabled():
        print(f"\n{family}: {DRAWS_PER_FAMILY} draws, {completed} through sample, in {time.time() - started:.1f} s")
    assert not problems, "\n".join(problems)
    assert completed, "no draw got through train and sample: the draws test only the refusals"
