"""Data sources, pairing and the HDF5 split format (realuid.data)."""

from __future__ import annotations

import os
import pickle
import tarfile
import time

import h5py
import numpy as np
import pytest

from helpers.umask import current_umask
from realuid import data
from realuid.config import PrepareConfig
from realuid.data import DataError, Split

# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------


def prepare_settings(**overrides) -> PrepareConfig:
    """Prepare settings as the params loader provides them."""
    settings = dict(
        source="toy", toy="gmm8", path="", pairing="none", pairing_strength=0.5, normalize=False,
        n_train=300, n_test=100, test_fraction=0.25, download=False, seed=0,
    )
    settings.update(overrides)
    return PrepareConfig(**settings)


def write_cifar_batches(folder, n_per_batch: int = 4, seed: int = 0, protocol: int = 2) -> dict:
    """A miniature CIFAR-10 in the official pickle-batch layout; returns the arrays written."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for name in data.CIFAR10_TRAIN_BATCHES + data.CIFAR10_TEST_BATCHES:
        images = rng.integers(0, 256, size=(n_per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=n_per_batch)]
        batch = {"batch_label": name, "labels": labels, "data": images, "filenames": [f"{name}_{i}.png" for i in range(n_per_batch)]}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=protocol))
        written[name] = (images, labels)
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}, protocol=protocol))
    return written


def tar_folder(folder, archive_path) -> None:
    with tarfile.open(archive_path, "w:gz") as archive:
        archive.add(folder, arcname=data.CIFAR10_FOLDER)


def small_split(n: int = 12, images: bool = False, labelled: bool = True, paired: bool = False, seed: int = 0) -> Split:
    rng = np.random.default_rng(seed)
    shape = (n, 1, 4, 4) if images else (n, 3)
    x1 = rng.uniform(-1, 1, shape).astype(np.float32)
    return Split(
        x1=x1,
        y=rng.integers(0, 5, n).astype(np.int64) if labelled else None,
        x0=rng.uniform(-1, 1, shape).astype(np.float32) if paired else None,
        attrs={"source": "file", "num_classes": 5 if labelled else 0, "params": "{}"},
    )


# --------------------------------------------------------------------------------------------------
# toy sources
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", data.TOY_DATASETS)
def test_toy_shape_range_and_determinism(name):
    a = data.make_toy(name, 2000, data.rng_for(3, 0))
    b = data.make_toy(name, 2000, data.rng_for(3, 0))
    c = data.make_toy(name, 2000, data.rng_for(4, 0))
    assert a.shape == (2000, 2) and a.dtype == np.float32
    assert np.abs(a).max() <= 1.0
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_gmm8_centres_and_spread():
    centers = data.gmm8_centers()
    assert centers.shape == (8, 2)
    np.testing.assert_allclose(np.linalg.norm(centers, axis=1), data.GMM8_RADIUS)
    np.testing.assert_allclose(np.arctan2(centers[:, 1], centers[:, 0]) % (2 * np.pi), 2 * np.pi * np.arange(8) / 8, atol=1e-12)

    x = data.make_toy("gmm8", 40000, data.rng_for(0, 0)).astype(np.float64)
    nearest = np.argmin(((x[:, None] - centers[None]) ** 2).sum(-1), axis=1)
    offsets = x - centers[nearest]
    # Equal weights and isotropic std 0.05 around each centre.
    np.testing.assert_allclose(np.bincount(nearest, minlength=8) / len(x), 1 / 8, atol=0.01)
    np.testing.assert_allclose(offsets.std(axis=0), data.GMM8_STD, rtol=0.03)
    np.testing.assert_allclose(offsets.mean(axis=0), 0.0, atol=0.002)


def test_checkerboard_fills_exactly_the_even_cells():
    x = data.make_toy("checkerboard", 20000, data.rng_for(0, 0)).astype(np.float64)
    cells = np.floor((x + 1) / (2 / data.CHECKERBOARD_CELLS)).astype(int)
    assert np.all((cells.sum(axis=1) % 2) == 0)
    occupied = {tuple(c) for c in cells}
    assert len(occupied) == data.CHECKERBOARD_CELLS**2 // 2
    # uniform over the eight filled cells
    counts = np.unique(cells[:, 0] * 4 + cells[:, 1], return_counts=True)[1]
    np.testing.assert_allclose(counts / len(x), 1 / 8, atol=0.01)


def test_moons_lie_on_the_two_half_circles():
    x = data.make_toy("moons", 5000, data.rng_for(0, 0))
    scale, shift = data.toy_original_units("moons")
    original = data.to_original_units(x, {"denormalize_scale": scale, "denormalize_shift": shift})
    dist_upper = np.abs(np.linalg.norm(original, axis=1) - 1)
    dist_lower = np.abs(np.linalg.norm(original - np.array([1.0, 0.5]), axis=1) - 1)
    # Each point is within a few jitter std of one of the unit half circles.
    assert np.all(np.minimum(dist_upper, dist_lower) < 5 * data.MOONS_NOISE)
    assert np.mean(original[:, 1] > 0.25) == pytest.approx(0.5, abs=0.05)


def test_sample_in_box_rejects_points_outside():
    def wide(rng, n):
        return rng.uniform(-3, 3, size=(n, 2))

    x = data.sample_in_box(wide, np.random.default_rng(0), 500)
    assert x.shape == (500, 2) and np.abs(x).max() <= 1.0
    # The kept points are the in-box draws, so they are uniform on the box.
    assert np.abs(x.mean(axis=0)).max() < 0.1


def test_make_toy_rejects_bad_input():
    with pytest.raises(ValueError, match="unknown toy"):
        data.make_toy("spirals", 10, np.random.default_rng(0))
    with pytest.raises(ValueError, match="positive"):
        data.make_toy("gmm8", 0, np.random.default_rng(0))


def test_toy_splits_use_independent_streams():
    train, test = data.build_splits(prepare_settings(n_train=50, n_test=20))
    train_more, test_more = data.build_splits(prepare_settings(n_train=50, n_test=40))
    np.testing.assert_array_equal(train.x1, train_more.x1)  # test size does not move train
    assert not np.array_equal(train.x1[:20], test.x1)  # train and test are different draws
    assert train.attrs["source"] == "toy" and train.attrs["dataset"] == "gmm8"
    assert train.y is None and train.x0 is None and train.num_classes == 0


# --------------------------------------------------------------------------------------------------
# splitting and digits
# --------------------------------------------------------------------------------------------------


def test_split_indices_partition_and_stratify():
    labels = np.repeat(np.arange(4), [10, 20, 30, 40])
    train, test = data.split_indices(100, 0.2, np.random.default_rng(0), labels)
    assert len(np.intersect1d(train, test)) == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([train, test])), np.arange(100))
    np.testing.assert_array_equal(np.bincount(labels[test]), [2, 4, 6, 8])
    again = data.split_indices(100, 0.2, np.random.default_rng(0), labels)
    np.testing.assert_array_equal(test, again[1])
    other = data.split_indices(100, 0.2, np.random.default_rng(1), labels)
    assert not np.array_equal(test, other[1])


def test_split_indices_unlabelled_and_errors():
    train, test = data.split_indices(10, 0.3, np.random.default_rng(0))
    assert (len(train), len(test)) == (7, 3)
    with pytest.raises(ValueError, match="empty test split"):
        data.split_indices(2, 0.1, np.random.default_rng(0))
    with pytest.raises(ValueError, match="test_fraction"):
        data.split_indices(10, 1.0, np.random.default_rng(0))


def test_digits_match_sklearn_pixels():
    from sklearn.datasets import load_digits

    whole = data.load_digits_data()
    reference = load_digits()
    assert whole.x1.shape == (1797, 1, 8, 8) and whole.x1.dtype == np.float32
    np.testing.assert_allclose(whole.x1[:, 0], reference.images / 16 * 2 - 1, atol=1e-6)
    np.testing.assert_array_equal(whole.y, reference.target)
    np.testing.assert_allclose(data.to_original_units(whole.x1, whole.attrs)[:, 0], reference.images, atol=1e-5)


def test_digits_build_splits_stratified():
    train, test = data.build_splits(prepare_settings(source="digits", test_fraction=0.2, seed=5))
    assert len(train) + len(test) == 1797
    assert train.num_classes == 10 and test.num_classes == 10
    class_sizes = np.bincount(data.load_digits_data().y)
    np.testing.assert_array_equal(np.bincount(test.y), np.round(0.2 * class_sizes).astype(int))
    assert train.attrs["dataset"] == "digits"


# --------------------------------------------------------------------------------------------------
# CIFAR-10 pickle batches
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["root", "batch_folder", "archive", "archive_in_root"])
def test_cifar10_reads_every_layout(tmp_path, layout):
    batch_folder = tmp_path / "root" / data.CIFAR10_FOLDER
    written = write_cifar_batches(batch_folder)
    if layout == "root":
        path = tmp_path / "root"
    elif layout == "batch_folder":
        path = batch_folder
    else:
        archive_dir = tmp_path / "archived"
        archive_dir.mkdir()
        tar_folder(batch_folder, archive_dir / data.CIFAR10_ARCHIVE)
        path = archive_dir / data.CIFAR10_ARCHIVE if layout == "archive" else archive_dir

    train, test = data.load_cifar10(path)
    assert train.x1.shape == (20, 3, 32, 32) and test.x1.shape == (4, 3, 32, 32)
    assert train.x1.dtype == np.float32 and train.y.dtype == np.int64
    first_images, first_labels = written["data_batch_1"]
    np.testing.assert_allclose(train.x1[:4], first_images.reshape(4, 3, 32, 32) / 127.5 - 1, atol=1e-6)
    np.testing.assert_array_equal(train.y[:4], first_labels)
    np.testing.assert_array_equal(test.y, written["test_batch"][1])
    assert train.num_classes == 10


def test_cifar10_reads_python3_pickles(tmp_path):
    write_cifar_batches(tmp_path / data.CIFAR10_FOLDER, protocol=pickle.HIGHEST_PROTOCOL)
    train, _ = data.load_cifar10(tmp_path)
    assert len(train) == 20


def test_cifar10_missing_data_names_both_options(tmp_path):
    with pytest.raises(DataError) as info:
        data.load_cifar10(tmp_path / "nothing")
    assert "download: true" in str(info.value) and data.CIFAR10_ARCHIVE in str(info.value)
    with pytest.raises(DataError, match="prepare.path"):
        data.load_cifar10("")


def test_cifar10_refuses_pickles_that_run_code(tmp_path):
    folder = tmp_path / data.CIFAR10_FOLDER
    write_cifar_batches(folder)

    class Exploit:
        def __reduce__(self):
            return (os.system, ("echo unsafe",))

    (folder / "test_batch").write_bytes(pickle.dumps({"data": Exploit(), "labels": []}))
    with pytest.raises(DataError, match="never needs"):
        data.load_cifar10(tmp_path)


def test_cifar10_rejects_a_batch_of_the_wrong_layout(tmp_path):
    folder = tmp_path / data.CIFAR10_FOLDER
    write_cifar_batches(folder)
    (folder / "test_batch").write_bytes(pickle.dumps({"data": np.zeros((2, 10), np.uint8), "labels": [0, 1]}))
    with pytest.raises(DataError, match="expected data"):
        data.load_cifar10(tmp_path)


def test_cifar10_build_splits_uses_official_split(tmp_path):
    write_cifar_batches(tmp_path / data.CIFAR10_FOLDER, n_per_batch=2)
    train, test = data.build_splits(prepare_settings(source="cifar10", path=str(tmp_path)))
    assert (len(train), len(test)) == (10, 2)
    assert train.attrs["source"] == "cifar10"


# --------------------------------------------------------------------------------------------------
# user files
# --------------------------------------------------------------------------------------------------


def test_file_npz_points_kept_as_given(tmp_path):
    x = np.random.default_rng(0).uniform(-1, 1, (40, 3))
    np.savez(tmp_path / "p.npz", x=x)
    split = data.load_user_file(tmp_path / "p.npz")
    np.testing.assert_allclose(split.x1, x.astype(np.float32))
    assert split.y is None and split.num_classes == 0 and split.x1.dtype == np.float32


def test_file_uint8_channels_last_images_transposed_and_scaled(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (6, 8, 10, 3), dtype=np.uint8)
    np.savez(tmp_path / "img.npz", x=pixels, y=np.arange(6) % 2)
    split = data.load_user_file(tmp_path / "img.npz")
    assert split.x1.shape == (6, 3, 8, 10)
    np.testing.assert_allclose(split.x1, pixels.transpose(0, 3, 1, 2) / 127.5 - 1, atol=1e-6)
    assert split.num_classes == 2
    np.testing.assert_allclose(data.to_original_units(split.x1, split.attrs), pixels.transpose(0, 3, 1, 2), atol=1e-4)


def test_file_channels_first_never_transposed():
    x = np.zeros((5, 3, 4, 3))
    assert data.to_channels_first(x).shape == (5, 3, 4, 3)
    assert data.to_channels_first(np.zeros((5, 4, 4, 1))).shape == (5, 1, 4, 4)


def test_file_h5_with_pairs_and_labels(tmp_path):
    rng = np.random.default_rng(0)
    x1, x0 = rng.uniform(-1, 1, (10, 1, 4, 4)), rng.uniform(-1, 1, (10, 1, 4, 4))
    with h5py.File(tmp_path / "u.h5", "w") as f:
        f["x1"], f["x0"], f["y"] = x1, x0, np.arange(10) % 3
    split = data.load_user_file(tmp_path / "u.h5")
    np.testing.assert_allclose(split.x0, x0.astype(np.float32))
    np.testing.assert_array_equal(split.y, np.arange(10) % 3)
    assert split.num_classes == 3


def test_file_out_of_range_floats_not_rescaled_without_normalize(tmp_path):
    x = np.array([[0.0, 10.0], [2.0, -5.0], [1.0, 0.0]])
    np.savez(tmp_path / "p.npz", x=x)
    np.testing.assert_allclose(data.load_user_file(tmp_path / "p.npz").x1, x)


def test_file_normalize_maps_each_dimension_and_records_the_map(tmp_path):
    x = np.array([[0.0, 10.0], [2.0, -5.0], [1.0, 0.0], [0.5, 5.0]])
    x0 = x + 0.1
    np.savez(tmp_path / "p.npz", x=x, x0=x0)
    split = data.load_user_file(tmp_path / "p.npz", normalize=True)
    np.testing.assert_allclose(split.x1.min(axis=0), [-1, -1], atol=1e-6)
    np.testing.assert_allclose(split.x1.max(axis=0), [1, 1], atol=1e-6)
    np.testing.assert_allclose(data.to_original_units(split.x1, split.attrs), x, atol=1e-5)
    np.testing.assert_allclose(data.to_original_units(split.x0, split.attrs), x0, atol=1e-5)  # same map
    assert split.attrs["denormalize_scale"] == [1.0, 7.5]


def test_minmax_affine_images_share_one_map_and_ignore_nan():
    x = np.array([[[[0.0, 4.0]]], [[[np.nan, 2.0]]]])
    scale, shift = data.minmax_affine(x)
    assert scale.tolist() == [2.0] and shift.tolist() == [2.0]
    const_scale, const_shift = data.minmax_affine(np.full((3, 2), 7.0))
    assert const_scale.tolist() == [1.0, 1.0] and const_shift.tolist() == [7.0, 7.0]


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"z": np.zeros((3, 2))}, "no array 'x'"),
        ({"x": np.zeros((3, 2)), "x1": np.zeros((3, 2))}, "both 'x' and 'x1'"),
        ({"x": np.zeros((3, 2, 2))}, "expected points"),
        ({"x": np.zeros((3, 2)), "y": np.array([0.5, 1, 2])}, "whole numbers"),
        ({"x": np.zeros((3, 2)), "y": np.array([0, 1])}, "one per sample"),
        ({"x": np.zeros((3, 2)), "x0": np.zeros((3, 3))}, "pairs must match"),
        ({"x": np.zeros((0, 2))}, "empty"),
        ({"x": np.array([["a", "b"]])}, "expected numbers"),
    ],
)
def test_file_rejects_bad_layouts(tmp_path, arrays, message):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError, match=message):
        data.load_user_file(tmp_path / "bad.npz")


def test_file_missing_or_wrong_type(tmp_path):
    with pytest.raises(DataError, match="not found"):
        data.load_user_file(tmp_path / "none.npz")
    (tmp_path / "x.csv").write_text("1,2\n")
    with pytest.raises(DataError, match=".npz or .h5"):
        data.load_user_file(tmp_path / "x.csv")
    with pytest.raises(DataError, match="prepare.path"):
        data.load_user_file("")


def test_file_build_splits_with_existing_pairs(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "p.npz", x=rng.uniform(-1, 1, (20, 2)), x0=rng.uniform(-1, 1, (20, 2)))
    train, test = data.build_splits(prepare_settings(source="file", path=str(tmp_path / "p.npz")))
    assert (len(train), len(test)) == (15, 5) and train.x0 is not None
    with pytest.raises(ValueError, match="already holds pairs"):
        data.build_splits(prepare_settings(source="file", path=str(tmp_path / "p.npz"), pairing="noise"))


# --------------------------------------------------------------------------------------------------
# pairing
# --------------------------------------------------------------------------------------------------


def test_pair_noise_statistics_and_clip():
    x1 = np.zeros((4000, 2), np.float32)
    x0 = data.pair_noise(x1, 0.1, np.random.default_rng(0))
    assert x0.dtype == np.float32
    np.testing.assert_allclose(x0.std(axis=0), 0.1, rtol=0.05)
    clipped = data.pair_noise(np.ones((100, 2), np.float32), 1.0, np.random.default_rng(0))
    assert clipped.max() <= 1.0 and clipped.min() >= -1.0


def test_pair_mask_images_zero_one_square():
    x1 = np.random.default_rng(0).uniform(0.1, 1, (30, 3, 8, 8)).astype(np.float32)
    x0 = data.pair_mask(x1, 0.5, np.random.default_rng(1))
    for i in range(30):
        zero = np.all(x0[i] == 0, axis=0)
        rows, cols = np.nonzero(zero)
        assert zero.sum() == 16  # side round(0.5 * 8) = 4
        assert rows.max() - rows.min() == 3 and cols.max() - cols.min() == 3
        np.testing.assert_array_equal(x0[i][:, ~zero], x1[i][:, ~zero])


def test_pair_mask_points_zero_one_coordinate():
    x1 = np.random.default_rng(0).uniform(0.1, 1, (50, 3)).astype(np.float32)
    x0 = data.pair_mask(x1, 0.5, np.random.default_rng(1))
    assert np.all((x0 == 0).sum(axis=1) == 1)
    np.testing.assert_array_equal(x0[x0 != 0], x1[x0 != 0])


def test_pair_downsample_closed_form():
    x1 = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    expected = np.array([[2.5, 2.5, 4.5, 4.5], [2.5, 2.5, 4.5, 4.5], [10.5, 10.5, 12.5, 12.5], [10.5, 10.5, 12.5, 12.5]])
    np.testing.assert_allclose(data.pair_downsample(x1)[0, 0], expected)
    twice = data.pair_downsample(data.pair_downsample(x1))
    np.testing.assert_allclose(twice, data.pair_downsample(x1))
    with pytest.raises(ValueError, match="images"):
        data.pair_downsample(np.zeros((3, 2), np.float32))
    with pytest.raises(ValueError, match="even"):
        data.pair_downsample(np.zeros((1, 1, 3, 4), np.float32))


def test_make_pairs_validates_strength_and_is_seeded():
    x1 = np.random.default_rng(0).uniform(-1, 1, (10, 1, 4, 4)).astype(np.float32)
    assert data.make_pairs(x1, "none", 0.5, np.random.default_rng(0)) is None
    a = data.make_pairs(x1, "mask", 0.5, np.random.default_rng(3))
    np.testing.assert_array_equal(a, data.make_pairs(x1, "mask", 0.5, np.random.default_rng(3)))
    with pytest.raises(ValueError, match="pairing_strength > 0"):
        data.make_pairs(x1, "noise", 0.0, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        data.make_pairs(x1, "mask", 1.5, np.random.default_rng(0))
    with pytest.raises(ValueError, match="unknown pairing"):
        data.make_pairs(x1, "blur", 0.5, np.random.default_rng(0))


@pytest.mark.parametrize("pairing", ["noise", "mask", "downsample"])
def test_build_splits_pairs_both_splits(pairing):
    train, test = data.build_splits(prepare_settings(source="digits", pairing=pairing, pairing_strength=0.3))
    for split in (train, test):
        assert split.x0.shape == split.x1.shape and split.x0.dtype == np.float32
        assert np.abs(split.x0).max() <= 1.0
        assert not np.array_equal(split.x0, split.x1)


def test_build_splits_downsample_points_is_an_error():
    with pytest.raises(ValueError, match="needs images"):
        data.build_splits(prepare_settings(pairing="downsample"))


# --------------------------------------------------------------------------------------------------
# HDF5 split files
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("images, labelled, paired", [(False, False, False), (True, True, True), (False, True, True)])
def test_write_read_round_trip(tmp_path, images, labelled, paired):
    split = small_split(images=images, labelled=labelled, paired=paired)
    digest = data.save_split(split, tmp_path / "s.h5")
    back = data.read_split(tmp_path / "s.h5")
    np.testing.assert_array_equal(back.x1, split.x1)
    assert back.x1.dtype == np.float32
    if labelled:
        np.testing.assert_array_equal(back.y, split.y)
        assert back.y.dtype == np.int64
    else:
        assert back.y is None
    assert (back.x0 is not None) == paired
    assert back.attrs["content_hash"] == digest
    assert back.attrs["kind"] == ("images" if images else "points")
    assert back.attrs["shape"] == list(split.x1.shape[1:])
    assert back.attrs["paired"] is paired
    assert back.attrs["num_classes"] == (5 if labelled else 0)
    assert back.attrs["source"] == "file" and back.attrs["params"] == "{}"


def test_string_attributes_round_trip_unicode_and_empty(tmp_path):
    attrs = {"source": "file", "params": '{"path": "données.npz"}', "note": ""}
    data.write_split(tmp_path / "s.h5", np.zeros((2, 2), np.float32), attrs=attrs)
    back = data.read_split(tmp_path / "s.h5").attrs
    assert back["params"] == attrs["params"] and back["note"] == ""


def test_written_datasets_are_checksummed_compressed_and_untimed(tmp_path):
    data.save_split(small_split(paired=True), tmp_path / "s.h5")
    with h5py.File(tmp_path / "s.h5", "r") as f:
        for name in ("x1", "y", "x0"):
            assert f[name].fletcher32 and f[name].compression == "gzip" and f[name].chunks is not None
            assert not f[name].id.get_create_plist().get_obj_track_times()


def test_rewrite_is_byte_identical_even_seconds_apart(tmp_path):
    split = small_split(images=True, paired=True)
    data.save_split(split, tmp_path / "a.h5")
    time.sleep(1.1)  # HDF5 object times have one-second resolution
    data.save_split(split, tmp_path / "b.h5")
    assert (tmp_path / "a.h5").read_bytes() == (tmp_path / "b.h5").read_bytes()


def test_write_is_atomic_and_cleans_up(tmp_path):
    split = small_split()
    with pytest.raises(ValueError, match="'extra' cannot be None"):
        data.write_split(tmp_path / "s.h5", split.x1, attrs={"source": "file", "extra": None})
    assert list(tmp_path.iterdir()) == []
    data.save_split(split, tmp_path / "s.h5")
    assert [p.name for p in tmp_path.iterdir()] == ["s.h5"]
    assert (tmp_path / "s.h5").stat().st_mode & 0o777 == 0o666 & ~current_umask()


def test_write_rejects_bad_arrays(tmp_path):
    x1 = np.zeros((4, 2), np.float32)
    with pytest.raises(ValueError, match="source"):
        data.write_split(tmp_path / "s.h5", x1, attrs={})
    with pytest.raises(ValueError, match="labels"):
        data.write_split(tmp_path / "s.h5", x1, y=np.zeros(3), attrs={"source": "toy"})
    with pytest.raises(ValueError, match="x0"):
        data.write_split(tmp_path / "s.h5", x1, x0=np.zeros((4, 3)), attrs={"source": "toy"})
    with pytest.raises(ValueError, match="empty"):
        data.write_split(tmp_path / "s.h5", x1[:0], attrs={"source": "toy"})


def test_content_hash_depends_on_every_array():
    x1 = np.zeros((3, 2), np.float32)
    base = data.content_hash({"x1": x1})
    assert data.content_hash({"x1": x1.copy()}) == base
    assert data.content_hash({"x1": x1.reshape(3, 1, 2, 1)}) != base  # shape counts
    assert data.content_hash({"x1": x1, "y": np.zeros(3, np.int64)}) != base
    assert data.content_hash({"x1": x1.astype(np.float64)}) != base  # dtype counts


def test_read_detects_flipped_bytes(tmp_path):
    # Random values do not compress, so the middle of the file is chunk data.
    split = Split(np.random.default_rng(0).uniform(-1, 1, (4000, 8)).astype(np.float32), attrs={"source": "toy"})
    data.save_split(split, tmp_path / "s.h5")
    raw = bytearray((tmp_path / "s.h5").read_bytes())
    middle = len(raw) // 2
    raw[middle : middle + 8] = bytes(b ^ 0xFF for b in raw[middle : middle + 8])
    (tmp_path / "s.h5").write_bytes(bytes(raw))
    with pytest.raises(DataError, match="corrupted"):
        data.read_split(tmp_path / "s.h5")


@pytest.mark.parametrize("marker", [b"points", b"gmm8"])
def test_read_detects_damaged_attributes(tmp_path, marker):
    # Attributes sit in checksummed object headers, so a damaged one is caught like damaged data.
    data.save_split(Split(np.zeros((5, 2), np.float32), attrs={"source": "toy", "dataset": "gmm8"}), tmp_path / "s.h5")
    raw = bytearray((tmp_path / "s.h5").read_bytes())
    where = raw.find(marker)
    assert where > 0
    raw[where] ^= 0x20
    (tmp_path / "s.h5").write_bytes(bytes(raw))
    with pytest.raises(DataError, match="corrupted"):
        data.read_split(tmp_path / "s.h5")


def test_read_detects_truncation(tmp_path):
    data.save_split(small_split(n=500), tmp_path / "s.h5")
    raw = (tmp_path / "s.h5").read_bytes()
    (tmp_path / "s.h5").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match="truncated"):
        data.read_split(tmp_path / "s.h5")


def test_read_detects_hash_mismatch(tmp_path):
    data.save_split(small_split(), tmp_path / "s.h5")
    with h5py.File(tmp_path / "s.h5", "r+") as f:
        f["x1"][0, 0] = 0.123
    with pytest.raises(DataError, match="content hash"):
        data.read_split(tmp_path / "s.h5")


def test_read_rejects_missing_and_foreign_files(tmp_path):
    with pytest.raises(DataError, match="not found"):
        data.read_split(tmp_path / "none.h5")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x1"] = np.zeros((2, 2))
    with pytest.raises(DataError, match="not a realuid split"):
        data.read_split(tmp_path / "other.h5")
    (tmp_path / "text.h5").write_text("hello")
    with pytest.raises(DataError, match="cannot be read"):
        data.read_split(tmp_path / "text.h5")


def test_split_properties():
    split = small_split(images=True)
    assert len(split) == 12 and split.kind == "images" and split.sample_shape == (1, 4, 4) and split.num_classes == 5
    with pytest.raises(DataError, match="expected points"):
        data.kind_of(np.zeros((2, 3, 4)))
    taken = data.take(split, np.array([0, 2]))
    np.testing.assert_array_equal(taken.y, split.y[[0, 2]])


def test_to_original_units_applies_the_recorded_map():
    x = np.array([[0.5, -0.5]], np.float32)
    out = data.to_original_units(x, {"denormalize_scale": [2.0, 4.0], "denormalize_shift": [1.0, 0.0]})
    np.testing.assert_allclose(out, [[2.0, -2.0]])
    images = np.full((1, 2, 2, 2), 0.5, np.float32)
    np.testing.assert_allclose(data.to_original_units(images, {"denormalize_scale": [127.5], "denormalize_shift": [127.5]}), 191.25)


def test_params_dict_accepts_dataclasses_and_mappings():
    settings = prepare_settings()
    fields = {f: getattr(settings, f) for f in settings.__dataclass_fields__}
    assert data.params_dict(settings) == fields
    assert data.params_dict(fields) == fields


@pytest.mark.parametrize("base, unused", [
    (dict(source="toy"), dict(test_fraction=0.5, path="x.npz", normalize=True, pairing_strength=0.9,
                              download=True)),
    (dict(source="digits"), dict(toy="moons", n_train=7, n_test=9, path="x.npz", normalize=True, download=True)),
    (dict(source="toy", pairing="noise"), dict(test_fraction=0.5, download=True)),
])
def test_keys_a_source_ignores_leave_the_split_files_byte_identical(tmp_path, base, unused):
    files = []
    for name, settings in (("a", base), ("b", {**base, **unused})):
        train, _ = data.build_splits(prepare_settings(**settings))
        data.save_split(train, tmp_path / f"{name}.h5")
        files.append((tmp_path / f"{name}.h5").read_bytes())
    assert files[0] == files[1]
    # A key the source reads still changes the file.
    changed = {"toy": dict(seed=1), "digits": dict(test_fraction=0.5)}[base["source"]]
    train, _ = data.build_splits(prepare_settings(**{**base, **changed}))
    data.save_split(train, tmp_path / "c.h5")
    assert (tmp_path / "c.h5").read_bytes() != files[0]


# --------------------------------------------------------------------------------------------------
# Splits written batch by batch
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape, n, batch", [((2,), 777, 7), ((1, 8, 8), 1000, 64), ((1, 8, 8), 10_000, 300),
                                             ((3, 32, 32), 1200, 256), ((3, 32, 32), 1200, 1200)])
@pytest.mark.parametrize("paired", [False, True])
def test_a_split_written_batch_by_batch_is_the_file_write_split_writes(tmp_path, shape, n, batch, paired):
    # Same arrays and attrs: the same bytes, whatever the batch size (CIFAR-shaped rows span several
    # chunk bands; the last batch is short unless one batch holds everything).
    rng = np.random.default_rng(n + batch)
    x1 = rng.standard_normal((n, *shape)).astype(np.float32)
    y = np.arange(n) % 10
    x0 = rng.standard_normal((n, *shape)).astype(np.float32) if paired else None
    attrs = {"source": "teacher", "seed": 1_000_000}
    data.write_split(tmp_path / "whole.h5", x1, y=y, x0=x0, attrs=attrs)
    with data.SplitWriter(tmp_path / "streamed.h5", n, shape, y=y, x0=x0, attrs=attrs) as writer:
        for start in range(0, n, batch):
            writer.append(x1[start:start + batch])
    assert (tmp_path / "streamed.h5").read_bytes() == (tmp_path / "whole.h5").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["streamed.h5", "whole.h5"]  # no temporary left
    assert (tmp_path / "streamed.h5").stat().st_mode & 0o777 == 0o666 & ~current_umask()  # not mkstemp's 0600


@pytest.mark.parametrize("shape, n", [((2,), 200_000), ((1, 8, 8), 10_000), ((3, 32, 32), 500), ((3, 64, 64), 40),
                                      ((3, 256, 256), 3)])
def test_chunks_hold_whole_rows_of_about_a_mebibyte(tmp_path, shape, n):
    import h5py

    data.write_split(tmp_path / "s.h5", np.zeros((n, *shape), np.float32), y=np.arange(n) % 3, attrs={"source": "s"})
    with h5py.File(tmp_path / "s.h5", "r") as f:
        for name in ("x1", "y"):
            dataset = f[name]
            row_bytes = dataset.dtype.itemsize * int(np.prod(dataset.shape[1:]))
            assert dataset.chunks[1:] == dataset.shape[1:], name  # whole rows: a batch read touches its chunks only
            assert dataset.chunks[0] == max(1, min(n, data.H5_CHUNK_BYTES // row_bytes)), name


def test_a_split_writer_holds_one_chunk_of_rows_whatever_the_split_size(tmp_path):
    """Python-side peak memory of streaming 8x8 rows in batches of 256 is the same for 5k and 100k rows (it
    grew with the split when h5py chose the chunks: 16000 rows of one pixel each at 128k rows)."""
    import tracemalloc

    batch = np.random.default_rng(0).uniform(-1, 1, (256, 1, 8, 8)).astype(np.float32)
    peaks = {}
    for n in (5_000, 100_000):
        tracemalloc.start()
        with data.SplitWriter(tmp_path / f"{n}.h5", n, (1, 8, 8), attrs={"source": "s"}) as writer:
            for start in range(0, n, 256):
                writer.append(batch[:min(256, n - start)])
        peaks[n] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peaks[100_000] - peaks[5_000] < 256 * 1024, peaks


def test_a_split_writer_that_fails_leaves_nothing(tmp_path):
    x1 = np.zeros((10, 2), dtype=np.float32)
    with pytest.raises(ValueError, match="4 rows written of the 10 announced"):
        with data.SplitWriter(tmp_path / "s.h5", 10, (2,), attrs={"source": "s"}) as writer:
            writer.append(x1[:4])
    with pytest.raises(RuntimeError, match="sampling failed"):
        with data.SplitWriter(tmp_path / "s.h5", 10, (2,), attrs={"source": "s"}) as writer:
            writer.append(x1[:4])
            raise RuntimeError("sampling failed")
    with pytest.raises(ValueError, match="more than the 10 rows"):
        with data.SplitWriter(tmp_path / "s.h5", 10, (2,), attrs={"source": "s"}) as writer:
            writer.append(np.zeros((11, 2), dtype=np.float32))
    assert list(tmp_path.iterdir()) == []
