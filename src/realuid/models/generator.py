"""The one-step generator: a copy of the teacher network evaluated once at the source end."""

from __future__ import annotations

import torch
from torch import nn

from ..sampling import generate_one_step


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
