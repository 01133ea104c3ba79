"""Evaluation metrics: distances between point sets, and image metrics through torch-fidelity.

Point sets are arrays [N, D] (torch or numpy); every distance is computed in float64 numpy, is
deterministic, and is returned as a Python float. Conventions, stated once:

- ``frechet_distance_*`` return the SQUARED Fréchet distance ||mu1 - mu2||^2 + tr(C1 + C2 - 2 (C1 C2)^1/2),
  the same quantity torch-fidelity and everyone else report as "FID".
- ``sliced_wasserstein2`` returns the root, a distance in data units.
- ``energy_distance`` and ``mmd_rbf`` return the squared forms (V-statistics: exactly 0 for identical sets).

Image metrics take float images [N, C, H, W] in [-1, 1], quantise them to uint8 as a PNG writer would,
extract features with torch-fidelity's extractors (sharded over processes when asked) and compute the
metrics with torch-fidelity's functions. torch-fidelity is imported lazily so that the
rest of the library works where it is not installed.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from realuid import features as feature_net_module
from realuid.checkpoints import file_digest
from realuid.distributed import SINGLE_PROCESS, Dist
from realuid.errors import ConfigError, DataError

EXTRACTORS = (feature_net_module.EXTRACTOR_NAME, "inception-v3-compat")
DEFAULT_MMD_BANDWIDTHS = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


# ----------------------------------------------------------------------------------------------
# Point sets


def _as_points(points: Any, name: str) -> np.ndarray:
    """Any array-like [N, D] -> float64 numpy [N, D]; rejects other shapes, empty sets and NaN/Inf."""
    if torch.is_tensor(points):
        points = points.detach().cpu().double().numpy()
    array = np.asarray(points, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(f"{name} must have shape [N, D], got {array.shape}")
    if array.shape[0] < 1:
        raise ValueError(f"{name} is empty")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN or Inf")
    return array


def _as_pair(x: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
    x, y = _as_points(x, "x"), _as_points(y, "y")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y differ in dimension: {x.shape[1]} vs {y.shape[1]}")
    return x, y


def random_directions(dim: int, n_projections: int, seed: int = 0) -> np.ndarray:
    """Unit vectors [n_projections, dim], uniform on the sphere, fixed by ``seed``."""
    if dim < 1 or n_projections < 1:
        raise ValueError(f"need dim >= 1 and n_projections >= 1, got {dim}, {n_projections}")
    gaussian = np.random.default_rng(seed).standard_normal((n_projections, dim))
    return gaussian / np.linalg.norm(gaussian, axis=1, keepdims=True)


def wasserstein2_squared_1d(a_sorted: np.ndarray, b_sorted: np.ndarray) -> np.ndarray:
    """Exact squared W2 between 1-D empirical measures, column by column.

    a_sorted [N, P], b_sorted [M, P]: each column sorted ascending (P independent problems).
    Returns [P]. W2^2 = integral over u in (0, 1) of (Fa^-1(u) - Fb^-1(u))^2; both quantile
    functions are step functions, constant between consecutive breakpoints of {i/N} U {j/M},
    so the integral is an exact finite sum over at most N + M - 1 intervals.
    """
    n, m = a_sorted.shape[0], b_sorted.shape[0]
    if n == m:
        return np.mean((a_sorted - b_sorted) ** 2, axis=0)
    breaks = np.union1d(np.arange(n + 1) / n, np.arange(m + 1) / m)
    widths = np.diff(breaks)
    middles = 0.5 * (breaks[1:] + breaks[:-1])
    # The quantile level u lies in the (floor(u * N))-th step of a sample of size N.
    index_a = np.minimum((middles * n).astype(np.int64), n - 1)
    index_b = np.minimum((middles * m).astype(np.int64), m - 1)
    return widths @ (a_sorted[index_a] - b_sorted[index_b]) ** 2


def sliced_wasserstein2(x: Any, y: Any, *, n_projections: int = 256, seed: int = 0) -> float:
    """Sliced 2-Wasserstein distance between point sets x [N, D] and y [M, D], in data units.

    SW2 = sqrt(mean over fixed random unit directions theta of W2^2(<theta, x>, <theta, y>)).
    N != M is handled exactly through the 1-D quantile functions. A pure translation by v gives
    SW2^2 = mean_theta <theta, v>^2, whose expectation over uniform directions is |v|^2 / D.
    """
    x, y = _as_pair(x, y)
    theta = random_directions(x.shape[1], n_projections, seed)
    projected_x = np.sort(x @ theta.T, axis=0)
    projected_y = np.sort(y @ theta.T, axis=0)
    return float(np.sqrt(np.mean(wasserstein2_squared_1d(projected_x, projected_y))))


PAIRS_PER_CHUNK = 1 << 22  # 4M pair values (32 MB in float64) per chunk: small temporaries stay fast


def _chunk_rows(chunk_size: int | None, n_columns: int) -> int:
    if chunk_size is None:
        return max(1, PAIRS_PER_CHUNK // n_columns)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    return chunk_size


def _mean_pairwise_distance(a: np.ndarray, b: np.ndarray, chunk_size: int | None) -> float:
    """Mean Euclidean distance |a_i - b_j| over all pairs, a [N, D], b [M, D], N x M never held at once.

    Chunks run over rows of ``a`` and are summed in float64, so the result does not depend on
    ``chunk_size`` (rows per chunk; None picks ~4M pairs) beyond float64 rounding.
    """
    b_t = torch.from_numpy(b)
    rows, total = _chunk_rows(chunk_size, b.shape[0]), 0.0
    for start in range(0, a.shape[0], rows):
        a_t = torch.from_numpy(a[start:start + rows])
        # The matmul shortcut for Euclidean distances loses precision for nearby points; use differences.
        total += float(torch.cdist(a_t, b_t, compute_mode="donot_use_mm_for_euclid_dist").sum())
    return total / (a.shape[0] * b.shape[0])


def _mean_pairwise_rbf(a: np.ndarray, b: np.ndarray, inverse_two_h2: Sequence[float],
                       chunk_size: int | None) -> float:
    """Mean over pairs and bandwidths of exp(-|a_i - b_j|^2 * c_h), a [N, D], b [M, D], chunked as above."""
    b_t = torch.from_numpy(b)
    b_sq = (b_t * b_t).sum(dim=1)
    rows, total = _chunk_rows(chunk_size, b.shape[0]), 0.0
    for start in range(0, a.shape[0], rows):
        a_t = torch.from_numpy(a[start:start + rows])
        # |a|^2 + |b|^2 - 2<a, b> in float64 is accurate to ~1e-16 |a|^2, far below what the kernel resolves.
        sq_dist = ((a_t * a_t).sum(dim=1)[:, None] + b_sq[None, :]).addmm_(a_t, b_t.T, alpha=-2.0)
        sq_dist.clamp_(min=0.0)
        for c in inverse_two_h2:
            total += float(torch.exp(sq_dist * -c).sum())
    return total / (a.shape[0] * b.shape[0] * len(inverse_two_h2))


def energy_distance(x: Any, y: Any, *, chunk_size: int | None = None) -> float:
    """Squared energy distance 2 E|X - Y| - E|X - X'| - E|Y - Y'| between x [N, D] and y [M, D].

    V-statistic (all pairs, the zero diagonal included): the energy distance between the two empirical
    measures, >= 0, symmetric, exactly 0 for identical sets. Chunked so that 20k x 20k pairs fit in memory
    (a few seconds on 2 CPU cores). In 1-D, scipy.stats.energy_distance(x, y) is the square root of this.
    """
    x, y = _as_pair(x, y)
    cross = _mean_pairwise_distance(x, y, chunk_size)
    within_x = _mean_pairwise_distance(x, x, chunk_size)
    within_y = _mean_pairwise_distance(y, y, chunk_size)
    # Rounding can leave a tiny negative number for (nearly) identical sets; the true value is >= 0.
    return max(0.0, 2.0 * cross - within_x - within_y)


def mmd_rbf(x: Any, y: Any, *, bandwidths: Sequence[float] = DEFAULT_MMD_BANDWIDTHS,
            chunk_size: int | None = None) -> float:
    """Squared MMD with the kernel mean_h exp(-|a - b|^2 / (2 h^2)) over ``bandwidths`` (data units).

    V-statistic (biased estimator): >= 0 and exactly 0 for identical sets. x [N, D], y [M, D].
    For single points a, b and one bandwidth h: 2 - 2 exp(-|a - b|^2 / (2 h^2)).
    Costs one exp per pair and bandwidth (about 20x the energy distance): subsample large sets.
    """
    x, y = _as_pair(x, y)
    widths = np.asarray(list(bandwidths), dtype=np.float64)
    if widths.ndim != 1 or widths.size == 0 or not (widths > 0).all():
        raise ConfigError(f"bandwidths must be a non-empty list of positive numbers, got {bandwidths}")
    inverse_two_h2 = [float(c) for c in 1.0 / (2.0 * widths ** 2)]
    cross = _mean_pairwise_rbf(x, y, inverse_two_h2, chunk_size)
    within_x = _mean_pairwise_rbf(x, x, inverse_two_h2, chunk_size)
    within_y = _mean_pairwise_rbf(y, y, inverse_two_h2, chunk_size)
    return max(0.0, within_x + within_y - 2.0 * cross)


def _symmetric_sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix through its eigendecomposition."""
    symmetric = 0.5 * (matrix + matrix.T)
    eigenvalues, eigenvectors = np.linalg.eigh(symmetric)
    # Covariances estimated from few samples have tiny negative eigenvalues from rounding.
    return (eigenvectors * np.sqrt(np.clip(eigenvalues, 0.0, None))) @ eigenvectors.T


