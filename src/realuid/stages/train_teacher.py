"""Stage ``train_teacher``: fit the multi-step matching model on the prepared training split."""

from __future__ import annotations

import sys

from pathlib import Path

from ..checkpoints import Checkpoint, ema_copy_name, file_digest, save_checkpoint
from ..config import in_effect
from ..data import read_split
from ..devices import resolve_device
from ..distributed import launched_rank, session
from ..models import model_spec
from ..sources import code_digest
from ..training.bookkeeping import state_key
from ..training.teacher import train_teacher
from . import common
from . import families
from . import runs


def imported_teacher(cfg, params, split) -> Checkpoint:
    """The teacher checkpoint of one of the authors' released files (no training).

    The copy it imports is both its weights and, unless it is their raw ``net_model``, its EMA copy (the
    one layout of every teacher: the copy a trained teacher samples with is its EMA).
    """
    from ..authors import load_authors_teacher

    if params.family.name != "fm":
        raise common.StageError(f"the authors' teachers are flow-matching models; family.name is {params.family.name!r}")
    classes = split.num_classes if cfg.model.class_cond else 0
    spec, state = load_authors_teacher(cfg.import_checkpoint, ema=None if cfg.import_ema == "none" else cfg.import_ema)
    if tuple(spec["args"]["shape"]) != tuple(split.sample_shape):
        raise common.StageError(f"the imported teacher is for images {spec['args']['shape']}, the data are {list(split.sample_shape)}")
    if spec["args"]["num_classes"] != classes:
        raise common.StageError(
            f"the imported teacher has {spec['args']['num_classes']} classes, the params ask for {classes} "
            "(train_teacher.model.class_cond and the data's labels)"
        )
    print(f"train_teacher: imported {cfg.import_checkpoint} (EMA {cfg.import_ema}), no training")
    copies = {} if cfg.import_ema == "none" else {ema_copy_name(cfg.import_ema): state}
    return Checkpoint(kind="teacher", spec=spec, family=teacher_family_record(params), weights=state, copies=copies,
                      meta={"step": 0, "imported_from": file_digest(cfg.import_checkpoint), "import_ema": cfg.import_ema},
                      config={"import_checkpoint": cfg.import_checkpoint, "import_ema": cfg.import_ema})


def main(args, params) -> None:
    cfg = params.train_teacher
    family = families.teacher_family(params)
    split = read_split(args.data)
    families.check_family_matches_data(family, split)
    if cfg.import_checkpoint:
        if launched_rank() != 0:
            return  # started under a torchrun job anyway: one process imports
        # teacher.pt holds the imported weights twice (weights and EMA): at most twice the file's size.
        common.check_folders({common.output_folder(args.out): 2 * Path(cfg.import_checkpoint).stat().st_size})
        result = imported_teacher(cfg, params, split)
        with common.atomic_dir(args.out) as tmp:
            save_checkpoint(result, tmp / "teacher.pt")
            (tmp / "curves.csv").write_text("step,loss,grad_norm,lr\n")
        return
    spec = model_spec(cfg.model, split.sample_shape, split.num_classes)
    runs.check_batch_size(cfg.batch_size, split, "train_teacher")

    # The state folder is keyed by everything the result depends on (the code the stage runs included),
    # so a changed config or code starts afresh while the same command after an interruption resumes
    # (with any number of processes).
    key = state_key("train_teacher", teacher_family_record(params), in_effect(cfg), spec,
                    file_digest(args.data), code_digest("realuid.stages.train_teacher"))
    state_dir = Path(args.state) / key
    needs = runs.teacher_needs(args.out, state_dir, runs.weight_bytes(spec))
    with session(resolve_device(cfg.device)) as dist, common.working_folders(dist, needs, state_dir):
        if dist.is_main:
            print(f"train_teacher: {params.family.name} on {split.sample_shape} x {len(split)}, {dist.device}"
                  f"{f' x {dist.world_size} processes' if dist.parallel else ''}, state {state_dir}")
        result = train_teacher(family, runs.train_data(split, dist.device), spec, cfg, state_dir, dist=dist)
        result.family = teacher_family_record(params)
        if dist.is_main:
            runs.publish_training(args.out, "teacher.pt", result, state_dir)
        dist.barrier()  # every process ends once the output is there


def teacher_family_record(params) -> dict:
    """The teacher's family and the options it uses (another family's keys and the generator's are not)."""
    return {"name": params.family.name, "options": params.family.options()}


def processes(params) -> int:
    """Processes this stage runs as: ``train_teacher.nproc``, one when a teacher is imported."""
    cfg = params.train_teacher
    return 1 if cfg.import_checkpoint else cfg.nproc


def cli(argv: list[str] | None = None) -> int:
    p = common.parser(__doc__)
    p.add_argument("--data", required=True, help="training split (HDF5) from prepare")
    p.add_argument("--out", required=True, help="output folder: teacher.pt, curves.csv")
    p.add_argument("--state", default="state/train_teacher", help="resumable state (not a pipeline output)")
    return common.run(main, p, argv, module="realuid.stages.train_teacher", processes=processes)


if __name__ == "__main__":
    sys.exit(cli())
