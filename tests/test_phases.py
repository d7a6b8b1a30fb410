"""The training loop's phases: per-phase settings, freezing (weights, BatchNorm statistics, eval
mode, grads), EMA swapped in at a phase's end, ``on_phase_start``, exact resume after a real
kill inside a later phase, and checkpoints that are never unpickled."""

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

from augment.errors import ConfigError
from augment.generators.loop import LoopConfig, PhaseConfig, TrainingError, lr_at, make_accelerator, phase_settings, train_loop
from tests.conftest import kill_when

ROOT = Path(__file__).resolve().parents[1]


class Toy(nn.Module):
    """Phase ``a``: an autoencoder (``encoder`` with BatchNorm + ``decoder``); phase ``b``: a
    ``head`` on the encoder's features. Records what every ``forward`` sees."""

    phases = ("a", "b")

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.SiLU())
        self.decoder = nn.Conv2d(4, 1, 3, padding=1)
        self.head = nn.Conv2d(4, 1, 1)
        self.calls: list[dict] = []
        self.started: list[tuple] = []

    def phase_modules(self, phase):
        return {"a": [self.encoder, self.decoder], "b": [self.head]}[phase]

    def on_phase_start(self, phase, data):
        self.started.append((phase, data, not any(p.requires_grad for p in self.encoder.parameters())))

    def forward(self, images, masks, labels, phase, step, generator):
        frozen = [*self.encoder.parameters(), *self.decoder.parameters()]
        self.calls.append({
            "phase": phase, "step": step, "batch": images.shape[0],
            "encoder": {k: v.clone() for k, v in self.encoder.state_dict().items()},
            "eval": not self.encoder.training and not self.decoder.training,
            "head_training": self.head.training,
            "no_grad": all(not p.requires_grad for p in frozen),
            "grads_none": all(p.grad is None for p in frozen),
        })
        noisy = images + 0.1 * torch.randn(images.shape, generator=generator)
        h = self.encoder(noisy)
        out = self.decoder(h) if phase == "a" else self.head(h)
        target = images if phase == "a" else 1.0 - images
        return ((out - target) ** 2).mean(), {}


def _toy() -> Toy:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return Toy()


def _data():
    g = torch.Generator().manual_seed(1)
    return torch.rand(12, 1, 8, 8, generator=g), torch.zeros(12, 8, 8, dtype=torch.int64), torch.zeros(12, dtype=torch.int64)


def _cfg(**train) -> LoopConfig:
    opts = {"max_steps": 3, "batch_size": 4, "lr": 0.05, "schedule": "constant", "checkpoint_every": 1000, "log_every": 1}
    return LoopConfig.model_validate({**opts, **train})


def _run(run_dir: Path, model: Toy | None = None, resume: bool = False, data=None, **train):
    cfg, model = _cfg(**train), model or _toy()
    result = train_loop(make_accelerator(cfg, model.phases), model, data or _data(), cfg, 0, run_dir, resume)
    return model, result


def test_phase_settings_inherit_and_override():
    cfg = _cfg(lr=1.0, warmup_steps=2, schedule="cosine", max_steps=10, phases={"b": {"lr": 0.5, "max_steps": 4, "ema": True}})
    a, b = phase_settings(cfg, "a"), phase_settings(cfg, "b")
    assert (a.lr, a.max_steps, a.ema, a.warmup_steps) == (1.0, 10, False, 2)
    assert (b.lr, b.max_steps, b.ema, b.warmup_steps, b.phases) == (0.5, 4, True, 2, {})
    assert lr_at(b, 0) == pytest.approx(0.25) and lr_at(b, 4) == pytest.approx(0.0, abs=1e-12)
    assert lr_at(a, 6) == pytest.approx(0.5)  # cosine midpoint of a's own 10 steps
    assert cfg.phases["b"] == PhaseConfig(lr=0.5, max_steps=4, ema=True)
    with pytest.raises(ValueError, match="extra"):
        PhaseConfig(grad_accum=2)


def test_finished_phase_is_frozen_bit_for_bit(tmp_path):
    model, res = _run(tmp_path, phases={"a": {"max_steps": 4}, "b": {"max_steps": 4}})
    a = [c for c in model.calls if c["phase"] == "a"]
    b = [c for c in model.calls if c["phase"] == "b"]
    assert len(a) == 4 and len(b) == 4
    assert all(c["eval"] and c["no_grad"] and c["grads_none"] and c["head_training"] for c in b)
    assert not any(c["eval"] or c["no_grad"] for c in a)
    end_of_a = b[0]["encoder"]
    assert float(end_of_a["1.running_mean"].abs().sum()) > 0 and int(end_of_a["1.num_batches_tracked"]) == 4
    for c in b:
        for k, v in end_of_a.items():
            assert torch.equal(c["encoder"][k], v), k
    for k, v in end_of_a.items():  # the saved weights are what phase b trained against
        assert torch.equal(res.state_dict[f"encoder.{k}"], v), k
    assert not model.training and not any(p.requires_grad for p in model.parameters())


