"""RealUID + GAN: an optional discriminator head on the fake model's encoder features.

The fake model ``f`` already looks at generated and real samples on the same path, so its encoder is a
ready-made feature extractor for a discriminator. The authors' "RealUID + GAN" variant adds a small head
on it and two non-saturating logistic terms (real samples -> positive logits):

  fake step (minimise over f's encoder and the head):
      disc_coef * [softplus(-D(x_t_data)) + softplus(D(x_t_gen))]
  generator step (minimise over theta, through x_t_gen; f and the head frozen):
      gen_coef * softplus(-D(x_t_gen))

where ``D(x) = head(encoder_features(f, t_gan, x, y))`` and ``t_gan`` is drawn near the data end, in
``(0.8, 1]`` (:func:`gan_time_sample`), with the same ``x0`` as the matching terms of that step. The
terms are added to the RealUID losses for any ``alpha, beta`` (``alpha = beta = 1`` is the authors'
data-free "GAN only on top of FGM" setting).

Coefficients: the authors keep ``disc_coef / gen_coef = 3``; they sweep ``gen_coef`` over
0.3, 1, 5, 25 (``disc_coef`` 1, 3, 15, 75) and report (5, 15) as the best pair on CIFAR-10; their
CelebA script uses (1, 3).

Features: for the MLP, the hidden state right before the output layer ``[B, hidden_dim]``; for the
torchcfm UNet, the output of the middle block (after time/label embedding, ``input_blocks`` and
``middle_block``), averaged over its spatial positions ``[B, channels * channel_mult[-1]]``. The
authors' head instead convolves the un-pooled bottleneck map; pooling keeps one head for every
resolution and for points.
"""

from __future__ import annotations

import math
from numbers import Real

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .models.mlp import MLP, sinusoidal_embedding

__all__ = [
    "DiscriminatorHead",
    "discriminator_loss",
    "encoder_features",
    "feature_dim",
    "forward_with_features",
    "gan_time_sample",
    "generator_gan_loss",
]


# ------------------------------------------------------------------------------------ architectures


def _is_unet(model: nn.Module) -> bool:
    """True for torchcfm's UNetModel (and so for realuid's UNet and torchcfm's UNetModelWrapper)."""
    if isinstance(model, MLP):
        return False
    try:
        from torchcfm.models.unet.unet import UNetModel
    except ImportError:  # torchcfm absent: no model can be a UNetModel
        return False
    return isinstance(model, UNetModel)


def _architecture(model: nn.Module) -> str:
    if isinstance(model, MLP):
        return "mlp"
    if _is_unet(model):
        return "unet"
    raise ValueError(
        f"encoder features are defined for realuid's MLP and torchcfm's UNetModel, got {type(model).__name__}"
    )


def feature_dim(model: nn.Module) -> int:
    """Width ``F`` of :func:`encoder_features` for this model (the input size of its head)."""
    if _architecture(model) == "mlp":
        return model.inp.out_features
    return int(model.model_channels * model.channel_mult[-1])


def _check_labels(model: nn.Module, y: Tensor | None, batch: int) -> None:
    conditional = model.label_emb is not None if isinstance(model, MLP) else model.num_classes is not None
    if conditional and y is None:
        raise ValueError("this model is class-conditional: pass labels y")
    if not conditional and y is not None:
        raise ValueError("this model is unconditional: pass y=None")
    if y is not None and tuple(y.shape) != (batch,):
        raise ValueError(f"labels y must have shape [{batch}], got {tuple(y.shape)}")


def _check_inputs(t: Tensor, x: Tensor) -> None:
    if not isinstance(x, Tensor) or x.dim() < 2:
        raise ValueError(f"x must be a [B, ...] tensor, got {x!r}")
    if not isinstance(t, Tensor) or tuple(t.shape) != (x.shape[0],):
        raise ValueError(f"t must be a [{x.shape[0]}] tensor, got shape {tuple(getattr(t, 'shape', ()))}")


def _mlp_encoder(model: MLP, t: Tensor, x: Tensor, y: Tensor | None) -> Tensor:
    """The MLP's hidden state before ``model.out`` (same arithmetic as ``MLP.forward``)."""
    cond = model.time_mlp(sinusoidal_embedding(t, model.time_embed_dim))
    if model.label_emb is not None:
        cond = cond + model.label_emb(y)
    h = model.inp(x)
    for block in model.blocks:
        h = block(h, cond)
    return h


def _unet_encoder(model: nn.Module, t: Tensor, x: Tensor, y: Tensor | None) -> Tensor:
    """The UNet's middle-block output ``[B, C, h, w]`` (same arithmetic as ``UNetModel.forward``)."""
    from torchcfm.models.unet.nn import timestep_embedding

    emb = model.time_embed(timestep_embedding(t, model.model_channels))
    if model.num_classes is not None:
        emb = emb + model.label_emb(y)
    h = x.type(model.dtype)
    for module in model.input_blocks:
        h = module(h, emb)
    return model.middle_block(h, emb)


def _pool(h: Tensor) -> Tensor:
    """``[B, C, ...]`` -> ``[B, C]``: mean over every position (identity for ``[B, C]``)."""
    return h.flatten(2).mean(dim=2) if h.dim() > 2 else h


def encoder_features(model: nn.Module, t: Tensor, x: Tensor, y: Tensor | None = None) -> Tensor:
    """Encoder features ``[B, F]`` of ``model`` at times ``t`` [B] and inputs ``x`` [B, ...].

    Runs only the encoder (no decoder, no output layer): the cheap choice when the head is evaluated at
    other times than the model's own output, as in :func:`gan_time_sample`. ``F`` is
    :func:`feature_dim`. Gradients flow to the model's parameters and to ``x``.
    """
    arch = _architecture(model)
    _check_inputs(t, x)
    _check_labels(model, y, x.shape[0])
    h = _mlp_encoder(model, t, x, y) if arch == "mlp" else _unet_encoder(model, t, x, y)
    return _pool(h)


