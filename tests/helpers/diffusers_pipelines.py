"""diffusers pipeline folders of a tiny random UNet2DModel, saved by diffusers itself (``save_pretrained``)."""

from __future__ import annotations

import torch
from diffusers import DDIMPipeline, DDIMScheduler, DDPMPipeline, UNet2DModel

SHAPE = (1, 8, 8)


def tiny_unet(num_class_embeds=None) -> UNet2DModel:
    torch.manual_seed(0)
    return UNet2DModel(sample_size=SHAPE[-1], in_channels=SHAPE[0], out_channels=SHAPE[0], block_out_channels=(16, 32),
                       layers_per_block=1, down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=8, num_class_embeds=num_class_embeds)


def save_pipeline(folder, scheduler, num_class_embeds=None):
    pipeline = DDIMPipeline if isinstance(scheduler, DDIMScheduler) else DDPMPipeline
    unet = tiny_unet(num_class_embeds)
    pipeline(unet=unet, scheduler=scheduler).save_pretrained(folder)
    return unet.double().eval()
