"""Teachers from the RealUID authors' released checkpoints.

Their checkpoint files are dicts with

  ``net_model``:  the raw network's state dict,
  ``ema_models``: ``{decay as a string, e.g. "0.999": state dict}``,

(plus optimizer, scheduler and step entries that a teacher does not need). The network is torchcfm's
UNet with 128 channels, multipliers [1, 2, 2, 2], 2 residual blocks, attention at 16x16 with heads of 64
channels (4 heads at the widest level), dropout 0.1; class-conditional CIFAR-10 adds a 10-class label
embedding. Parameter names are torchcfm's, which realuid's :class:`realuid.models.unet.UNet` keeps, so
the weights load into our UNet unchanged.

Loading is strict: every parameter of our UNet must be in the file with the right shape and the file
may hold nothing else, except the one extra the authors' code is known to write: the convolutional
discriminator head of their GAN variant (``cls_pred_branch.*``), which their model class carries even
when it is unused. A ``module.`` prefix (a model saved inside ``DataParallel``) is removed.
"""

from __future__ import annotations

import math
import os
from numbers import Real

from .checkpoints import load_torch_file
from .teachers.statedicts import describe, layout, mismatch, plain_state_dict, strict_load_check
from .errors import CheckpointError, ConfigError

__all__ = ["AUTHORS_GAN_HEAD_PREFIX", "authors_model_spec", "load_authors_teacher", "teacher_from_checkpoint"]

# Present in every checkpoint the authors' scripts write (their UNet subclass owns the GAN head).
AUTHORS_GAN_HEAD_PREFIX = "cls_pred_branch."
# CIFAR-10 is 32x32, their CelebA 64x64; attention "at 16x16" puts the attention blocks at different
# depths for the two, so the parameter names tell the image size apart.
_KNOWN_IMAGE_SIZES = (32, 64)


def authors_model_spec(num_classes: int = 0, *, image_size: int = 32, dropout: float = 0.1) -> dict:
    """Our model spec of the authors' UNet (see :func:`realuid.models.model_spec` for the format).

    ``num_classes``: 0 for unconditional, 10 for class-conditional CIFAR-10. ``image_size``: 32 for
    CIFAR-10, 64 for CelebA. ``dropout`` does not change the weights' layout (the authors train
    teachers with 0.1 and distil with 0).
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
        raise ValueError(f"num_classes must be a non-negative int, got {num_classes!r}")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 16 or image_size % 16:
        raise ValueError(f"image_size must be a positive multiple of 16 (attention sits at 16x16), got {image_size!r}")
    if isinstance(dropout, bool) or not isinstance(dropout, Real) or not 0 <= dropout < 1:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
    return {
        "arch": "unet",
        "args": {
            "shape": [3, image_size, image_size],
            "channels": 128,
            "channel_mult": [1, 2, 2, 2],
            "num_res_blocks": 2,
            "attention_resolutions": "16",
            "num_heads": 4,
            "num_head_channels": 64,
            "dropout": float(dropout),
            "num_classes": num_classes,
        },
    }


# ------------------------------------------------------------------------------------ state dicts


def _select(checkpoint: dict, ema: str | float | None) -> dict:
    """The state dict of the requested copy: ``net_model`` for ``ema=None``, else ``ema_models[ema]``."""
    if not isinstance(checkpoint, dict) or "net_model" not in checkpoint and "ema_models" not in checkpoint:
        found = sorted(map(str, checkpoint)) if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise CheckpointError(
            f"not an authors' checkpoint: expected a dict with 'ema_models' and/or 'net_model', found {found}"
        )
    if ema is None:
        if "net_model" not in checkpoint:
            raise CheckpointError("the checkpoint has no 'net_model' entry; choose one of its EMA copies with ema=")
        return checkpoint["net_model"]
    models = checkpoint.get("ema_models")
    if not isinstance(models, dict) or not models:
        raise CheckpointError("the checkpoint has no 'ema_models' entry; load the raw network with ema=None")
    if isinstance(ema, bool) or not isinstance(ema, (str, Real)):
        raise ConfigError(f"ema must be a decay such as '0.999' or None, got {ema!r}")
    try:
        wanted = float(ema)
    except ValueError:
        raise ConfigError(f"ema must be a decay such as '0.999' or None, got {ema!r}") from None
    # Compare as numbers: "0.999", "0.9990" and 0.999 name the same copy.
    for key, state in models.items():
        try:
            if math.isclose(float(key), wanted, rel_tol=0, abs_tol=1e-12):
                return state
        except (TypeError, ValueError):
            continue
    raise CheckpointError(f"EMA decay {ema!r} is not in the checkpoint; it holds {sorted(map(str, models))}")


def _clean(state: dict) -> dict:
    """Drop a DataParallel ``module.`` prefix and the authors' unused GAN head."""
    state = plain_state_dict(state)
    return {k: v for k, v in state.items() if not k.startswith(AUTHORS_GAN_HEAD_PREFIX)}


