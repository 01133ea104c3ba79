"""Point-set distances against closed forms, and image metrics through torch-fidelity."""

import numpy as np
import pytest
import scipy.linalg
import scipy.stats
import torch

from realuid.features import FeatureNet, save_feature_net
from realuid.metrics import (
    energy_distance,
    frechet_distance_from_stats,
    frechet_distance_raw,
    gaussian_stats,
    image_features,
    image_metrics,
    mmd_rbf,
    point_metrics,
    random_directions,
    sliced_wasserstein2,
    subsample,
    reference_features,
    unit_range_to_uint8,
    wasserstein2_squared_1d,
)


def whitened(n, dim, seed):
    """n points [n, dim] whose sample mean is exactly 0 and unbiased sample covariance exactly I."""
    points = np.random.default_rng(seed).standard_normal((n, dim))
    points -= points.mean(axis=0)
    chol = np.linalg.cholesky(np.atleast_2d(np.cov(points, rowvar=False)))
    return points @ np.linalg.inv(chol).T


# ----------------------------------------------------------------------------------------------
# Sliced Wasserstein


def test_random_directions_are_unit_and_seeded():
    a = random_directions(3, 50, seed=1)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0)
    np.testing.assert_array_equal(a, random_directions(3, 50, seed=1))
    assert not np.array_equal(a, random_directions(3, 50, seed=2))


def test_w2_1d_unequal_sizes_closed_form():
    # Quantile functions of {0, 1} and {0, 0, 1} differ by 1 exactly on (1/2, 2/3]: W2^2 = 1/6.
    value = wasserstein2_squared_1d(np.array([[0.0], [1.0]]), np.array([[0.0], [0.0], [1.0]]))
    np.testing.assert_allclose(value, [1 / 6])


@pytest.mark.parametrize("n,m", [(5, 7), (6, 4), (3, 9), (8, 8)])
def test_w2_1d_matches_equal_size_replication(n, m):
    # An empirical measure is unchanged when every point is repeated k times, so W2 between sizes
    # n and m equals W2 between the n*m-point replicas, where it is the mean of sorted differences.
    rng = np.random.default_rng(n * 10 + m)
    a, b = np.sort(rng.normal(size=(n, 3)), axis=0), np.sort(rng.normal(size=(m, 3)), axis=0)
    replica_a, replica_b = np.repeat(a, m, axis=0), np.repeat(b, n, axis=0)
    expected = np.mean((replica_a - replica_b) ** 2, axis=0)
    np.testing.assert_allclose(wasserstein2_squared_1d(a, b), expected, rtol=1e-12)


@pytest.mark.parametrize("dim", [1, 2, 5])
def test_sw2_of_a_translation(dim):
    x = np.random.default_rng(0).normal(size=(300, dim))
    shift = np.linspace(0.5, -1.0, dim)
    theta = random_directions(dim, 4096, seed=3)
    value = sliced_wasserstein2(x, x + shift, n_projections=4096, seed=3)
    # Each projection is shifted by <theta, v>: W2^2 is exactly that squared.
    assert value ** 2 == pytest.approx(np.mean((theta @ shift) ** 2), rel=1e-10)
    # E <theta, v>^2 = |v|^2 / D over uniform directions.
    assert value ** 2 == pytest.approx(shift @ shift / dim, rel=0.05)


def test_sw2_is_zero_for_replicated_sets_and_symmetric():
    x = np.random.default_rng(1).normal(size=(40, 2))
    y = np.random.default_rng(2).normal(size=(55, 2)) * 2
    assert sliced_wasserstein2(x, np.concatenate([x, x, x])) == pytest.approx(0.0, abs=1e-12)
    assert sliced_wasserstein2(x, y) == pytest.approx(sliced_wasserstein2(y, x), rel=1e-12)
    assert sliced_wasserstein2(x, y) > 0.3
    assert sliced_wasserstein2(torch.from_numpy(x), torch.from_numpy(y)) == sliced_wasserstein2(x, y)


# ----------------------------------------------------------------------------------------------
# Energy distance and MMD


