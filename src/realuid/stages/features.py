"""Stage ``features``: train the offline feature extractor that image metrics use by default.

Standard FID needs Inception weights from the internet; this extractor is trained here, on the prepared
training split (class labels when there are any, rotation prediction otherwise), so FID, KID and
precision/recall work offline. Point data needs none: its metrics use raw coordinates.
"""

from __future__ import annotations

import sys

from pathlib import Path

import torch

from ..data import read_split
from ..devices import resolve_device
from . import common


def reference_weights(params, features_dir: Path) -> str:
    """The weights file the image metrics use: the extractor trained here, or the user's Inception file."""
    extractor, user_weights = params.evaluate.feature_extractor, params.evaluate.feature_extractor_weights_path
    if extractor == "realuid-features":
        return str(features_dir / "extractor.pt")
    if not user_weights or not Path(user_weights).is_file():
        raise common.StageError(
            "evaluate.feature_extractor_weights_path must name the Inception weights file you supply "
            f"(got {user_weights!r}); nothing is downloaded"
        )
    return user_weights


def main(args, params) -> None:
    cfg = params.features
    device = resolve_device(cfg.device)  # a device that is not there fails here, before any work
    train, test = read_split(args.data), read_split(args.test)
    if train.kind == "images":
        reference_weights(params, Path(args.out))  # a missing Inception file fails here, before any training
    # Images: the extractor and the reference features (no larger than the reference images); points: info.json.
    common.check_folders({common.output_folder(args.out): common.split_bytes(train) if train.kind == "images" else 0})
    with common.atomic_dir(args.out) as tmp:
        if train.kind == "points":
            info = {"kind": "points", "extractor": None, "note": "point metrics use raw coordinates"}
            print("features: point data, no extractor needed")
        else:
            from ..features import classifier_accuracy, save_feature_net, train_feature_net

            torch.set_num_threads(torch.get_num_threads())
            net = train_feature_net(torch.as_tensor(train.x1), None if train.y is None else torch.as_tensor(train.y),
                                    steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr, seed=cfg.seed,
                                    device=device)
            info = {"kind": "images", "extractor": "extractor.pt", "labels": train.y is not None}
            if test.y is not None and train.y is not None:
                acc = classifier_accuracy(net, torch.as_tensor(test.x1), torch.as_tensor(test.y))
                info["test_accuracy"] = acc
                print(f"features: classifier test accuracy {acc['accuracy']:.3f}")
            save_feature_net(tmp / "extractor.pt", net, {"source": train.attrs.get("source"),
                                                         "content_hash": train.attrs.get("content_hash")})
            # The reference statistics are computed once here, not in every evaluate run.
            from ..metrics import cache_reference_features

            reference = train if params.evaluate.reference == "train" else test
            weights = reference_weights(params, tmp)
            cache_reference_features(torch.as_tensor(reference.x1), extractor=params.evaluate.feature_extractor,
                                     extractor_weights_path=weights, cache_root=tmp / "reference_cache",
                                     batch_size=params.evaluate.batch_size, device=str(device))
            info["reference"] = {"split": params.evaluate.reference, "extractor": params.evaluate.feature_extractor}
        common.write_json(info, tmp / "info.json")


def cli(argv: list[str] | None = None) -> int:
    p = common.parser(__doc__)
    p.add_argument("--data", required=True, help="training split (HDF5)")
    p.add_argument("--test", required=True, help="test split (HDF5), for the reported accuracy")
    p.add_argument("--out", required=True, help="output folder: info.json (+ extractor.pt for images)")
    return common.run(main, p, argv)


if __name__ == "__main__":
    sys.exit(cli())
