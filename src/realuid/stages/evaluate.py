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

from ..data import Split, read_split
from ..distributed import Dist, session
from ..scoring import image_scores, point_scores, real_floor_rows, split_roles
from . import common


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
    reference, other = split_roles(train, test, cfg.reference)
    floor_rows = real_floor_rows(other, n, cfg.seed)

    if train.kind == "points":
        drawn = {who: student if who == "student" else read_split(samples / f"{who}.h5") for who in names}
        gen = {**{who: split.x1 for who, split in drawn.items()}, "real": other.x1[floor_rows]}
        if not dist.is_main:
            return
        if dist.parallel:
            print("evaluate: point metrics run in one process; evaluate.nproc > 1 only shares image features")
        sources = None
        if reference.x0 is not None:  # paired: each sample is scored with the input it was drawn from
            missing = [who for who, split in drawn.items() if split.x0 is None]
            if missing:
                raise common.StageError(f"paired data, but the samples of {missing} carry no inputs x0: rerun sample")
            sources = {**{who: split.x0 for who, split in drawn.items()}, "real": other.x0[floor_rows]}
        metrics = point_scores(gen, reference, seed=cfg.seed, dataset=train.attrs.get("dataset"), sources=sources)
    else:
        # One row's images at a time: at paper scale each is 50k-150k images (0.6-1.8 GB for CIFAR-10).
        rows = {who: (lambda who=who: student if who == "student" else read_split(samples / f"{who}.h5"))
                for who in names}
        rows["real"] = lambda: Split(other.x1[floor_rows])
        from .features import reference_weights

        metrics = image_scores(rows, reference.x1, cfg, reference_weights(params, Path(args.features)),
                               cache_root=Path(args.features) / "reference_cache", dist=dist,
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