def test_energy_distance_closed_forms():
    assert energy_distance([[0.0, 0.0]], [[3.0, 4.0]]) == pytest.approx(10.0)  # 2 |a - b|
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=50), rng.normal(1, 2, size=70)
    # scipy reports the square root of the same V-statistic.
    assert energy_distance(a[:, None], b[:, None]) == pytest.approx(scipy.stats.energy_distance(a, b) ** 2,
                                                                     rel=1e-12)


def test_energy_distance_zero_symmetric_positive():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(200, 3)), rng.normal(size=(150, 3)) + 0.5
    assert energy_distance(x, x) == 0.0
    assert energy_distance(x, y) > 0.05
    assert energy_distance(x, y) == pytest.approx(energy_distance(y, x), rel=1e-12)


@pytest.mark.parametrize("metric", [energy_distance, mmd_rbf])
def test_pairwise_metrics_do_not_depend_on_chunk_size(metric):
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(301, 2)), rng.normal(size=(257, 2)) * 1.3
    reference = metric(x, y, chunk_size=1000)
    for chunk in (1, 7, 64, None):
        assert metric(x, y, chunk_size=chunk) == pytest.approx(reference, rel=1e-10)


def test_mmd_closed_forms():
    a, b = [[0.0, 0.0]], [[1.0, 2.0]]
    assert mmd_rbf(a, b, bandwidths=[2.0]) == pytest.approx(2 - 2 * np.exp(-5 / 8))
    # Several bandwidths average the kernels.
    expected = np.mean([2 - 2 * np.exp(-5 / (2 * h * h)) for h in (0.5, 2.0)])
    assert mmd_rbf(a, b, bandwidths=[0.5, 2.0]) == pytest.approx(expected)
    x = np.random.default_rng(3).normal(size=(100, 2))
    assert mmd_rbf(x, x) == pytest.approx(0.0, abs=1e-12)
    y = x + 1.0
    assert mmd_rbf(x, y) == pytest.approx(mmd_rbf(y, x), rel=1e-12) and mmd_rbf(x, y) > 0.01
    with pytest.raises(ValueError, match="bandwidths"):
        mmd_rbf(x, y, bandwidths=[1.0, -1.0])


# ----------------------------------------------------------------------------------------------
# Fréchet distance


@pytest.mark.parametrize("dim", [1, 2, 16])
def test_frechet_of_isotropic_gaussians(dim):
    m1, m2 = np.full(dim, 0.3), np.linspace(-1, 1, dim)
    s1, s2 = 0.5, 2.0
    expected = np.sum((m1 - m2) ** 2) + dim * (s1 - s2) ** 2
    value = frechet_distance_from_stats(m1, s1 ** 2 * np.eye(dim), m2, s2 ** 2 * np.eye(dim))
    assert value == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("dim", [2, 5, 32])
def test_frechet_matches_scipy_sqrtm_and_torch_fidelity(dim):
    from torch_fidelity.metric_fid import fid_statistics_to_metric

    rng = np.random.default_rng(dim)
    a, b = rng.normal(size=(dim, dim)), rng.normal(size=(dim, dim))
    cov1, cov2 = a @ a.T + 0.1 * np.eye(dim), b @ b.T + 0.1 * np.eye(dim)  # do not commute
    mu1, mu2 = rng.normal(size=dim), rng.normal(size=dim)
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(cov1 + cov2 - 2 * scipy.linalg.sqrtm(cov1 @ cov2).real)
    value = frechet_distance_from_stats(mu1, cov1, mu2, cov2)
    assert value == pytest.approx(expected, rel=1e-8)
    fidelity = fid_statistics_to_metric({"mu": mu1, "sigma": cov1}, {"mu": mu2, "sigma": cov2}, False)
    assert value == pytest.approx(fidelity["frechet_inception_distance"], rel=1e-8)


def test_frechet_zero_for_identical_singular_stats():
    v = np.array([[1.0, 2.0, 0.0]])
    cov = v.T @ v  # rank 1: sqrtm of singular matrices is where naive code breaks
    assert frechet_distance_from_stats(np.ones(3), cov, np.ones(3), cov) == pytest.approx(0.0, abs=1e-10)


