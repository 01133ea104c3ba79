"""A small feature network trained inside the pipeline, and its torch-fidelity feature extractor.

Standard FID needs Inception weights that cannot be downloaded here, so the default image metric uses
features of a small CNN trained on the pipeline's own training images: a classifier when labels exist,
otherwise a rotation predictor (self-supervised: which of 0/90/180/270 degrees was applied). The same
network scores class-conditional generators (``classifier_accuracy``).

Images are float tensors in [-1, 1] of shape [N, C, H, W] everywhere in this module, except the
torch-fidelity extractor, which receives uint8 [N, C, H, W] in [0, 255] as torch-fidelity requires.
"""

from __future__ import annotations

import functools
import math
import os
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .checkpoints import atomic_save, load_torch_file
from .errors import CheckpointError, ConfigError, DataError

EXTRACTOR_NAME = "realuid-features"
CHECKPOINT_FORMAT = "realuid-feature-net"
CHECKPOINT_VERSION = 1
TASKS = ("classification", "rotation")
ROTATION_CLASSES = 4  # 0, 90, 180, 270 degrees


def _group_count(channels: int) -> int:
    """Largest group count <= 8 dividing ``channels`` (GroupNorm needs an exact divisor)."""
    for groups in (8, 4, 2, 1):
        if channels % groups == 0:
            return groups
    return 1


class _ConvBlock(nn.Module):
    """Two 3x3 convolutions with GroupNorm + SiLU, then an optional 2x average-pool downsample."""

    def __init__(self, in_channels: int, out_channels: int, downsample: bool):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, padding=1),
            nn.GroupNorm(_group_count(out_channels), out_channels),
            nn.SiLU(),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
            nn.GroupNorm(_group_count(out_channels), out_channels),
            nn.SiLU(),
        )
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(x)
        return F.avg_pool2d(x, 2) if self.downsample else x


