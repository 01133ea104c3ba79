"""Data sources, pairing for bridges, and the HDF5 split format every later stage reads.

Every source returns float32 arrays scaled to [-1, 1]: points are ``[N, D]``, images ``[N, C, H, W]``.
Labels are int64 ``[N]`` or ``None``. A bridge pair adds ``x0`` (the degraded input) with the shape of
``x1``. Everything is a pure function of its settings and a seed, so a rerun reproduces the same bytes.

Sources:

* toy 2-D: ``gmm8`` (eight Gaussians on a circle), ``checkerboard`` (4x4 board), ``moons``;
* ``digits``: scikit-learn's bundled 8x8 digits (1,797 images, labels 0-9);
* ``cifar10``: the official python pickle batches (a torchvision folder or ``cifar-10-python.tar.gz``);
* ``file``: the user's ``.npz`` / ``.h5`` with arrays ``x`` (or ``x1``), optional ``y`` and ``x0``.

Each split records how to map samples back to the source's own units (``denormalize_scale`` and
``denormalize_shift``: ``original = x * scale + shift``), see :func:`to_original_units`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import pickle
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .atomic import atomic_write, temporary_file
from .errors import ConfigError, DataError

SOURCES = ("toy", "digits", "cifar10", "file")
TOY_DATASETS = ("gmm8", "checkerboard", "moons")
PAIRINGS = ("none", "noise", "mask", "downsample")

# The eight-Gaussian mixture: equal weights, centres at angles 2*pi*k/8 on a circle of this radius,
# isotropic standard deviation GMM8_STD. Kept as constants so an exact teacher can be written down.
GMM8_NUM_COMPONENTS = 8
GMM8_RADIUS = 0.8
GMM8_STD = 0.05

CHECKERBOARD_CELLS = 4  # cells per side of the board covering [-1, 1]^2
MOONS_NOISE = 0.05  # standard deviation of the jitter, in the moons' own units
# The noiseless moons span x in [-1, 2] and y in [-0.5, 1]; one isotropic map (shape preserved)
# centres them and leaves room for the jitter inside [-1, 1].
MOONS_CENTER = (0.5, 0.25)
MOONS_SCALE = 1.0 / 1.75

DIGITS_PIXEL_MAX = 16.0
CIFAR10_NUM_CLASSES = 10
CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR10_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_BATCHES = ("test_batch",)

H5_GZIP_LEVEL = 4
# v110 is the oldest HDF5 format with checksummed metadata, so corruption of headers is caught too,
# not only of the (fletcher32-protected) chunks.
H5_LIBVER = ("v110", "latest")
ARRAY_NAMES = ("x1", "y", "x0")


# --------------------------------------------------------------------------------------------------
# Split container
# --------------------------------------------------------------------------------------------------


@dataclass
class Split:
    """One split of a data set.

    x1: float32 ``[N, D]`` points or ``[N, C, H, W]`` images in [-1, 1] (the data endpoint).
    y: int64 ``[N]`` class labels, or ``None``.
    x0: float32, same shape as ``x1``: the paired (degraded) source endpoint, or ``None``.
    attrs: metadata (source, kind, shape, num_classes, paired, params, content_hash, ...).
    """

    x1: np.ndarray
    y: np.ndarray | None = None
    x0: np.ndarray | None = None
    attrs: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.x1.shape[0])

    @property
    def kind(self) -> str:
        return kind_of(self.x1)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.x1.shape[1:])

    @property
    def num_classes(self) -> int:
        return int(self.attrs.get("num_classes", 0))


def kind_of(x: np.ndarray) -> str:
    """'points' for ``[N, D]`` arrays, 'images' for ``[N, C, H, W]``."""
    if x.ndim == 2:
        return "points"
    if x.ndim == 4:
        return "images"
    raise DataError(f"expected points [N, D] or images [N, C, H, W], got an array of shape {x.shape}")


def to_original_units(x: np.ndarray, attrs: dict) -> np.ndarray:
    """Map samples in [-1, 1] back to the source's units with the split's recorded affine map.

    x: ``[N, D]`` or ``[N, C, H, W]``. The scale/shift are per dimension ``[D]`` for points and one
    number for images.
    """
    scale = np.asarray(attrs["denormalize_scale"], dtype=np.float64)
    shift = np.asarray(attrs["denormalize_shift"], dtype=np.float64)
    if x.ndim == 4:
        scale, shift = scale.reshape(-1, 1, 1, 1)[0], shift.reshape(-1, 1, 1, 1)[0]
    return x.astype(np.float64) * scale + shift


# --------------------------------------------------------------------------------------------------
# Seeding
# --------------------------------------------------------------------------------------------------

# Independent random streams per purpose: changing the number of test points never changes the
# training points, and pairing noise never shifts the samples themselves.
STREAM_TRAIN, STREAM_TEST, STREAM_SPLIT, STREAM_PAIR_TRAIN, STREAM_PAIR_TEST = range(5)


def rng_for(seed: int, stream: int) -> np.random.Generator:
    """A generator for one purpose (``stream``) of one seed."""
    return np.random.default_rng([int(seed), int(stream)])


# --------------------------------------------------------------------------------------------------
# Toy 2-D sources
# --------------------------------------------------------------------------------------------------


def gmm8_centers() -> np.ndarray:
    """The mixture's centres, float64 ``[8, 2]``; component k sits at angle 2*pi*k/8."""
    angles = 2 * np.pi * np.arange(GMM8_NUM_COMPONENTS) / GMM8_NUM_COMPONENTS
    return GMM8_RADIUS * np.stack([np.cos(angles), np.sin(angles)], axis=1)


