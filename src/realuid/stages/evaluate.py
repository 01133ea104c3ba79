"""Stage ``evaluate``: quality and speed of the teacher and the one-step student, as a metrics file.

Rows: ``teacher`` (multi-step), ``student`` (one step), every other copy of the generator, and ``real`` —
held-out real data scored the same way, the floor that finite sample sizes put under every distance.
A k-step student's rows of j > 1 steps (``student_nfe<j>``, ``student_raw_nfe<j>``, ...: every file the
``sample`` stage wrote) are scored alike and carry their ``nfe`` and speed.
A ``protocol`` entry says how the numbers were measured (extractor and the sha256 of its weights,
reference split and size, number of generated samples, seeds, FID blocks), so ``dvc metrics diff`` shows
like with like. Images also get ``fid_mean``, ``fid_min`` and ``fid_std`` over ``evaluate.fid_blocks``
disjoint seed blocks of the samples (RealUID's code reports the mean of 3 x 50k, EDM the min of 3).

With ``evaluate.nproc`` > 1 the stage runs under torchrun: image features (50k Inception passes per row
for standard FID) are extracted batch by batch across the processes, as ``sample`` deals its batches, and
joined on every process's device; FID statistics, KID subsets and precision/recall distances are then split
among the processes too (:class:`realuid.metrics.ImageScorer`), so every process ends with the same numbers
(those of one process within float rounding) and rank 0 only writes them: no process waits in a
collective while another works alone.

``evaluate.reference_stats`` (a ``.npz`` of ``mu`` and ``sigma``, as EDM's fid-refs and ADM/clean-fid publish
them) replaces the reference split's statistics for FID (``fid`` and the seed blocks), so numbers compare
with published ones; KID and precision/recall, which need the reference's features, stay against the
reference split, and the protocol says both.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import torch

from ..data import Split, read_split
from ..distributed import Dist, session
from . import common


def _real_floor(split, n: int, seed: int) -> np.ndarray:
    """Rows of ``n`` real samples (a fixed random subset) standing in for a perfect generator.

    They come from the split the samples are *not* compared with, so the floor is an honest one.
    """
    rng = np.random.default_rng(seed)
    return rng.choice(len(split), size=min(n, len(split)), replace=False)


def _joint_metrics(metrics: dict, gen: dict, sources: dict, reference, seed: int) -> None:
    """Paired point data: sliced W2 of the pairs ``(x0, x1)``, so a student that ignores which ``x0`` it
    was given (or maps each to one point where ``p(x1 | x0)`` is spread) scores worse than its marginal says."""
    from ..metrics import sliced_wasserstein2

    pairs = np.concatenate([reference.x0, reference.x1], axis=1)
    for who, x in gen.items():
        joint = np.concatenate([sources[who], x], axis=1)
        metrics[who]["joint_sliced_wasserstein2"] = sliced_wasserstein2(joint, pairs, seed=seed)


def _structure_metrics(metrics: dict, gen: dict, reference: np.ndarray, dataset: str | None) -> None:
    """Points: k-NN precision and recall of every row against the reference (is each sample where data
    is, is all the data covered?), and on gmm8, whose modes are known, the mass each mode receives
    (within 4 standard deviations of its centre)."""
    from ..data import GMM8_NUM_COMPONENTS, GMM8_STD, gmm8_centers
    from ..metrics import knn_precision_recall, mode_metrics

    for who, x in gen.items():
        metrics[who].update(knn_precision_recall(x, reference))
        if dataset == "gmm8":
            weights = np.full(GMM8_NUM_COMPONENTS, 1.0 / GMM8_NUM_COMPONENTS)
            metrics[who].update(mode_metrics(x, gmm8_centers(), weights, 4 * GMM8_STD))


def main(args, params) -> None:
    from ..devices import resolve_device

    stats = _reference_stats(params.evaluate.reference_stats)  # a bad file stops here, before any work
    with session(resolve_device(params.evaluate.device)) as dist:
        # No barrier after: the other processes have their numbers when rank 0 writes them, and torchrun
        # waits for every process anyway; a barrier would hold them in a collective while rank 0 works.
        _evaluate(args, params, dist, stats)


def _reference_stats(path: str) -> dict | None:
    """The published FID statistics of ``evaluate.reference_stats`` (None when empty)."""
    if not path:
        return None
    from ..metrics import read_reference_statistics

    try:
        return read_reference_statistics(path)
    except (OSError, ValueError) as error:
        raise common.StageError(f"evaluate.reference_stats: {error}") from error


def _evaluate(args, params, dist: Dist, reference_stats: dict | None = None) -> None:
    from ..data import read_split

    cfg = params.evaluate
    common.check_folders({common.output_folder(args.out): 0}, dist)  # a metrics file: the margin holds it
    samples = Path(args.samples)
    train, test = read_split(args.train), read_split(args.test)
    # teacher, student (the headline copy) and every copy of the generator (student_raw, student_ema_*)
    names = ["teacher", "student", *sorted(p.stem for p in samples.glob("student_*.h5"))]
    student = read_split(samples / "student.h5")
    timing = json.loads((samples / "timing.json").read_text())
    n = len(student)
    if train.kind == "images" and (n % cfg.fid_blocks or n // cfg.fid_blocks < 2):
        raise common.StageError(f"evaluate.fid_blocks: {n} samples do not split into {cfg.fid_blocks} blocks "
                                "of at least 2; rerun sample")
    reference, other = (train, test) if cfg.reference == "train" else (test, train)
    floor_rows = _real_floor(other, n, cfg.seed)

    if train.kind == "points":
        drawn = {who: student if who == "student" else read_split(samples / f"{who}.h5") for who in names}
        gen = {**{who: split.x1 for who, split in drawn.items()}, "real": other.x1[floor_rows]}
        if not dist.is_main:
            return
        if dist.parallel:
            print("evaluate: point metrics run in one process; evaluate.nproc > 1 only shares image features")
        from ..metrics import point_metrics

        metrics = {who: point_metrics(x, reference.x1, seed=cfg.seed) for who, x in gen.items()}
        _structure_metrics(metrics, gen, reference.x1, train.attrs.get("dataset"))
        if reference.x0 is not None:
            missing = [who for who, split in drawn.items() if split.x0 is None]
            if missing:
                raise common.StageError(f"paired data, but the samples of {missing} carry no inputs x0: rerun sample")
            sources = {who: split.x0 for who, split in drawn.items()}
            _joint_metrics(metrics, gen, {**sources, "real": other.x0[floor_rows]}, reference, cfg.seed)
    else:
        # One row's images at a time: at paper scale each is 50k-150k images (0.6-1.8 GB for CIFAR-10).
        rows = {who: (lambda who=who: student if who == "student" else read_split(samples / f"{who}.h5"))
                for who in names}
        rows["real"] = lambda: Split(other.x1[floor_rows])
        metrics = _image_metrics(rows, reference, params, Path(args.features), dist,
                                 same=_headline_rows(names, samples, timing), reference_stats=reference_stats)
        if not dist.is_main:
            return
    for who in metrics:  # NFE and speed: the teacher, the student and every row of more than one step
        metrics[who].update(timing.get(who, {}))
    for who, row in metrics.items():
        bad = [k for k, v in row.items() if not np.isfinite(v)]
        if bad:
            raise common.StageError(f"non-finite {who} metrics: {bad}")

    protocol = _protocol(params, train.kind, student, reference, len(floor_rows), Path(args.features))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    common.write_json({**metrics, "protocol": protocol}, args.out)
    for who in metrics:
        shown = {k: v for k, v in metrics[who].items() if k not in ("nfe", "samples_per_second") and "_accuracy_" not in k
                 and not k.startswith("class_mass_")}
        print(f"evaluate: {who:18s} " + "  ".join(f"{k}={v:.4g}" for k, v in shown.items()))


def _plain(value):
    """An HDF5 attribute (numpy scalar) as a JSON value; sample i used seed sample_seed + i."""
    return value.item() if hasattr(value, "item") else value


def _protocol(params, kind: str, student, reference, floor_size: int, features_dir: Path) -> dict:
    """How the metrics were measured: what a reader needs to compare two metrics files."""
    cfg = params.evaluate
    n = len(student)
    protocol = {"reference_split": cfg.reference, "reference_size": len(reference), "n_generated": n,
                "sample_seed": _plain(student.attrs.get("seed")), "evaluate_seed": cfg.seed,
                "real_floor_split": "train" if cfg.reference == "test" else "test", "real_floor_size": floor_size}
    if kind == "points":
        return {**protocol, "extractor": "none (raw coordinates)"}
    from ..checkpoints import file_digest
    from .features import reference_weights

    weights = reference_weights(params, features_dir)
    protocol = {**protocol, "extractor": cfg.feature_extractor, "extractor_weights_sha256": file_digest(weights),
                "kid_subset_size": cfg.kid_subset_size, "fid_blocks": cfg.fid_blocks,
                "fid_block_size": n // cfg.fid_blocks}
    if cfg.reference_stats:  # absent otherwise, so the default's metrics file keeps its keys
        protocol.update(fid_reference="reference_stats", reference_stats=cfg.reference_stats,
                        reference_stats_sha256=file_digest(cfg.reference_stats),
                        kid_precision_recall_reference=cfg.reference)
    return protocol


def _headline_rows(names: list[str], samples: Path, timing: dict) -> dict[str, str]:
    """``{"student": <its copy>, "student_nfe2": <its copy>_nfe2, ...}`` for each headline row that holds exactly
    the samples of the copy it headlines (as the sample stage writes them); such a row needs no extraction
    or FID of its own.

    Compared by the content hash each file records (the copy's arrays are checked against it when the
    copy's row is read), so the copy's images need not be in memory beside the student's.
    """
    copy = timing.get("student_copy")
    if copy in (None, "student"):
        return {}
    same = {}
    for who in names:
        if who == "student" or re.fullmatch(r"student_nfe\d+", who):
            mine = samples / f"{copy}{who.removeprefix('student')}.h5"
            if mine.is_file() and _recorded_hash(mine) == _recorded_hash(samples / f"{who}.h5"):
                same[who] = mine.stem
    return same


def _recorded_hash(path: Path) -> str | None:
    """The content hash an HDF5 split file records (its arrays unread)."""
    import h5py

    with h5py.File(path, "r") as f:
        recorded = f.attrs.get("content_hash")
    return recorded.decode() if isinstance(recorded, bytes) else recorded


def _image_metrics(rows: dict, reference, params, features_dir: Path, dist: Dist,
                   same: dict[str, str] | None = None, reference_stats: dict | None = None) -> dict:
    """FID, KID and precision/recall of every row, scored by all processes together (every process returns
    the same numbers): the extractor and the reference (features and FID statistics) are prepared once.
    ``rows`` maps each row to a function reading its split: one row's images and features are held at a
    time besides the reference's.

    ``same`` maps a row to another row with identical samples (the headline ``student`` and its copy):
    it gets that row's numbers, as computing them again would (at paper scale: 150k Inception passes
    and K + 1 FIDs saved). ``reference_stats`` ({"mu", "sigma"}) replace the reference's own for FID.

    The reference features come from the features stage's cache (``reference_cache``), which is read,
    never written (it is that stage's output): a miss (other images, other weights) recomputes them here.
    Class-conditional pipelines also get the classifier's metrics (:class:`_ClassMetrics`).
    """
    from ..metrics import FeatureExtractor, ImageScorer, reference_features_everywhere
    from .features import reference_weights

    cfg = params.evaluate
    extract = FeatureExtractor(cfg.feature_extractor, reference_weights(params, features_dir), device=dist.device)
    real = reference_features_everywhere(torch.as_tensor(reference.x1), extract, batch_size=cfg.batch_size,
                                         cache_root=features_dir / "reference_cache", dist=dist)
    scorer = ImageScorer(real, extractor=cfg.feature_extractor, kid_subset_size=cfg.kid_subset_size, seed=cfg.seed,
                         reference_stats=reference_stats, dist=dist)
    classes = _ClassMetrics.build(params, features_dir, reference.x1, dist.device)
    same = same or {}
    metrics = {}
    for who, read in rows.items():
        if who in same:
            continue
        split = read()
        try:
            features = extract.everywhere(torch.as_tensor(split.x1), batch_size=cfg.batch_size, dist=dist)
            metrics[who] = scorer.score(features)
            if who != "real":  # the floor's size follows the other split, not the seed blocks
                metrics[who].update(scorer.fid_blocks(features, cfg.fid_blocks))
        except ValueError as error:  # e.g. published statistics of another extractor's dimension
            raise common.StageError(f"{who}: {error}") from error
        del features
        if classes is not None:  # every process: the pipeline's small classifier, no collective
            metrics[who].update(classes.row(split, labelled=who != "real"))
    metrics.update({who: dict(metrics[copy]) for who, copy in same.items()})
    return {who: metrics[who] for who in rows}  # the rows in the order of rows, as before


class _ClassMetrics:
    """The pipeline's classifier on each row (``evaluate.feature_extractor: realuid-features`` trained for
    classification): ``class_accuracy`` (class-conditional samples: does it see the class each sample was
    asked for?) and ``class_tv`` with ``class_mass_<c>`` (does the model draw the classes as often as the
    reference does? the fraction labelled c, and the total variation distance of those fractions to the
    reference's own, 0 for the same histogram)."""

    def __init__(self, net, target: np.ndarray):
        self.net, self.target = net, target

    @classmethod
    def build(cls, params, features_dir: Path, reference: np.ndarray, device: torch.device) -> "_ClassMetrics | None":
        if params.evaluate.feature_extractor != "realuid-features":
            return None
        from ..features import class_masses, load_feature_net

        net = load_feature_net(features_dir / "extractor.pt").to(device)
        if net.task != "classification":
            return None
        return cls(net, class_masses(net, torch.as_tensor(reference)))

    def row(self, split, *, labelled: bool) -> dict[str, float]:
        from ..features import class_masses, classifier_accuracy

        images = torch.as_tensor(split.x1).clamp(-1, 1)
        out = {}
        if labelled and split.y is not None:
            acc = classifier_accuracy(self.net, images, torch.as_tensor(split.y))
            out["class_accuracy"] = acc["accuracy"]
            out.update({f"class_accuracy_{c}": a for c, a in acc["per_class_accuracy"].items()})
        masses = class_masses(self.net, images)
        out["class_tv"] = float(0.5 * np.abs(masses - self.target).sum())
        out.update({f"class_mass_{c}": float(m) for c, m in enumerate(masses)})
        return out


def cli(argv: list[str] | None = None) -> int:
    p = common.parser(__doc__)
    p.add_argument("--samples", required=True, help="folder from the sample stage")
    p.add_argument("--train", required=True, help="training split (HDF5): the real-data floor")
    p.add_argument("--test", required=True, help="test split (HDF5): the reference set")
    p.add_argument("--features", required=True, help="folder from the features stage")
    p.add_argument("--out", required=True, help="metrics JSON file")
    return common.run(main, p, argv, module="realuid.stages.evaluate", processes=lambda params: params.evaluate.nproc)


if __name__ == "__main__":
    sys.exit(cli())