class FeatureNet(nn.Module):
    """Three conv blocks (widths w, 2w, 4w), global average pool, linear head.

    GroupNorm (not BatchNorm) keeps every image's features independent of the rest of its batch, so
    metrics computed from them do not depend on the evaluation batch size.

    Args:
        in_channels: image channels (1 for digits, 3 for RGB).
        image_size: side of the square images the net is trained on (>= 4: two 2x downsamples).
        num_classes: size of the logits (classes, or 4 for rotation prediction).
        width: channels of the first block; the feature vector has ``4 * width`` entries.
        task: "classification" or "rotation"; recorded so that a checkpoint says what its logits mean.
    """

    def __init__(self, in_channels: int, image_size: int, num_classes: int, width: int = 32,
                 task: str = "classification"):
        super().__init__()
        if in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {in_channels}")
        if image_size < 4:
            raise ValueError(f"image_size must be >= 4 (two 2x downsamples), got {image_size}")
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        if width < 1:
            raise ValueError(f"width must be >= 1, got {width}")
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        self.config = dict(in_channels=in_channels, image_size=image_size, num_classes=num_classes,
                           width=width, task=task)
        self.in_channels = in_channels
        self.image_size = image_size
        self.num_classes = num_classes
        self.task = task
        self.feature_dim = 4 * width
        self.blocks = nn.Sequential(
            _ConvBlock(in_channels, width, downsample=True),
            _ConvBlock(width, 2 * width, downsample=True),
            _ConvBlock(2 * width, 4 * width, downsample=False),
        )
        self.head = nn.Linear(self.feature_dim, num_classes)

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected images [N, {self.in_channels}, H, W], got shape {tuple(x.shape)}")

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Images [N, C, H, W] in [-1, 1] -> features [N, 4 * width] (globally pooled last block)."""
        self._check_input(x)
        return self.blocks(x).mean(dim=(2, 3))

    def features_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images [N, C, H, W] -> (features [N, 4 * width], logits [N, num_classes])."""
        feats = self.features(x)
        return feats, self.head(feats)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images [N, C, H, W] in [-1, 1] -> logits [N, num_classes]."""
        return self.head(self.features(x))


# ----------------------------------------------------------------------------------------------
# Training


def _check_images(images: torch.Tensor) -> None:
    if not torch.is_tensor(images) or images.dim() != 4:
        raise ValueError(f"images must be a tensor [N, C, H, W], got {type(images).__name__} "
                         f"{tuple(images.shape) if torch.is_tensor(images) else ''}")
    if not images.is_floating_point():
        raise ValueError(f"images must be floating point in [-1, 1], got dtype {images.dtype}")
    if images.shape[0] < 1:
        raise ValueError("images is empty")
    if images.shape[2] != images.shape[3]:
        raise ValueError(f"images must be square, got {images.shape[2]}x{images.shape[3]}")
    if not torch.isfinite(images).all():
        raise ValueError("images contain NaN or Inf")


def _check_labels(labels: torch.Tensor, n_images: int) -> torch.Tensor:
    labels = torch.as_tensor(labels)
    if labels.dim() != 1 or labels.shape[0] != n_images:
        raise ValueError(f"labels must have shape [{n_images}], got {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
    if int(labels.min()) < 0:
        raise ValueError(f"labels must be >= 0, got min {int(labels.min())}")
    return labels.long()


def rotate_batch(images: torch.Tensor, quarter_turns: torch.Tensor) -> torch.Tensor:
    """Rotate each square image [N, C, H, H] by ``quarter_turns[i]`` x 90 degrees (counter-clockwise)."""
    out = images.clone()
    for k in range(1, ROTATION_CLASSES):
        chosen = quarter_turns == k
        if chosen.any():
            out[chosen] = torch.rot90(images[chosen], k, dims=(2, 3))
    return out


def train_feature_net(images: torch.Tensor, labels: torch.Tensor | None, *, steps: int = 400,
                      batch_size: int = 128, lr: float = 2e-3, seed: int = 0, width: int = 32,
                      num_classes: int | None = None, device: str | torch.device | None = None,
                      progress: bool = True) -> FeatureNet:
    """Train a FeatureNet on images [N, C, H, H] in [-1, 1].

    With ``labels`` [N] (ints in [0, num_classes)), plain classification. With ``labels=None``,
    rotation prediction: each sampled image is rotated by a random multiple of 90 degrees and the net
    predicts which, so unlabeled image sets still get an extractor.

    Deterministic on CPU for a fixed seed: initialisation and every random draw come from ``seed``;
    the global torch RNG is left untouched. Returns the net in eval mode on ``device`` (default: the
    images' device).
    """
    _check_images(images)
    if steps < 1 or batch_size < 1 or not lr > 0:
        raise ConfigError(f"need steps >= 1, batch_size >= 1, lr > 0; got {steps}, {batch_size}, {lr}")
    device = torch.device(device) if device is not None else images.device
    n_images, in_channels, image_size = images.shape[0], images.shape[1], images.shape[2]
    if labels is not None:
        labels = _check_labels(labels, n_images)
        inferred = int(labels.max()) + 1
        num_classes = inferred if num_classes is None else num_classes
        if num_classes < inferred:
            raise DataError(f"num_classes={num_classes} but labels go up to {inferred - 1}")
        task = "classification"
    else:
        num_classes, task = ROTATION_CLASSES, "rotation"

    # fork_rng keeps the caller's global RNG stream unchanged while seeding the initialisation.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = FeatureNet(in_channels, image_size, num_classes, width=width, task=task)
    net.to(device).train()
    # Batches and rotations come from a private RNG on the CPU, so the draws (and hence the
    # result on CPU) do not depend on the device or on other code using the global RNG.
    rng = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    # Cosine decay to 10% of lr: a short fixed budget converges more reliably than a constant rate.
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.1 + 0.45 * (1 + math.cos(math.pi * min(step, steps) / steps)))

    iterator = range(steps)
    if progress:
        from tqdm import tqdm
        iterator = tqdm(iterator, desc=f"feature net ({task})", leave=False)
    for _ in iterator:
        index = torch.randint(0, n_images, (min(batch_size, n_images),), generator=rng)
        batch = images[index]
        if task == "classification":
            target = labels[index]
        else:
            target = torch.randint(0, ROTATION_CLASSES, (batch.shape[0],), generator=rng)
            batch = rotate_batch(batch, target)
        loss = F.cross_entropy(net(batch.to(device)), target.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if progress:
            iterator.set_postfix(loss=f"{loss.item():.3f}")
    return net.eval()


@torch.no_grad()
def predict_logits(net: FeatureNet, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Logits [N, num_classes] of images [N, C, H, W] in [-1, 1], computed in batches (CPU tensor)."""
    device = next(net.parameters()).device
    was_training = net.training
    net.eval()
    chunks = [net(part.to(device)).cpu() for part in images.split(batch_size)]
    net.train(was_training)
    return torch.cat(chunks)


@torch.no_grad()
def classifier_accuracy(net: FeatureNet, images: torch.Tensor, labels: torch.Tensor,
                        batch_size: int = 512) -> dict[str, Any]:
    """Accuracy of a classification FeatureNet on images [N, C, H, W] in [-1, 1] with labels [N].

    Returns ``{"accuracy": float, "per_class_accuracy": {class: float}, "num_samples": int}``;
    classes absent from ``labels`` are left out of ``per_class_accuracy`` (no NaN in metric files).
    For a class-conditional generator, ``labels`` are the classes it was asked for.
    """
    if net.task != "classification":
        raise ValueError(f"classifier_accuracy needs a classification net, this one was trained for {net.task!r}")
    _check_images(images)
    labels = _check_labels(labels, images.shape[0])
    if int(labels.max()) >= net.num_classes:
        raise ValueError(f"labels go up to {int(labels.max())} but the net has {net.num_classes} classes")
    correct = predict_logits(net, images, batch_size).argmax(dim=1) == labels.cpu()
    per_class = {}
    for cls in torch.unique(labels).tolist():
        chosen = labels.cpu() == cls
        per_class[int(cls)] = float(correct[chosen].double().mean())
    return {"accuracy": float(correct.double().mean()), "per_class_accuracy": per_class,
            "num_samples": int(labels.shape[0])}


def class_masses(net: FeatureNet, images: torch.Tensor, batch_size: int = 512) -> np.ndarray:
    """Fraction of images [N, C, H, W] in [-1, 1] a classification FeatureNet assigns to each class: [num_classes]."""
    if net.task != "classification":
        raise ValueError(f"class_masses needs a classification net, this one was trained for {net.task!r}")
    _check_images(images)
    predicted = predict_logits(net, images, batch_size).argmax(dim=1)
    return np.bincount(predicted.numpy(), minlength=net.num_classes) / max(1, images.shape[0])


# ----------------------------------------------------------------------------------------------
# Checkpoints


def _check_meta(value: Any, where: str = "meta") -> None:
    """Only plain containers and scalars survive ``torch.load(weights_only=True)``; reject the rest early."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_meta(item, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, (str, int)):
                raise ValueError(f"{where} keys must be str or int, got {type(key).__name__}")
            _check_meta(item, f"{where}[{key!r}]")
        return
    raise ValueError(f"{where} holds a {type(value).__name__}; only dict/list/str/int/float/bool/None are allowed")


def save_feature_net(path: str | os.PathLike, net: FeatureNet, meta: dict | None = None) -> None:
    """Write ``net`` (constructor args + weights) and ``meta`` to ``path`` atomically."""
    meta = {} if meta is None else meta
    if not isinstance(meta, dict):
        raise ValueError(f"meta must be a dict, got {type(meta).__name__}")
    _check_meta(meta)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "config": dict(net.config),
        "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()},
        "meta": meta,
    }
    atomic_save(payload, path)


def _read_checkpoint(path: str | os.PathLike) -> dict:
    payload = load_torch_file(path, needed_by="the feature extractor", expected="feature-extractor checkpoint")
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a {CHECKPOINT_FORMAT} checkpoint")
    if payload.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path}: unsupported checkpoint version {payload.get('version')}")
    return payload


def load_feature_net(path: str | os.PathLike) -> FeatureNet:
    """Rebuild a FeatureNet from its checkpoint (CPU, eval mode)."""
    payload = _read_checkpoint(path)
    net = FeatureNet(**payload["config"])
    net.load_state_dict(payload["state_dict"])
    return net.eval()


def load_feature_net_meta(path: str | os.PathLike) -> dict:
    """The ``meta`` dict stored by ``save_feature_net``."""
    return _read_checkpoint(path)["meta"]


# ----------------------------------------------------------------------------------------------
# torch-fidelity extractor


def uint8_to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 [N, C, H, W] in [0, 255] -> float32 in [-1, 1] (inverse of metrics' float -> uint8)."""
    return images.to(torch.float32) / 127.5 - 1.0


@functools.lru_cache(maxsize=None)
def fidelity_extractor_class() -> type:
    """The torch-fidelity FeatureExtractorBase subclass wrapping a FeatureNet checkpoint.

    Built on first use so that this module imports without torch-fidelity (it is only needed for
    image metrics). torch-fidelity constructs it as ``cls(name, features_list, **kwargs)`` where
    kwargs are all of ``calculate_metrics``' arguments; it reads ``feature_extractor_weights_path``
    (the FeatureNet checkpoint) and ``feature_extractor_internal_dtype`` ("float32"/"float64").
    """
    from torch_fidelity.feature_extractor_base import FeatureExtractorBase

    class RealuidFeatureExtractor(FeatureExtractorBase):
        """Features of a pipeline-trained FeatureNet: 'features' (FID/KID/PRC) and 'logits' (ISC)."""

        def __init__(self, name, features_list, feature_extractor_weights_path=None,
                     feature_extractor_internal_dtype=None, **kwargs):
            super().__init__(name, features_list)
            if feature_extractor_weights_path is None:
                raise ConfigError(f"the {EXTRACTOR_NAME} extractor needs feature_extractor_weights_path "
                                 "(a feature net checkpoint written by save_feature_net)")
            dtypes = {None: torch.float32, "float32": torch.float32, "float64": torch.float64}
            if feature_extractor_internal_dtype not in dtypes:
                raise ConfigError("feature_extractor_internal_dtype must be 'float32' or 'float64', "
                                 f"got {feature_extractor_internal_dtype!r}")
            self.internal_dtype = dtypes[feature_extractor_internal_dtype]
            self.net = load_feature_net(feature_extractor_weights_path).to(self.internal_dtype)
            self.requires_grad_(False)
            self.eval()

        @staticmethod
        def get_provided_features_list():
            return "features", "logits"

        @staticmethod
        def get_default_feature_layer_for_metric(metric):
            return {"isc": "logits", "fid": "features", "kid": "features", "prc": "features"}[metric]

        @staticmethod
        def can_be_compiled():
            return False

        @staticmethod
        def get_dummy_input_for_compile():
            return torch.zeros(1, 3, 8, 8, dtype=torch.uint8)

        def _match_channels(self, x: torch.Tensor) -> torch.Tensor:
            # Grayscale nets may be handed RGB-repeated images and vice versa; anything else is a mistake.
            want, have = self.net.in_channels, x.shape[1]
            if have == want:
                return x
            if want == 1 and have == 3:
                return x.mean(dim=1, keepdim=True)
            if want == 3 and have == 1:
                return x.repeat(1, 3, 1, 1)
            raise ConfigError(f"feature net expects {want} channels, images have {have}")

        def forward(self, x):
            if not torch.is_tensor(x) or x.dtype != torch.uint8 or x.dim() != 4:
                raise ValueError("expecting uint8 images [N, C, H, W]")
            if x.shape[2] != self.net.image_size or x.shape[3] != self.net.image_size:
                raise ConfigError(f"feature net was trained on {self.net.image_size}x{self.net.image_size} "
                                 f"images, got {x.shape[2]}x{x.shape[3]}")
            x = self._match_channels(uint8_to_unit_range(x).to(self.internal_dtype))
            feats, logits = self.net.features_and_logits(x)
            out = {"features": feats.to(torch.float32), "logits": logits.to(torch.float32)}
            return tuple(out[name] for name in self.features_list)

    return RealuidFeatureExtractor


def register_fidelity_extractor() -> None:
    """Register the extractor with torch-fidelity under EXTRACTOR_NAME (idempotent)."""
    from torch_fidelity import register_feature_extractor
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    if EXTRACTOR_NAME not in FEATURE_EXTRACTORS_REGISTRY:
        register_feature_extractor(EXTRACTOR_NAME, fidelity_extractor_class())
