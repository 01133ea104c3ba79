"""The one-step generator: a copy of the teacher network evaluated once at the source end."""

from __future__ import annotations

import torch
from torch import nn


class OneStepGenerator(nn.Module):
    """``x1 = family.predict_x1(t_src, x_src, net(t_src, x_src, y))``.

    The family decides where the generator reads its input (``t_src``: 0 for flow matching, interpolants
    and bridges; a time with a non-vanishing signal coefficient for diffusion) and how the network output
    becomes a data estimate, so this class is the same for every family.

    Unpaired families take source noise ``z`` [B, ...]; a bridge generator is conditional on the
    corrupted input: pass it as ``z`` too (the source endpoint of the pair).
    """

    def __init__(self, family, net: nn.Module):
        super().__init__()
        self.family = family
        self.net = net

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        t = torch.full((z.shape[0],), self.family.t_src, device=z.device, dtype=z.dtype)
        x_src = self.family.source_state(z, t)
        return self.family.predict_x1(t, x_src, self.net(t, x_src, y))
