"""The loops' randomness as a pure function of (seed, step, phase): what makes resuming exact."""

from __future__ import annotations

import functools
import hashlib

import torch


def _seed_value(seed: int, *counters: int) -> int:
    """A 63-bit seed that depends only on (seed, counters): the basis of exact resume."""
    mixed = hashlib.sha256(repr((seed, *counters)).encode()).digest()
    return int.from_bytes(mixed[:8], "little") & ((1 << 63) - 1)


def seeded(seed: int, *counters: int, device: torch.device) -> torch.Generator:
    rng = torch.Generator(device=device)
    rng.manual_seed(_seed_value(seed, *counters))
    return rng


def seed_dropout(seed: int, step: int, rank: int) -> None:
    """Seed the global RNG (dropout masks) for ``step`` on process ``rank``.

    Rank 0 keeps the one-process seed; other ranks get their own, as their rows would get other masks
    inside one big batch.
    """
    torch.manual_seed(_seed_value(seed, step, -1, *([rank] if rank else [])))


def keeps_global_rng(loop):
    """Run ``loop`` on a fork of the global RNG: the loops seed it every step, and a caller's own random
    stream (a benchmark, a notebook) must not change because it trained something."""

    @functools.wraps(loop)
    def wrapper(*args, **kwargs):
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []
        with torch.random.fork_rng(devices=devices):
            return loop(*args, **kwargs)

    return wrapper
