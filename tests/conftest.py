"""Shared fixtures: tiny datasets built here (phantom or hand-made folders), never downloaded."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

if "PYTEST_XDIST_WORKER" in os.environ:
    # Under ``pytest -n 2`` each worker gets one core: one intra-op thread here, and one in every
    # process a test starts (``python -m augment``, torchrun's ranks), which inherit the environment.
    # Two workers each spinning a thread per core would oversubscribe the CPU and run slower.
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"
    torch.set_num_threads(1)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def phantom_dir(tmp_path_factory) -> Path:
    """A small prepared phantom dataset (16 px, 60 pairs), built once per session."""
    from augment.api import prepare
    from augment.config import PrepareConfig

    out = tmp_path_factory.mktemp("phantom") / "data"
    prepare(PrepareConfig(source="phantom", out=out, image_size=16, count=60, seed=3))
    return out


def write_folder(
    root: Path,
    n_per_class: dict[int, int],
    size: int = 12,
    rgb: bool = False,
    split: bool = True,
    groups: dict[str, str] | None = None,
    masks: bool = True,
) -> Path:
    """A valid BUSI-layout folder with random pixels: images/, masks/, labels.csv, classes.csv."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    if masks:
        (root / "masks").mkdir()
    rows = []
    for label, n in n_per_class.items():
        for i in range(n):
            rid = f"c{label}_{i:03d}"
            shape = (size, size, 3) if rgb else (size, size)
            Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(root / "images" / f"{rid}.png")
            if masks:
                m = np.zeros((size, size), np.uint8)
                if label > 0:
                    m[2:6, 2:6] = 1
                Image.fromarray(m).save(root / "masks" / f"{rid}.png")
            row = {"id": rid, "label": label}
            if split:
                row["split"] = ("train", "train", "val", "test")[i % 4]
            if groups is not None:
                row["group"] = groups.get(rid, rid)
            rows.append(row)
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)
    names = {0: "normal", 1: "benign", 2: "malignant"}
    pd.DataFrame({"label": list(n_per_class), "name": [names.get(k, str(k)) for k in n_per_class]}).to_csv(
        root / "classes.csv", index=False
    )
    return root


@pytest.fixture
def folder(tmp_path) -> Path:
    return write_folder(tmp_path / "src", {0: 4, 1: 4, 2: 4})


def shared(path: str) -> Path:
    p = SHARED_DATA / path
    if not p.exists():
        pytest.skip(f"real data `{p}` is absent (../shared/data is not beside this checkout)")
    return p


#: The smallest config of each generator family that still runs all of its code (8-16 channels);
#: the contract in test_generators.py runs over every family here, so a new family needs an entry.
TINY = {
    "cvae": {"base_channels": 4, "max_channels": 8, "latent_dim": 4},
    "gan": {"base_channels": 4, "max_channels": 8, "noise_dim": 4, "d_channels": 4, "d_max_channels": 8},
    "ldm": {"ae_channels": [8, 8], "unet_channels": [8, 16], "latent_channels": 2},
    "vqvae2": {"channels": 8, "res_blocks": 1, "code_dim": 4, "top_codes": 8, "bottom_codes": 8,
               "prior_width": 16, "prior_layers": 1, "prior_heads": 2},
}
TINY_CVAE = {"family": "cvae", **TINY["cvae"]}
#: a downstream task (``segmentation`` / ``classification``) trained for a few steps by the API
TINY_TASK = {"steps": 6, "batch_size": 8, "eval_every": 3, "base_channels": 4}
#: the same, shorter, as written in the pipeline specs that tests run end to end
TINY_SPEC_TASK = {**TINY_TASK, "steps": 4, "eval_every": 2}


def _yaml(value) -> str:
    return value if isinstance(value, str) else json.dumps(value)  # JSON is YAML, and `true` is a bool in both


