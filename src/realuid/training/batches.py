"""Training batches: the shuffled stream indexed by step, the path inputs drawn for it, and each
process's rows of them."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ConfigError
from .rng import seeded


@dataclass
class TrainData:
    """A training split on the device: ``x1`` [N, ...] data, ``y`` [N] labels, ``x0`` [N, ...] pairs."""

    x1: torch.Tensor
    y: torch.Tensor | None = None
    x0: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.x1.shape[0]


class BatchStream:
    """Batch ``k`` of a shuffled, epoch-based stream, computable from ``k`` alone.

    Under data parallelism this is the *global* batch, the same on every process; each process then
    computes its own rows of it (``Dist.rows``).
    """

    def __init__(self, data: TrainData, batch_size: int, seed: int):
        if batch_size > len(data):
            raise ConfigError(f"batch_size {batch_size} is larger than the training set ({len(data)} samples)")
        self.data, self.batch_size, self.seed = data, batch_size, seed
        self.per_epoch = len(data) // batch_size  # the ragged tail of an epoch is dropped
        self._epoch, self._perm = None, None

    def __call__(self, k: int) -> TrainData:
        epoch, pos = divmod(k, self.per_epoch)
        if epoch != self._epoch:
            rng = seeded(self.seed, epoch, device=torch.device("cpu"))
            self._perm = torch.randperm(len(self.data), generator=rng).to(self.data.x1.device)
            self._epoch = epoch
        idx = self._perm[pos * self.batch_size : (pos + 1) * self.batch_size]
        pick = lambda a: None if a is None else a[idx]  # noqa: E731
        return TrainData(self.data.x1[idx], pick(self.data.y), pick(self.data.x0))


def draw(family, batch: TrainData, rng: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Source endpoint, time and extra path noise for one batch: (x0, t, noise)."""
    x1 = batch.x1
    x0 = batch.x0 if family.paired else family.sample_source(x1, rng=rng)
    t = family.sample_time(x1.shape[0], rng=rng, device=x1.device)
    noise = family.sample_noise(x1, rng=rng)
    return x0, t, noise


def take(rows: slice, *tensors: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
    """Rows ``rows`` of each [B, ...] tensor (None stays None)."""
    return tuple(None if a is None else a[rows] for a in tensors)


def local_batch(batch: TrainData, rows: slice) -> TrainData:
    return TrainData(*take(rows, batch.x1, batch.y, batch.x0))