def _draw_gmm8(rng: np.random.Generator, n: int) -> np.ndarray:
    component = rng.integers(0, GMM8_NUM_COMPONENTS, size=n)
    return gmm8_centers()[component] + GMM8_STD * rng.standard_normal((n, 2))


def _draw_checkerboard(rng: np.random.Generator, n: int) -> np.ndarray:
    # Filled cells are those with an even row+column index: half of the 4x4 board.
    cells = [(i, j) for i in range(CHECKERBOARD_CELLS) for j in range(CHECKERBOARD_CELLS) if (i + j) % 2 == 0]
    cells = np.asarray(cells, dtype=np.float64)
    width = 2.0 / CHECKERBOARD_CELLS
    corner = -1.0 + width * cells[rng.integers(0, len(cells), size=n)]
    return corner + width * rng.random((n, 2))


def _draw_moons(rng: np.random.Generator, n: int) -> np.ndarray:
    # Upper moon: unit half circle; lower moon: the same, flipped and shifted by (1, 0.5).
    upper = rng.random(n) < 0.5
    angle = np.pi * rng.random(n)
    x = np.where(upper, np.cos(angle), 1.0 - np.cos(angle))
    y = np.where(upper, np.sin(angle), 0.5 - np.sin(angle))
    moons = np.stack([x, y], axis=1) + MOONS_NOISE * rng.standard_normal((n, 2))
    return (moons - np.asarray(MOONS_CENTER)) * MOONS_SCALE


TOY_SAMPLERS: dict[str, Callable[[np.random.Generator, int], np.ndarray]] = {
    "gmm8": _draw_gmm8,
    "checkerboard": _draw_checkerboard,
    "moons": _draw_moons,
}


