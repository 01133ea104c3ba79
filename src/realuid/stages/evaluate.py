"""Stage ``evaluate``: quality and speed of the teacher and the one-step student, as a metrics file.

Rows: ``teacher`` (multi-step), ``student`` (one step) and ``real`` — held-out real data scored the same
way, the floor that finite sample sizes put under every distance.
"""

from __future__ import annotations

import sys

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from . import common


def _real_floor(split, n: int, seed: int) -> np.ndarray:
    """``n`` real samples (a fixed random subset) standing in for a perfect generator.

    They come from the split the samples are *not* compared with, so the floor is an honest one.
    """
    rng = np.random.default_rng(seed)
    return split.x1[rng.choice(len(split), size=min(n, len(split)), replace=False)]


def main(args, params) -> None:
    from ..data import read_split

    cfg = params.evaluate
    samples = Path(args.samples)
    train, test = common.load_split(args.train), common.load_split(args.test)
    # teacher, student (the headline copy) and every copy of the generator (student_raw, student_ema_*)
    names = ["teacher", "student", *sorted(p.stem for p in samples.glob("student_*.h5"))]
    drawn = {who: read_split(samples / f"{who}.h5") for who in names}
    gen = {who: split.x1 for who, split in drawn.items()}
    timing = json.loads((samples / "timing.json").read_text())
    n = len(gen["student"])
    reference, other = (train, test) if cfg.reference == "train" else (test, train)
    gen["real"] = _real_floor(other, n, cfg.seed)

    metrics = {}
    if train.kind == "points":
        from ..metrics import point_metrics

        for who, x in gen.items():
            metrics[who] = point_metrics(x, reference.x1, seed=cfg.seed)
    else:
        from ..metrics import image_metrics

        from .features import reference_weights

        weights = reference_weights(params, Path(args.features))
        reference_images = torch.as_tensor(reference.x1)
        # A private copy of the features stage's reference cache: reads hit it, and whatever torch-fidelity
        # writes stays out of another stage's output.
        with tempfile.TemporaryDirectory() as cache:
            cached = Path(args.features) / "reference_cache"
            if cached.is_dir():
                shutil.copytree(cached, cache, dirs_exist_ok=True)
            for who, x in gen.items():
                metrics[who] = image_metrics(torch.as_tensor(x), reference_images, extractor=cfg.feature_extractor,
                                             extractor_weights_path=weights, batch_size=cfg.batch_size,
                                             kid_subset_size=cfg.kid_subset_size, seed=cfg.seed, cache_root=cache)
        if cfg.feature_extractor == "realuid-features" and drawn["student"].y is not None:
            # Class-conditional models: does the pipeline's classifier see the class each sample was asked for?
            from ..features import classifier_accuracy, load_feature_net

            net = load_feature_net(weights)
            if net.task == "classification":
                for who, split in drawn.items():
                    acc = classifier_accuracy(net, torch.as_tensor(split.x1).clamp(-1, 1), torch.as_tensor(split.y))
                    metrics[who]["class_accuracy"] = acc["accuracy"]
                    metrics[who].update({f"class_accuracy_{c}": a for c, a in acc["per_class_accuracy"].items()})
    for who in ("teacher", "student"):
        metrics[who].update(timing[who])
    for who, row in metrics.items():
        bad = [k for k, v in row.items() if not np.isfinite(v)]
        if bad:
            raise common.StageError(f"non-finite {who} metrics: {bad}")

    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    common.write_json(metrics, args.out)
    for who in metrics:
        shown = {k: v for k, v in metrics[who].items() if k not in ("nfe", "samples_per_second") and "_accuracy_" not in k}
        print(f"evaluate: {who:18s} " + "  ".join(f"{k}={v:.4g}" for k, v in shown.items()))


def cli(argv: list[str] | None = None) -> int:
    p = common.parser(__doc__)
    p.add_argument("--samples", required=True, help="folder from the sample stage")
    p.add_argument("--train", required=True, help="training split (HDF5): the real-data floor")
    p.add_argument("--test", required=True, help="test split (HDF5): the reference set")
    p.add_argument("--features", required=True, help="folder from the features stage")
    p.add_argument("--out", required=True, help="metrics JSON file")
    return common.run(main, p, argv)


if __name__ == "__main__":
    sys.exit(cli())
