"""Distillation from Python: :func:`distill` runs the pipeline's RealUID loop on a teacher and data in memory.

The loop is the ``distill`` stage's own (:func:`realuid.training.distillation.distill`): the same losses, optimizers, EMA
copies, exact resume and optional in-training evaluation; only the inputs come from the caller instead of
``params.yaml`` and the pipeline's files.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
from pathlib import Path

import torch
from torch import Tensor, nn

from .api import Generator, Teacher
from .checkpoints import family_record, save_checkpoint, tensors_digest
from .config import DistillConfig, SpeedConfig, build, in_effect, to_dict, with_changes
from .matching import Family, make_family
from .devices import resolve_device
from .training.batches import TrainData
from .training.distillation import distill as realuid_loop

__all__ = ["DEFAULT_SETTINGS", "distill", "distill_settings"]

# The distill section of the repository's params.yaml (tested), except the in-training evaluation, which is
# off: from Python it needs a reference the caller chooses (points: a subset of `data`, built here).
DEFAULT_SETTINGS = {
    "steps": 1000, "fake_updates_per_generator_update": 1, "batch_size": 64,
    "generator_optim": {"lr": 5e-4, "betas": [0.0, 0.999], "warmup_steps": 20, "grad_clip": 1.0, "decay": "cosine"},
    "fake_optim": {"lr": 5e-4, "betas": [0.0, 0.999], "warmup_steps": 20, "grad_clip": 1.0, "decay": "cosine"},
    "fake_init": "teacher", "ema_decays": [0.99, 0.999], "checkpoint_every_steps": 100, "log_every_steps": 20,
    "seed": 0, "device": "auto", "precision": "fp32", "nproc": 1,
    "eval_every_steps": 0, "eval_samples": 1000, "keep_best": False,
    "generator_steps": 1, "generator_times": [], "guidance_scale": 1.0, "guide_fake": False,
    "gan": {"enabled": False, "gen_coef": 5.0, "disc_coef": 15.0},
    "speed": to_dict(SpeedConfig()),
}
RUN_RECORD = "run.json"  # in `out`: what the run there was started with, so a call never resumes another run


def distill_settings(**overrides) -> DistillConfig:
    """The :class:`realuid.config.DistillConfig` of :data:`DEFAULT_SETTINGS` with ``overrides`` (its keys).

    A nested section (``generator_optim``, ``fake_optim``, ``gan``, ``speed``) takes a dict of the keys it
    changes. The result passes the pipeline's own checks: an unknown key or a value out of range is one
    :class:`realuid.config.ConfigError` naming it (``distill.<key>``).
    """
    changes = {k: to_dict(v) if dataclasses.is_dataclass(v) else v for k, v in overrides.items()}
    return build(DistillConfig, with_changes(DEFAULT_SETTINGS, changes), "distill.")


def distill(teacher: nn.Module, data: Tensor, *, alpha: float, beta: float, out: str | os.PathLike,
            family: str | Family | None = None, labels: Tensor | None = None, x0: Tensor | None = None,
            evaluator=None, progress: bool = True, stop_after: int | None = None, **settings) -> Generator:
    """Distil ``teacher`` into a one-step generator with RealUID on real ``data``; returns the generator.

    Example (a module of one's own on 2-D points; ``realuid.load_teacher(...)`` gives a teacher as well)::

        import torch, realuid
        from realuid.analytic import gmm8

        class Velocity(torch.nn.Module):        # f(t [B], x_t [B, 2], y) -> [B, 2]: a flow-matching velocity
            def __init__(self):
                super().__init__()
                self.mlp = torch.nn.Sequential(torch.nn.Linear(3, 64), torch.nn.SiLU(), torch.nn.Linear(64, 2))
            def forward(self, t, x, y=None):
                return self.mlp(torch.cat([x, t[:, None]], dim=1))

        teacher = Velocity()                    # trained by your own code
        data = gmm8().sample(2048)              # [N, 2] real samples
        generator = realuid.distill(teacher, data, family="fm", alpha=0.9, beta=0.95, steps=100,
                                    batch_size=256, out="runs/gmm8")
        x = generator.sample(1000, seed=0)      # [1000, 2], one network call each
        ema = realuid.load_generator("runs/gmm8/generator.pt", ema=0.999, net=Velocity())

    ``teacher``: a :class:`realuid.Teacher` (as :func:`realuid.load_teacher` returns; its family is the
    default), or any ``nn.Module`` computing ``f(t [B], x_t [B, ...], y [B] or None)`` in realuid's convention
    for ``family`` (time in [0, 1], data at t = 1; fm: the velocity ``x1 - x0``). A module in another
    library's convention is wrapped first (see :mod:`realuid.teachers`). The teacher is frozen and moved to
    the device; the generator and the fake model start as copies of it.

    ``data``: ``[N, ...]`` real samples (in the teacher's units); ``labels``: ``[N]`` class labels, needed
    exactly when the teacher is class-conditional (a module of one's own is conditioned when they are given);
    ``x0``: ``[N, ...]`` the corrupted partners of a paired family (bridges). ``family``: a family name
    (``"fm"``, ``"diffusion"``, ``"si"``, ``"bridge"``) or a :mod:`realuid.matching` family, which also places
    the generator (e.g. ``make_family("diffusion", generator_sigma=2.5)``). ``alpha``, ``beta``: RealUID's
    coefficients in (0, 1]. ``settings``: keys of the ``distill`` section (:func:`distill_settings`, e.g.
    ``steps``, ``batch_size``, ``generator_optim={"lr": 1e-4}``, ``ema_decays``, ``device``); the rest keep the
    library's defaults (:data:`DEFAULT_SETTINGS`). ``eval_every_steps`` > 0 scores every generator copy during
    training (points: against ``eval_samples`` rows of ``data``; images: pass ``evaluator``, e.g. one of
    :mod:`realuid.in_training_eval`), into ``out/eval.csv``.

    ``out`` (a folder) holds the run: ``checkpoint.pt`` (the resumable state: call again with the same
    arguments after an interruption and it goes on, ending with the same weights; ``stop_after`` ends a call
    early at that step), ``curves.csv``, ``run.json`` (what the run was started with; other settings,
    teacher or data are refused) and, at the end, ``generator.pt``: the raw weights and one copy per EMA
    decay. For a :class:`realuid.Teacher`, ``realuid.load_generator(out / "generator.pt", ema=0.999)``
    rebuilds the generator anywhere; for a module of one's own the file has no model spec, so pass a module
    built like the teacher: ``load_generator(..., net=MyModule())``.

    Returns the :class:`realuid.api.Generator` with the raw weights (``.sample(n, seed=..., noise=...)``).
    Bad input is one ``ValueError`` before any work, nothing written.
    """
    cfg = distill_settings(**settings)
    if cfg.nproc != 1:
        raise ValueError("nproc: realuid.distill runs in one process; use the pipeline (torchrun) for several GPUs")
    for name, value in (("alpha", alpha), ("beta", beta)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
            raise ValueError(f"{name} must be a number in (0, 1], got {value!r}")
    net, spec, family = _teacher_parts(teacher, family)
    if spec is None and cfg.fake_init != "teacher":
        raise ValueError("fake_init: a teacher module of one's own has no spec to build a random fake model from; "
                         "its fake model starts as its copy ('teacher')")
    data, labels, x0 = _checked_data(data, labels, x0, family, teacher, cfg)
    num_classes = teacher.num_classes if spec is not None else (0 if labels is None else int(labels.max()) + 1)
    device = resolve_device(cfg.device)
    evaluator = _evaluator(evaluator, cfg, family, data, labels, x0, num_classes, device)
    out = Path(out)
    _claim(out, {"alpha": alpha, "beta": beta, "family": family_record(family), "settings": in_effect(cfg),
                 "spec": spec, "teacher": tensors_digest(net.state_dict()),
                 "data": tensors_digest({k: v for k, v in (("x1", data), ("y", labels), ("x0", x0)) if v is not None}),
                 "evaluator": None if evaluator is None else getattr(evaluator, "describe", type(evaluator).__name__)})

    move = lambda a, dtype: None if a is None else a.to(device, dtype)  # noqa: E731
    train = TrainData(move(data, torch.float32), move(labels, torch.long), move(x0, torch.float32))
    result = realuid_loop(family, train, net, spec, cfg, out, alpha=float(alpha), beta=float(beta), progress=progress,
                          stop_after=stop_after, evaluator=evaluator)
    if spec is None:  # what a sampler needs that a spec would say
        result.meta.update(data_shape=list(data.shape[1:]), num_classes=num_classes)
    save_checkpoint(result, out / "generator.pt")
    return Generator.from_checkpoint(result, None, device, copy.deepcopy(net) if spec is None else None)


def _teacher_parts(teacher, family) -> tuple[nn.Module, dict | None, Family]:
    """(network, model spec or None, family) of a :class:`realuid.Teacher` or a module of one's own."""
    if isinstance(family, str):
        family = make_family(family)
    elif family is not None and not isinstance(family, Family):
        raise ValueError(f"family must be a family name or a realuid.matching family, got {type(family).__name__}")
    if isinstance(teacher, Teacher):
        # A family given for a Teacher may place the generator (generator_* options), not change the teacher's field.
        field = lambda f: (f.name, {k: v for k, v in f.options().items() if not k.startswith("generator_")})  # noqa: E731
        if family is not None and field(family) != field(teacher.family):
            raise ValueError(f"family {family.to_dict()} was given for a teacher of family {teacher.family.to_dict()}; "
                             "only the generator_* options may differ")
        return teacher.net, teacher.spec, family or teacher.family
    if not isinstance(teacher, nn.Module):
        raise ValueError(f"teacher must be a realuid.Teacher or an nn.Module f(t, x_t, y), got {type(teacher).__name__}")
    if family is None:
        raise ValueError("a teacher module of one's own needs family= (e.g. 'fm'): the convention its output follows")
    if next(teacher.parameters(), None) is None:
        raise ValueError("the teacher has no parameters: the generator and the fake model start as its copies, "
                         "so it must be a trainable network")
    return teacher, None, family


def _checked_data(data, labels, x0, family: Family, teacher, cfg) -> tuple[Tensor, Tensor | None, Tensor | None]:
    if not isinstance(data, Tensor) or not data.is_floating_point() or data.dim() < 2:
        raise ValueError(f"data must be a floating-point tensor [N, ...], got {type(data).__name__}"
                         f"{list(data.shape) if isinstance(data, Tensor) else ''}")
    if len(data) < cfg.batch_size:
        raise ValueError(f"batch_size {cfg.batch_size} is larger than the data ({len(data)} samples)")
    if isinstance(teacher, Teacher):
        if tuple(data.shape[1:]) != teacher.shape:
            raise ValueError(f"the teacher takes samples of shape {list(teacher.shape)}, data has {list(data.shape[1:])}")
        if teacher.num_classes and labels is None:
            raise ValueError(f"the teacher is class-conditional ({teacher.num_classes} classes): pass labels [N]")
        if not teacher.num_classes and labels is not None:
            raise ValueError("the teacher is unconditional: pass labels=None")
    if labels is not None:
        labels = torch.as_tensor(labels)
        if labels.shape != (len(data),) or labels.is_floating_point() or labels.dtype == torch.bool:
            raise ValueError(f"labels must be [{len(data)}] integers, got {labels.dtype} {list(labels.shape)}")
        top = teacher.num_classes if isinstance(teacher, Teacher) else None
        if labels.min() < 0 or (top is not None and labels.max() >= top):
            raise ValueError(f"labels must lie in [0, {top or 'num_classes'}), "
                             f"got [{int(labels.min())}, {int(labels.max())}]")
    if family.paired != (x0 is not None):
        raise ValueError(f"the {family.name} family is paired: pass x0, the corrupted partners [N, ...]" if family.paired
                         else f"the {family.name} family draws its own noise: x0 is only for paired families")
    if x0 is not None and (not isinstance(x0, Tensor) or x0.shape != data.shape):
        raise ValueError(f"x0 must be a tensor of data's shape {list(data.shape)}")
    return data, labels, x0


def _evaluator(evaluator, cfg, family, data: Tensor, labels, x0, num_classes: int, device):
    """The in-training evaluator: the caller's, or for points with ``eval_every_steps`` > 0 the pipeline's own."""
    if evaluator is not None or cfg.eval_every_steps == 0:
        if cfg.keep_best and evaluator is None:
            raise ValueError("keep_best: the best copy is chosen by the in-training evaluation; set eval_every_steps "
                             "> 0 (points) or pass evaluator=")
        return evaluator
    if data.dim() != 2:
        raise ValueError("eval_every_steps on images needs evaluator= (e.g. realuid.in_training_eval.image_evaluator "
                         "with a feature extractor)")
    from . import in_training_eval
    from .data import Split

    numpy = lambda a: None if a is None else a.detach().cpu().numpy()  # noqa: E731
    split = Split(numpy(data.float()), numpy(labels), numpy(x0))
    in_training_eval.check_settings(cfg, None, split)
    return in_training_eval.point_evaluator(family, split, cfg, num_classes=num_classes, device=device)


def _claim(out: Path, run: dict) -> None:
    """Make ``out`` this run's folder: new, or one that a call with the same ``run`` record started."""
    record = out / RUN_RECORD
    text = json.dumps(run, sort_keys=True, indent=1, default=str)
    if record.is_file():
        before = json.loads(record.read_text())
        changed = sorted(k for k in set(before) | set(run) if before.get(k) != json.loads(text).get(k))
        if changed:
            raise ValueError(f"{out} holds a run started with another {', '.join(changed)}: pass another out, or "
                             "empty it to start afresh")
        return
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out} is not an empty folder and holds no run of realuid.distill: pass another out")
    out.mkdir(parents=True, exist_ok=True)
    tmp = record.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, record)