def set_args(values: dict, prefix: str = "") -> list[str]:
    """``{"k": v}`` as the CLI's ``--set prefix.k=v`` arguments, e.g. ``set_args(TINY["cvae"], "generator")``."""
    return [arg for k, v in values.items() for arg in ("--set", f"{prefix}.{k}={_yaml(v)}" if prefix else f"{k}={_yaml(v)}")]


def yaml_items(values: dict) -> str:
    """``{"k": v}`` as ``k: v, ...``, to write inside a YAML flow mapping of a test's spec."""
    return ", ".join(f"{k}: {_yaml(v)}" for k, v in values.items())


def augment_cmd(*args) -> list[str]:
    """The command line of ``python -m augment ARGS`` in this interpreter."""
    return [sys.executable, "-m", "augment", *map(str, args)]


def run_cli(*args, cwd=None, env=None, timeout: float | None = None, check: bool = False) -> subprocess.CompletedProcess:
    """Run ``python -m augment ARGS`` in a fresh process, its output captured as text (end-to-end CLI tests)."""
    return subprocess.run(augment_cmd(*args), capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout, check=check)


_MACHINE: dict[str, object] = {}  # this worker's claim on the machine and where the run's lock files are


def _lock_file(name: str):
    return open(_MACHINE["dir"] / f"{name}.lock", "a")


def forged_png(width: int = 20000, height: int = 20000) -> bytes:
    """A valid 16x16 grayscale PNG whose IHDR (CRC fixed up) claims ``width`` x ``height`` pixels:
    a decompression bomb's header, cheap to write."""
    import io
    import struct
    import zlib

    buf = io.BytesIO()
    Image.new("L", (16, 16), 90).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    data[16:24] = struct.pack(">II", width, height)  # IHDR data starts after the signature, length and type
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def set_copy(src: Path, dest: Path, keep: int | None = None, fill: int | None = None) -> Path:
    """A copy of the set (dataset or synthetic set) at ``src`` with only its first ``keep`` rows,
    and/or every image set to the constant ``fill`` (sha256 updated), for degenerate-set tests."""
    import shutil

    from augment.data.images import sha256_file
    from augment.data.manifest import read_manifest, write_manifest

    shutil.copytree(src, dest)
    df = read_manifest(dest)
    if keep is not None:
        df = df.iloc[:keep].reset_index(drop=True)
    if fill is not None:
        for i, path in enumerate(df["image"]):
            pixels = np.asarray(Image.open(dest / path))
            Image.fromarray(np.full_like(pixels, fill)).save(dest / path)
            df.loc[i, "sha256"] = sha256_file(dest / path)
    write_manifest(df, dest / "manifest.csv")
    return dest


