"""Teachers from torchcfm's checkpoints.

torchcfm's CIFAR-10 training scripts save a dict

  ``net_model``: the raw network's state dict,
  ``ema_model``: the state dict of its one EMA copy,

(plus ``sched``, ``optim`` and ``step``, which a teacher does not need; the multi-GPU script saves the
networks inside ``DistributedDataParallel``, whose ``module.`` prefix is removed). The network is torchcfm's
``UNetModelWrapper``, a velocity field in our own convention (time in [0, 1], data at t = 1, path
``t*x1 + (1-t)*x0``), whose parameter names realuid's :class:`realuid.models.unet.UNet` keeps: the weights
load unchanged and the imported network computes exactly what torchcfm's does (tested).

Architecture: the UNet arguments of ``train_teacher.model`` when the weights fit them; otherwise those read
from the weights' shapes (base channels, channel multipliers, residual blocks per level, the levels with
attention, the number of classes). The attention heads are not in the weights (a head count only splits
the same projection), so they always come from ``train_teacher.model`` (``num_heads``,
``num_head_channels``): torchcfm's CIFAR-10 script uses heads of 64 channels. Its wrapper's other options
(``use_scale_shift_norm``, ``resblock_updown``, ``learn_sigma``) are off in its scripts and in our UNet; a
file built with them does not fit, and the error names the keys that differ.
"""

from __future__ import annotations

import os

from ..checkpoints import CheckpointError, load_torch_file
from .statedicts import describe, layout, mismatch, plain_state_dict, strict_load_check

__all__ = ["load_torchcfm_teacher", "select_torchcfm_weights", "teacher_from_torchcfm", "torchcfm_spec"]

_RAW, _EMA = "net_model", "ema_model"


def select_torchcfm_weights(checkpoint, ema) -> dict:
    """The state dict of the requested network: ``net_model`` for ``ema=None``, else ``ema_model``."""
    if not isinstance(checkpoint, dict) or _RAW not in checkpoint and _EMA not in checkpoint:
        found = sorted(map(str, checkpoint)) if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise ValueError(f"not a torchcfm checkpoint: expected a dict with '{_RAW}' and/or '{_EMA}', found {found}")
    key = _RAW if ema is None else _EMA
    if key not in checkpoint:
        other = "train_teacher.import_ema: none (its raw net_model)" if ema is not None else "an EMA copy (its ema_model)"
        raise ValueError(f"the checkpoint has no '{key}' entry; choose {other}")
    return plain_state_dict(checkpoint[key])


def torchcfm_spec(args: dict) -> dict:
    """Our model spec of a torchcfm UNet with ``args`` (the arguments of :class:`realuid.models.unet.UNet`)."""
    return {"arch": "unet", "args": dict(args)}


def _params_args(model_cfg, shape: tuple[int, ...], num_classes: int) -> dict:
    return {"shape": list(shape), "channels": model_cfg.channels, "channel_mult": list(model_cfg.channel_mult),
            "num_res_blocks": model_cfg.num_res_blocks, "attention_resolutions": model_cfg.attention_resolutions,
            "num_heads": model_cfg.num_heads, "num_head_channels": model_cfg.num_head_channels,
            "dropout": float(model_cfg.dropout), "num_classes": num_classes}


def _shape_of(state: dict, key: str) -> tuple[int, ...]:
    if key not in state:
        raise ValueError(f"no '{key}', which every torchcfm UNet has")
    return tuple(state[key].shape)


