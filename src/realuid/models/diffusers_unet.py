"""diffusers' ``UNet2DModel`` as a realuid network (spec arch ``diffusers-unet2d``).

The spec's args hold the UNet's own config (``unet``), the data shape and class count, and the
adapter's convention (``output``, ``time``, ``time_scale`` and the ``family`` record whose target the
network answers in), so a teacher, its fake model and its generator are all diffusers UNets rebuilt from
the checkpoint alone. diffusers is imported only here, only when such a spec is built.
"""

from __future__ import annotations

from torch import Tensor, nn


class DiffusersUNet2D(nn.Module):
    """``net(timestep [B], x [B, C, H, W], y [B] or None) -> [B, C, H, W]`` over a ``UNet2DModel``."""

    def __init__(self, unet_config: dict):
        super().__init__()
        from diffusers import UNet2DModel

        self.unet = UNet2DModel.from_config(unet_config)

    def forward(self, timestep: Tensor, x: Tensor, y: Tensor | None = None) -> Tensor:
        return self.unet(x, timestep, class_labels=y).sample


def build_diffusers_unet(args: dict) -> nn.Module:
    """The adapted network of a ``diffusers-unet2d`` spec: ``f(t, x_t, y)`` in our convention."""
    from ..matching import make_family
    from .adapter import TeacherAdapter

    record = args["family"]
    family = make_family(record["name"], **record["options"])
    return TeacherAdapter(DiffusersUNet2D(args["unet"]), family, output=args["output"], time=args["time"],
                          time_scale=args["time_scale"])