@contextlib.contextmanager
def own_cache(tmp_path_factory):
    """``with own_cache(f): ...``: audits inside cache under a fresh AUGMENT_CACHE (a module whose
    tests count cache hits starts from an empty one)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AUGMENT_CACHE", str(tmp_path_factory.mktemp("augment_cache")))
        yield


@pytest.fixture(scope="session", autouse=True)
def _user_cache(tmp_path_factory):
    """Audits cache their domain encoders in the user's cache folder (``augment.audit.cache_root``):
    the tests use a folder of their own (CLI subprocesses inherit it), never ``~/.cache``."""
    before = os.environ.get("AUGMENT_CACHE")
    os.environ["AUGMENT_CACHE"] = str(tmp_path_factory.mktemp("augment_cache"))
    yield
    if before is None:
        os.environ.pop("AUGMENT_CACHE", None)
    else:
        os.environ["AUGMENT_CACHE"] = before


@pytest.fixture(autouse=True)
def _machine_share(tmp_path_factory):
    """Under xdist every test holds a shared claim on the machine, taken through a turnstile, so a
    multi-process test (:func:`whole_machine`) can have it alone: gloo ranks on a 2-core machine
    that another worker keeps busy have aborted (a rank dead, its peer "Connection closed by
    peer"), which never happened with the suite run serially."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        yield
        return
    _MACHINE["dir"] = tmp_path_factory.getbasetemp().parent  # shared by the workers of one run
    with _lock_file("turnstile") as gate, _lock_file("machine") as machine:
        fcntl.flock(gate, fcntl.LOCK_EX)
        fcntl.flock(machine, fcntl.LOCK_SH)
        fcntl.flock(gate, fcntl.LOCK_UN)
        _MACHINE["claim"] = machine
        try:
            yield
        finally:
            _MACHINE.pop("claim", None)
            fcntl.flock(machine, fcntl.LOCK_UN)


@contextlib.contextmanager
def whole_machine():
    """The machine to this test alone (under xdist): no new test starts on the other worker, and
    this waits for the one running there to end. Its own shared claim is dropped first, so two
    workers asking at once take turns instead of waiting for each other."""
    machine = _MACHINE.get("claim")
    if machine is None:
        yield
        return
    fcntl.flock(machine, fcntl.LOCK_UN)
    with _lock_file("turnstile") as gate:
        fcntl.flock(gate, fcntl.LOCK_EX)
        fcntl.flock(machine, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(machine, fcntl.LOCK_SH)
            fcntl.flock(gate, fcntl.LOCK_UN)


def run_torchrun(*args, processes: int = 2, timeout: float = 300) -> subprocess.CompletedProcess:
    """``torchrun --standalone ARGS`` (e.g. ``-m augment train ...``) as ``processes`` CPU ranks,
    one thread each, with the machine to itself (:func:`whole_machine`)."""
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes), *map(str, args)]
    with whole_machine():
        res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    if res.returncode:  # the ranks' own errors at the end, where a failing test's message shows the tail
        first = [line for line in res.stderr.splitlines() if line.startswith("[rank") and ("Error" in line or "error:" in line)]
        res.stderr += "\n== the ranks' errors ==\n" + "\n".join(first[:10])
    return res


def run_ddp(*args, processes: int = 2, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m augment ARGS`` as ``processes`` CPU ranks under torchrun (:func:`run_torchrun`)."""
    return run_torchrun("-m", "augment", *args, processes=processes, timeout=timeout)


@pytest.fixture(scope="session")
def tiny_run(phantom_dir, tmp_path_factory) -> Path:
    """A tiny cVAE trained for a few steps on the phantom budget (budget 24)."""
    from augment.api import train
    from augment.config import validate
    from augment.generators import TrainConfig

    out = tmp_path_factory.mktemp("tiny_run") / "run"
    cfg = validate(TrainConfig, {
        "data": phantom_dir, "out": out, "budget": 24, "seed": 0, "generator": TINY_CVAE,
        "train": {"max_steps": 10, "batch_size": 8, "checkpoint_every": 1000},
    }, "train")
    train(cfg)
    return out


def train_tiny_cvae(data: Path, out: Path, mode: str) -> Path:
    """A tiny cVAE in ``mode`` trained for 10 steps on budget 24 of ``data``."""
    from augment.api import train
    from augment.config import validate
    from augment.generators import TrainConfig

    cfg = validate(TrainConfig, {
        "data": data, "out": out, "budget": 24, "seed": 0, "generator": {**TINY_CVAE, "mode": mode},
        "train": {"max_steps": 10, "batch_size": 8, "checkpoint_every": 1000},
    }, "train")
    train(cfg)
    return out


@pytest.fixture(scope="session")
def tiny_mask_run(phantom_dir, tmp_path_factory) -> Path:
    """A tiny mask-conditioned cVAE (``mode: mask``) trained for a few steps on budget 24."""
    return train_tiny_cvae(phantom_dir, tmp_path_factory.mktemp("tiny_mask_run") / "run", "mask")


def kill_when(cmd: list[str], ready, timeout: float = 120.0) -> int:
    """Start ``cmd``, SIGKILL it as soon as ``ready()`` is true, return its exit code
    (``-SIGKILL`` when it was killed; anything else means it ended first)."""
    import signal
    import subprocess
    import time

    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None and not ready():
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    return proc.wait()
