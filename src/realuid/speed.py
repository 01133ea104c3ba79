"""Options that make a training step faster without changing what it computes beyond float rounding.

Every option is off by default, and off means the code path of a plain network. Each one keeps the
weights' layout (state-dict keys and shapes), so teacher and generator files load either way:

- ``attention: sdpa``: torchcfm's attention through :func:`torch.nn.functional.scaled_dot_product_attention`
  (a fused kernel instead of two einsums and a float32 softmax);
- ``groupnorm: autocast``: GroupNorm on the autocast dtype instead of torchcfm's float32 copy of its input.
  Safe because torch's group-norm kernels accumulate the mean and variance in float32 for bf16 inputs;
  only the input and output tensors stay bf16;
- ``channels_last``: NHWC weights and inputs (tensor-core convolutions want them);
- ``compile``: :meth:`torch.nn.Module.compile` in place, so state-dict keys keep their names;
- ``fused_adam`` (:func:`realuid.training.optimization.make_optimizer`) and ``cudnn_benchmark``
  (:func:`prepare_backends`).
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import nn
from torchcfm.models.unet.nn import GroupNorm32
from torchcfm.models.unet.unet import QKVAttentionLegacy


class SdpaAttention(nn.Module):
    """torchcfm's ``QKVAttentionLegacy`` (heads split before q, k, v) by one fused attention call.

    ``qkv`` [B, H * 3 * C, T] -> [B, H * C, T]. torchcfm scales q and k by ``C ** -1/4`` each; the fused
    call's default scale ``C ** -1/2`` on their product is the same.
    """

    def __init__(self, n_heads: int):
        super().__init__()
        self.n_heads = n_heads

    def forward(self, qkv: torch.Tensor) -> torch.Tensor:
        batch, width, length = qkv.shape
        channels = width // (3 * self.n_heads)
        q, k, v = qkv.reshape(batch * self.n_heads, 3 * channels, length).split(channels, dim=1)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return out.transpose(1, 2).reshape(batch, -1, length)


class AutocastGroupNorm(GroupNorm32):
    """GroupNorm that, under autocast, normalises in the autocast dtype (its statistics still accumulate
    in float32 inside torch's kernel); outside autocast it is torchcfm's float32 GroupNorm."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kind = x.device.type
        if not torch.is_autocast_enabled(kind):
            return super().forward(x)
        dtype = torch.get_autocast_dtype(kind)
        with torch.autocast(kind, enabled=False):  # autocast would send group_norm to float32
            return F.group_norm(x.to(dtype), self.num_groups, self.weight.to(dtype), self.bias.to(dtype), self.eps)


def _keep_channels_last(_module, args):
    return tuple(a.contiguous(memory_format=torch.channels_last) if torch.is_tensor(a) and a.dim() == 4 else a
                 for a in args)


def prepare_network(net: nn.Module, speed) -> nn.Module:
    """Apply ``speed`` (a :class:`realuid.config.SpeedConfig`) to ``net`` in place and return it."""
    for module in net.modules():
        if speed.attention == "sdpa" and isinstance(getattr(module, "attention", None), QKVAttentionLegacy):
            module.attention = SdpaAttention(module.attention.n_heads)
        if speed.groupnorm == "autocast" and type(module) is GroupNorm32:
            module.__class__ = AutocastGroupNorm  # same parameters, another forward
    if speed.channels_last:
        net.to(memory_format=torch.channels_last)
        net.register_forward_pre_hook(_keep_channels_last)
    if speed.compile:
        net.compile()
    return net


def prepare_backends(speed, device: torch.device) -> None:
    """Process-wide settings: cuDNN's autotuner picks the fastest convolution for each shape (CUDA only)."""
    if speed.cudnn_benchmark and device.type == "cuda":
        torch.backends.cudnn.benchmark = True


class CompileTimer:
    """Reports, once, how long the first update took when ``torch.compile`` is on (it compiles then)."""

    def __init__(self, speed, device: torch.device, what: str, report: bool = True):
        self.active = bool(speed.compile) and report
        self.device, self.what = device, what
        self.started = time.perf_counter()

    def done(self) -> None:
        if not self.active:
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        print(f"{self.what}: first update took {time.perf_counter() - self.started:.1f} s "
              "(torch.compile compiles during it)", flush=True)
        self.active = False