def sample_in_box(draw: Callable[[np.random.Generator, int], np.ndarray], rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` points of ``draw`` conditioned on lying inside [-1, 1]^D (rejection), float64 ``[n, D]``.

    Only the Gaussian tails leave the box (gmm8: beyond 4 std, ~3e-5 of the mass), so the truncated
    distribution is the untruncated one for any practical purpose, unlike clipping, which would pile
    points up on the border.
    """
    kept: list[np.ndarray] = []
    count = 0
    while count < n:
        batch = draw(rng, n - count)
        batch = batch[np.all(np.abs(batch) <= 1.0, axis=1)]
        kept.append(batch)
        count += len(batch)
    return np.concatenate(kept)[:n]


def make_toy(name: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` float32 points ``[n, 2]`` of toy data set ``name`` inside [-1, 1]^2."""
    if name not in TOY_SAMPLERS:
        raise ConfigError(f"unknown toy data set {name!r}; choose one of {', '.join(TOY_DATASETS)}")
    if n <= 0:
        raise ConfigError(f"number of toy points must be positive, got {n}")
    return sample_in_box(TOY_SAMPLERS[name], rng, n).astype(np.float32)


def toy_original_units(name: str) -> tuple[list[float], list[float]]:
    """(scale, shift) per dimension mapping a toy sample back to its source's units."""
    if name == "moons":
        return [1 / MOONS_SCALE] * 2, list(MOONS_CENTER)
    return [1.0, 1.0], [0.0, 0.0]


# --------------------------------------------------------------------------------------------------
# Splitting
# --------------------------------------------------------------------------------------------------


def split_indices(n: int, test_fraction: float, rng: np.random.Generator, labels: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic train/test indices of ``n`` samples, each sorted (the source order is kept).

    With labels the split is stratified: each class gives round(test_fraction * its size) to the test
    split. Raises ValueError when either split would be empty.
    """
    if not 0 < test_fraction < 1:
        raise ConfigError(f"test_fraction must be in (0, 1), got {test_fraction}")
    if labels is None:
        groups = [np.arange(n)]
    else:
        groups = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    test_parts = []
    for members in groups:
        n_test = int(round(test_fraction * len(members)))
        test_parts.append(rng.permutation(members)[:n_test])
    test = np.sort(np.concatenate(test_parts)).astype(np.int64)
    train = np.setdiff1d(np.arange(n), test).astype(np.int64)
    if len(train) == 0 or len(test) == 0:
        raise ConfigError(
            f"test_fraction={test_fraction} of {n} samples leaves an empty "
            f"{'train' if len(train) == 0 else 'test'} split"
        )
    return train, test


def take(split: Split, index: np.ndarray) -> Split:
    """The samples ``index`` of a split, with a copy of its attrs."""
    return Split(
        x1=split.x1[index],
        y=None if split.y is None else split.y[index],
        x0=None if split.x0 is None else split.x0[index],
        attrs=dict(split.attrs),
    )


# --------------------------------------------------------------------------------------------------
# Digits
# --------------------------------------------------------------------------------------------------


def load_digits_data() -> Split:
    """All 1,797 scikit-learn digits: x1 float32 ``[1797, 1, 8, 8]`` in [-1, 1], y int64 ``[1797]``."""
    from sklearn.datasets import load_digits  # the wheel bundles the data; imported only when used

    bunch = load_digits()
    x = bunch.images.astype(np.float64) / DIGITS_PIXEL_MAX * 2.0 - 1.0
    half = DIGITS_PIXEL_MAX / 2
    return Split(
        x1=x[:, None].astype(np.float32),
        y=bunch.target.astype(np.int64),
        attrs={"num_classes": 10, "denormalize_scale": [half], "denormalize_shift": [half]},
    )


# --------------------------------------------------------------------------------------------------
# CIFAR-10 (python pickle batches)
# --------------------------------------------------------------------------------------------------

# The batches are pickles, which can run code on load; only the few globals that a pickled numpy
# array needs are allowed.
_PICKLE_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy._core.numeric", "_frombuffer"),  # protocol 5 pickles of arrays
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _PICKLE_ALLOWED:
            raise DataError(f"CIFAR-10 batch refers to {module}.{name}, which a data batch never needs")
        return super().find_class(module, name)


def _load_batch(raw: bytes, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Decode one pickle batch into uint8 ``[n, 3, 32, 32]`` images and int64 ``[n]`` labels."""
    try:
        # latin1 is how the original (Python 2) batches must be decoded; torchvision does the same.
        batch = _ArrayUnpickler(io.BytesIO(raw), encoding="latin1").load()
        data = np.asarray(batch["data"], dtype=np.uint8)
        labels = np.asarray(batch["labels"], dtype=np.int64)
    except DataError:
        raise
    except Exception as err:
        raise DataError(f"CIFAR-10 batch {name} is not a readable pickle batch: {err}") from err
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(labels) != len(data):
        raise DataError(f"CIFAR-10 batch {name}: expected data [n, 3072] and n labels, got {data.shape} and {labels.shape}")
    return data.reshape(-1, 3, 32, 32), labels


def _read_cifar_batches(root: Path, names: tuple[str, ...]) -> dict[str, bytes]:
    """Raw bytes of the named batches from a folder or a ``.tar.gz`` archive."""
    if root.is_file():
        try:
            with tarfile.open(root, "r:gz") as archive:
                members = {Path(m.name).name: m for m in archive.getmembers() if m.isfile()}
                missing = [n for n in names if n not in members]
                if missing:
                    raise DataError(f"{root} has no CIFAR-10 batch {missing[0]}")
                return {n: archive.extractfile(members[n]).read() for n in names}
        except (tarfile.TarError, OSError, EOFError) as err:
            raise DataError(f"{root} is not a readable cifar-10-python.tar.gz archive: {err}") from err
    missing = [n for n in names if not (root / n).is_file()]
    if missing:
        raise DataError(f"{root} has no CIFAR-10 batch {missing[0]}")
    return {n: (root / n).read_bytes() for n in names}


def find_cifar10(path: str | Path) -> Path | None:
    """The batch folder or archive under ``path``: the path itself when it is the archive or the
    ``cifar-10-batches-py`` folder, else one of those inside it. ``None`` when there is none."""
    path = Path(path)
    candidates = [path, path / CIFAR10_FOLDER, path / CIFAR10_ARCHIVE]
    for candidate in candidates:
        if candidate.is_file() and candidate.name.endswith((".tar.gz", ".tgz")):
            return candidate
        if candidate.is_dir() and (candidate / CIFAR10_TEST_BATCHES[0]).is_file():
            return candidate
    return None


def download_cifar10(path: str | Path) -> None:
    """Download and checksum the official archive into ``path`` with torchvision (needs network)."""
    from torchvision.datasets import CIFAR10  # imported only here: the library runs without it

    Path(path).mkdir(parents=True, exist_ok=True)
    CIFAR10(root=str(path), train=True, download=True)


def load_cifar10(path: str | Path, *, download: bool = False) -> tuple[Split, Split]:
    """The official CIFAR-10 train (50,000) and test (10,000) splits, float32 ``[N, 3, 32, 32]``.

    ``path`` is a torchvision root folder, the ``cifar-10-batches-py`` folder, or the archive.
    """
    if not str(path):
        raise DataError("source cifar10 needs prepare.path: a folder for the data or the archive")
    root = find_cifar10(path)
    if root is None and download:
        download_cifar10(path)
        root = find_cifar10(path)
    if root is None:
        raise DataError(
            f"no CIFAR-10 data at {path}. Either set prepare.download: true (needs network; "
            f"torchvision downloads it into that folder), or put {CIFAR10_ARCHIVE} or an extracted "
            f"torchvision folder ({CIFAR10_FOLDER}/) at prepare.path"
        )
    raw = _read_cifar_batches(root, CIFAR10_TRAIN_BATCHES + CIFAR10_TEST_BATCHES)

    def assemble(names: tuple[str, ...]) -> Split:
        parts = [_load_batch(raw[n], n) for n in names]
        images = np.concatenate([p[0] for p in parts])
        labels = np.concatenate([p[1] for p in parts])
        return Split(
            x1=uint8_to_unit(images),
            y=labels,
            attrs={"num_classes": CIFAR10_NUM_CLASSES, "denormalize_scale": [127.5], "denormalize_shift": [127.5]},
        )

    return assemble(CIFAR10_TRAIN_BATCHES), assemble(CIFAR10_TEST_BATCHES)


def uint8_to_unit(x: np.ndarray) -> np.ndarray:
    """uint8 pixels 0..255 -> float32 in [-1, 1] (x / 127.5 - 1)."""
    return (x.astype(np.float32) / np.float32(127.5) - np.float32(1.0)).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# User files
# --------------------------------------------------------------------------------------------------


def _read_user_arrays(path: Path) -> dict[str, np.ndarray]:
    """Arrays ``x1`` (from ``x`` or ``x1``), optional ``y``, ``x0`` of an ``.npz`` or ``.h5`` file."""
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                found = {k: archive[k] for k in archive.files}
        elif suffix in (".h5", ".hdf5"):
            import h5py

            with h5py.File(path, "r") as f:
                found = {k: f[k][()] for k in f.keys() if isinstance(f[k], h5py.Dataset)}
        else:
            raise DataError(f"{path}: expected a .npz or .h5 file")
    except DataError:
        raise
    except Exception as err:
        raise DataError(f"cannot read {path}: {err}") from err
    if "x" in found and "x1" in found:
        raise DataError(f"{path} has both 'x' and 'x1'; keep one of them")
    if "x" not in found and "x1" not in found:
        raise DataError(f"{path} has no array 'x' (or 'x1'); found: {', '.join(sorted(found)) or 'nothing'}")
    arrays = {"x1": found.get("x1", found.get("x"))}
    for name in ("y", "x0"):
        if name in found:
            arrays[name] = found[name]
    return arrays


def to_channels_first(x: np.ndarray) -> np.ndarray:
    """``[N, H, W, C]`` with C in {1, 3} becomes ``[N, C, H, W]``; anything else is returned as is.

    An array is taken as channels-last only when its second axis cannot be a channel axis, so
    ``[N, 3, H, W]`` is never transposed.
    """
    if x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    return x


def _as_float_samples(x: np.ndarray, name: str, path: Path) -> np.ndarray:
    """Checks layout and dtype of one user array and converts it to float (uint8 -> [-1, 1])."""
    if x.dtype.kind not in "uif":
        raise DataError(f"{path}: array '{name}' has dtype {x.dtype}; expected numbers")
    x = to_channels_first(x)
    if x.ndim not in (2, 4):
        raise DataError(
            f"{path}: array '{name}' has shape {x.shape}; expected points [N, D], images [N, C, H, W] "
            f"or [N, H, W, C] with C in (1, 3)"
        )
    if len(x) == 0:
        raise DataError(f"{path}: array '{name}' is empty")
    if x.dtype == np.uint8:
        return uint8_to_unit(x)
    return x.astype(np.float64)


def _labels(y: np.ndarray, n: int, path: Path) -> np.ndarray:
    if y.shape != (n,):
        raise DataError(f"{path}: labels 'y' have shape {y.shape}; expected ({n},), one per sample")
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)) or np.any(y != np.round(y)):
            raise DataError(f"{path}: labels 'y' must be whole numbers")
    elif y.dtype.kind not in "iu":
        raise DataError(f"{path}: labels 'y' have dtype {y.dtype}; expected integers")
    return y.astype(np.int64)