def frechet_distance_from_stats(mu1: Any, cov1: Any, mu2: Any, cov2: Any) -> float:
    """SQUARED Fréchet distance between N(mu1, cov1) and N(mu2, cov2) (the quantity reported as FID).

    mu1, mu2 [D]; cov1, cov2 [D, D] symmetric PSD.
    tr((C1 C2)^1/2) is computed as tr((S1 C2 S1)^1/2) with S1 = C1^1/2: the matrix S1 C2 S1 is
    symmetric PSD, so only real symmetric eigendecompositions are needed (no complex sqrtm, no
    imaginary residue to clamp). Negative results from rounding are clamped to 0.
    """
    mu1, mu2 = (np.atleast_1d(np.asarray(m, dtype=np.float64)) for m in (mu1, mu2))
    cov1, cov2 = (np.atleast_2d(np.asarray(c, dtype=np.float64)) for c in (cov1, cov2))
    dim = mu1.shape[0]
    if mu1.shape != (dim,) or mu2.shape != (dim,):
        raise ValueError(f"means must both have shape [D], got {mu1.shape} and {mu2.shape}")
    if cov1.shape != (dim, dim) or cov2.shape != (dim, dim):
        raise ValueError(f"covariances must have shape [{dim}, {dim}], got {cov1.shape} and {cov2.shape}")
    for name, value in (("mu1", mu1), ("mu2", mu2), ("cov1", cov1), ("cov2", cov2)):
        if not np.isfinite(value).all():
            raise ValueError(f"{name} contains NaN or Inf")
    sqrt_cov1 = _symmetric_sqrt_psd(cov1)
    middle = sqrt_cov1 @ (0.5 * (cov2 + cov2.T)) @ sqrt_cov1
    eigenvalues = np.linalg.eigvalsh(0.5 * (middle + middle.T))
    trace_sqrt_product = float(np.sqrt(np.clip(eigenvalues, 0.0, None)).sum())
    diff = mu1 - mu2
    value = float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2.0 * trace_sqrt_product)
    return max(0.0, value)


def gaussian_stats(points: Any) -> tuple[np.ndarray, np.ndarray]:
    """Mean [D] and unbiased covariance [D, D] (divides by N - 1, like torch-fidelity) of points [N, D]."""
    points = _as_points(points, "points")
    if points.shape[0] < 2:
        raise ValueError("need at least 2 points to estimate a covariance")
    return points.mean(axis=0), np.atleast_2d(np.cov(points, rowvar=False))


def frechet_distance_raw(x: Any, y: Any) -> float:
    """SQUARED Fréchet distance between Gaussians fitted to the raw coordinates of x [N, D] and y [M, D]."""
    x, y = _as_pair(x, y)
    return frechet_distance_from_stats(*gaussian_stats(x), *gaussian_stats(y))


def subsample(points: np.ndarray, max_points: int, seed: int) -> np.ndarray:
    """At most ``max_points`` rows of points [N, D], drawn without replacement with a fixed seed."""
    if points.shape[0] <= max_points:
        return points
    index = np.random.default_rng(seed).choice(points.shape[0], max_points, replace=False)
    return points[np.sort(index)]


