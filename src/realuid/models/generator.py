"""The one-step generator: a copy of the teacher network evaluated once at the source end.

The family (duck-typed: ``t_src``, ``source_state``, ``predict_x1``, ``generator_noise``) decides where the
generator reads its input and how its output becomes data, so this module needs no sampler.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

# ``model(t [B], x [B, ...], y [B] or None) -> [B, ...]``, as everywhere in realuid.
Model = Callable[[Tensor, Tensor, "Tensor | None"], Tensor]


def generate_one_step(family, generator_model: Model, x0: Tensor, y: Tensor | None = None,
                      noise: Tensor | None = None) -> Tensor:
    """One-step generation ``x1 = predict_x1(t_src, s, G(t_src, s, y))`` with ``s = source_state(x0, t_src, noise)``.

    The generator is a copy of the teacher network read once at the family's ``t_src`` and converted
    to a data estimate by the family (fm: ``x1 = z + G(0, z, y)``). x0: ``[B, ...]`` noise, or the
    corrupted input of a bridge; noise: ``[B, ...]`` Gaussian, exactly when the family's generator takes
    noise (``family.generator_noise``: a bridge read at ``generator_t > 0``). Gradients flow (this is the
    generator of the distillation). Returns ``[B, ...]``.
    """
    if not isinstance(x0, Tensor) or x0.dim() < 2:
        raise ValueError(f"x0 must be a [B, ...] tensor with at least one non-batch dim, got {x0!r}")
    if (noise is not None) != family.generator_noise:
        raise ValueError(f"this {family.name!r} generator takes noise: pass noise [B, ...]" if family.generator_noise
                         else f"this {family.name!r} generator takes no noise besides x0; pass noise=None")
    # The generator reads its input at one time for the whole batch.
    t_batch = torch.full((x0.shape[0],), family.t_src, dtype=x0.dtype, device=x0.device)
    state = family.source_state(x0, t_batch, noise)
    return family.predict_x1(t_batch, state, generator_model(t_batch, state, y))


class OneStepGenerator(nn.Module):
    """``x1 = family.predict_x1(t_src, x_src, net(t_src, x_src, y))``.

    The family decides where the generator reads its input (``t_src``: 0 for flow matching and
    interpolants; a time with a non-vanishing signal coefficient for diffusion; ``generator_t`` for
    bridges) and how the network output becomes a data estimate, so this class is the same for every family.

    Unpaired families take source noise ``z`` [B, ...]; a bridge generator is conditional on the
    corrupted input: pass it as ``z`` too (the source endpoint of the pair), and, when the family's
    generator takes noise (``family.generator_noise``), Gaussian ``noise`` [B, ...] as well.
    """

    def __init__(self, family, net: nn.Module):
        super().__init__()
        self.family = family
        self.net = net

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None, noise: torch.Tensor | None = None) -> torch.Tensor:
        return generate_one_step(self.family, self.net, z, y, noise)
