"""Backbones, their specs and the classifier-free guidance wrapper.

Every network is described by a plain ``spec`` dict (architecture name, data shape, number of classes
and the architecture's own arguments). Checkpoints carry that spec, so a checkpoint rebuilds its own
model with :func:`build_model` and nothing else.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from .mlp import MLP

# A diffusers UNet2DModel behind the teacher adapter (an imported diffusers teacher and its students).
DIFFUSERS_UNET = "diffusers-unet2d"


def model_spec(model_cfg, data_shape: tuple[int, ...], num_classes: int) -> dict:
    """The constructor spec for ``model_cfg`` (a :class:`realuid.config.ModelConfig`) on this data.

    ``arch: auto`` picks the MLP for points ([D]) and the UNet for images ([C, H, W]).
    """
    data_shape = tuple(int(s) for s in data_shape)
    arch = model_cfg.arch
    if arch == "auto":
        arch = "mlp" if len(data_shape) == 1 else "unet"
    classes = num_classes if model_cfg.class_cond else 0
    if model_cfg.class_cond and num_classes < 1:
        raise ConfigError("model.class_cond is true but the data set has no labels")
    if arch == "mlp":
        if len(data_shape) != 1:
            raise ConfigError(f"the mlp backbone needs points of shape [D], the data has shape {list(data_shape)}")
        args = dict(
            dim=data_shape[0],
            hidden_dim=model_cfg.hidden_dim,
            depth=model_cfg.depth,
            time_embed_dim=model_cfg.time_embed_dim,
            num_classes=classes,
            dropout=model_cfg.dropout,
        )
    else:
        if len(data_shape) != 3:
            raise ConfigError(f"the unet backbone needs images [C, H, W], the data has shape {list(data_shape)}")
        if model_cfg.channels % 32:
            # torchcfm's UNet normalises with GroupNorm(32 groups).
            raise ConfigError(f"model.channels must be a multiple of 32 for the unet, got {model_cfg.channels}")
        size = data_shape[-1]
        if size % 2 ** (len(model_cfg.channel_mult) - 1):
            raise ConfigError(
                f"image size {size} is not divisible by 2^{len(model_cfg.channel_mult) - 1} "
                f"(model.channel_mult has {len(model_cfg.channel_mult)} levels)"
            )
        args = dict(
            shape=list(data_shape),
            channels=model_cfg.channels,
            channel_mult=list(model_cfg.channel_mult),
            num_res_blocks=model_cfg.num_res_blocks,
            attention_resolutions=model_cfg.attention_resolutions,
            num_heads=model_cfg.num_heads,
            num_head_channels=model_cfg.num_head_channels,
            dropout=model_cfg.dropout,
            num_classes=classes,
        )
    if model_cfg.class_dropout > 0:
        if not classes:
            raise ConfigError("model.class_dropout needs a class-conditional model (model.class_cond: true "
                              "on labelled data)")
        # Only then in the spec: a model trained without label dropout keeps its layout and its files.
        args["class_dropout"] = model_cfg.class_dropout
    return {"arch": arch, "args": args}


def null_label(spec: dict | None) -> int | None:
    """The learned null label (``num_classes``) of a model trained with label dropout, else None."""
    args = (spec or {}).get("args", {})
    return int(args["num_classes"]) if args.get("num_classes", 0) and args.get("class_dropout", 0) > 0 else None


def check_guidance(spec: dict | None, scale: float) -> int | None:
    """The null label that classifier-free guidance at ``scale`` needs (None for ``scale = 1``, no guidance);
    a :class:`realuid.errors.ConfigError` for a model without one (unconditional, or trained without
    label dropout)."""
    if scale == 1:
        return None
    null = null_label(spec)
    if null is None:
        raise ConfigError(f"guidance scale {scale:g} needs a class-conditional teacher trained with label "
                          "dropout (train_teacher.model.class_dropout > 0); this one has no null label")
    return null


def guided(model, null: int, scale: float, *, one_pass: bool = False):
    """Classifier-free guidance of ``model(t, x, y)``: the same signature, output
    ``f_w = f_uncond + w · (f_cond − f_uncond)`` with ``f_uncond = model(t, x, null)`` (w = 1: f_cond).

    ``one_pass`` evaluates both fields in one call over the rows ``[cond; null]`` (``t`` of shape ``[B]``):
    a network under DDP must run one forward per backward.
    """

    def field(t: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if one_pass:
            cond, uncond = model(t.repeat(2), torch.cat([x, x]), torch.cat([y, torch.full_like(y, null)])).chunk(2)
        else:
            cond, uncond = model(t, x, y), model(t, x, torch.full_like(y, null))
        return uncond + scale * (cond - uncond)

    return field


def build_model(spec: dict) -> nn.Module:
    """Instantiate the network a spec describes (fresh random weights)."""
    arch, args = spec["arch"], dict(spec["args"])
    if arch == "mlp":
        return MLP(**args)
    if arch == "unet":
        # Imported lazily: torchcfm pulls in extra modules that point-only runs never need.
        from .unet import UNet

        args["shape"] = tuple(args["shape"])
        return UNet(**args)
    if arch == DIFFUSERS_UNET:
        from .diffusers_unet import build_diffusers_unet

        return build_diffusers_unet(args)
    raise ValueError(f"unknown architecture {arch!r} in model spec")


def data_shape(spec: dict) -> tuple[int, ...]:
    """The shape of one sample the network of ``spec`` takes and returns: ``(D,)`` or ``(C, H, W)``."""
    args = spec["args"]
    return (int(args["dim"]),) if spec["arch"] == "mlp" else tuple(int(s) for s in args["shape"])


__all__ = ["DIFFUSERS_UNET", "MLP", "build_model", "check_guidance", "data_shape", "guided",
           "model_spec", "null_label"]
