"""sklearn's 8x8 digits as image tensors, and the files the evaluate stage reads, made from them."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import yaml

from helpers.project import DEFAULT


def digit_images(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """sklearn digits [n, 1, 8, 8] in [-1, 1] and their labels [n]."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    return (torch.tensor(digits.images[:n], dtype=torch.float32)[:, None] / 8.0 - 1.0,
            torch.as_tensor(digits.target[:n], dtype=torch.long))


def evaluate_inputs(folder: Path) -> tuple[dict, list[str]]:
    """Image splits, a samples folder as ``sample`` writes it, and two features folders: one with the
    reference cache the features stage writes, one without (the reference is then extracted here)."""
    from realuid.data import write_split
    from realuid.features import FeatureNet, save_feature_net
    from realuid.metrics import cache_reference_features

    images, labels = digit_images(400)
    write_split(folder / "train.h5", images[:200].numpy(), y=labels[:200].numpy(), attrs={"source": "digits"})
    write_split(folder / "test.h5", images[200:].numpy(), y=labels[200:].numpy(), attrs={"source": "digits"})
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(0))
    samples = folder / "samples"
    for who, level in (("teacher", 0.05), ("student", 0.2), ("student_raw", 0.3)):
        drawn = (images[200:300] + level * noise[200:300]).clamp(-1, 1)
        write_split(samples / f"{who}.h5", drawn.numpy(), y=labels[200:300].numpy(), attrs={"source": who})
    timing = {"nfe": 1, "samples_per_second": 1000.0}
    (samples / "timing.json").write_text(json.dumps({"teacher": {**timing, "nfe": 9}, "student": timing}))
    for name in ("features_cached", "features_bare"):
        (folder / name).mkdir()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            save_feature_net(folder / name / "extractor.pt", FeatureNet(1, 8, num_classes=10, width=8), {})
    cache_reference_features(images[200:], extractor="realuid-features", batch_size=32, device="cpu",
                             extractor_weights_path=folder / "features_cached" / "extractor.pt",
                             cache_root=folder / "features_cached" / "reference_cache")
    params = yaml.safe_load(DEFAULT.read_text())
    params["evaluate"].update(kid_subset_size=50, batch_size=32, device="cpu")
    return params, ["--samples", str(samples), "--train", str(folder / "train.h5"), "--test", str(folder / "test.h5")]