def minmax_affine(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(scale, shift) with ``x = unit * scale + shift`` mapping the data's range onto [-1, 1].

    Points get one map per dimension (``[D]``); images one map for all pixels (``[1]``), so colours
    keep their relative values. NaN and infinities are ignored (the validation reports them). A
    constant dimension maps to 0.
    """
    flat = x.reshape(len(x), -1) if x.ndim == 2 else x.reshape(-1, 1)
    finite = np.where(np.isfinite(flat), flat, np.nan)
    # fmin/fmax skip NaN; a dimension without any finite value stays NaN and is mapped as constant.
    low = np.nan_to_num(np.fmin.reduce(finite, axis=0), nan=0.0)
    high = np.nan_to_num(np.fmax.reduce(finite, axis=0), nan=0.0)
    half_range = (high - low) / 2
    scale = np.where(half_range > 0, half_range, 1.0)
    return scale, (high + low) / 2


def apply_inverse_affine(x: np.ndarray, scale: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """``(x - shift) / scale`` broadcast per dimension (points) or globally (images)."""
    if x.ndim == 4:
        return (x - shift[0]) / scale[0]
    return (x - shift) / scale


def load_user_file(path: str | Path, *, normalize: bool = False) -> Split:
    """A user's ``.npz``/``.h5`` as one split (float32), before the train/test split.

    uint8 arrays are images and map to [-1, 1] exactly. Float data outside [-1, 1] is kept as it is
    (the validation reports it) unless ``normalize``, which maps each dimension's min/max onto
    [-1, 1] and records the map; ``x0`` (when given) shares the map of ``x1``.
    """
    if not str(path):
        raise DataError("source file needs prepare.path: a .npz or .h5 file")
    path = Path(path)
    raw = _read_user_arrays(path)
    was_uint8 = raw["x1"].dtype == np.uint8
    x1 = _as_float_samples(raw["x1"], "x1" if "x1" in raw else "x", path)
    x0 = None
    if "x0" in raw:
        x0 = _as_float_samples(raw["x0"], "x0", path)
        if x0.shape != x1.shape:
            raise DataError(f"{path}: 'x0' has shape {x0.shape} but the data has {x1.shape}; pairs must match")
    y = _labels(raw["y"], len(x1), path) if "y" in raw else None

    per_dim = x1.shape[1] if x1.ndim == 2 else 1
    scale, shift = np.ones(per_dim), np.zeros(per_dim)
    if was_uint8:
        scale, shift = np.full(per_dim, 127.5), np.full(per_dim, 127.5)
    elif normalize:
        scale, shift = minmax_affine(x1)
        x1 = apply_inverse_affine(x1, scale, shift)
        if x0 is not None:
            x0 = apply_inverse_affine(x0, scale, shift)
    attrs = {
        "num_classes": 0 if y is None or len(y) == 0 else max(int(y.max()) + 1, 0),
        "denormalize_scale": [float(v) for v in scale],
        "denormalize_shift": [float(v) for v in shift],
    }
    return Split(
        x1=x1.astype(np.float32),
        y=y,
        x0=None if x0 is None else x0.astype(np.float32),
        attrs=attrs,
    )


# --------------------------------------------------------------------------------------------------
# Pairing (x0 = degraded x1, for bridge matching)
# --------------------------------------------------------------------------------------------------


def pair_noise(x1: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """x1 + strength * N(0, I), clipped to [-1, 1]; same shape and dtype as ``x1``."""
    noisy = x1.astype(np.float64) + strength * rng.standard_normal(x1.shape)
    return np.clip(noisy, -1.0, 1.0).astype(x1.dtype)


def pair_mask(x1: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Zero one region per sample.

    Images ``[N, C, H, W]``: a random square of side max(1, round(strength * min(H, W))), on all
    channels. Points ``[N, D]``: one random coordinate (``strength`` is not used).
    """
    x0 = x1.copy()
    n = len(x1)
    if x1.ndim == 2:
        x0[np.arange(n), rng.integers(0, x1.shape[1], size=n)] = 0
        return x0
    height, width = x1.shape[2:]
    side = min(max(1, int(round(strength * min(height, width)))), height, width)
    tops = rng.integers(0, height - side + 1, size=n)
    lefts = rng.integers(0, width - side + 1, size=n)
    for i, (top, left) in enumerate(zip(tops, lefts)):
        x0[i, :, top : top + side, left : left + side] = 0
    return x0


def pair_downsample(x1: np.ndarray) -> np.ndarray:
    """Average-pool by 2, then nearest upsample: ``[N, C, H, W]`` -> same shape, H and W even."""
    if x1.ndim != 4:
        raise ConfigError("pairing 'downsample' needs images [N, C, H, W]; these data are points")
    n, c, h, w = x1.shape
    if h % 2 or w % 2:
        raise ConfigError(f"pairing 'downsample' needs an even height and width, got {h}x{w}")
    pooled = x1.reshape(n, c, h // 2, 2, w // 2, 2).mean(axis=(3, 5), dtype=np.float64)
    return pooled.repeat(2, axis=2).repeat(2, axis=3).astype(x1.dtype)


def make_pairs(x1: np.ndarray, pairing: str, strength: float, rng: np.random.Generator) -> np.ndarray | None:
    """The degraded partner ``x0`` of each sample (same shape as ``x1``), or ``None`` for 'none'."""
    if pairing == "none":
        return None
    if pairing == "noise":
        if strength <= 0:
            raise ConfigError("pairing 'noise' needs pairing_strength > 0 (the noise standard deviation)")
        return pair_noise(x1, strength, rng)
    if pairing == "mask":
        if x1.ndim == 4 and not 0 < strength <= 1:
            raise ConfigError("pairing 'mask' needs pairing_strength in (0, 1] (side of the square / image side)")
        return pair_mask(x1, strength, rng)
    if pairing == "downsample":
        return pair_downsample(x1)
    raise ConfigError(f"unknown pairing {pairing!r}; choose one of {', '.join(PAIRINGS)}")


# --------------------------------------------------------------------------------------------------
# Building both splits from the prepare settings
# --------------------------------------------------------------------------------------------------


def params_dict(params: Any) -> dict:
    """Plain dict of the prepare settings (a dataclass or a mapping)."""
    if dataclasses.is_dataclass(params):
        return dataclasses.asdict(params)
    return dict(params)


def effective_settings(settings: dict) -> dict:
    """The prepare settings that shape the splits of ``settings``' source; the others are left out of the
    files' attributes, so changing a key the source ignores (the toy set's name on digits, the pairing
    strength without pairing, the test fraction of toy data) writes byte-identical files and reruns nothing
    downstream. ``download`` only allows fetching CIFAR-10 and never changes what is read."""
    source = settings["source"]
    keys = {"toy": ["toy", "n_train", "n_test", "seed"], "digits": ["test_fraction", "seed"],
            "file": ["path", "normalize", "test_fraction", "seed"], "cifar10": ["path"]}[source]
    keys = ["source", *keys, "pairing"]
    if settings["pairing"] != "none":
        keys += ["pairing_strength", "seed"]
    return {key: settings[key] for key in sorted(set(keys))}


def expected_sample_shape(params: Any) -> tuple[int, ...] | None:
    """The per-sample shape a source must produce, or ``None`` when the data decide (user files)."""
    return {"toy": (2,), "digits": (1, 8, 8), "cifar10": (3, 32, 32)}.get(params.source)


def build_splits(params: Any) -> tuple[Split, Split]:
    """Train and test splits for the prepare settings ``params`` (attributes as in params.yaml).

    toy: ``n_train``/``n_test`` fresh points; digits and file: a ``test_fraction`` split (stratified
    when labelled); cifar10: the official split. Pairing is applied per split with its own stream.
    """
    settings = params_dict(params)
    source = settings["source"]
    seed = int(settings["seed"])
    if source not in SOURCES:
        raise ConfigError(f"unknown source {source!r}; choose one of {', '.join(SOURCES)}")
    if settings["pairing"] not in PAIRINGS:
        raise ConfigError(f"unknown pairing {settings['pairing']!r}; choose one of {', '.join(PAIRINGS)}")

    if source == "toy":
        scale, shift = toy_original_units(settings["toy"])
        attrs = {"num_classes": 0, "denormalize_scale": scale, "denormalize_shift": shift}
        train = Split(make_toy(settings["toy"], int(settings["n_train"]), rng_for(seed, STREAM_TRAIN)), attrs=attrs)
        test = Split(make_toy(settings["toy"], int(settings["n_test"]), rng_for(seed, STREAM_TEST)), attrs=dict(attrs))
    elif source == "cifar10":
        train, test = load_cifar10(settings["path"], download=bool(settings["download"]))
    else:
        whole = load_digits_data() if source == "digits" else load_user_file(settings["path"], normalize=bool(settings["normalize"]))
        train_index, test_index = split_indices(len(whole), float(settings["test_fraction"]), rng_for(seed, STREAM_SPLIT), whole.y)
        train, test = take(whole, train_index), take(whole, test_index)

    if settings["pairing"] != "none":
        if train.x0 is not None:
            raise DataError(f"{settings['path']} already holds pairs 'x0'; set pairing: none to use them")
        for split, stream in ((train, STREAM_PAIR_TRAIN), (test, STREAM_PAIR_TEST)):
            split.x0 = make_pairs(split.x1, settings["pairing"], float(settings["pairing_strength"]), rng_for(seed, stream))

    # source is the params' word (toy, digits, ...); dataset names the toy set within 'toy'.
    dataset = settings["toy"] if source == "toy" else source
    for split in (train, test):
        split.attrs.update({"source": source, "dataset": dataset,
                            "params": json.dumps(effective_settings(settings), sort_keys=True)})
    return train, test


# --------------------------------------------------------------------------------------------------
# HDF5 split files
# --------------------------------------------------------------------------------------------------


def content_hash(arrays: dict[str, np.ndarray | None]) -> str:
    """sha256 over each present array's name, dtype, shape and bytes (C order), in ARRAY_NAMES order."""
    digest = hashlib.sha256()
    for name in ARRAY_NAMES:
        array = arrays.get(name)
        if array is None:
            continue
        array = np.ascontiguousarray(array)
        digest.update(f"{name}|{array.dtype.str}|{tuple(array.shape)}|".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def _check_arrays(x1: np.ndarray, y: np.ndarray | None, x0: np.ndarray | None) -> None:
    kind_of(x1)
    if len(x1) == 0:
        raise DataError("cannot write an empty split")
    if y is not None and y.shape != (len(x1),):
        raise DataError(f"labels have shape {y.shape}; expected ({len(x1)},)")
    if x0 is not None and x0.shape != x1.shape:
        raise DataError(f"x0 has shape {x0.shape}; expected the shape of x1, {x1.shape}")


def _write_attr(attrs: Any, key: str, value: Any) -> None:
    """Store one attribute inside the (checksummed) object header.

    Strings are written fixed-length: h5py's default variable-length strings live in the global heap,
    which has no checksum, so a damaged attribute would go unnoticed (or hang the HDF5 reader).
    Lists become arrays; None is refused.
    """
    import h5py

    if value is None:
        raise ValueError(f"attribute {key!r} cannot be None")
    if isinstance(value, str):
        encoded = value.encode("utf-8")
        attrs.create(key, data=encoded, dtype=h5py.string_dtype("utf-8", max(len(encoded), 1)))
    elif isinstance(value, (list, tuple)):
        attrs[key] = np.asarray(value)
    else:
        attrs[key] = value


def write_split(path: str | Path, x1: np.ndarray, *, y: np.ndarray | None = None, x0: np.ndarray | None = None, attrs: dict) -> str:
    """Write one split to ``path`` atomically; returns its content hash.

    x1, x0: float32 ``[N, D]`` or ``[N, C, H, W]``; y: ``[N]`` (stored int64). ``attrs`` must hold
    ``source``; ``kind``, ``shape``, ``paired``, ``content_hash`` are derived here and ``num_classes``
    defaults to 0. Datasets are chunked, gzip-compressed and fletcher32-checksummed, and no time is
    recorded anywhere, so the same arrays and attrs give byte-identical files. The file is built in
    memory and written to a temporary file that is renamed into place: a full disk raises one OSError
    naming ``path`` and leaves nothing behind.
    """
    x1 = np.ascontiguousarray(x1, dtype=np.float32)
    y = None if y is None else np.ascontiguousarray(y, dtype=np.int64)
    x0 = None if x0 is None else np.ascontiguousarray(x0, dtype=np.float32)
    _check_arrays(x1, y, x0)
    if "source" not in attrs:
        raise ValueError("attrs must name the data's 'source'")
    digest = content_hash({"x1": x1, "y": y, "x0": x0})
    all_attrs = {"num_classes": 0, **attrs}
    all_attrs.update(
        kind=kind_of(x1),
        shape=[int(s) for s in x1.shape[1:]],
        paired=x0 is not None,
        content_hash=digest,
    )

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = _hdf5_image(path.name, (("x1", x1), ("y", y), ("x0", x0)), all_attrs)
    # The file image goes to disk with plain writes: a full or failing disk is one OSError naming the file.
    # (HDF5 writing to disk itself fails badly there: a crash inside h5py, a half-written file.)
    atomic_write(path, image)
    return digest


class SplitWriter:
    """The file :func:`write_split` writes, with ``x1`` arriving batch by batch (:meth:`append`, rows in
    order): besides the batch, only the rows of one chunk (``chunks[0]`` rows, about :data:`H5_CHUNK_BYTES`)
    are held, never the whole array. ``y`` and ``x0`` are given whole at the start (labels and inputs are
    known before sampling).

    Leaving the ``with`` block completes the file: byte-identical to ``write_split`` of the concatenated
    rows, because the chunks reach the file in the same order (whole chunks, flushed at once, as one
    full write flushes them) and the other datasets and the attributes follow as there. It is built
    under a temporary name beside ``path`` and renamed into place; an error leaves nothing behind.
    Unlike ``write_split``, HDF5 writes to disk itself here.
    """

    def __init__(self, path: str | Path, n: int, sample_shape: tuple[int, ...], *, y: np.ndarray | None = None,
                 x0: np.ndarray | None = None, attrs: dict):
        import h5py

        shape = (n, *(int(s) for s in sample_shape))
        kind_of(np.empty((0, *shape[1:])))
        if n < 1:
            raise ValueError("cannot write an empty split")
        if "source" not in attrs:
            raise ValueError("attrs must name the data's 'source'")
        self.path, self.shape, self.attrs = Path(path), shape, attrs
        self.y = None if y is None else np.ascontiguousarray(y, dtype=np.int64)
        self.x0 = None if x0 is None else np.ascontiguousarray(x0, dtype=np.float32)
        if self.y is not None and self.y.shape != shape[:1]:
            raise ValueError(f"labels have shape {self.y.shape}; expected ({n},)")
        if self.x0 is not None and self.x0.shape != shape:
            raise ValueError(f"x0 has shape {self.x0.shape}; expected the shape of x1, {shape}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = temporary_file(self.path)
        self.file = h5py.File(self.tmp, "w", libver=H5_LIBVER, track_order=False)
        self.x1 = self.file.create_dataset("x1", shape=shape, dtype=np.float32, **h5_dataset_options(shape, np.float32))
        # content_hash's x1 part, fed as the rows come
        self.digest = hashlib.sha256(f"x1|{np.dtype(np.float32).str}|{shape}|".encode())
        self.pending: list[np.ndarray] = []
        self.written = 0

    def append(self, x1: np.ndarray) -> None:
        """Rows ``[b, *sample_shape]`` that follow those appended before."""
        x1 = np.ascontiguousarray(x1, dtype=np.float32)
        if x1.shape[1:] != self.shape[1:]:
            raise ValueError(f"rows of shape {x1.shape[1:]} appended to a split of {self.shape[1:]}")
        held = sum(len(a) for a in self.pending) + len(x1)
        if self.written + held > self.shape[0]:
            raise ValueError(f"more than the {self.shape[0]} rows announced")
        self.digest.update(x1.tobytes())
        self.pending.append(x1)
        last = self.written + held == self.shape[0]
        chunk_rows = self.x1.chunks[0]
        if last or held >= chunk_rows:
            rows = held if last else held - held % chunk_rows
            block = np.concatenate(self.pending)
            self.x1[self.written:self.written + rows] = block[:rows]
            self.x1.id.flush()  # these chunks go to the file now, in order, as one full write puts them
            self.written += rows
            self.pending = [block[rows:]] if rows < held else []

    def __enter__(self) -> "SplitWriter":
        return self

    def __exit__(self, kind, error, traceback) -> None:
        try:
            if kind is None:
                self._finish()
        finally:
            if self.file.id.valid:
                self.file.close()
            self.tmp.unlink(missing_ok=True)  # gone already after a successful rename

    def _finish(self) -> None:
        if self.written != self.shape[0]:
            got = self.written + sum(len(a) for a in self.pending)
            raise ValueError(f"{got} rows written of the {self.shape[0]} announced")
        for name, array in (("y", self.y), ("x0", self.x0)):
            if array is not None:
                self.digest.update(f"{name}|{array.dtype.str}|{tuple(array.shape)}|".encode())
                self.digest.update(array.tobytes())
                self.file.create_dataset(name, data=array, **h5_dataset_options(array.shape, array.dtype))
        all_attrs = {"num_classes": 0, **self.attrs, "kind": kind_of(np.empty((0, *self.shape[1:]))),
                     "shape": list(self.shape[1:]), "paired": self.x0 is not None,
                     "content_hash": self.digest.hexdigest()}
        for key in sorted(all_attrs):
            _write_attr(self.file.attrs, key, all_attrs[key])
        self.file.close()
        os.replace(self.tmp, self.path)


H5_DATASET_OPTIONS = dict(compression="gzip", compression_opts=H5_GZIP_LEVEL, shuffle=True, fletcher32=True,
                          # HDF5 itself stamps objects with times; h5py's default (off) has varied, so say it.
                          track_times=False)
H5_CHUNK_BYTES = 1 << 20


def h5_dataset_options(shape: tuple[int, ...], dtype) -> dict:
    """Options of a dataset ``[N, ...]``: :data:`H5_DATASET_OPTIONS` with chunks of whole rows, about
    :data:`H5_CHUNK_BYTES` each. A reader of a batch of rows then decompresses only the chunks holding
    them, and :class:`SplitWriter` holds at most one chunk's rows. (h5py's own choice cuts across rows,
    e.g. 16000 rows of one pixel for 128k 8x8 images: every batch read decompresses whole columns, and a
    writer in row order must hold 16000 rows.)"""
    row_bytes = max(1, int(np.prod(shape[1:], dtype=np.int64)) * np.dtype(dtype).itemsize)
    rows = max(1, min(int(shape[0]), H5_CHUNK_BYTES // row_bytes))
    return {**H5_DATASET_OPTIONS, "chunks": (rows, *(int(s) for s in shape[1:]))}


def _hdf5_image(name: str, arrays, attrs: dict) -> bytes:
    """The bytes of an HDF5 file holding ``arrays`` ((name, array or None) pairs) and ``attrs``, built in
    memory (HDF5's core driver, no backing file): the same bytes HDF5 would write to disk."""
    import h5py

    # `name` only labels the in-memory file; nothing is created under it.
    f = h5py.File(name, "w", driver="core", backing_store=False, libver=H5_LIBVER, track_order=False)
    try:
        for dataset, array in arrays:
            if array is not None:
                f.create_dataset(dataset, data=array, **h5_dataset_options(array.shape, array.dtype))
        for key in sorted(attrs):
            _write_attr(f.attrs, key, attrs[key])
        f.flush()
        return f.id.get_file_image()
    finally:
        f.close()


def _plain(value: Any) -> Any:
    """An HDF5 attribute as a plain Python value (str, int, float, bool or list)."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def read_split(path: str | Path) -> Split:
    """Read a split written by :func:`write_split` and verify its content hash.

    Raises :class:`DataError` naming the file when it is missing, truncated, corrupted (a failed
    chunk checksum) or when its arrays do not match the recorded hash.
    """
    import h5py

    path = Path(path)
    if not path.is_file():
        raise DataError(f"split file not found: {path}")
    try:
        with h5py.File(path, "r") as f:
            attrs = {key: _plain(f.attrs[key]) for key in f.attrs}
            arrays = {name: f[name][()] for name in ARRAY_NAMES if name in f}
    except Exception as err:  # h5py reports damage as OSError, KeyError, RuntimeError, ...
        raise DataError(f"{path} is corrupted or truncated and cannot be read ({type(err).__name__}: {err}); rerun the prepare stage") from err
    if "x1" not in arrays or "content_hash" not in attrs:
        raise DataError(f"{path} is not a realuid split file (no 'x1' data or no content hash)")
    actual = content_hash(arrays)
    if actual != attrs["content_hash"]:
        raise DataError(
            f"{path}: the data do not match the recorded content hash "
            f"({actual[:12]} != {str(attrs['content_hash'])[:12]}); the file was altered, rerun the prepare stage"
        )
    return Split(x1=arrays["x1"], y=arrays.get("y"), x0=arrays.get("x0"), attrs=attrs)


def save_split(split: Split, path: str | Path) -> str:
    """Write a :class:`Split` (its arrays and attrs) with :func:`write_split`; returns the hash."""
    derived = {"kind", "shape", "paired", "content_hash"}
    attrs = {k: v for k, v in split.attrs.items() if k not in derived}
    return write_split(path, split.x1, y=split.y, x0=split.x0, attrs=attrs)
