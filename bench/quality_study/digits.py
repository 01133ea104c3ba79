"""The 8x8 digits part: a small UNet flow-matching teacher, its data-free and RealUID students, offline FID.

Jobs (each a plain function the scheduler runs in a worker process):
``features`` trains the pipeline's offline feature extractor on the training digits; ``teacher`` trains
the UNet once (seed 0; its budget is the limit of this part); then per seed, ``teacher_eval`` samples
the teacher at NFE 99 and 1 and scores a real floor, and ``student`` distils one student and scores it.
Scores are the pipeline's FID / KID / precision / recall against the held-out test digits.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from realuid.matching import make_family
from realuid.api import load_generator, load_teacher
from realuid.models import build_model, model_spec
from realuid.sampling import OneStepGenerator, sample_teacher
from realuid.training.batches import TrainData
from realuid.training.distillation import distill
from realuid.training.teacher import train_teacher

from . import tasks
from .settings import StudySettings

SHAPE = (1, 8, 8)
N_GENERATED = 1000  # images per evaluated set (the reference is the whole test split)


def _fresh(work_dir: Path) -> Path:
    shutil.rmtree(work_dir, ignore_errors=True)
    work_dir.mkdir(parents=True)
    return work_dir


def _splits(settings: StudySettings):
    return tasks.digits_split(settings.digits.test_fraction, seed=0)


def train_features(settings: StudySettings, work_dir: Path) -> dict:
    """Train the feature extractor on the training digits (classification); returns its path and accuracy."""
    from realuid.features import classifier_accuracy, save_feature_net, train_feature_net

    start = time.perf_counter()
    train, test = _splits(settings)
    cfg = settings.digits
    net = train_feature_net(torch.as_tensor(train.x1), torch.as_tensor(train.y), steps=cfg.feature_steps,
                            batch_size=cfg.feature_batch_size, seed=0, progress=False)
    path = _fresh(work_dir) / "extractor.pt"
    save_feature_net(path, net, {"source": "digits"})
    accuracy = classifier_accuracy(net, torch.as_tensor(test.x1), torch.as_tensor(test.y))["accuracy"]
    return {"path": str(path), "test_accuracy": accuracy, "n_train": len(train), "n_test": len(test),
            "seconds": time.perf_counter() - start}


def _spec(settings: StudySettings) -> dict:
    return model_spec(settings.digits.teacher.model, SHAPE, 0)


def train_digits_teacher(settings: StudySettings, work_dir: Path) -> dict:
    """Train the UNet fm teacher once; returns its spec, checkpoint, size and time."""
    start = time.perf_counter()
    train, _ = _splits(settings)
    family, spec = make_family("fm"), _spec(settings)
    result = train_teacher(family, TrainData(torch.as_tensor(train.x1)), spec, settings.digits.teacher,
                           _fresh(work_dir), progress=False)
    parameters = sum(p.numel() for p in build_model(spec).parameters())
    return {"spec": spec, "checkpoint": result, "parameters": parameters,
            "seconds": time.perf_counter() - start}


def _noise(seed: int) -> torch.Tensor:
    return torch.randn(N_GENERATED, *SHAPE, generator=torch.Generator().manual_seed(20_000 + seed))


def score(images: torch.Tensor, reference: torch.Tensor, features_path: str, seed: int) -> dict:
    """FID, KID, precision and recall of images [N, 1, 8, 8] against the test digits, in [-1, 1]."""
    from realuid.metrics import image_metrics

    if not torch.isfinite(images).all():
        return {k: float("nan") for k in ("fid", "kid_mean", "kid_std", "precision", "recall", "f_score")}
    # Generated images are clipped to the data range, as a PNG writer would do (image_metrics quantises).
    return image_metrics(images.clamp(-1, 1), reference, extractor_weights_path=features_path,
                         kid_subset_size=min(len(reference), len(images)) // 2, seed=seed, device="cpu")


@torch.no_grad()
def evaluate_teacher(seed: int, teacher: dict, features: dict, settings: StudySettings) -> dict:
    """Teacher at NFE 99 and NFE 1 and a real floor (training digits) for one seed."""
    start = time.perf_counter()
    train, test = _splits(settings)
    family, net = make_family("fm"), load_teacher(teacher["checkpoint"]).net
    z, reference = _noise(seed), torch.as_tensor(test.x1)
    pick = np.random.default_rng([seed, 7]).choice(len(train), size=min(N_GENERATED, len(train)), replace=False)
    images = {
        "floor": torch.as_tensor(train.x1[np.sort(pick)]),
        "teacher_nfe99": sample_teacher(family, net, z, nfe=settings.digits.teacher_nfe, method="euler"),
        "teacher_nfe1": OneStepGenerator(family, net)(z),
    }
    out = {name: score(x, reference, features["path"], seed) for name, x in images.items()}
    grids = {name: x[: settings.digits.grid_images].numpy() for name, x in images.items()}
    grids["test"] = test.x1[: settings.digits.grid_images]
    return {"seed": seed, "metrics": out, "grids": grids if seed == settings.seeds[0] else {},
            "seconds": time.perf_counter() - start}


def run_digits_student(student: str, seed: int, teacher: dict, features: dict, settings: StudySettings,
                       work_dir: Path) -> dict:
    """Distil one student (``data_free`` or ``realuid``) from the shared teacher and score its EMA copy."""
    start = time.perf_counter()
    train, test = _splits(settings)
    family, spec = make_family("fm"), teacher["spec"]
    alpha, beta = (1.0, 1.0) if student == "data_free" else (settings.alpha, settings.beta)
    cfg = dataclasses.replace(settings.digits.distill, seed=seed)
    result = distill(family, TrainData(torch.as_tensor(train.x1)), load_teacher(teacher["checkpoint"]).net, spec, cfg,
                     _fresh(work_dir), alpha=alpha, beta=beta, progress=False)
    with torch.no_grad():
        images = load_generator(result, ema=settings.digits.student_ema)(_noise(seed))
    metrics = score(images, torch.as_tensor(test.x1), features["path"], seed)
    grid = images[: settings.digits.grid_images].numpy() if seed == settings.seeds[0] else None
    return {"student": student, "seed": seed, "metrics": metrics, "grid": grid,
            "seconds": time.perf_counter() - start}
