"""Feature network: training on sklearn digits, checkpoints, and the torch-fidelity extractor."""

import os

import numpy as np
import pytest
import torch

from realuid import features
from realuid.features import (
    class_masses,
    FeatureNet,
    classifier_accuracy,
    load_feature_net,
    load_feature_net_meta,
    predict_logits,
    rotate_batch,
    save_feature_net,
    train_feature_net,
    uint8_to_unit_range,
)


@pytest.fixture(scope="module")
def digits():
    """sklearn digits as images [1797, 1, 8, 8] in [-1, 1], with a fixed 1437 / 360 split."""
    from sklearn.datasets import load_digits

    data = load_digits()
    images = torch.tensor(data.images, dtype=torch.float32)[:, None] / 16.0 * 2.0 - 1.0
    labels = torch.tensor(data.target)
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    train, test = order[:1437], order[1437:]
    return images[train], labels[train], images[test], labels[test]


@pytest.fixture(scope="module")
def digits_net(digits):
    train_x, train_y, _, _ = digits
    return train_feature_net(train_x, train_y, steps=200, batch_size=128, lr=2e-3, seed=0, width=16,
                             progress=False)


@pytest.fixture(scope="module")
def digits_checkpoint(digits_net, tmp_path_factory):
    path = tmp_path_factory.mktemp("feature_net") / "digits.pt"
    save_feature_net(path, digits_net, {"dataset": "digits", "steps": 200})
    return str(path)


@pytest.mark.parametrize("in_channels,image_size,width", [(1, 8, 8), (3, 32, 16), (3, 16, 4)])
def test_feature_net_shapes(in_channels, image_size, width):
    net = FeatureNet(in_channels, image_size, num_classes=10, width=width)
    x = torch.randn(5, in_channels, image_size, image_size)
    feats, logits = net.features_and_logits(x)
    assert feats.shape == (5, 4 * width) and logits.shape == (5, 10)
    assert torch.equal(net(x), logits)
    assert net.feature_dim == 4 * width


def test_feature_net_rejects_bad_arguments():
    with pytest.raises(ValueError, match="image_size"):
        FeatureNet(1, 2, 10)
    with pytest.raises(ValueError, match="task"):
        FeatureNet(1, 8, 10, task="segmentation")
    with pytest.raises(ValueError, match="channels|expected images"):
        FeatureNet(1, 8, 10)(torch.randn(2, 3, 8, 8))


def test_features_do_not_depend_on_batch():
    # GroupNorm normalises per image: an image's features cannot depend on its batch mates.
    torch.manual_seed(0)
    net = FeatureNet(3, 16, 10, width=8).eval()
    x = torch.randn(6, 3, 16, 16)
    together = net.features(x)
    alone = torch.cat([net.features(x[i:i + 1]) for i in range(6)])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-6)


def test_classifier_reaches_high_accuracy_on_held_out_digits(digits, digits_net):
    _, _, test_x, test_y = digits
    result = classifier_accuracy(digits_net, test_x, test_y)
    assert result["accuracy"] > 0.85
    assert result["num_samples"] == 360
    assert set(result["per_class_accuracy"]) == set(range(10))
    # The overall accuracy is the class-size-weighted mean of the per-class accuracies.
    counts = torch.bincount(test_y, minlength=10).double()
    weighted = sum(counts[c] * acc for c, acc in result["per_class_accuracy"].items()) / counts.sum()
    assert weighted == pytest.approx(result["accuracy"], abs=1e-9)


def test_classifier_accuracy_closed_form_on_a_rigged_net():
    # A net whose head always answers class 0: accuracy is the fraction of 0 labels, per class 1 or 0.
    net = FeatureNet(1, 8, 3, width=4).eval()
    with torch.no_grad():
        net.head.weight.zero_()
        net.head.bias.copy_(torch.tensor([1.0, 0.0, 0.0]))
    labels = torch.tensor([0, 0, 0, 1, 2, 2, 2, 2])
    result = classifier_accuracy(net, torch.zeros(8, 1, 8, 8), labels)
    assert result["accuracy"] == pytest.approx(3 / 8)
    assert result["per_class_accuracy"] == {0: 1.0, 1: 0.0, 2: 0.0}