def _inferred_args(state: dict, shape: tuple[int, ...], model_cfg) -> dict:
    """The UNet arguments the weights' shapes say (heads and dropout from ``model_cfg``: not in the weights).

    torchcfm's encoder is ``input_blocks``: block 0 is the input convolution, then per level
    ``num_res_blocks`` residual blocks (``<i>.0.in_layers``, followed by ``<i>.1.qkv`` where the level has
    attention) and a down-sampling block (``<i>.0.op``) between levels.
    """
    channels = _shape_of(state, "time_embed.0.weight")[1]
    in_channels = _shape_of(state, "input_blocks.0.0.weight")[1]
    if in_channels != shape[0]:
        raise ValueError(f"its input convolution takes {in_channels} channels, the data have {shape[0]}")
    mults, blocks, attention_levels = [], [0], set()
    i = 1
    while True:
        if f"input_blocks.{i}.0.op.weight" in state:
            blocks.append(0)  # down-sampling: the next level starts
        elif f"input_blocks.{i}.0.in_layers.2.weight" in state:
            width = state[f"input_blocks.{i}.0.in_layers.2.weight"].shape[0]
            if blocks[-1] == 0:
                if width % channels:
                    raise ValueError(f"level {len(blocks) - 1} has {width} channels, not a multiple of {channels}")
                mults.append(width // channels)
            blocks[-1] += 1
            if f"input_blocks.{i}.1.qkv.weight" in state:
                attention_levels.add(len(blocks) - 1)
        else:
            break
        i += 1
    if len(set(blocks)) != 1 or not blocks[0]:
        raise ValueError(f"its levels hold {blocks} residual blocks; a torchcfm UNet has the same number on each")
    size = shape[-1]
    resolutions = sorted({size // 2**level for level in attention_levels}, reverse=True)
    classes = _shape_of(state, "label_emb.weight")[0] if "label_emb.weight" in state else 0
    return {"shape": list(shape), "channels": channels, "channel_mult": mults, "num_res_blocks": blocks[0],
            "attention_resolutions": ",".join(map(str, resolutions)), "num_heads": model_cfg.num_heads,
            "num_head_channels": model_cfg.num_head_channels, "dropout": float(model_cfg.dropout),
            "num_classes": classes}


def _fit(args: dict, state: dict) -> str | None:
    """None when the weights fit the UNet of ``args``, else what differs."""
    try:
        problem = mismatch(layout(torchcfm_spec(args)), state)
    except (ValueError, AssertionError) as err:  # torchcfm asserts e.g. that heads divide the channels
        return f"no UNet is built from {args}: {err or type(err).__name__}"
    return describe(*problem) if any(problem) else None


def _check_classes(state: dict, num_classes: int) -> None:
    emb = state.get("label_emb.weight")
    found = 0 if emb is None else int(emb.shape[0])
    if found != num_classes:
        held = f"a {found}-class label embedding" if found else "no label embedding (unconditional)"
        raise ValueError(f"the params ask for {num_classes or 'no'} classes (train_teacher.model.class_cond and the "
                         f"data's labels), the checkpoint has {held}")


def teacher_from_torchcfm(checkpoint, ema, model_cfg, shape, num_classes: int) -> tuple[dict, dict]:
    """``(spec, state_dict)`` from an already loaded torchcfm checkpoint dict (see :func:`load_torchcfm_teacher`)."""
    state = select_torchcfm_weights(checkpoint, ema)
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3:
        raise ValueError(f"a torchcfm UNet takes images [C, H, W]; the data have shape {list(shape)}")
    _check_classes(state, num_classes)
    given = _params_args(model_cfg, shape, num_classes)
    given_problem = _fit(given, state)
    if given_problem is None:
        strict_load_check(torchcfm_spec(given), state, "the torchcfm UNet of train_teacher.model")
        return torchcfm_spec(given), state
    try:
        inferred = _inferred_args(state, shape, model_cfg)
        inferred_problem = _fit(inferred, state)
    except ValueError as err:
        inferred_problem = str(err)
    if inferred_problem is None:
        strict_load_check(torchcfm_spec(inferred), state, "the torchcfm UNet read from its shapes")
        return torchcfm_spec(inferred), state
    raise ValueError(f"the weights do not fit the torchcfm UNet of train_teacher.model ({given_problem}), and no "
                     f"UNet could be read from their shapes ({inferred_problem})")


def load_torchcfm_teacher(path: str | os.PathLike, ema, model_cfg, shape, num_classes: int) -> tuple[dict, dict]:
    """Read a torchcfm checkpoint file: ``(spec, state_dict)`` ready for ``build_model(spec).load_state_dict``.

    ``ema``: None for the raw ``net_model``, anything else for its one ``ema_model``. ``model_cfg``: a
    :class:`realuid.config.ModelConfig` (``train_teacher.model``) whose UNet arguments are used when the weights
    fit them (else those read from the weights; heads always from it). ``shape``: one image ``[C, H, W]`` of
    the data. ``num_classes``: the classes the teacher must condition on (0: unconditional), checked against
    the weights. The file is read with ``torch.load(weights_only=True)``: nothing in it runs. Every problem is
    one :class:`realuid.checkpoints.CheckpointError` naming the file.
    """
    checkpoint = load_torch_file(path, needed_by="train_teacher.import_checkpoint", expected="torchcfm checkpoint")
    try:
        return teacher_from_torchcfm(checkpoint, ema, model_cfg, shape, num_classes)
    except ValueError as err:
        raise CheckpointError(f"{path}: {err}") from None
