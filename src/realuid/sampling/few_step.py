"""One- and k-step generation: the generator read once at the source end, then re-noised and read again,
and :class:`OneStepGenerator`, the module that holds a generator network with its family.

The family (duck-typed: ``t_src``, ``source_state``, ``predict_x1``, ``generator_noise``, ``path_sample``)
decides where the generator reads its input and how its output becomes data, so no solver is needed.
Gradients flow through every function here (they are the generator of the distillation too).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from ..errors import ConfigError

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


def check_generator_times(family, times: Sequence[float]) -> tuple[float, ...]:
    """The re-noising times ``t_2 < ... < t_k`` of a k-step student, checked against ``family``.

    Each lies in the family's training range and strictly after the generator's own start ``t_src``
    (the teacher never saw a time outside ``[t_min, t_max)``, so neither may the student). Raises
    :class:`realuid.errors.ConfigError`; returns the times as floats.
    """
    times = tuple(float(t) for t in times)
    lo = max(family.t_src, family.t_min)
    previous = family.t_src
    for t in times:
        if not (lo <= t < family.t_max and t > previous):
            raise ConfigError(f"distill.generator_times: {list(times)} must increase strictly from the "
                              f"{family.name} generator's start t = {family.t_src:g} and stay in "
                              f"[{family.t_min:g}, {family.t_max:g}) (the family's training range)")
        previous = t
    return times


def renoise_step(family, generator_model: Model, x1: Tensor, t: float, x0: Tensor, y: Tensor | None,
                 noise: Tensor | None) -> Tensor:
    """One later stage of a k-step student: re-noise its estimate ``x1`` to time ``t`` along the family's own
    path, ``x_t = path(x0, x1, t, noise)``, then ``predict_x1(t, x_t, G(t, x_t, y))``.

    x1, x0: ``[B, ...]``: ``x0`` is fresh source noise for unpaired families and the corrupted input for
    a bridge; noise: the path's fresh extra noise ``[B, ...]`` (None where the family has none). Returns ``[B, ...]``.
    """
    t_batch = torch.full((x1.shape[0],), t, dtype=x1.dtype, device=x1.device)
    state = family.path_sample(x0, x1, t_batch, noise).x_t
    return family.predict_x1(t_batch, state, generator_model(t_batch, state, y))


def renoise_inputs(family, x0: Tensor, stages: int, normal: Callable[[Tensor], Tensor]) -> list[tuple]:
    """Inputs ``(x0_j, noise_j)`` of ``stages`` re-noising stages, drawn in order with ``normal(like)``.

    Per stage: the source endpoint (fresh ``normal(x0)`` for an unpaired family, the corrupted input
    ``x0`` itself for a bridge), then the path's extra noise where the family has one.
    """
    inputs = []
    for _ in range(stages):
        source = x0 if family.paired else normal(x0)
        inputs.append((source, normal(x0) if family.needs_noise else None))
    return inputs


def generate_steps(family, generator_model: Model, x0: Tensor, y: Tensor | None = None, noise: Tensor | None = None,
                   *, times: Sequence[float] = (), renoise: Sequence[tuple] = ()) -> Tensor:
    """The k-step student's chain: :func:`generate_one_step`, then one :func:`renoise_step` per time of
    ``times`` (the re-noising times ``t_2 < ... < t_k``) with the inputs ``renoise`` (one ``(x0_j, noise_j)``
    per time, from :func:`renoise_inputs`). With no times it is the one-step generator. Returns ``[B, ...]``.
    """
    if len(times) != len(renoise):
        raise ValueError(f"{len(times)} re-noising times need as many re-noising inputs, got {len(renoise)}")
    x1 = generate_one_step(family, generator_model, x0, y, noise)
    for t, (source, path_noise) in zip(times, renoise):
        x1 = renoise_step(family, generator_model, x1, t, source, y, path_noise)
    return x1


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

    def forward(self, z: Tensor, y: Tensor | None = None, noise: Tensor | None = None) -> Tensor:
        return generate_one_step(self.family, self.net, z, y, noise)