def point_metrics(gen: Any, ref: Any, seed: int = 0, *, n_projections: int = 256,
                  mmd_max_points: int = 2048, chunk_size: int | None = None) -> dict[str, float]:
    """All point-set distances between generated gen [N, D] and reference ref [M, D].

    Keys: sliced_wasserstein2 (root, data units), energy_distance (squared), mmd_rbf (squared, default
    bandwidths, on at most ``mmd_max_points`` points of each set drawn with ``seed``: it costs ~20x the
    energy distance), frechet_distance (squared). ``seed`` also fixes the slicing directions.
    """
    gen, ref = _as_pair(gen, ref)
    if mmd_max_points < 1:
        raise ConfigError(f"mmd_max_points must be >= 1, got {mmd_max_points}")
    return {
        "sliced_wasserstein2": sliced_wasserstein2(gen, ref, n_projections=n_projections, seed=seed),
        "energy_distance": energy_distance(gen, ref, chunk_size=chunk_size),
        "mmd_rbf": mmd_rbf(subsample(gen, mmd_max_points, seed), subsample(ref, mmd_max_points, seed + 1),
                           chunk_size=chunk_size),
        "frechet_distance": frechet_distance_raw(gen, ref),
    }


class PointReference:
    """A reference point set ref [M, D] prepared once for repeated scoring (in-training evaluation).

    What depends on the reference alone (its sorted projections on the slicing directions and its mean
    within-set distance) is computed here, once: :meth:`score` then costs O(N log N + N^2 + N M) for N
    generated points and gives the same numbers as :func:`sliced_wasserstein2` and
    :func:`energy_distance` with the same ``seed`` and ``n_projections``.
    """

    metrics = ("sliced_wasserstein2", "energy_distance")

    def __init__(self, ref: Any, *, n_projections: int = 256, seed: int = 0, chunk_size: int | None = None):
        self.points = _as_points(ref, "ref")
        self.theta = random_directions(self.points.shape[1], n_projections, seed)
        self.sorted_projections = np.sort(self.points @ self.theta.T, axis=0)
        self.chunk_size = chunk_size
        self.within = _mean_pairwise_distance(self.points, self.points, chunk_size)

    def __len__(self) -> int:
        return self.points.shape[0]

    def score(self, gen: Any) -> dict[str, float]:
        """``{"sliced_wasserstein2" (root), "energy_distance" (squared)}`` of gen [N, D] against the reference."""
        gen, _ = _as_pair(gen, self.points)
        projected = np.sort(gen @ self.theta.T, axis=0)
        sw2 = float(np.sqrt(np.mean(wasserstein2_squared_1d(projected, self.sorted_projections))))
        cross = _mean_pairwise_distance(gen, self.points, self.chunk_size)
        within_gen = _mean_pairwise_distance(gen, gen, self.chunk_size)
        return {"sliced_wasserstein2": sw2, "energy_distance": max(0.0, 2.0 * cross - within_gen - self.within)}


# ----------------------------------------------------------------------------------------------
# Point sets: structure (which parts of the data are covered, and by how much mass)
#
# A transport distance averages over the whole set: a sample that spreads over the data's convex hull
# can be close in sliced W2 to one that has the data's shape. These see the shape: k-NN precision and
# recall (Kynkäänniemi et al. 2019, as torch-fidelity's PRC computes them on image features, here on
# raw coordinates) and, where the data's modes are known, the mass each mode receives.


