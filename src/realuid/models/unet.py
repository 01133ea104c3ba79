"""Image backbone: torchcfm's UNet, the architecture of the RealUID authors' teachers.

Constructing ``UNetModel`` directly (rather than torchcfm's ``UNetModelWrapper``) lets attention be
switched off for tiny images; both give the same parameter names, so the authors' checkpoints load.
"""

from __future__ import annotations

import torch
from torchcfm.models.unet.unet import UNetModel


class UNet(UNetModel):
    """``f(t, x, y)``: x [B, C, H, W], t [B] in [0, 1], y [B] labels or None -> [B, C, H, W]."""

    def __init__(
        self,
        shape: tuple[int, int, int],
        channels: int,
        channel_mult: list[int],
        num_res_blocks: int,
        attention_resolutions: str = "",
        num_heads: int = 4,
        num_head_channels: int = -1,
        dropout: float = 0.0,
        num_classes: int = 0,
        class_dropout: float = 0.0,
    ):
        in_channels, image_size = shape[0], shape[-1]
        # torchcfm counts attention by down-sampling factor, users think in resolutions.
        resolutions = [int(r) for r in attention_resolutions.split(",") if r.strip()]
        super().__init__(
            image_size=image_size,
            in_channels=in_channels,
            model_channels=channels,
            out_channels=in_channels,
            num_res_blocks=num_res_blocks,
            attention_resolutions=tuple(image_size // r for r in resolutions),
            dropout=dropout,
            channel_mult=tuple(channel_mult),
            # Trained with label dropout, one more embedding row: the null label ``num_classes``.
            num_classes=(num_classes + (class_dropout > 0)) or None,
            num_heads=num_heads,
            num_head_channels=num_head_channels,
        )

    def forward(self, t: torch.Tensor, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if self.num_classes is not None and y is None:
            raise ValueError("this model is class-conditional: pass labels y")
        return super().forward(t, x, y=y)