@pytest.mark.parametrize("dim", [1, 2, 3])
def test_frechet_raw_on_samples_with_exact_statistics(dim):
    # Whitened samples have sample mean 0 and covariance I exactly, so the closed form applies exactly.
    m1, m2, s1, s2 = np.zeros(dim), np.full(dim, 1.5), 0.7, 1.9
    x = m1 + s1 * whitened(400, dim, seed=0)
    y = m2 + s2 * whitened(300, dim, seed=1)
    expected = np.sum((m1 - m2) ** 2) + dim * (s1 - s2) ** 2
    assert frechet_distance_raw(x, y) == pytest.approx(expected, rel=1e-10)
    mean, cov = gaussian_stats(x)
    np.testing.assert_allclose(cov, s1 ** 2 * np.eye(dim), atol=1e-12)


def test_frechet_rejects_bad_stats():
    with pytest.raises(ValueError, match="covariances"):
        frechet_distance_from_stats(np.zeros(2), np.eye(3), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance_from_stats(np.zeros(2), np.full((2, 2), np.nan), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="at least 2"):
        frechet_distance_raw(np.zeros((1, 2)), np.zeros((5, 2)))


# ----------------------------------------------------------------------------------------------
# point_metrics and input checks


def test_point_metrics_keys_determinism_and_input_types():
    rng = np.random.default_rng(4)
    gen, ref = rng.normal(size=(500, 2)), rng.normal(size=(400, 2)) + 0.2
    result = point_metrics(gen, ref, seed=5)
    assert set(result) == {"sliced_wasserstein2", "energy_distance", "mmd_rbf", "frechet_distance"}
    assert all(isinstance(v, float) and v > 0 for v in result.values())
    assert point_metrics(torch.from_numpy(gen), torch.from_numpy(ref), seed=5) == result
    same = point_metrics(gen, gen, seed=5)
    assert same["sliced_wasserstein2"] == 0.0 and same["energy_distance"] == 0.0
    assert same["frechet_distance"] == pytest.approx(0.0, abs=1e-12)
    # The MMD subsample is seeded: below the cap it uses every point.
    assert point_metrics(gen, ref, seed=5, mmd_max_points=10_000)["mmd_rbf"] == pytest.approx(mmd_rbf(gen, ref))
    assert subsample(gen, 100, seed=0).shape == (100, 2)
    np.testing.assert_array_equal(subsample(gen, 100, seed=0), subsample(gen, 100, seed=0))


@pytest.mark.parametrize("metric", [sliced_wasserstein2, energy_distance, mmd_rbf, frechet_distance_raw])
def test_point_metrics_reject_bad_input(metric):
    with pytest.raises(ValueError, match="dimension"):
        metric(np.zeros((5, 2)), np.zeros((5, 3)))
    with pytest.raises(ValueError, match="NaN"):
        metric(np.full((5, 2), np.nan), np.zeros((5, 2)))
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        metric(np.zeros(5), np.zeros((5, 1)))


# ----------------------------------------------------------------------------------------------
# Image metrics


@pytest.fixture(scope="module")
def digit_images():
    """sklearn digits [360, 1, 8, 8] in [-1, 1]."""
    from sklearn.datasets import load_digits

    images = torch.tensor(load_digits().images[:360], dtype=torch.float32)[:, None]
    return images / 16.0 * 2.0 - 1.0


@pytest.fixture(scope="module")
def random_extractor_path(tmp_path_factory):
    # An untrained FeatureNet is still a fixed feature map: enough for identities and invariances.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = FeatureNet(1, 8, num_classes=10, width=8)
    path = tmp_path_factory.mktemp("extractor") / "random.pt"
    save_feature_net(path, net, {"trained": False})
    return str(path)


def _metrics(generated, reference, path, **kwargs):
    options = dict(extractor_weights_path=path, kid_subset_size=100, kid_subsets=10, device="cpu")
    options.update(kwargs)
    return image_metrics(generated, reference, **options)


class Uint8Images(torch.utils.data.Dataset):
    """uint8 images [N, C, H, W] as the dataset torch-fidelity reads."""

    def __init__(self, images):
        self.images = images

    def __len__(self):
        return self.images.shape[0]

    def __getitem__(self, index):
        return self.images[index]


@pytest.mark.parametrize("batch_size", [7, 500])
def test_image_metrics_equal_torch_fidelity_calculate_metrics(digit_images, random_extractor_path, batch_size):
    # Features are extracted here and scored with torch-fidelity's functions: the numbers must be the very
    # ones its own calculate_metrics reports for the same images and options.
    import torch_fidelity

    generated = digit_images.flip(dims=[3])[:300]
    ours = _metrics(generated, digit_images, random_extractor_path, batch_size=batch_size, seed=3)
    theirs = torch_fidelity.calculate_metrics(
        input1=Uint8Images(unit_range_to_uint8(generated)), input2=Uint8Images(unit_range_to_uint8(digit_images)),
        fid=True, kid=True, prc=True, feature_extractor="realuid-features",
        feature_extractor_weights_path=random_extractor_path, batch_size=batch_size, kid_subset_size=100,
        kid_subsets=10, rng_seed=3, cuda=False, save_cpu_ram=True, cache=False, verbose=False)
    assert ours == {"fid": theirs["frechet_inception_distance"], "kid_mean": theirs["kernel_inception_distance_mean"],
                    "kid_std": theirs["kernel_inception_distance_std"], "precision": theirs["precision"],
                    "recall": theirs["recall"], "f_score": theirs["f_score"]}


def test_image_features_are_batches_of_the_extractor_in_order(digit_images, random_extractor_path):
    from realuid.features import load_feature_net, uint8_to_unit_range

    features = image_features(digit_images[:50], extractor_weights_path=random_extractor_path, batch_size=16,
                              device="cpu")
    assert set(features) == {"features"} and features["features"].shape[0] == 50
    net = load_feature_net(random_extractor_path)
    with torch.no_grad():
        direct = net.features(uint8_to_unit_range(unit_range_to_uint8(digit_images[16:32])))
    assert torch.equal(features["features"][16:32], direct)


def test_fid_of_a_set_with_itself_is_zero(digit_images, random_extractor_path):
    result = _metrics(digit_images, digit_images, random_extractor_path)
    assert set(result) == {"fid", "kid_mean", "kid_std", "precision", "recall", "f_score"}
    assert abs(result["fid"]) < 1e-3
    assert result["precision"] == 1.0 and result["recall"] == 1.0


def test_fid_grows_with_noise(digit_images, random_extractor_path):
    noise = torch.randn(digit_images.shape, generator=torch.Generator().manual_seed(0))
    fids = [_metrics(digit_images + level * noise, digit_images, random_extractor_path)["fid"]
            for level in (0.0, 0.1, 0.3, 0.6)]
    assert all(a < b for a, b in zip(fids, fids[1:])), fids


def test_image_metrics_do_not_depend_on_batch_size(digit_images, random_extractor_path):
    generated = digit_images.flip(dims=[3])
    small = _metrics(generated, digit_images, random_extractor_path, batch_size=7)
    large = _metrics(generated, digit_images, random_extractor_path, batch_size=500)
    for key in small:
        assert small[key] == pytest.approx(large[key], rel=1e-4, abs=1e-6), key
    for key in ("precision", "recall", "f_score"):
        assert 0.0 <= small[key] <= 1.0


def test_precision_is_for_generated_and_recall_for_reference(digit_images, random_extractor_path):
    far_away = torch.rand(40, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1  # uniform noise
    # Generated = all reference images plus outliers: every reference image is covered (recall 1),
    # but the outliers are not near the reference (precision < 1).
    result = _metrics(torch.cat([digit_images, far_away]), digit_images, random_extractor_path)
    assert result["recall"] == 1.0 and result["precision"] < 0.95


def test_kid_subset_size_is_clamped_with_a_warning(digit_images, random_extractor_path):
    with pytest.warns(UserWarning, match="kid_subset_size"):
        result = _metrics(digit_images[:50], digit_images, random_extractor_path, kid_subset_size=1000)
    assert np.isfinite(result["kid_mean"])


def test_image_metrics_reject_bad_input(digit_images, random_extractor_path, tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        image_metrics(digit_images, digit_images, extractor_weights_path=str(tmp_path / "missing.pt"))
    with pytest.raises(FileNotFoundError, match="not found"):
        image_metrics(digit_images, digit_images, extractor="inception-v3-compat",
                      extractor_weights_path=str(tmp_path / "inception.pth"))
    with pytest.raises(ValueError, match="needs extractor_weights_path"):
        image_metrics(digit_images, digit_images, extractor="inception-v3-compat")
    with pytest.raises(ValueError, match="extractor must be one of"):
        image_metrics(digit_images, digit_images, extractor="vgg16", extractor_weights_path=random_extractor_path)
    with pytest.raises(ValueError, match="differ in shape"):
        _metrics(digit_images, digit_images[:, :, :4], random_extractor_path)
    with pytest.raises(ValueError, match="NaN"):
        _metrics(digit_images * float("nan"), digit_images, random_extractor_path)
    with pytest.raises(ValueError, match="at least"):
        _metrics(digit_images[:3], digit_images, random_extractor_path)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        _metrics(digit_images, digit_images, random_extractor_path, batch_size=0)
    with pytest.raises(ValueError, match="kid_subset_size >= 2"):
        _metrics(digit_images, digit_images, random_extractor_path, kid_subset_size=1)


def test_unit_range_to_uint8_rounds_and_clips():
    x = torch.tensor([-1.5, -1.0, 0.0, 1.0, 2.0])
    assert unit_range_to_uint8(x).tolist() == [0, 0, 128, 255, 255]


def test_reference_features_are_cached_by_content(digit_images, random_extractor_path, tmp_path):
    generated = digit_images.flip(dims=[2])
    uncached = _metrics(generated, digit_images, random_extractor_path)
    first = _metrics(generated, digit_images, random_extractor_path, cache_root=tmp_path)
    cached_files = sorted(p.name for p in tmp_path.iterdir())
    assert cached_files and all(name.startswith("realuid-ref-") for name in cached_files)
    second = _metrics(generated, digit_images, random_extractor_path, cache_root=tmp_path)
    assert first == second == pytest.approx(uncached)
    # Other reference images get another cache entry instead of reusing stale features.
    _metrics(generated, digit_images[:200], random_extractor_path, cache_root=tmp_path)
    assert len(list(tmp_path.iterdir())) == 2 * len(cached_files)


def test_a_reference_cache_that_is_not_features_is_a_clear_error(digit_images, random_extractor_path, tmp_path):
    reference_features(digit_images, extractor_weights_path=random_extractor_path, cache_root=tmp_path, device="cpu")
    (cached,) = tmp_path.iterdir()
    torch.save({"features": torch.zeros(3, 8)}, cached)  # wrong number of rows
    with pytest.raises(ValueError, match="does not hold the reference features"):
        _metrics(digit_images, digit_images, random_extractor_path, cache_root=tmp_path)
    # Arbitrary pickled objects are refused: the cache is read with weights_only=True.
    torch.save({"features": torch.nn.Linear(2, 2)}, cached)
    with pytest.raises(ValueError, match="contains objects other than tensors"):
        _metrics(digit_images, digit_images, random_extractor_path, cache_root=tmp_path)


def test_a_reference_cache_another_stage_owns_is_read_but_never_written(digit_images, random_extractor_path,
                                                                        tmp_path):
    features = reference_features(digit_images, extractor_weights_path=random_extractor_path, cache_root=tmp_path,
                                  write_cache=False, device="cpu")
    assert features["features"].shape[0] == len(digit_images) and not list(tmp_path.iterdir())


@pytest.mark.slow  # InceptionV3 at 299x299 on CPU: ~20 s
def test_inception_compat_path_with_user_weights(digit_images, tmp_path, monkeypatch):
    # No Inception weights can be downloaded here: save a randomly initialised InceptionV3 of the
    # right architecture and check that grayscale images go through the weights-file path.
    from torch_fidelity import feature_extractor_inceptionv3 as inception

    with monkeypatch.context() as patch:
        patch.setattr(inception, "load_state_dict_from_url", lambda *args, **kwargs: {})
        patch.setattr(inception.FeatureExtractorInceptionV3, "load_state_dict", lambda self, *args, **kwargs: None)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = inception.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    weights = tmp_path / "inception.pth"
    torch.save(model.state_dict(), weights)
    images = digit_images[:8]
    result = image_metrics(images, images, extractor="inception-v3-compat", extractor_weights_path=str(weights),
                           kid_subset_size=8, kid_subsets=2, device="cpu")
    assert abs(result["fid"]) < 1e-2 and result["precision"] == 1.0


@pytest.mark.parametrize("blocks", [1, 3])
def test_fid_block_statistics_equal_torch_fidelity_run_per_block(digit_images, random_extractor_path, blocks):
    # K disjoint consecutive blocks of the generated set, each scored by torch-fidelity's own
    # calculate_metrics against the whole reference; mean, min and (population) std over the blocks.
    import torch_fidelity

    from realuid.metrics import fid_block_statistics

    generated, reference = digit_images.flip(dims=[3])[:300], digit_images
    feats = image_features(generated, extractor_weights_path=random_extractor_path, device="cpu")
    ref = image_features(reference, extractor_weights_path=random_extractor_path, device="cpu")
    ours = fid_block_statistics(feats, ref, blocks=blocks)
    size = 300 // blocks
    theirs = np.array([torch_fidelity.calculate_metrics(
        input1=Uint8Images(unit_range_to_uint8(generated[b * size:(b + 1) * size])),
        input2=Uint8Images(unit_range_to_uint8(reference)), fid=True, feature_extractor="realuid-features",
        feature_extractor_weights_path=random_extractor_path, cuda=False, cache=False, verbose=False,
    )["frechet_inception_distance"] for b in range(blocks)])
    np.testing.assert_allclose([ours["fid_mean"], ours["fid_min"], ours["fid_std"]],
                               [theirs.mean(), theirs.min(), theirs.std()], rtol=1e-9, atol=1e-12)
    if blocks == 1:
        assert ours["fid_std"] == 0.0 and ours["fid_mean"] == ours["fid_min"]
    else:
        assert len(set(theirs.round(9))) == blocks  # the blocks really are different samples


def test_fid_blocks_must_split_the_samples(digit_images, random_extractor_path):
    from realuid.metrics import fid_block_statistics

    feats = image_features(digit_images[:10], extractor_weights_path=random_extractor_path, device="cpu")
    for blocks in (0, 3, 6):  # none, uneven, blocks of one sample
        with pytest.raises(ValueError, match="do not split"):
            fid_block_statistics(feats, feats, blocks=blocks)


# ----------------------------------------------------------------------------------------------
# Image metrics scored by all processes (here: one; tests/test_distributed.py runs two)
#
# Against torch-fidelity's functions on the same features: KID (its own kernel_mmd on its own subsets)
# and precision/recall (the same distances, counted) are its numbers exactly; FID's statistics are float64
# sums here where torch-fidelity's mean is float32, so FID agrees to ~1e-7 relative (measured on these
# features: 5e-8), checked at 1e-5.


def _features(images, path):
    from realuid.metrics import FeatureExtractor

    return FeatureExtractor(extractor_weights_path=path, device="cpu")(images)


def test_image_scorer_equals_torch_fidelity_on_the_same_features(digit_images, random_extractor_path):
    from realuid.metrics import ImageScorer, fid_block_statistics, image_metrics_from_features

    generated = _features(digit_images.flip(dims=[3])[:300], random_extractor_path)
    reference = _features(digit_images, random_extractor_path)
    theirs = image_metrics_from_features(generated, reference, kid_subset_size=100, kid_subsets=10, seed=3)
    scorer = ImageScorer(reference, kid_subset_size=100, kid_subsets=10, seed=3)
    ours = scorer.score(generated)
    assert ours.keys() == theirs.keys()
    assert ours["fid"] == pytest.approx(theirs["fid"], rel=1e-5)
    assert {k: v for k, v in ours.items() if k != "fid"} == {k: v for k, v in theirs.items() if k != "fid"}
    assert 0.0 < ours["precision"] < 1.0 and ours["fid"] > 0.01 and ours["kid_mean"] > 1e-4  # not trivial cases
    blocks = fid_block_statistics(generated, reference, blocks=3)
    for key, value in scorer.fid_blocks(generated, 3).items():
        assert value == pytest.approx(blocks[key], rel=1e-5), key
    assert scorer.score(generated, prc=False).keys() == {"fid", "kid_mean", "kid_std"}


def test_precision_recall_in_small_blocks_equal_torch_fidelity(digit_images, random_extractor_path, monkeypatch):
    # Rows in chunks and columns in blocks (the k + 1 nearest merged block by block) are torch-fidelity's
    # full rows of distances; 13-row chunks against 7-column blocks exercise every merge.
    from realuid import metrics
    from realuid.metrics import precision_recall_sharded
    from torch_fidelity.metric_prc import prc_features_to_metric

    generated = _features(digit_images.flip(dims=[3])[:300], random_extractor_path)["features"]
    reference = _features(digit_images, random_extractor_path)["features"]
    theirs = prc_features_to_metric(generated, reference, prc_neighborhood=3, prc_batch_size=10000,
                                    save_cpu_ram=True, verbose=False)
    monkeypatch.setattr(metrics, "PRC_ROWS_PER_CHUNK", 13)
    monkeypatch.setattr(metrics, "PRC_COLUMNS_PER_BLOCK", 7)
    assert precision_recall_sharded(generated, reference, neighbourhood=3) == theirs


def test_published_reference_statistics_give_the_feature_paths_fid(digit_images, random_extractor_path, tmp_path):
    from torch_fidelity.metric_fid import fid_features_to_statistics

    from realuid.metrics import ImageScorer, read_reference_statistics

    generated = _features(digit_images.flip(dims=[3])[:300], random_extractor_path)
    reference = _features(digit_images, random_extractor_path)
    stats = fid_features_to_statistics(reference["features"])  # as torch-fidelity would publish them
    np.savez(tmp_path / "ref.npz", mu=stats["mu"], sigma=stats["sigma"])
    published = ImageScorer(reference, kid_subset_size=100, kid_subsets=10,
                            reference_stats=read_reference_statistics(tmp_path / "ref.npz"))
    own = ImageScorer(reference, kid_subset_size=100, kid_subsets=10)
    assert published.score(generated) == pytest.approx(own.score(generated), rel=1e-6, abs=1e-9)
    wrong_dim = ImageScorer(reference, reference_stats={"mu": np.zeros(3), "sigma": np.eye(3)}, kid_subset_size=100)
    with pytest.raises(ValueError, match="another extractor"):
        wrong_dim.fid(generated["features"])


@pytest.mark.parametrize("content, message", [
    (dict(mu=np.zeros(4)), "must hold arrays 'mu' and 'sigma'"),
    (dict(mu=np.zeros(4), sigma=np.eye(3)), "mu must be"),
    (dict(mu=np.full(2, np.nan), sigma=np.eye(2)), "NaN"),
    (dict(mu=np.array([{"code": 1}], dtype=object), sigma=np.eye(1)), "not a readable"),  # would unpickle
    (None, "not a readable"),
])
def test_malformed_reference_statistics_are_refused(tmp_path, content, message):
    from realuid.metrics import read_reference_statistics

    path = tmp_path / "ref.npz"
    if content is None:
        path.write_bytes(b"not an npz")
    else:
        np.savez(path, **content)
    with pytest.raises(ValueError, match=message):
        read_reference_statistics(path)


def test_the_extractor_runs_on_the_device_it_is_given(random_extractor_path):
    from realuid.metrics import FeatureExtractor

    extract = FeatureExtractor(extractor_weights_path=random_extractor_path, device=torch.device("cpu", 0))
    assert extract.device == torch.device("cpu", 0)
    assert {p.device for p in extract.net.parameters()} == {torch.device("cpu")}
    with pytest.raises(ValueError, match="cpu, cuda or cuda:N"):
        FeatureExtractor(extractor_weights_path=random_extractor_path, device="meta")