def test_class_masses_closed_form_on_a_rigged_net():
    # A head that always answers class 0 puts all the mass there.
    net = FeatureNet(1, 8, 3, width=4).eval()
    with torch.no_grad():
        net.head.weight.zero_()
        net.head.bias.copy_(torch.tensor([1.0, 0.0, 0.5]))
    assert class_masses(net, torch.zeros(5, 1, 8, 8)).tolist() == [1.0, 0.0, 0.0]


def test_class_masses_of_real_digits_follow_their_labels(digits, digits_net):
    _, _, test_x, test_y = digits
    masses = class_masses(digits_net, test_x)
    assert masses.shape == (10,) and masses.sum() == pytest.approx(1.0)
    truth = np.bincount(test_y.numpy(), minlength=10) / len(test_y)
    # An accurate classifier's histogram is the label histogram up to its errors.
    assert 0.5 * np.abs(masses - truth).sum() < 0.1
    only_threes = class_masses(digits_net, test_x[test_y == 3])
    assert only_threes[3] > 0.8 and only_threes.argmax() == 3


def test_classifier_accuracy_rejects_bad_labels(digits_net):
    with pytest.raises(ValueError, match="labels go up to"):
        classifier_accuracy(digits_net, torch.zeros(2, 1, 8, 8), torch.tensor([0, 10]))
    with pytest.raises(ValueError, match="shape"):
        classifier_accuracy(digits_net, torch.zeros(2, 1, 8, 8), torch.tensor([0]))


def test_training_is_deterministic_and_leaves_global_rng_alone(digits):
    train_x, train_y, _, _ = digits
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    first = train_feature_net(train_x, train_y, steps=5, batch_size=32, seed=7, width=4, progress=False)
    assert torch.equal(torch.rand(3), expected_next)
    second = train_feature_net(train_x, train_y, steps=5, batch_size=32, seed=7, width=4, progress=False)
    other = train_feature_net(train_x, train_y, steps=5, batch_size=32, seed=8, width=4, progress=False)
    for a, b in zip(first.state_dict().values(), second.state_dict().values()):
        assert torch.equal(a, b)
    assert not torch.equal(first.head.weight, other.head.weight)


def test_training_rejects_bad_input(digits):
    train_x, train_y, _, _ = digits
    with pytest.raises(ValueError, match="square"):
        train_feature_net(torch.zeros(4, 1, 8, 6), None, steps=1, progress=False)
    with pytest.raises(ValueError, match="integers"):
        train_feature_net(train_x[:4], torch.zeros(4), steps=1, progress=False)
    with pytest.raises(ValueError, match="num_classes"):
        train_feature_net(train_x, train_y, steps=1, num_classes=5, progress=False)
    with pytest.raises(ValueError, match="NaN"):
        train_feature_net(torch.full((4, 1, 8, 8), float("nan")), None, steps=1, progress=False)


def test_rotate_batch_matches_rot90():
    x = torch.arange(2 * 4 * 3 * 3, dtype=torch.float32).reshape(4, 2, 3, 3)
    turns = torch.tensor([0, 1, 2, 3])
    out = rotate_batch(x, turns)
    for i in range(4):
        assert torch.equal(out[i], torch.rot90(x[i], i, dims=(1, 2)))


def test_unlabeled_training_learns_rotations(digits):
    train_x, _, test_x, _ = digits
    net = train_feature_net(train_x, None, steps=120, batch_size=128, seed=0, width=8, progress=False)
    assert net.task == "rotation" and net.num_classes == 4
    turns = torch.arange(len(test_x)) % 4
    predicted = predict_logits(net, rotate_batch(test_x, turns)).argmax(dim=1)
    assert (predicted == turns).float().mean() > 0.6  # chance is 0.25
    assert net.features(test_x[:3]).shape == (3, 32)
    with pytest.raises(ValueError, match="classification"):
        classifier_accuracy(net, test_x, torch.zeros(len(test_x), dtype=torch.long))


