"""Stage ``train_teacher``: fit the multi-step matching model on the prepared training split."""

from __future__ import annotations

import hashlib
import sys

from pathlib import Path

from ..checkpoints import Checkpoint, ema_copy_name, file_digest, save_checkpoint
from ..config import in_effect
from ..data import read_split
from ..devices import resolve_device
from ..distributed import launched_rank, session
from ..models import model_spec
from ..code_digest import code_digest
from ..training.bookkeeping import state_key
from ..training.teacher import train_teacher
from . import common
from . import families
from . import runs


def _authors(cfg, params, split) -> tuple[dict, dict, dict]:
    from ..authors import load_authors_teacher

    _check_flow_matching(params, "the authors' teachers")
    spec, state = load_authors_teacher(cfg.import_checkpoint, ema=None if cfg.import_ema == "none" else cfg.import_ema)
    return spec, state, teacher_family_record(params)


def _torchcfm(cfg, params, split) -> tuple[dict, dict, dict]:
    from ..teachers.torchcfm import load_torchcfm_teacher

    _check_flow_matching(params, "torchcfm's teachers")
    spec, state = load_torchcfm_teacher(cfg.import_checkpoint, None if cfg.import_ema == "none" else cfg.import_ema,
                                        cfg.model, tuple(split.sample_shape),
                                        split.num_classes if cfg.model.class_cond else 0)
    return spec, state, teacher_family_record(params)


def _diffusers(cfg, params, split) -> tuple[dict, dict, dict]:
    from ..teachers.diffusers import load_diffusers_teacher

    spec, state, family = load_diffusers_teacher(cfg.import_checkpoint)
    if params.family.name != family["name"]:
        what = "a flow-matching" if family["name"] == "fm" else "a diffusion"
        raise common.StageError(f"{cfg.import_checkpoint} is {what} teacher; set family.name: {family['name']} "
                                f"(it is {params.family.name})")
    return spec, state, family


def _check_flow_matching(params, who: str) -> None:
    if params.family.name != "fm":
        raise common.StageError(f"{who} are flow-matching models; set family.name: fm (it is {params.family.name})")


# train_teacher.import_format -> reader of (spec, state dict, family record); each imports its library lazily.
IMPORTERS = {"authors": _authors, "torchcfm": _torchcfm, "diffusers": _diffusers}


def imported_teacher(cfg, params, split) -> Checkpoint:
    """The teacher checkpoint of a foreign file or folder (no training), as ``import_format`` reads it.

    The copy it imports is both its weights and, unless it is a raw ``net_model``, its EMA copy (the
    one layout of every teacher: the copy a trained teacher samples with is its EMA). A diffusers folder
    holds one network: its weights alone. An imported diffusers teacher's family record is its own
    (diffusion over its scheduler's ᾱ table, or fm), and every later stage takes the family from it.
    """
    spec, state, family = IMPORTERS[cfg.import_format](cfg, params, split)
    classes = int(spec["args"]["num_classes"])
    if tuple(spec["args"]["shape"]) != tuple(split.sample_shape):
        raise common.StageError(f"the imported teacher is for images {spec['args']['shape']}, the data are {list(split.sample_shape)}")
    if cfg.import_format == "diffusers":
        # The folder, not train_teacher.model, says whether the teacher is class-conditional.
        if classes and classes != split.num_classes:
            has = f"{split.num_classes} classes" if split.num_classes else "no labels"
            raise common.StageError(f"the imported teacher is class-conditional with {classes} classes; the data have {has}")
    elif classes != (wanted := split.num_classes if cfg.model.class_cond else 0):
        raise common.StageError(
            f"the imported teacher has {classes} classes, the params ask for {wanted} "
            "(train_teacher.model.class_cond and the data's labels)"
        )
    copy = "" if cfg.import_format == "diffusers" else f", EMA {cfg.import_ema}"
    print(f"train_teacher: imported {cfg.import_checkpoint} ({cfg.import_format}{copy}), no training")
    copies = {} if cfg.import_ema == "none" or cfg.import_format == "diffusers" else {ema_copy_name(cfg.import_ema): state}
    how = {"import_format": cfg.import_format, "import_ema": cfg.import_ema}
    return Checkpoint(kind="teacher", spec=spec, family=family, weights=state, copies=copies,
                      meta={"step": 0, "imported_from": _import_digest(cfg.import_checkpoint), **how},
                      config={"import_checkpoint": cfg.import_checkpoint, **how})


def _import_digest(path: str) -> str:
    """The digest of an imported file, or of every file of an imported folder (names and contents)."""
    path = Path(path)
    if path.is_file():
        return file_digest(path)
    files = sorted(p for p in path.rglob("*") if p.is_file())
    return hashlib.sha256("".join(f"{p.relative_to(path).as_posix()}:{file_digest(p)}\n" for p in files).encode()).hexdigest()


def _import_bytes(path: str) -> int:
    path = Path(path)
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main(args, params) -> None:
    cfg = params.train_teacher
    family = families.teacher_family(params)
    split = read_split(args.data)
    families.check_family_matches_data(family, split)
    if cfg.import_checkpoint:
        if launched_rank() != 0:
            return  # started under a torchrun job anyway: one process imports
        # teacher.pt holds the imported weights twice (weights and EMA): at most twice the file's size.
        common.check_folders({common.output_folder(args.out): 2 * _import_bytes(cfg.import_checkpoint)})
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