def forward_with_features(
    model: nn.Module, t: Tensor, x: Tensor, y: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """``(model(t, x, y), encoder_features(model, t, x, y))`` from one forward pass.

    The features are captured by a hook on the layer that bounds the encoder, so the output is exactly
    the model's own forward and the encoder is not run twice. Use it when the head reads the same
    ``(t, x)`` as the matching loss. Returns ``([B, ...] like x, [B, F])``.
    """
    arch = _architecture(model)
    _check_inputs(t, x)
    _check_labels(model, y, x.shape[0])
    captured: list[Tensor] = []
    if arch == "mlp":
        # The encoder ends where the output layer begins: its input is the hidden state.
        handle = model.out.register_forward_pre_hook(lambda _module, args: captured.append(args[0]))
    else:
        handle = model.middle_block.register_forward_hook(lambda _module, _args, out: captured.append(out))
    try:
        out = model(t, x, y)
    finally:
        handle.remove()
    if len(captured) != 1:
        raise RuntimeError(f"expected the encoder boundary to run once in a forward pass, it ran {len(captured)} times")
    return out, _pool(captured[0])


# --------------------------------------------------------------------------------------------- head


class DiscriminatorHead(nn.Module):
    """``[B, F]`` encoder features -> ``[B]`` realness logits (positive: real).

    Linear -> LayerNorm -> SiLU -> Linear (as the authors' conv -> GroupNorm -> SiLU head): the norm
    keeps the head's hidden layer at unit scale however the encoder's activations drift in training;
    it comes after the first projection because normalising the raw features would erase a shift
    shared by all of them, which can be exactly what tells real from generated.
    """

    def __init__(self, feature_dim: int, hidden_dim: int | None = None):
        super().__init__()
        if isinstance(feature_dim, bool) or not isinstance(feature_dim, int) or feature_dim < 1:
            raise ValueError(f"feature_dim must be a positive int, got {feature_dim!r}")
        hidden_dim = feature_dim if hidden_dim is None else hidden_dim
        if isinstance(hidden_dim, bool) or not isinstance(hidden_dim, int) or hidden_dim < 1:
            raise ValueError(f"hidden_dim must be a positive int, got {hidden_dim!r}")
        self.feature_dim = feature_dim
        self.net = nn.Sequential(
            nn.Linear(feature_dim, hidden_dim), nn.LayerNorm(hidden_dim), nn.SiLU(), nn.Linear(hidden_dim, 1)
        )

    def forward(self, features: Tensor) -> Tensor:
        if features.dim() != 2 or features.shape[1] != self.feature_dim:
            raise ValueError(f"features must have shape [B, {self.feature_dim}], got {tuple(features.shape)}")
        return self.net(features).squeeze(1)


# ------------------------------------------------------------------------------------------- losses


def _check_logits(logits: Tensor, name: str) -> Tensor:
    if not isinstance(logits, Tensor) or logits.dim() != 1:
        raise ValueError(f"{name} must be a [B] tensor of logits, got {getattr(logits, 'shape', logits)!r}")
    return logits


def discriminator_loss(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    """Per-sample logistic loss of the discriminator: ``softplus(-real) + softplus(fake)`` -> ``[B]``.

    Minimising it pushes real logits up and generated ones down (``-log sigmoid(real) - log(1 -
    sigmoid(fake))``). Computed in float32 whatever the autocast dtype of the logits.
    """
    _check_logits(logits_real, "logits_real")
    _check_logits(logits_fake, "logits_fake")
    if logits_real.shape != logits_fake.shape:
        raise ValueError(
            f"logits_real has shape {tuple(logits_real.shape)} but logits_fake has shape {tuple(logits_fake.shape)}"
        )
    return F.softplus(-logits_real.float()) + F.softplus(logits_fake.float())


def generator_gan_loss(logits_fake: Tensor) -> Tensor:
    """Per-sample non-saturating generator loss ``softplus(-fake) = -log sigmoid(fake)`` -> ``[B]`` (float32)."""
    _check_logits(logits_fake, "logits_fake")
    return F.softplus(-logits_fake.float())


# -------------------------------------------------------------------------------------------- times


def gan_time_sample(
    n: int,
    rng: torch.Generator | None = None,
    t_min: float = 0.8,
    t_max: float = 1.0,
    *,
    device: torch.device | str | None = None,
) -> Tensor:
    """``n`` discriminator times uniform on ``(t_min, t_max]`` -> float32 ``[n]``.

    Near the data end the path is mostly data, so the head judges samples, not noise. ``t_max`` is the
    family's ``t_max`` (1 for fm and diffusion; just below 1 where the target diverges at 1). Drawn on
    ``rng``'s device (then moved to ``device`` when given), like the family's training times.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    for name, value in (("t_min", t_min), ("t_max", t_max)):
        if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value!r}")
    if not 0.0 <= t_min < t_max <= 1.0:
        raise ValueError(f"need 0 <= t_min < t_max <= 1, got t_min={t_min}, t_max={t_max}")
    draw_device = rng.device if rng is not None else device
    u = torch.rand(n, generator=rng, device=draw_device)
    # u in [0, 1) maps to (t_min, t_max]: t_max is reachable, t_min is not.
    t = t_max - (t_max - t_min) * u
    t = t.clamp(min=torch.nextafter(torch.tensor(float(t_min)), torch.tensor(math.inf)).item())
    return t.to(device) if device is not None else t