def test_save_load_round_trip(digits, digits_net, digits_checkpoint):
    _, _, test_x, _ = digits
    loaded = load_feature_net(digits_checkpoint)
    assert loaded.config == digits_net.config and not loaded.training
    torch.testing.assert_close(loaded.features(test_x), digits_net.features(test_x), rtol=0, atol=0)
    assert load_feature_net_meta(digits_checkpoint) == {"dataset": "digits", "steps": 200}
    # Only plain data goes in: the checkpoint must stay loadable with weights_only=True.
    payload = torch.load(digits_checkpoint, weights_only=True)
    assert payload["config"]["width"] == 16


def test_save_is_atomic_and_validates_meta(tmp_path):
    net = FeatureNet(1, 8, 10, width=4)
    path = tmp_path / "net.pt"
    with pytest.raises(ValueError, match="ndarray"):
        save_feature_net(path, net, {"bad": np.zeros(2)})
    assert not path.exists()
    save_feature_net(path, net, {"ok": [1, 2.0, "x", None]})
    assert os.listdir(tmp_path) == ["net.pt"]  # no temporary file left behind
    with pytest.raises(FileNotFoundError):
        load_feature_net(tmp_path / "missing.pt")
    torch.save({"something": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a realuid-feature-net"):
        load_feature_net(tmp_path / "other.pt")


def test_uint8_conversion_is_affine():
    x = torch.tensor([0, 255, 128], dtype=torch.uint8)
    torch.testing.assert_close(uint8_to_unit_range(x), torch.tensor([-1.0, 1.0, 128 / 127.5 - 1.0]))


def test_fidelity_extractor_matches_the_net(digits, digits_net, digits_checkpoint):
    features.register_fidelity_extractor()
    features.register_fidelity_extractor()  # idempotent
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    cls = FEATURE_EXTRACTORS_REGISTRY[features.EXTRACTOR_NAME]
    extractor = cls(features.EXTRACTOR_NAME, ["logits", "features"],
                    feature_extractor_weights_path=digits_checkpoint, verbose=False)
    _, _, test_x, _ = digits
    images_uint8 = ((test_x[:10] + 1) * 127.5).round().to(torch.uint8)
    logits, feats = extractor(images_uint8)
    expected_feats, expected_logits = digits_net.features_and_logits(uint8_to_unit_range(images_uint8))
    torch.testing.assert_close(feats, expected_feats)
    torch.testing.assert_close(logits, expected_logits)
    # RGB-repeated grayscale is averaged back to one channel.
    (rgb_feats,) = cls(features.EXTRACTOR_NAME, ["features"], feature_extractor_weights_path=digits_checkpoint)(
        images_uint8.repeat(1, 3, 1, 1))
    torch.testing.assert_close(rgb_feats, expected_feats)
    with pytest.raises(ValueError, match="uint8"):
        extractor(test_x[:2])
    with pytest.raises(ValueError, match="trained on 8x8"):
        extractor(torch.zeros(2, 1, 16, 16, dtype=torch.uint8))
    with pytest.raises(ValueError, match="feature_extractor_weights_path"):
        cls(features.EXTRACTOR_NAME, ["features"])


def test_fid_train_vs_test_much_smaller_than_vs_noise(digits, digits_checkpoint):
    from realuid.metrics import image_metrics

    train_x, _, test_x, _ = digits
    noise = torch.rand(360, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    options = dict(extractor_weights_path=digits_checkpoint, kid_subset_size=300, kid_subsets=20, device="cpu")
    real = image_metrics(test_x, train_x, **options)
    fake = image_metrics(noise, train_x, **options)
    assert fake["fid"] > 20 * max(real["fid"], 1e-3)
    assert fake["kid_mean"] > 20 * max(real["kid_mean"], 1e-5)
    assert real["precision"] > 0.5 and fake["precision"] < 0.1
