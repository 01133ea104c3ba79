"""What every importer of foreign weights needs: a clean state dict, and the exact difference between it and
the parameter layout of a model spec (so a file that does not fit names the first keys that differ)."""

from __future__ import annotations

import torch

_DDP_PREFIX = "module."
_SHOWN_KEYS = 8


def plain_state_dict(state) -> dict:
    """``state`` as a mapping of parameter names to tensors, without a ``DataParallel`` ``module.`` prefix."""
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError("the selected entry is not a state dict (a mapping of parameter names to tensors)")
    if state and all(k.startswith(_DDP_PREFIX) for k in state):
        state = {k[len(_DDP_PREFIX):]: v for k, v in state.items()}
    return state


def meta_model(spec: dict) -> torch.nn.Module:
    """The model a spec builds, on the meta device: its parameter layout without allocating weights."""
    from ..models import build_model

    with torch.device("meta"):
        return build_model(spec)


def layout(spec: dict) -> dict[str, tuple[int, ...]]:
    """``{parameter name: shape}`` of the network ``spec`` describes."""
    return {k: tuple(v.shape) for k, v in meta_model(spec).state_dict().items()}


def mismatch(expected: dict[str, tuple[int, ...]], state: dict) -> tuple[list[str], list[str], list[str]]:
    """(missing, unexpected, mis-shaped) keys of ``state`` against the ``expected`` layout; all empty: it fits."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(
        f"{k}: checkpoint {tuple(state[k].shape)}, model {expected[k]}"
        for k in set(expected) & set(state)
        if tuple(state[k].shape) != expected[k]
    )
    return missing, unexpected, wrong


def describe(missing: list[str], unexpected: list[str], wrong: list[str]) -> str:
    """One line naming the first few keys of each kind of difference (see :func:`mismatch`)."""
    def part(title: str, items: list[str]) -> str:
        shown = ", ".join(items[:_SHOWN_KEYS]) + (f", ... ({len(items) - _SHOWN_KEYS} more)" if len(items) > _SHOWN_KEYS else "")
        return f"{len(items)} {title}: {shown}"

    parts = [part(t, i) for t, i in (("missing", missing), ("unexpected", unexpected), ("with another shape", wrong)) if i]
    return "; ".join(parts)


def strict_load_check(spec: dict, state: dict, what: str) -> None:
    """torch's own ``load_state_dict(strict=True)`` into the (meta) model of ``spec``, as a last word on the match."""
    try:
        # assign=True: a meta model takes the tensors as they are (nothing is copied, nothing warns).
        meta_model(spec).load_state_dict(state, strict=True, assign=True)
    except RuntimeError as err:
        raise ValueError(f"the checkpoint does not load into {what}: {err}") from None
