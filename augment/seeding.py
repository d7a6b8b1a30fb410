"""Seeds derived from tuples of integers, and the process layout (one process or data parallel)."""

from __future__ import annotations

import os


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers (SplitMix64 steps), so nearby tuples give unrelated streams:
    ``mix_seed(run_seed, class, index)`` seeds one synthetic sample, ``mix_seed(seed, step)`` one
    training step."""
    x = 0x9E3779B97F4A7C15
    for p in parts:
        x = (x ^ (p & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        x = (x ^ (x >> 31)) * 0x94D049BB133111EB & 0xFFFFFFFFFFFFFFFF
    return x & 0x7FFFFFFFFFFFFFFF


LAUNCH_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")  # what torchrun sets, every one


def launched() -> bool:
    """Whether a multi-process launcher (torchrun, ``accelerate launch``) started this process: it
    sets every one of :data:`LAUNCH_VARIABLES`. A stray ``RANK`` alone (a scheduler's or a shell's)
    is not a launch: such a process is on its own, and must print and lock like one."""
    return all(os.environ.get(var, "").strip() for var in LAUNCH_VARIABLES)


def rank_zero() -> bool:
    """Whether this process is rank 0 of its launch, or was not launched by one (:func:`launched`):
    the one process that prints and locks."""
    return not launched() or os.environ["RANK"].strip() == "0"


def cpu_requested() -> bool:
    """Run on CPU (gloo for data parallel) when asked with ACCELERATE_USE_CPU, or when launched
    with several processes on a machine without CUDA (accelerate would otherwise silently start
    one independent single-process run per rank)."""
    import torch

    world = int(os.environ.get("WORLD_SIZE", "1"))
    flag = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    return flag or (world > 1 and not torch.cuda.is_available())


def process_state():
    """accelerate's PartialState with the CPU rule above; checks every launched process is seen."""
    from accelerate import PartialState

    from augment.errors import AugmentError

    state = PartialState(cpu=cpu_requested())
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if state.num_processes != world:
        raise AugmentError(f"launched {world} processes but accelerate sees {state.num_processes}; check the launcher")
    return state