def test_phase_b_sees_phase_a_ema_not_raw_weights(tmp_path):
    phases = {"a": {"max_steps": 4, "ema": True, "ema_decay": 0.5}}
    with_ema, res = _run(tmp_path / "ema", phases=phases)
    raw, _ = _run(tmp_path / "raw", phases={"a": {"max_steps": 4}})
    a_states = [c["encoder"] for c in raw.calls if c["phase"] == "a"]
    for ours, theirs in zip((c["encoder"] for c in with_ema.calls if c["phase"] == "a"), a_states):
        assert all(torch.equal(ours[k], theirs[k]) for k in ours)  # EMA does not change phase a's training
    trajectory = a_states + [next(c["encoder"] for c in raw.calls if c["phase"] == "b")]  # w_0 .. w_4
    shadow = {k: v.clone() for k, v in trajectory[0].items()}
    for w in trajectory[1:]:
        for k, v in w.items():
            shadow[k].lerp_(v, 0.5) if v.dtype.is_floating_point else shadow[k].copy_(v)
    seen = next(c["encoder"] for c in with_ema.calls if c["phase"] == "b")
    for k in shadow:
        assert torch.equal(seen[k], shadow[k]), k
        assert torch.equal(res.state_dict[f"encoder.{k}"], shadow[k]), k
    assert not torch.equal(seen["0.weight"], trajectory[-1]["0.weight"])


def test_per_phase_steps_lr_and_batch_size(tmp_path):
    phases = {"a": {"max_steps": 3, "batch_size": 2, "lr": 0.1}, "b": {"max_steps": 5, "batch_size": 3, "lr": 0.02}}
    model, res = _run(tmp_path, lr=0.5, phases=phases)
    seen = [(c["phase"], c["step"], c["batch"]) for c in model.calls]
    assert seen == [("a", i, 2) for i in range(3)] + [("b", i, 3) for i in range(5)]
    assert res.steps == 8
    assert [(r["step"], r["phase"], r["lr"]) for r in res.loss_rows] == [(i + 1, "a", 0.1) for i in range(3)] + [
        (i + 4, "b", 0.02) for i in range(5)
    ]


def test_on_phase_start_once_per_phase_with_the_data(tmp_path):
    data = _data()
    model, _ = _run(tmp_path, data=data)
    assert [(p, d is data, frozen) for p, d, frozen in model.started] == [("a", True, False), ("b", True, True)]


def test_unknown_phase_name_is_refused_before_training(tmp_path):
    bad = _cfg(phases={"prior": {"max_steps": 2}})
    with pytest.raises(ConfigError, match=r"train.phases has unknown phase `prior` \(this generator's phases: `a`, `b`\)"):
        make_accelerator(bad, Toy.phases)
    model = _toy()
    with pytest.raises(ConfigError, match="unknown phase `prior`"):
        train_loop(make_accelerator(_cfg(), Toy.phases), model, _data(), bad, 0, tmp_path, False)
    assert model.calls == [] and not (tmp_path / "state").exists()


def _job(run_dir: str, out: str, resume: str) -> None:
    """One run of the kill/resume scenario (called in a subprocess via ``python -m``)."""
    torch.set_num_threads(1)
    phases = {"a": {"max_steps": 10}, "b": {"max_steps": 150, "batch_size": 3, "lr": 0.01}}
    _, res = _run(Path(run_dir), resume=resume == "1", ema=True, ema_decay=0.9, grad_accum=2, checkpoint_every=5,
                  log_every=7, phases=phases)
    save_file(res.state_dict, out)
    Path(out).with_suffix(".json").write_text(json.dumps({"rows": res.loss_rows, "resumed_from": res.resumed_from}))


def _script(*jobs: tuple[Path, Path, int]) -> list[str]:
    calls = "; ".join(f"_job({str(r)!r}, {str(o)!r}, {str(int(x))!r})" for r, o, x in jobs)
    return [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(ROOT)!r}); from tests.test_phases import _job; {calls}"]


