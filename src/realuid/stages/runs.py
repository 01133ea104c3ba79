"""What the training stages (train_teacher, distill, finetune) share: the name of a run's state folder,
its data on the device, the room it needs, and publishing the finished run."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from .common import StageError, atomic_dir, output_folder


# How many copies of a network's weights each file holds, for the free-space estimate (float32 weights;
# Adam keeps two moments per weight). Extras (GAN head, optimizer steps, curves) go into the margin.
TEACHER_FILE_COPIES = 2  # teacher.pt: weights and EMA
TEACHER_CHECKPOINT_COPIES = 4  # weights, EMA, Adam's two moments
DISTILL_EXTRA_CHECKPOINT_COPIES = 5  # beyond the generator file's copies: fake model, two Adams' moments


def weight_bytes(spec: dict) -> int:
    """Bytes of one copy of the weights of the network ``spec`` builds (counted without allocating them)."""
    from ..models import build_model  # the MLP-only stages never import the UNet's dependencies

    with torch.device("meta"):
        net = build_model(spec)
    return sum(t.numel() * t.element_size() for t in (*net.parameters(), *net.buffers()))


def generator_file_copies(cfg) -> int:
    """Weight copies in a generator file: the raw weights, each EMA decay, and the kept best copy."""
    return 1 + len(cfg.ema_decays) + (1 if getattr(cfg, "keep_best", False) else 0)


def teacher_needs(out: str | Path, state_dir: Path, weights: int) -> dict:
    """Expected bytes of train_teacher's output folder and state (one checkpoint), for :func:`working_folders`."""
    return {output_folder(out): TEACHER_FILE_COPIES * weights, state_dir: TEACHER_CHECKPOINT_COPIES * weights}


def distill_needs(out: str | Path, state_dir: Path, teacher_file: str | Path, cfg) -> dict:
    """Expected bytes of a distillation's output folder and state (one checkpoint); the network's size
    is read off the teacher file, which holds its weights twice (:data:`TEACHER_FILE_COPIES`)."""
    weights = Path(teacher_file).stat().st_size // TEACHER_FILE_COPIES
    copies = generator_file_copies(cfg)
    return {output_folder(out): copies * weights, state_dir: (copies + DISTILL_EXTRA_CHECKPOINT_COPIES) * weights}


def check_batch_size(batch_size: int, split, section: str) -> None:
    """A batch larger than the training set is an error before any folder is made."""
    if batch_size > len(split):
        raise StageError(f"{section}.batch_size {batch_size} is larger than the training set ({len(split)} samples)")


def train_data(split, device: torch.device):
    """A data split as :class:`realuid.training.batches.TrainData` on ``device``."""
    from ..training.batches import TrainData

    as_tensor = lambda a, dtype: None if a is None else torch.as_tensor(a, dtype=dtype, device=device)  # noqa: E731
    return TrainData(as_tensor(split.x1, torch.float32), as_tensor(split.y, torch.long), as_tensor(split.x0, torch.float32))


def publish_training(out: str | Path, name: str, result, state_dir: Path) -> None:
    """Write a finished training run (``name``, e.g. generator.pt, from the
    :class:`realuid.checkpoints.Checkpoint` ``result``), its curves and, when the run evaluated itself, its
    evaluation table (``eval.csv``) atomically into ``out``."""
    from ..checkpoints import save_checkpoint

    with atomic_dir(out) as tmp:
        save_checkpoint(result, tmp / name)
        shutil.copyfile(state_dir / "curves.csv", tmp / "curves.csv")
        if (state_dir / "eval.csv").is_file():
            shutil.copyfile(state_dir / "eval.csv", tmp / "eval.csv")
        else:
            write_empty_eval_table(tmp / "eval.csv")


def write_empty_eval_table(path: Path) -> None:
    """The evaluation table of a stage that did not evaluate: a header, no rows. dvc.yaml declares it as a
    plot, and DVC draws an empty table without complaint where a missing file is an error."""
    path.write_text("step,copy\n")