def _infer_num_classes(state: dict, num_classes: int | None) -> int:
    emb = state.get("label_emb.weight")
    found = 0 if emb is None else int(emb.shape[0])
    if num_classes is None:
        return found
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
        raise ValueError(f"num_classes must be a non-negative int or None, got {num_classes!r}")
    if num_classes != found:
        held = f"a {found}-class label embedding" if found else "no label embedding (unconditional)"
        raise CheckpointError(f"num_classes={num_classes} was asked for, but the checkpoint has {held}")
    return num_classes


def teacher_from_checkpoint(
    checkpoint: dict,
    *,
    ema: str | float | None = "0.999",
    num_classes: int | None = None,
    image_size: int | None = None,
) -> tuple[dict, dict]:
    """``(spec, state_dict)`` of our UNet from an already loaded authors' checkpoint dict.

    ``image_size=None`` recognises 32 and 64 from the parameter layout. Raises ValueError naming the
    missing, unexpected and mis-shaped keys when the weights do not fit the authors' architecture.
    """
    state = _clean(_select(checkpoint, ema))
    classes = _infer_num_classes(state, num_classes)
    sizes = _KNOWN_IMAGE_SIZES if image_size is None else (image_size,)
    first_problem = None
    for size in sizes:
        spec = authors_model_spec(classes, image_size=size)
        problem = mismatch(layout(spec), state)
        if not any(problem):
            strict_load_check(spec, state, "the authors' UNet")
            return spec, state
        first_problem = first_problem or (size, problem)
    size, problem = first_problem
    tried = f"image size {size}" if len(sizes) == 1 else f"image sizes {', '.join(map(str, sizes))}"
    raise CheckpointError(
        f"the checkpoint does not match the authors' UNet ({tried}, {classes or 'no'} classes): "
        f"{describe(*problem)} (compared with the {size}x{size} layout)"
    )


def load_authors_teacher(
    path: str | os.PathLike,
    *,
    ema: str | float | None = "0.999",
    num_classes: int | None = None,
    image_size: int | None = None,
) -> tuple[dict, dict]:
    """Read an authors' checkpoint file: ``(spec, state_dict)`` ready for ``build_model(spec).load_state_dict``.

    ``ema``: the EMA decay to take from ``ema_models`` (their default teacher is ``"0.999"``), or None
    for ``net_model``. ``num_classes``: None infers it from the label embedding; a value is checked
    against it. The file is read with ``torch.load(weights_only=True)`` (no arbitrary unpickling).
    """
    checkpoint = load_torch_file(path, needed_by="train_teacher.import_checkpoint", expected="RealUID authors' checkpoint")
    try:
        return teacher_from_checkpoint(checkpoint, ema=ema, num_classes=num_classes, image_size=image_size)
    except ValueError as err:
        raise CheckpointError(f"{path}: {err}") from None
