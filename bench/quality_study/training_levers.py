"""Two levers of ``bench/capacity_control`` that change a network or the loss, not a setting: a fake model
twice as wide that starts as the teacher's function (:func:`widened_mlp`), and flow matching weighted
toward the data end of the path (:class:`DataEndWeightedFM`)."""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from realuid.matching import FlowMatching
from realuid.models import build_model


def widened_mlp(net: nn.Module, spec: dict, *, seed: int) -> tuple[nn.Module, dict]:
    """An MLP of hidden width ``2H`` that computes what ``net`` (the MLP of ``spec``, width ``H``) computes,
    ``[B, D] -> [B, D]``, to float rounding; returns it (eval mode) and its spec.

    Units ``0..H-1`` of every layer hold ``net``'s weights and read none of the new units ``H..2H-1``.
    The new units inside the blocks and the time MLP keep the wide net's random start (drawn from ``seed``)
    and have zero outgoing weights, so they start silent but get gradients. The residual stream cannot take
    new units that way: every LayerNorm normalises over it, and extra zeros would change its mean and
    variance. Its new units start as copies of the old ones instead, which leaves each LayerNorm's statistics
    and the old units' values as they were; as nothing reads the copies at the start, they drift apart from
    the first update.
    """
    if spec["arch"] != "mlp":
        raise ValueError(f"only an MLP can be widened, got {spec['arch']!r}")
    hidden = spec["args"]["hidden_dim"]
    wide_spec = {**spec, "args": {**spec["args"], "hidden_dim": 2 * hidden}}
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        wide = build_model(wide_spec)
    state = {k: v.clone() for k, v in wide.state_dict().items()}
    for name, old in net.state_dict().items():
        layer, kind = name.rsplit(".", 1)
        new = state[name]
        new[tuple(slice(0, n) for n in old.shape)] = old
        if kind == "weight" and layer.endswith(("time_mlp.2", ".fc1", ".fc2", "out.2")):  # inputs are hidden units
            new[:old.shape[0], hidden:] = 0
        if layer in ("inp", "out.0") or layer.endswith((".norm", ".fc2")):  # they write or normalise the stream
            new[hidden:] = new[:hidden]
    wide.load_state_dict(state)
    return wide.eval(), wide_spec


# The weight's offset from the data end: it keeps w(1) finite (21 times w(0)).
DATA_END_OFFSET = 0.05


@dataclasses.dataclass(frozen=True)
class DataEndWeightedFM(FlowMatching):
    """Linear flow matching whose losses weigh time ``t`` by ``w(t) = 1 / ((1 + 0.05 - t) ln 21)``: mean 1
    over ``t ~ U[0, 1]``, from 0.31 at the source to 6.6 at the data end.

    The data end is where the spiral's arms separate: there the fields of the teacher and the fake model
    decide which arm a sample lands on, while near the source both are close to one smooth mean flow; the
    plain loss weighs all times alike. The weight acts on training only, so a checkpoint records this family
    as plain flow matching (``fm``, no options) and its generator samples as any flow-matching one.
    """

    def time_weight(self, t: torch.Tensor) -> torch.Tensor:
        """``w(t)`` ``[B]`` for ``t`` ``[B]``."""
        # The mean of 1 / (1 + c - t) over U[0, 1] is ln((1 + c) / c).
        return 1 / ((1 + DATA_END_OFFSET - t) * math.log((1 + DATA_END_OFFSET) / DATA_END_OFFSET))