def _squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[len(a), len(b)] squared Euclidean distances from exact differences (scipy's C loop; no
    ||a||^2 + ||b||^2 - 2ab cancellation, which would misplace points on a ball's boundary)."""
    from scipy.spatial.distance import cdist

    return cdist(a, b, "sqeuclidean")


def _kth_neighbour_radii(points: np.ndarray, k: int) -> np.ndarray:
    """[N]: squared distance of each point to its k-th nearest *other* point of the set (exact, k-d tree)."""
    from scipy.spatial import cKDTree

    if points.shape[0] <= k:
        raise ConfigError(f"k-NN radii need more than k = {k} points, got {points.shape[0]}")
    distances, _ = cKDTree(points).query(points, k=k + 1)  # column 0 is the point itself
    return distances[:, k] ** 2


def _inside_some_ball(queries: np.ndarray, centres: np.ndarray, radii: np.ndarray, chunk_size: int | None) -> np.ndarray:
    """[len(queries)] bool: the query lies in at least one closed ball (centre, squared radius)."""
    rows = _chunk_rows(chunk_size, centres.shape[0])
    inside = np.empty(queries.shape[0], dtype=bool)
    for start in range(0, queries.shape[0], rows):
        inside[start:start + rows] = (_squared_distances(queries[start:start + rows], centres) <= radii[None]).any(1)
    return inside


def knn_precision_recall(gen: Any, ref: Any, *, k: int = 3, chunk_size: int | None = None) -> dict[str, float]:
    """k-NN precision and recall of generated points gen [N, D] against reference points ref [M, D].

    Each set's manifold is the union of balls around its points with radius the distance to the point's
    k-th nearest neighbour in its own set. Precision: the fraction of generated points inside the
    reference manifold (are samples where the data is?); recall: the fraction of reference points inside
    the generated manifold (is all of the data covered?). k = 3 as torch-fidelity's default. Both in
    [0, 1]; chunking changes memory only.
    """
    gen, ref = _as_pair(gen, ref)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be an int >= 1, got {k!r}")
    ref_radii, gen_radii = _kth_neighbour_radii(ref, k), _kth_neighbour_radii(gen, k)
    return {"knn_precision": float(_inside_some_ball(gen, ref, ref_radii, chunk_size).mean()),
            "knn_recall": float(_inside_some_ball(ref, gen, gen_radii, chunk_size).mean())}


def mode_masses(points: Any, centres: Any, radius: float | Sequence[float]) -> np.ndarray:
    """[K + 1]: the fraction of points at each of K known modes, then the fraction at none.

    A point belongs to the mode k that minimises ``|x - centre_k| / radius_k`` when that ratio is <= 1,
    else to no mode. radius: one number or one per mode (e.g. 4 standard deviations: a 2-D Gaussian
    leaves exp(-8) ~ 3e-4 of its mass beyond that).
    """
    points = _as_points(points, "points")
    centres = _as_points(centres, "centres")
    if centres.shape[1] != points.shape[1]:
        raise ValueError(f"centres have dimension {centres.shape[1]}, points {points.shape[1]}")
    radius = np.broadcast_to(np.asarray(radius, dtype=np.float64), (centres.shape[0],))
    if not np.isfinite(radius).all() or (radius <= 0).any():
        raise ValueError(f"radius must be finite and > 0, got {radius}")
    scaled = np.sqrt(_squared_distances(points, centres)) / radius[None]  # [N, K]
    nearest = scaled.argmin(1)
    at_mode = scaled[np.arange(points.shape[0]), nearest] <= 1.0
    counts = np.bincount(nearest[at_mode], minlength=centres.shape[0]).astype(np.float64)
    return np.append(counts, (~at_mode).sum()) / points.shape[0]


def mode_metrics(points: Any, centres: Any, weights: Any, radius: float | Sequence[float]) -> dict[str, float]:
    """Mass per known mode against the modes' true weights [K] (summing to 1).

    Keys: mode_mass_tv (total variation between (masses, off-mode mass) and (weights, 0): 0 for a perfect
    share, 1 for all mass off the modes), off_mode_mass, min_mode_ratio (the least-served mode's mass over
    its weight: 0 when a mode is dropped).
    """
    masses = mode_masses(points, centres, radius)
    weights = np.asarray(weights, dtype=np.float64)
    if weights.shape != (masses.size - 1,) or (weights <= 0).any() or not np.isclose(weights.sum(), 1.0):
        raise ValueError(f"weights must be {masses.size - 1} positive numbers summing to 1, got {weights}")
    target = np.append(weights, 0.0)
    return {"mode_mass_tv": float(0.5 * np.abs(masses - target).sum()), "off_mode_mass": float(masses[-1]),
            "min_mode_ratio": float((masses[:-1] / weights).min())}


# ----------------------------------------------------------------------------------------------
# Images


def unit_range_to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Float images [N, C, H, W] in [-1, 1] -> uint8 [0, 255] (clipped and rounded, as when saving PNGs)."""
    return ((images.detach().to(torch.float32).cpu() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)


def _check_image_batch(images: Any, name: str) -> torch.Tensor:
    if not torch.is_tensor(images) or images.dim() != 4:
        raise ValueError(f"{name} must be a tensor [N, C, H, W], got "
                         f"{tuple(images.shape) if torch.is_tensor(images) else type(images).__name__}")
    if not images.is_floating_point():
        raise ValueError(f"{name} must be floating point in [-1, 1], got {images.dtype}")
    if images.shape[1] not in (1, 3):
        raise ValueError(f"{name} must have 1 or 3 channels, got {images.shape[1]}")
    if not torch.isfinite(images).all():
        raise ValueError(f"{name} contains NaN or Inf")
    return images


def _reference_cache_name(reference_uint8: torch.Tensor, extractor: str, weights_path: str) -> str:
    """Cache file name naming the reference images and the extractor weights by content.

    A key that did not hash the content would silently reuse features of other images or other weights.
    """
    digest = hashlib.sha256()
    digest.update(str(tuple(reference_uint8.shape)).encode())
    digest.update(reference_uint8.contiguous().numpy().tobytes())
    digest.update(file_digest(weights_path).encode())
    return f"realuid-ref-{extractor}-{digest.hexdigest()[:24]}.pt"


def _torch_fidelity():
    try:
        import torch_fidelity
    except ImportError as error:  # the library itself runs without it; only image metrics need it
        raise ImportError("image metrics need torch-fidelity (pip install torch-fidelity)") from error
    feature_net_module.register_fidelity_extractor()
    return torch_fidelity


def feature_layers(extractor: str) -> list[str]:
    """The extractor's layers that FID, KID and precision/recall read (torch-fidelity's defaults)."""
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    _torch_fidelity()
    cls = FEATURE_EXTRACTORS_REGISTRY[extractor]
    return sorted({cls.get_default_feature_layer_for_metric(metric) for metric in ("fid", "kid", "prc")})


def _check_extractor(extractor: str, extractor_weights_path: str | os.PathLike | None) -> str:
    if extractor not in EXTRACTORS:
        raise ConfigError(f"extractor must be one of {EXTRACTORS}, got {extractor!r}")
    if extractor_weights_path is None:
        raise ConfigError(f"extractor {extractor!r} needs extractor_weights_path (downloads are never attempted)")
    weights_path = os.fspath(extractor_weights_path)
    if not os.path.isfile(weights_path):
        raise FileNotFoundError(f"weights for extractor {extractor!r} not found: {weights_path}")
    return weights_path


def _extractor_input(images: torch.Tensor, extractor: str) -> torch.Tensor:
    """What the extractor is fed: uint8 images, as a PNG writer would store them; RGB for Inception."""
    quantised = unit_range_to_uint8(images)
    if extractor == "inception-v3-compat" and quantised.shape[1] == 1:
        # InceptionV3 takes RGB only; repeating the gray channel is the usual convention.
        quantised = quantised.repeat(1, 3, 1, 1)
    return quantised


def image_features(images: torch.Tensor, *, extractor: str = feature_net_module.EXTRACTOR_NAME,
                   extractor_weights_path: str | os.PathLike | None = None, batch_size: int = 64,
                   device: str | None = None, internal_dtype: str | None = None,
                   dist: Dist = SINGLE_PROCESS) -> dict[str, torch.Tensor] | None:
    """Features {layer: [N, F]} of images [N, C, H, W] in [-1, 1], by torch-fidelity's extractor, on CPU.

    Images go through the extractor in batches of ``batch_size``, exactly as torch-fidelity batches a
    dataset. Across processes, batch ``j`` goes to rank ``j % world_size`` and rank 0 gathers the batches
    in order; every batch is computed as in one process, so the features equal a one-process run on the
    same device type. Returns the features on rank 0 and ``None`` elsewhere.
    """
    return FeatureExtractor(extractor, extractor_weights_path, device=device, internal_dtype=internal_dtype)(
        images, batch_size=batch_size, dist=dist)


class FeatureExtractor:
    """torch-fidelity's extractor, built (weights read) once and applied to many image sets.

    ``extractor(images [N, C, H, W] in [-1, 1], batch_size=..., dist=...)`` gives what
    :func:`image_features` gives; in-training evaluation calls it for every copy of the generator at
    every evaluation, where reading 100 MB of Inception weights each time would dominate.
    """

    def __init__(self, extractor: str = feature_net_module.EXTRACTOR_NAME,
                 extractor_weights_path: str | os.PathLike | None = None, *, device: str | None = None,
                 internal_dtype: str | None = None):
        self.weights_path = _check_extractor(extractor, extractor_weights_path)
        self.extractor = extractor
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if self.device.type not in ("cpu", "cuda"):
            raise ConfigError(f"device must be cpu, cuda or cuda:N, got {str(self.device)!r}")
        _torch_fidelity()
        from torch_fidelity.utils import create_feature_extractor

        # Built on the CPU and moved: torch-fidelity's own `cuda=True` would put it on GPU 0 whatever
        # the run's device (cuda:1 must mean GPU 1 for the extractor too).
        self.net = create_feature_extractor(extractor, feature_layers(extractor), cuda=False,
                                            feature_extractor_weights_path=self.weights_path,
                                            feature_extractor_internal_dtype=internal_dtype,
                                            verbose=False).to(self.device)

    def __call__(self, images: torch.Tensor, *, batch_size: int = 64,
                 dist: Dist = SINGLE_PROCESS) -> dict[str, torch.Tensor] | None:
        ordered = dist.gather_batches(self._my_batches(images, batch_size, dist, to_cpu=True))
        if ordered is None:
            return None
        return {layer: torch.cat([b[layer] for b in ordered]) for layer in ordered[0]}

    def everywhere(self, images: torch.Tensor, *, batch_size: int = 64,
                   dist: Dist = SINGLE_PROCESS) -> dict[str, torch.Tensor]:
        """The features {layer: [N, F]} of :meth:`__call__`, on every process and on the extractor's
        device: each process extracts its batches, one all-gather joins them (the sharded metrics below
        then split the scoring work instead of leaving it to rank 0)."""
        mine = self._my_batches(images, batch_size, dist, to_cpu=False)
        n = images.shape[0]
        return {layer: dist.all_gather_batches({start: out[layer] for start, out in mine.items()}, n, batch_size)
                for layer in feature_layers(self.extractor)}

    def _my_batches(self, images: torch.Tensor, batch_size: int, dist: Dist, *, to_cpu: bool) -> dict:
        images = _check_image_batch(images, "images")
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        mine: dict[int, dict[str, torch.Tensor]] = {}
        with torch.no_grad():
            for start in dist.batch_starts(images.shape[0], batch_size):
                # Quantised batch by batch: a whole uint8 copy of 150k images is not needed at once.
                batch = _extractor_input(images[start:start + batch_size], self.extractor).to(self.device)
                out = self.net.convert_features_tuple_to_dict(self.net(batch))
                mine[start] = {layer: value.cpu() if to_cpu else value for layer, value in out.items()}
        return mine


def reference_features(reference: torch.Tensor, *, extractor: str = feature_net_module.EXTRACTOR_NAME,
                       extractor_weights_path: str | os.PathLike | None = None, batch_size: int = 64,
                       device: str | None = None, cache_root: str | os.PathLike | None = None,
                       write_cache: bool = True, dist: Dist = SINGLE_PROCESS) -> dict[str, torch.Tensor] | None:
    """:func:`image_features` of the reference set, read from ``cache_root`` when given and there.

    The cache file is named by the content of the images and of the weights file, holds only tensors
    (read with ``weights_only=True``) and, on a miss, is written atomically by rank 0 unless ``write_cache``
    is false (a cache that is another stage's output).
    """
    from .checkpoints import atomic_save

    weights_path = _check_extractor(extractor, extractor_weights_path)
    reference = _check_image_batch(reference, "reference")
    path = None
    if cache_root is not None:
        path = Path(cache_root) / _reference_cache_name(_extractor_input(reference, extractor), extractor, weights_path)
        # Every process must take the same branch: the extraction below is a collective.
        if dist.same_everywhere(path.is_file(), f"whether {path} exists"):
            return _read_reference_cache(path, reference.shape[0], extractor) if dist.is_main else None
    features = image_features(reference, extractor=extractor, extractor_weights_path=weights_path,
                              batch_size=batch_size, device=device, dist=dist)
    if path is not None and write_cache and features is not None:
        atomic_save(features, path)
    return features


def _read_reference_cache(path: Path, size: int, extractor: str) -> dict[str, torch.Tensor]:
    from .checkpoints import load_torch_file

    cached = load_torch_file(path, needed_by="the reference-feature cache", expected="feature file")
    if (not isinstance(cached, dict) or set(cached) != set(feature_layers(extractor))
            or any(not torch.is_tensor(v) or v.shape[0] != size for v in cached.values())):
        raise DataError(f"{path} does not hold the reference features: delete it to recompute")
    return cached


def reference_features_everywhere(reference: torch.Tensor, extract: "FeatureExtractor", *, batch_size: int = 64,
                                  cache_root: str | os.PathLike | None = None,
                                  dist: Dist = SINGLE_PROCESS) -> dict[str, torch.Tensor]:
    """The reference features {layer: [M, F]} on every process, on the extractor's device: each process
    reads the cache of :func:`reference_features` (read only) when it is there, else they are extracted
    by all processes together (:meth:`FeatureExtractor.everywhere`)."""
    reference = _check_image_batch(reference, "reference")
    if cache_root is not None:
        name = _reference_cache_name(_extractor_input(reference, extract.extractor), extract.extractor,
                                     extract.weights_path)
        path = Path(cache_root) / name
        if dist.same_everywhere(path.is_file(), f"whether {path} exists"):
            cached = _read_reference_cache(path, reference.shape[0], extract.extractor)
            return {layer: value.to(extract.device) for layer, value in cached.items()}
    return extract.everywhere(reference, batch_size=batch_size, dist=dist)


def image_metrics_from_features(generated: dict[str, torch.Tensor], reference: dict[str, torch.Tensor], *,
                                extractor: str = feature_net_module.EXTRACTOR_NAME, kid_subset_size: int = 1000,
                                kid_subsets: int = 100, prc_neighborhood: int = 3, seed: int = 0,
                                verbose: bool = False) -> dict[str, float]:
    """FID, KID and precision/recall from features {layer: [N, F]} (:func:`image_features`).

    The numbers are torch-fidelity's own functions applied to the features, so they equal what
    ``torch_fidelity.calculate_metrics`` reports for the same images; KID subsets are drawn with ``seed``.
    """
    torch_fidelity = _torch_fidelity()
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
    from torch_fidelity.metric_kid import kid_features_to_metric
    from torch_fidelity.metric_prc import prc_features_to_metric
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    layer = FEATURE_EXTRACTORS_REGISTRY[extractor].get_default_feature_layer_for_metric
    sizes = {name: next(iter(feats.values())).shape[0] for name, feats in (("generated", generated),
                                                                            ("reference", reference))}
    smaller = min(sizes.values())
    if smaller < max(2, prc_neighborhood + 1):
        raise ConfigError(f"need at least {max(2, prc_neighborhood + 1)} images in each set, got "
                         f"{sizes['generated']} generated and {sizes['reference']} reference")
    if kid_subset_size < 2 or kid_subsets < 1:
        raise ConfigError(f"need kid_subset_size >= 2 and kid_subsets >= 1; got {kid_subset_size}, {kid_subsets}")
    if kid_subset_size > smaller:
        warnings.warn(f"kid_subset_size {kid_subset_size} exceeds the smaller image set ({smaller}); using {smaller}",
                      stacklevel=2)
        kid_subset_size = smaller
    fid = fid_statistics_to_metric(fid_features_to_statistics(generated[layer("fid")]),
                                   fid_features_to_statistics(reference[layer("fid")]), verbose)
    kid = kid_features_to_metric(generated[layer("kid")], reference[layer("kid")], kid_subsets=kid_subsets,
                                 kid_subset_size=kid_subset_size, rng_seed=seed, verbose=verbose)
    # save_cpu_ram: distances in parts rather than one [N, M] matrix; the same numbers.
    prc = prc_features_to_metric(generated[layer("prc")], reference[layer("prc")], prc_neighborhood=prc_neighborhood,
                                 save_cpu_ram=True, verbose=verbose)
    raw = {**fid, **kid, **prc}
    return {
        "fid": float(raw[torch_fidelity.KEY_METRIC_FID]),
        "kid_mean": float(raw[torch_fidelity.KEY_METRIC_KID_MEAN]),
        "kid_std": float(raw[torch_fidelity.KEY_METRIC_KID_STD]),
        "precision": float(raw[torch_fidelity.KEY_METRIC_PRECISION]),
        "recall": float(raw[torch_fidelity.KEY_METRIC_RECALL]),
        "f_score": float(raw[torch_fidelity.KEY_METRIC_F_SCORE]),
    }


def image_metrics(generated: torch.Tensor, reference: torch.Tensor, *,
                  extractor: str = feature_net_module.EXTRACTOR_NAME,
                  extractor_weights_path: str | os.PathLike | None = None, batch_size: int = 64,
                  kid_subset_size: int = 1000, kid_subsets: int = 100, prc_neighborhood: int = 3,
                  seed: int = 0, device: str | None = None, cache_root: str | os.PathLike | None = None,
                  internal_dtype: str | None = None, verbose: bool = False) -> dict[str, float]:
    """FID, KID, precision and recall of generated [N, C, H, W] against reference [M, C, H, W], both in [-1, 1].

    extractor:
        "realuid-features": a FeatureNet checkpoint (features.save_feature_net) trained inside the pipeline.
        "inception-v3-compat": torch-fidelity's InceptionV3 (standard FID); grayscale is repeated to RGB.
    extractor_weights_path: required for both; nothing is ever downloaded. A missing file raises
        FileNotFoundError before any computation.
    kid_subset_size: clamped (with a warning) to the smaller set size when larger.
    cache_root: when given, reference features are cached there under a name hashing the reference
        images and the weights file; otherwise nothing is cached.
    device: "cpu", "cuda" or "cuda:N" (default: cuda when available); the extractor runs there.

    Returns {"fid", "kid_mean", "kid_std", "precision", "recall", "f_score"}; fid is the squared Fréchet
    distance of the extractor's features (torch-fidelity's convention); precision is the fraction of
    generated samples inside the reference manifold, recall the converse. Equal to
    ``torch_fidelity.calculate_metrics`` on the same images and options.
    """
    weights_path = _check_extractor(extractor, extractor_weights_path)
    generated = _check_image_batch(generated, "generated")
    reference = _check_image_batch(reference, "reference")
    if generated.shape[1:] != reference.shape[1:]:
        raise DataError(f"generated and reference images differ in shape: {tuple(generated.shape[1:])} "
                         f"vs {tuple(reference.shape[1:])}")
    smaller = min(generated.shape[0], reference.shape[0])
    if smaller < max(2, prc_neighborhood + 1):  # checked again on the features; here before any computation
        raise ConfigError(f"need at least {max(2, prc_neighborhood + 1)} images in each set, got "
                         f"{generated.shape[0]} generated and {reference.shape[0]} reference")
    if kid_subset_size < 2 or kid_subsets < 1:  # checked again on the features; here before any computation
        raise ConfigError(f"need kid_subset_size >= 2 and kid_subsets >= 1; got {kid_subset_size}, {kid_subsets}")
    extraction = dict(extractor=extractor, extractor_weights_path=weights_path, batch_size=batch_size, device=device)
    generated_features = image_features(generated, internal_dtype=internal_dtype, **extraction)
    if internal_dtype is None:
        reference_feats = reference_features(reference, cache_root=cache_root, **extraction)
    else:  # the cache holds float32 features only
        reference_feats = image_features(reference, internal_dtype=internal_dtype, **extraction)
    return image_metrics_from_features(generated_features, reference_feats, extractor=extractor,
                                       kid_subset_size=kid_subset_size, kid_subsets=kid_subsets,
                                       prc_neighborhood=prc_neighborhood, seed=seed, verbose=verbose)


def cache_reference_features(reference: torch.Tensor, *, extractor: str, extractor_weights_path: str | os.PathLike,
                             cache_root: str | os.PathLike, batch_size: int = 64, device: str | None = None) -> None:
    """Compute the reference set's features once and store them under ``cache_root``.

    A later :func:`image_metrics` or :func:`reference_features` call with the same reference images,
    extractor weights and ``cache_root`` reads them instead of recomputing (50k Inception passes for
    standard FID).
    """
    reference_features(reference, extractor=extractor, extractor_weights_path=extractor_weights_path,
                       batch_size=batch_size, device=device, cache_root=cache_root)


def fid_block_statistics(generated: dict[str, torch.Tensor], reference: dict[str, torch.Tensor], *, blocks: int,
                         extractor: str = feature_net_module.EXTRACTOR_NAME) -> dict[str, float]:
    """FID of ``blocks`` disjoint consecutive blocks of the generated features {layer: [N, F]}.

    Block b holds samples b*N/K .. (b+1)*N/K - 1, i.e. its own range of seeds, each scored against the
    whole reference. Returns ``fid_mean`` (RealUID's protocol: mean of 3 x 50k), ``fid_min`` (EDM's: min of
    3) and ``fid_std``, the population standard deviation over blocks (ddof 0, so 0 for one block).
    N must be divisible by K, with at least 2 samples per block.
    """
    _torch_fidelity()
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY
    import torch_fidelity

    layer = FEATURE_EXTRACTORS_REGISTRY[extractor].get_default_feature_layer_for_metric("fid")
    n = generated[layer].shape[0]
    if blocks < 1 or n % blocks or n // blocks < 2:
        raise ConfigError(f"{n} generated samples do not split into {blocks} blocks of at least 2")
    size = n // blocks
    reference_stats = fid_features_to_statistics(reference[layer])
    values = np.array([float(fid_statistics_to_metric(fid_features_to_statistics(generated[layer][b * size:(b + 1) * size]),
                                                      reference_stats, False)[torch_fidelity.KEY_METRIC_FID])
                       for b in range(blocks)])
    return {"fid_mean": float(values.mean()), "fid_min": float(values.min()), "fid_std": float(values.std())}


# ----------------------------------------------------------------------------------------------
# Image metrics scored by every process together
#
# Every process holds the whole feature set of a row (FeatureExtractor.everywhere) on its device and
# takes a share of the scoring work; one all-reduce per quantity joins the shares, so every process ends
# with the same numbers and none waits on another's work. KID and precision/recall equal torch-fidelity's
# functions on the same features exactly, FID to float rounding (tests/test_metrics.py compares them).


def _my_share(n: int, dist: Dist) -> slice:
    """This process's contiguous share of ``n`` rows (the last ones may be empty)."""
    per_rank = -(-n // dist.world_size)
    return slice(min(n, dist.rank * per_rank), min(n, (dist.rank + 1) * per_rank))


def fid_statistics(features: torch.Tensor, dist: Dist = SINGLE_PROCESS) -> dict[str, np.ndarray]:
    """``{"mu" [F], "sigma" [F, F]}`` (float64; unbiased covariance as torch-fidelity) of features [N, F].

    The covariance keeps the key ``sigma`` of torch-fidelity and of the published ``.npz`` files.

    Two passes in float64 on the features' device, each process summing its share of rows: the mean,
    then the centred outer products (no E[xx^T] - mu mu^T cancellation).
    """
    n = features.shape[0]
    if n < 2:
        raise ValueError(f"need at least 2 feature rows for a covariance, got {n}")
    mine = features[_my_share(n, dist)].double()
    mu = dist.sum_(mine.sum(dim=0)) / n
    centred = mine - mu
    cov = dist.sum_(centred.T @ centred) / (n - 1)
    return {"mu": mu.cpu().numpy(), "sigma": cov.cpu().numpy()}


def fid_from_statistics(generated: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> float:
    """torch-fidelity's FID of two ``{"mu", "sigma"}`` (computed in float64 by every process alike)."""
    from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_statistics_to_metric

    as64 = lambda stats: {k: np.asarray(stats[k], dtype=np.float64) for k in ("mu", "sigma")}  # noqa: E731
    return float(fid_statistics_to_metric(as64(generated), as64(reference), False)[KEY_METRIC_FID])


def kid_sharded(generated: torch.Tensor, reference: torch.Tensor, *, subsets: int, subset_size: int, seed: int,
                dist: Dist = SINGLE_PROCESS) -> dict[str, float]:
    """``{"kid_mean", "kid_std"}`` of features generated [N, F] vs reference [M, F]: torch-fidelity's KID.

    The subsets are torch-fidelity's (the same ``RandomState(seed)`` draws, in its order) and each is
    scored by its own ``kernel_mmd`` (cubic kernel, unbiased MMD^2, float32 as there); process r scores
    subsets r, r + W, ..., and one all-reduce collects the values, so the numbers are torch-fidelity's
    exactly, for any number of processes.
    """
    from torch_fidelity.metric_kid import kernel_mmd

    rng = np.random.RandomState(seed)
    picks = [(rng.choice(generated.shape[0], subset_size, replace=False),
              rng.choice(reference.shape[0], subset_size, replace=False)) for _ in range(subsets)]
    mine = range(dist.rank, subsets, dist.world_size)
    x, y = (features.cpu().numpy() if len(mine) else None for features in (generated, reference))
    values = torch.zeros(subsets, dtype=torch.float64, device=generated.device)
    for i in mine:
        values[i] = float(kernel_mmd(x[picks[i][0]], y[picks[i][1]], kid_kernel="poly", kid_kernel_poly_degree=3,
                                     kid_kernel_poly_gamma=None, kid_kernel_poly_coef0=1))
    values = dist.sum_(values).cpu().numpy()
    return {"kid_mean": float(values.mean()), "kid_std": float(values.std())}


PRC_COLUMNS_PER_BLOCK = 10_000  # torch-fidelity's prc_batch_size: the blocks torch.cdist computes
PRC_ROWS_PER_CHUNK = 1024  # a chunk of rows against one column block: 40 MB of float32 distances


def _row_chunks(n: int, dist: Dist) -> Iterator[slice]:
    share = _my_share(n, dist)
    for start in range(share.start, share.stop, PRC_ROWS_PER_CHUNK):
        yield slice(start, min(share.stop, start + PRC_ROWS_PER_CHUNK))


def _kth_neighbour_distances(features: torch.Tensor, k: int, dist: Dist) -> torch.Tensor:
    """[N]: distance of each row of features [N, F] to its k-th nearest other row (torch-fidelity's radii:
    the (k+1)-th smallest ``torch.cdist`` value, the row itself first), each process taking its share.
    The k + 1 smallest are merged block by block, so no [rows, N] matrix is ever held."""
    radii = torch.zeros(features.shape[0], dtype=features.dtype, device=features.device)
    for rows in _row_chunks(features.shape[0], dist):
        nearest = None
        for block in features.split(PRC_COLUMNS_PER_BLOCK):
            candidates = torch.cdist(features[rows], block)
            if nearest is not None:
                candidates = torch.cat([nearest, candidates], dim=1)
            nearest = candidates.topk(min(k + 1, candidates.shape[1]), dim=1, largest=False).values
        radii[rows] = nearest[:, k]
    return dist.sum_(radii)


def _fraction_inside(queries: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, dist: Dist) -> float:
    """Fraction of query rows within ``radii`` of some centre row (closed balls), shares summed."""
    inside = torch.zeros((), dtype=torch.float64, device=queries.device)
    for rows in _row_chunks(queries.shape[0], dist):
        hit = torch.zeros(rows.stop - rows.start, dtype=torch.bool, device=queries.device)
        for block, block_radii in zip(centres.split(PRC_COLUMNS_PER_BLOCK), radii.split(PRC_COLUMNS_PER_BLOCK)):
            hit |= (torch.cdist(queries[rows], block) <= block_radii).any(dim=1)
        inside += hit.sum()
    # torch-fidelity's float32 mean of 0/1 flags: the float32 rounding of the exact fraction (N < 2^24)
    return float(np.float32(float(dist.sum_(inside))) / np.float32(queries.shape[0]))


def precision_recall_sharded(generated: torch.Tensor, reference: torch.Tensor, *, neighbourhood: int = 3,
                             dist: Dist = SINGLE_PROCESS) -> dict[str, float]:
    """torch-fidelity's k-NN precision, recall and F-score of features generated [N, F] vs reference [M, F]."""
    precision = _fraction_inside(generated, reference, _kth_neighbour_distances(reference, neighbourhood, dist), dist)
    recall = _fraction_inside(reference, generated, _kth_neighbour_distances(generated, neighbourhood, dist), dist)
    return {"precision": precision, "recall": recall,
            "f_score": 2 * precision * recall / max(1e-5, precision + recall)}


def read_reference_statistics(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """``{"mu" [F], "sigma" [F, F]}`` (float64) from a ``.npz`` as EDM's fid-refs and ADM/clean-fid write
    them; read without unpickling. A ValueError names what is wrong with any other file."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            stats = {key: np.asarray(npz[key], dtype=np.float64) for key in ("mu", "sigma") if key in npz}
            keys = sorted(npz.files)
    except (OSError, ValueError) as error:
        raise DataError(f"{path} is not a readable .npz of FID statistics ({error})") from error
    if set(stats) != {"mu", "sigma"}:
        raise DataError(f"{path} must hold arrays 'mu' and 'sigma', it holds {keys}")
    mu, cov = stats["mu"], stats["sigma"]
    if mu.ndim != 1 or cov.shape != (mu.size, mu.size):
        raise DataError(f"{path}: mu must be [F] and sigma [F, F], got {mu.shape} and {cov.shape}")
    if not (np.isfinite(mu).all() and np.isfinite(cov).all()):
        raise DataError(f"{path}: mu or sigma contains NaN or Inf")
    return stats


class ImageScorer:
    """FID, KID and precision/recall against one reference, prepared once and scored by all processes.

    ``reference`` {layer: [M, F]} on the device (every process holds all of it); its FID statistics are
    computed here once, unless ``reference_stats`` ({"mu", "sigma"}, e.g. published ones) replaces them
    for FID. :meth:`score` gives the keys of :func:`image_metrics_from_features` (``prc=False``: FID and
    KID only); every process gets the same numbers. Call it on every process: it is a collective.
    """

    def __init__(self, reference: dict[str, torch.Tensor], *, extractor: str = feature_net_module.EXTRACTOR_NAME,
                 kid_subset_size: int = 1000, kid_subsets: int = 100, prc_neighbourhood: int = 3, seed: int = 0,
                 reference_stats: dict[str, np.ndarray] | None = None, dist: Dist = SINGLE_PROCESS):
        _torch_fidelity()
        from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

        self.layer = FEATURE_EXTRACTORS_REGISTRY[extractor].get_default_feature_layer_for_metric
        self.reference, self.dist = reference, dist
        if kid_subset_size < 2 or kid_subsets < 1:
            raise ConfigError(f"need kid_subset_size >= 2 and kid_subsets >= 1; got {kid_subset_size}, {kid_subsets}")
        self.kid_subset_size, self.kid_subsets, self.seed = kid_subset_size, kid_subsets, seed
        self.prc_neighbourhood = prc_neighbourhood
        self.stats = reference_stats if reference_stats is not None else fid_statistics(reference[self.layer("fid")], dist)

    def fid(self, generated: torch.Tensor) -> float:
        """FID of generated features [N, F] (the FID layer) against the reference statistics."""
        if generated.shape[1] != self.stats["mu"].size:
            raise DataError(f"the reference statistics have {self.stats['mu'].size} features, the extractor "
                             f"gives {generated.shape[1]}: they come from another extractor")
        return fid_from_statistics(fid_statistics(generated, self.dist), self.stats)

    def score(self, generated: dict[str, torch.Tensor], *, prc: bool = True) -> dict[str, float]:
        smaller = min(generated[self.layer("kid")].shape[0], self.reference[self.layer("kid")].shape[0])
        if smaller < max(2, self.prc_neighbourhood + 1):
            raise ConfigError(f"need at least {max(2, self.prc_neighbourhood + 1)} images in each set, got {smaller}")
        subset_size = self.kid_subset_size
        if subset_size > smaller:
            warnings.warn(f"kid_subset_size {subset_size} exceeds the smaller image set ({smaller}); using {smaller}",
                          stacklevel=2)
            subset_size = smaller
        out = {"fid": self.fid(generated[self.layer("fid")]),
               **kid_sharded(generated[self.layer("kid")], self.reference[self.layer("kid")],
                             subsets=self.kid_subsets, subset_size=subset_size, seed=self.seed, dist=self.dist)}
        if prc:
            out.update(precision_recall_sharded(generated[self.layer("prc")], self.reference[self.layer("prc")],
                                                neighbourhood=self.prc_neighbourhood, dist=self.dist))
        return out

    def fid_blocks(self, generated: dict[str, torch.Tensor], blocks: int) -> dict[str, float]:
        """:func:`fid_block_statistics` (``fid_mean``, ``fid_min``, ``fid_std`` over ``blocks`` consecutive
        blocks of the generated features), with the reference statistics computed once."""
        features = generated[self.layer("fid")]
        n = features.shape[0]
        if blocks < 1 or n % blocks or n // blocks < 2:
            raise ConfigError(f"{n} generated samples do not split into {blocks} blocks of at least 2")
        size = n // blocks
        values = np.array([self.fid(features[b * size:(b + 1) * size]) for b in range(blocks)])
        return {"fid_mean": float(values.mean()), "fid_min": float(values.min()), "fid_std": float(values.std())}


def image_scorer(reference: torch.Tensor, extractor: str, weights_path: str | os.PathLike, *, batch_size: int,
                 kid_subset_size: int, seed: int, device: torch.device | str,
                 cache_root: str | os.PathLike | None = None, reference_stats: dict[str, np.ndarray] | None = None,
                 dist: Dist = SINGLE_PROCESS) -> tuple[FeatureExtractor, ImageScorer]:
    """The extractor on ``device`` and an :class:`ImageScorer` against ``reference`` images [M, C, H, W] in
    [-1, 1], their features read from ``cache_root`` (:func:`reference_features_everywhere`) when there.
    The evaluate stage and in-training evaluation score alike through this. A collective: every process calls it.
    """
    extract = FeatureExtractor(extractor, weights_path, device=device)
    real = reference_features_everywhere(reference, extract, batch_size=batch_size, cache_root=cache_root, dist=dist)
    return extract, ImageScorer(real, extractor=extractor, kid_subset_size=kid_subset_size, seed=seed,
                                reference_stats=reference_stats, dist=dist)
