"""Phases with several optimizers stepped in turn (``phase_parts``), on a toy adversarial pair:
each optimizer changes only its own part, grads never leak from one part's step into the next,
every optimizer is checkpointed without pickles and resumes exactly after a real kill, and a
non-finite loss names its part."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional as F

from augment.generators.base import Part
from augment.generators.loop import LoopConfig, TrainingError, lr_at, make_accelerator, phase_settings, train_loop
from augment.generators.plan import has_several_parts
from augment.seeding import mix_seed
from tests.conftest import kill_when, run_torchrun

ROOT = Path(__file__).resolve().parents[1]
D_LR, G_LR = 0.02, 0.01


def _flat(module: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in module.parameters()]).clone()


class Pair(nn.Module):
    """A generator (4 noise values -> an 8x8 image) and a discriminator, trained in one phase by
    two parts (discriminator first) with the non-saturating GAN loss. Records what every
    ``forward`` sees."""

    phases = ("main",)

    def __init__(self, names: tuple[str, str] = ("d", "g"), nan_at: int | None = None, detach: bool = False) -> None:
        super().__init__()
        self.gen = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 64))
        self.disc = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.LeakyReLU(0.2), nn.Linear(16, 1))
        self.names, self.nan_at, self.detach = names, nan_at, detach
        self.calls: list[dict] = []

    def phase_modules(self, phase):
        return [self.gen, self.disc]

    def phase_parts(self, phase):
        d, g = self.names
        return {d: Part([self.disc], lr=D_LR, betas=(0.5, 0.999)), g: Part([self.gen], lr=G_LR, betas=(0.0, 0.9), weight_decay=0.01)}

    def forward(self, images, masks, labels, phase, step, generator, part):
        z = torch.randn(images.shape[0], 4, generator=generator)
        self.calls.append({
            "part": part, "step": step, "images": images.clone(), "z": z.clone(),
            "gen": _flat(self.gen), "disc": _flat(self.disc),
            "grads_none": all(p.grad is None for p in self.parameters()),
        })
        with torch.set_grad_enabled(not (self.detach and part == self.names[0])):
            fake = torch.sigmoid(self.gen(z)).view(-1, 1, 8, 8)
        if part == self.names[0]:
            # Not detached by default, on purpose: the loop must drop these generator grads before the generator's step.
            real_score = self.disc(images)
            loss = F.softplus(-real_score).mean() + F.softplus(self.disc(fake)).mean()
            if step == self.nan_at:
                loss = loss * float("nan")
            return loss, {"d_real": float(real_score.detach().mean())}
        return F.softplus(-self.disc(fake)).mean(), {"g_fake": float(fake.detach().mean())}


def _pair(**kw) -> Pair:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return Pair(**kw)


def _data():
    g = torch.Generator().manual_seed(1)
    return torch.rand(12, 1, 8, 8, generator=g), torch.zeros(12, 8, 8, dtype=torch.int64), torch.zeros(12, dtype=torch.int64)


def _cfg(**train) -> LoopConfig:
    opts = {"max_steps": 4, "batch_size": 4, "lr": 1.0, "warmup_steps": 2, "schedule": "cosine",
            "checkpoint_every": 1000, "log_every": 1}
    return LoopConfig.model_validate({**opts, **train})


def _run(run_dir: Path, model: Pair | None = None, resume: bool = False, **train):
    cfg, model = _cfg(**train), model or _pair()
    acc = make_accelerator(cfg, model.phases, several_parts=has_several_parts(model))
    return model, train_loop(acc, model, _data(), cfg, 0, run_dir, resume), acc


def test_each_part_steps_only_its_own_parameters_on_the_same_batch(tmp_path):
    model, res, acc = _run(tmp_path, grad_accum=2)
    calls = model.calls
    assert [(c["step"], c["part"]) for c in calls] == [(s, p) for s in range(4) for p in "ddgg"]
    assert acc.ddp_handler.find_unused_parameters  # a discriminator step leaves the generator unused
    for s in range(4):
        d1, d2, g1, g2 = calls[4 * s: 4 * s + 4]
        assert d1["grads_none"] and g1["grads_none"]  # nothing carried over from the step before
        assert not d2["grads_none"]  # ... while micro-batches of one part do accumulate
        for a, b in ((d1, g1), (d2, g2)):  # same data, other noise
            assert torch.equal(a["images"], b["images"]) and not torch.equal(a["z"], b["z"])
        for c in (d2, g1, g2):
            assert torch.equal(c["gen"], d1["gen"])  # the discriminator's step left the generator alone
        assert torch.equal(d2["disc"], d1["disc"]) and torch.equal(g2["disc"], g1["disc"])
        assert not torch.equal(g1["disc"], d1["disc"])  # ... and moved the discriminator
        after_g = calls[4 * s + 4] if s < 3 else {"gen": _flat(model.gen), "disc": _flat(model.disc)}
        assert torch.equal(after_g["disc"], g1["disc"]) and not torch.equal(after_g["gen"], g1["gen"])
    # The first part draws what a one-optimizer phase would: seeds are (seed, phase, micro-batch, rank).
    first = torch.Generator().manual_seed(mix_seed(0, 0x4015E, 0, 1, 0))
    assert torch.equal(calls[1]["z"], torch.randn(4, 4, generator=first))
    s = phase_settings(_cfg(), "main")
    assert [{k: r[k] for k in ("step", "lr_d", "lr_g")} for r in res.loss_rows] == [
        {"step": i + 1, "lr_d": lr_at(s.model_copy(update={"lr": D_LR}), i), "lr_g": lr_at(s.model_copy(update={"lr": G_LR}), i)}
        for i in range(4)
    ]
    assert all({"loss_d", "loss_g", "d_real", "g_fake"} <= r.keys() and "loss" not in r for r in res.loss_rows)


def test_checkpoint_holds_both_optimizers_without_pickles(tmp_path):
    model, _, _ = _run(tmp_path, checkpoint_every=2, ema=True)
    folder = tmp_path / "state" / "step_00000002"
    names = {"model.safetensors", "ema.safetensors", "trainer.json",
             "optimizer.d.safetensors", "optimizer.d.json", "optimizer.g.safetensors", "optimizer.g.json"}
    assert {p.name for p in folder.iterdir()} == names
    for name in names:
        head = (folder / name).read_bytes()[:2]
        assert head != b"PK" and not head.startswith(b"\x80")  # neither torch.save's zip nor a raw pickle
    for part, module, betas in (("d", model.disc, [0.5, 0.999]), ("g", model.gen, [0.0, 0.9])):
        state = load_file(folder / f"optimizer.{part}.safetensors")
        params = list(module.parameters())
        assert set(state) == {f"state.{i}.{k}" for i in range(len(params)) for k in ("step", "exp_avg", "exp_avg_sq")}
        for i, p in enumerate(params):
            assert state[f"state.{i}.exp_avg"].shape == p.shape and float(state[f"state.{i}.step"]) == 2.0
            assert float(state[f"state.{i}.exp_avg_sq"].abs().sum()) > 0
        (group,) = json.loads((folder / f"optimizer.{part}.json").read_text())["param_groups"]
        assert group["betas"] == betas and group["params"] == list(range(len(params)))


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_pickled_or_missing_optimizer_is_refused_by_name(tmp_path):
    run, marker = tmp_path / "run", tmp_path / "marker"
    _run(run, checkpoint_every=2)
    folder = run / "state" / "step_00000002"
    torch.save({"state": _Evil(marker)}, folder / "optimizer.g.safetensors")
    with pytest.raises(TrainingError, match=r"`.*step_00000002/optimizer.g.safetensors` is not a safetensors file"):
        _run(run, resume=True, checkpoint_every=2)
    assert not marker.exists()
    # A run whose parts are named otherwise finds no optimizer of its own in the checkpoint.
    with pytest.raises(TrainingError, match=r"`.*step_00000002/optimizer.disc.safetensors` is missing"):
        _run(run, model=_pair(names=("disc", "gen")), resume=True, checkpoint_every=2)


def test_non_finite_discriminator_loss_names_the_part(tmp_path):
    model = _pair(nan_at=2)
    with pytest.raises(TrainingError, match=r"loss became nan at step 3 \(phase `main`, part `d`\); lower train.lr"):
        _run(tmp_path, model=model)
    assert [(c["step"], c["part"]) for c in model.calls][-2:] == [(1, "g"), (2, "d")]  # the generator never stepped on it


@pytest.mark.parametrize("parts, error", [
    (lambda m: {"d": Part([m.disc]), "g": Part([m.gen, m.disc])}, r"phase `main` \(part `d`\) and phase `main` \(part `g`\) train the same"),
    (lambda m: {"d": Part([m.disc])}, r"phase_modules\(`main`\) must list the modules of all of phase_parts"),
    (lambda m: {"D": Part([m.disc]), "g": Part([m.gen])}, r"part name 'D'; use lower-case letters"),
    (lambda m: {}, r"must return a non-empty dict"),
])
def test_inconsistent_parts_are_refused(tmp_path, parts, error):
    model = _pair()
    model.phase_parts = lambda phase: parts(model)
    with pytest.raises(ValueError, match=error):
        _run(tmp_path, model=model)
    assert model.calls == []


def test_part_settings_are_checked():
    with pytest.raises(ValueError, match="betas must be two numbers in"):
        Part([], betas=(0.5, 1.0))
    with pytest.raises(ValueError, match="lr must be > 0"):
        Part([], lr=0.0)
    with pytest.raises(ValueError, match="must be a list of modules, not one module"):
        Part(nn.Sequential(nn.Linear(2, 2)))


def _ddp_job(run_dir: str) -> None:
    """Two CPU ranks (under torchrun) training a pair whose discriminator step leaves the
    generator unused, which data parallelism only allows with ``find_unused_parameters``."""
    torch.set_num_threads(1)
    _, res, acc = _run(Path(run_dir), model=_pair(detach=True), grad_accum=2, checkpoint_every=2)
    if acc.is_main_process:
        (Path(run_dir) / "checksums.json").write_text(json.dumps(res.replica_checksums))
    torch.distributed.destroy_process_group()  # as augment.cli does: gloo threads left to exit can abort a rank


def test_two_parts_train_data_parallel(tmp_path):
    code = f"import sys; sys.path.insert(0, {str(ROOT)!r}); from tests.test_adversarial import _ddp_job; _ddp_job({str(tmp_path)!r})"
    res = run_torchrun("--no-python", sys.executable, "-c", code)
    errors = [line for line in res.stderr.splitlines() if "Error" in line or "error" in line or "what()" in line]
    assert res.returncode == 0, "\n".join(errors[:20]) + "\n" + res.stderr[-1500:]
    checksums = json.loads((tmp_path / "checksums.json").read_text())
    assert len(checksums) == 2 and checksums[0] == checksums[1]  # the replicas agree
    assert {"optimizer.d.safetensors", "optimizer.g.safetensors"} <= {p.name for p in (tmp_path / "state" / "step_00000002").iterdir()}


def _job(run_dir: str, out: str, resume: str) -> None:
    """One run of the kill/resume scenario (called in a subprocess via ``python -c``)."""
    torch.set_num_threads(1)
    _, res, _ = _run(Path(run_dir), resume=resume == "1", max_steps=100, grad_accum=2, ema=True, ema_decay=0.9,
                     checkpoint_every=5, log_every=7)
    save_file(res.state_dict, out)
    Path(out).with_suffix(".json").write_text(json.dumps({"rows": res.loss_rows, "resumed_from": res.resumed_from}))


def _script(*jobs: tuple[Path, Path, int]) -> list[str]:
    calls = "; ".join(f"_job({str(r)!r}, {str(o)!r}, {str(int(x))!r})" for r, o, x in jobs)
    return [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(ROOT)!r}); from tests.test_adversarial import _job; {calls}"]


def test_kill_and_resume_gives_the_same_weights_and_optimizers(tmp_path):
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    rc = kill_when(_script((killed, tmp_path / "k.safetensors", 0)),
                   lambda: any((p / "trainer.json").is_file() for p in (killed / "state").glob("step_*")))
    assert rc == -signal.SIGKILL, "the run finished before it could be killed; raise max_steps"
    subprocess.run(_script((killed, tmp_path / "k.safetensors", 1), (clean, tmp_path / "c.safetensors", 0)),
                   check=True, capture_output=True)
    k, c = load_file(tmp_path / "k.safetensors"), load_file(tmp_path / "c.safetensors")
    assert k.keys() == c.keys() and all(torch.equal(k[name], c[name]) for name in k)
    ki, ci = json.loads((tmp_path / "k.json").read_text()), json.loads((tmp_path / "c.json").read_text())
    assert 0 < ki["resumed_from"] < 95 and ci["resumed_from"] is None
    timeless = [[{key: v for key, v in r.items() if key != "steps_per_s"} for r in x["rows"]] for x in (ki, ci)]
    assert timeless[0] == timeless[1] and len(timeless[0]) == 15  # no lost or duplicated log rows
    # The last checkpoint of both runs (step 95) holds the same optimizer moments, EMA and weights.
    for name in ("optimizer.d.safetensors", "optimizer.g.safetensors", "ema.safetensors", "model.safetensors"):
        ours, theirs = (load_file(run / "state" / "step_00000095" / name) for run in (killed, clean))
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[key], theirs[key]) for key in ours), name
    for name in ("optimizer.d.json", "optimizer.g.json"):
        assert (killed / "state" / "step_00000095" / name).read_text() == (clean / "state" / "step_00000095" / name).read_text()
