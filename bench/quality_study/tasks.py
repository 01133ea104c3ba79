"""The data of one toy job: training points, the held-out reference, the floor's second sample.

Every distance in the study compares ``n_eval`` points with the held-out ``reference`` set; the
``floor`` set is a second, independent real sample of the same size, so ``distance(floor, reference)``
is what a perfect generator would score. A third held-out set, ``validation``, is what the teacher's
budget is chosen on, so no setting is chosen on the numbers the tables report. Bridge pairs ``x0 = clip(x1 + s * N(0, I), -1, 1)`` follow
``realuid.data.pair_noise``; the bridge generator and teacher start from the corrupted partners of the
floor set, so their output is independent of the reference, exactly like the floor.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from realuid import data as realuid_data

# Independent random streams of one seed: changing one size never shifts the other sets.
STREAM_TRAIN, STREAM_REFERENCE, STREAM_FLOOR, STREAM_PAIRS, STREAM_SPLIT, STREAM_VALIDATION = range(6)
MIN_USER_POINTS = 500


@dataclass
class PointTask:
    """Point sets of one (data set, seed): every array float32 ``[N, D]``; x0 only for bridges."""

    name: str
    train_x1: np.ndarray
    reference: np.ndarray
    floor: np.ndarray
    validation: np.ndarray
    train_x0: np.ndarray | None = None
    floor_x0: np.ndarray | None = None

    @property
    def dim(self) -> int:
        return self.train_x1.shape[1]

    def train_tensors(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        x0 = None if self.train_x0 is None else torch.as_tensor(self.train_x0)
        return torch.as_tensor(self.train_x1), x0


@dataclass(frozen=True)
class UserPoints:
    """A user's 2-D point set in [-1, 1]: ``points`` float32 [N, D], and ``x = unit * scale + shift``."""

    path: str
    points: np.ndarray
    scale: list[float]
    shift: list[float]


def _rng(seed: int, stream: int, salt: int = 0) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(stream), int(salt)])


def _with_pairs(task: PointTask, paired: bool, strength: float, seed: int) -> PointTask:
    if paired:
        task.train_x0 = realuid_data.pair_noise(task.train_x1, strength, _rng(seed, STREAM_PAIRS, 0))
        task.floor_x0 = realuid_data.pair_noise(task.floor, strength, _rng(seed, STREAM_PAIRS, 1))
    return task


def toy_task(dataset: str, seed: int, *, n_train: int, n_eval: int, paired: bool = False,
             pairing_strength: float = 0.5) -> PointTask:
    """Fresh draws of a toy set (``realuid.data.make_toy``): train, reference and floor, all independent."""
    task = PointTask(
        name=dataset,
        train_x1=realuid_data.make_toy(dataset, n_train, _rng(seed, STREAM_TRAIN)),
        reference=realuid_data.make_toy(dataset, n_eval, _rng(seed, STREAM_REFERENCE)),
        floor=realuid_data.make_toy(dataset, n_eval, _rng(seed, STREAM_FLOOR)),
        validation=realuid_data.make_toy(dataset, n_eval, _rng(seed, STREAM_VALIDATION)),
    )
    return _with_pairs(task, paired, pairing_strength, seed)


def load_user_points(path: str | Path) -> UserPoints:
    """Read array ``x`` (or ``x1``) [N, D] from an .npz; map it into [-1, 1] per dimension when it leaves it.

    The affine map is recorded (``x = unit * scale + shift``), so results can be read in the user's units.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"point file not found: {path}")
    with np.load(path, allow_pickle=False) as archive:
        names = [k for k in ("x", "x1") if k in archive.files]
        if not names:
            raise ValueError(f"{path}: expected an array named 'x' or 'x1', found {sorted(archive.files)}")
        points = np.asarray(archive[names[0]])
    if points.ndim != 2 or points.shape[1] < 1:
        raise ValueError(f"{path}: points must have shape [N, D], got {points.shape}")
    if not np.issubdtype(points.dtype, np.number):
        raise ValueError(f"{path}: points must be numbers, got dtype {points.dtype}")
    points = points.astype(np.float64)
    if not np.isfinite(points).all():
        raise ValueError(f"{path}: points contain NaN or Inf")
    if len(points) < MIN_USER_POINTS:
        raise ValueError(f"{path}: need at least {MIN_USER_POINTS} points for train, reference and floor sets, "
                         f"got {len(points)}")
    scale, shift = np.ones(points.shape[1]), np.zeros(points.shape[1])
    if np.abs(points).max() > 1.0:
        scale, shift = realuid_data.minmax_affine(points)
        points = realuid_data.apply_inverse_affine(points, scale, shift)
    return UserPoints(str(path), points.astype(np.float32), [float(s) for s in scale], [float(s) for s in shift])


def user_task(user: UserPoints, seed: int, *, n_train: int, n_eval: int, paired: bool = False,
              pairing_strength: float = 0.5) -> PointTask:
    """Split a user's points per seed: reference, floor and validation of equal size (at most a fifth each),
    the rest trains."""
    n = len(user.points)
    n_eval = min(n_eval, n // 5)
    order = _rng(seed, STREAM_SPLIT).permutation(n)
    reference, floor, validation = (order[i * n_eval:(i + 1) * n_eval] for i in range(3))
    train = order[3 * n_eval:][:n_train]
    task = PointTask(name=Path(user.path).stem, train_x1=user.points[train], reference=user.points[reference],
                     floor=user.points[floor], validation=user.points[validation])
    return _with_pairs(task, paired, pairing_strength, seed)


def digits_split(test_fraction: float, seed: int = 0):
    """The 1,797 scikit-learn digits as (train, test) :class:`realuid.data.Split`, stratified by class."""
    everything = realuid_data.load_digits_data()
    train_index, test_index = realuid_data.split_indices(len(everything), test_fraction,
                                                         _rng(seed, STREAM_SPLIT), everything.y)
    return realuid_data.take(everything, train_index), realuid_data.take(everything, test_index)