def _checkpoint_in_b(run: Path) -> bool:
    for p in (run / "state").glob("step_*"):
        try:
            info = json.loads((p / "trainer.json").read_text())
            if info["phase"] == "b" and info["phase_step"] > 0:  # inside b, not at its start
                return True
        except (OSError, ValueError, KeyError):
            pass
    return False


def test_kill_in_phase_b_and_resume_gives_the_same_weights(tmp_path):
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    rc = kill_when(_script((killed, tmp_path / "k.safetensors", 0)), lambda: _checkpoint_in_b(killed))
    assert rc == -signal.SIGKILL, "the run finished before it could be killed; raise phase b's max_steps"
    subprocess.run(_script((killed, tmp_path / "k.safetensors", 1), (clean, tmp_path / "c.safetensors", 0)),
                   check=True, capture_output=True)
    k, c = load_file(tmp_path / "k.safetensors"), load_file(tmp_path / "c.safetensors")
    assert k.keys() == c.keys()
    for name in k:
        assert torch.equal(k[name], c[name]), name
    ki, ci = json.loads((tmp_path / "k.json").read_text()), json.loads((tmp_path / "c.json").read_text())
    assert ki["resumed_from"] > 10 and ci["resumed_from"] is None
    timeless = [[{k: v for k, v in r.items() if k != "steps_per_s"} for r in x["rows"]] for x in (ki, ci)]
    assert timeless[0] == timeless[1] and len(timeless[0]) == 24  # no lost or duplicated log rows


class _Evil:
    """A pickle that creates ``marker`` when it is loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _tamper(folder: Path, how: str, marker: Path) -> None:
    if how in ("model.safetensors", "optimizer.safetensors", "ema.safetensors", "trainer.json"):
        torch.save({"weights": _Evil(marker)}, folder / how)
    elif how == "beside":
        for name in ("pytorch_model.bin", "optimizer.bin", "random_states_0.pkl"):
            torch.save(_Evil(marker), folder / name)
    elif how == "missing":
        (folder / "optimizer.json").unlink()
    elif how == "misfit":
        weights = load_file(folder / "model.safetensors")
        weights["head.weight"] = torch.zeros(2, 2)
        save_file(weights, folder / "model.safetensors")


@pytest.mark.parametrize("how, error", [
    ("model.safetensors", r"`.*step_00000004/model.safetensors` is not a safetensors file"),
    ("optimizer.safetensors", r"`.*step_00000004/optimizer.safetensors` is not a safetensors file"),
    ("ema.safetensors", r"`.*step_00000004/ema.safetensors` is not a safetensors file"),
    ("trainer.json", r"`.*step_00000004/trainer.json` is not JSON"),
    ("missing", r"`.*step_00000004/optimizer.json` is missing"),
    ("misfit", r"`.*step_00000004/model.safetensors` does not fit the model: it holds `head.weight` as \(2, 2\)"),
    ("beside", None),
])
def test_checkpoint_is_never_unpickled(tmp_path, how, error):
    probe = tmp_path / "probe"
    pickle_bytes = tmp_path / "payload.pt"
    torch.save(_Evil(probe), pickle_bytes)
    torch.load(pickle_bytes, weights_only=False)
    assert probe.exists()  # the payload is live: loading it with pickle runs code

    run, marker = tmp_path / "run", tmp_path / "marker"
    clean_model, clean = _run(run, ema=True, checkpoint_every=2)
    folder = run / "state" / "step_00000004"
    assert json.loads((folder / "trainer.json").read_text())["phase"] == "b"
    _tamper(folder, how, marker)
    if error is None:
        data = _data()
        model, res = _run(run, resume=True, ema=True, checkpoint_every=2, data=data)
        assert res.resumed_from == 4
        assert [(p, d is data, frozen) for p, d, frozen in model.started] == [("b", True, True)]  # restarted inside b
        assert [c["step"] for c in model.calls] == [1, 2]
        assert all(torch.equal(res.state_dict[k], v) for k, v in clean.state_dict.items())
    else:
        with pytest.raises(TrainingError, match=error):
            _run(run, resume=True, ema=True, checkpoint_every=2)
    assert not marker.exists()


def test_checkpoint_from_other_phase_lengths_is_refused(tmp_path):
    _run(tmp_path, checkpoint_every=2)
    with pytest.raises(TrainingError, match=r"resumes step 4 in phase `b`, but this run puts it in `a`"):
        _run(tmp_path, resume=True, checkpoint_every=2, phases={"a": {"max_steps": 5}})
