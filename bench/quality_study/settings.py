"""Every size and hyper-parameter of the study, chosen once and shared by both students.

The training settings start from the pipeline defaults in ``params.yaml`` and are shrunk with
``dataclasses.replace`` to what 2 CPU cores can run in about an hour; each deviation says why.
``full()`` is the recorded study, ``quick()`` the same code at toy sizes (minutes), ``tiny()`` what the
test suite runs (seconds).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from realuid.config import DistillConfig, ModelConfig, OptimConfig, TrainTeacherConfig

FAMILIES = ("fm", "diffusion", "si", "bridge")
TOY_DATASETS = ("gmm8", "checkerboard")

# Family options as in params.yaml (diffusion: VP schedule, eps prediction, generator at sigma 2.5;
# si: linear interpolant with gamma = 0.5 sqrt(t(1-t)); bridge: Brownian noise 0.5).
FAMILY_OPTIONS = {
    "fm": {},
    "diffusion": {"schedule": "vp", "prediction": "eps", "generator_sigma": 2.5},
    "si": {"interpolant": "linear", "sigma": 0.5},
    "bridge": {"sigma": 0.5},
}
# Teacher samplers: the ODE (Euler, the authors' 99 steps) for fm and si. The bridge's drift transports
# its marginals only together with its noise, so it is sampled with its SDE. Diffusion uses its SDE too:
# the probability-flow ODE of a learned VP eps-model sends ~0.2% of the 2-D samples far outside the data
# (|x| up to ~50, the same at 99, 199 and 999 steps, so it is the model's flow, not the discretisation),
# and those few points alone dominate sliced W2; the SDE sampler does not produce them.
TEACHER_METHOD = {"fm": "euler", "diffusion": "sde", "si": "euler", "bridge": "sde"}

# params.yaml defaults (train_teacher / distill sections), the starting point of every setting below.
PIPELINE_MODEL = ModelConfig(arch="auto", hidden_dim=256, depth=3, time_embed_dim=64, channels=32,
                             channel_mult=[1, 2], num_res_blocks=1, attention_resolutions="", num_heads=4,
                             num_head_channels=-1, dropout=0.0, class_cond=False)
PIPELINE_TEACHER = TrainTeacherConfig(model=PIPELINE_MODEL,
                                      optim=OptimConfig(lr=2e-3, betas=[0.9, 0.999], warmup_steps=200, grad_clip=1.0),
                                      steps=4000, batch_size=512, ema_decay=0.999, checkpoint_every_steps=500,
                                      log_every_steps=50, seed=0, device="cpu")
_DISTILL_OPTIM = OptimConfig(lr=2e-4, betas=[0.0, 0.999], warmup_steps=100, grad_clip=1.0)
PIPELINE_DISTILL = DistillConfig(steps=1000, fake_updates_per_generator_update=5, batch_size=512,
                                 generator_optim=_DISTILL_OPTIM, fake_optim=_DISTILL_OPTIM, fake_init="teacher",
                                 ema_decays=[0.99, 0.999], checkpoint_every_steps=100, log_every_steps=20, seed=0,
                                 device="cpu")


@dataclass(frozen=True)
class ToySettings:
    """The 2-D part: data sizes, the MLP teacher, the under-trained teacher, the distillation."""

    n_train: int
    n_eval: int  # size of every evaluated set: generated, held-out reference, and the floor's second sample
    n_curve: int  # points per convergence evaluation (a subset of the same sets)
    pairing_strength: float  # bridge pairs: x0 = clip(x1 + strength * N(0, I), -1, 1)
    teacher: TrainTeacherConfig  # its ``steps`` is replaced by the budget chosen per family and data set
    teacher_budget_steps: tuple[int, ...]  # the ladder of teacher budgets tried on the validation set
    imperfect_teacher_steps: int
    distill: DistillConfig
    student_ema: float  # the EMA copy of the generator that the final tables report
    families: tuple[str, ...] = FAMILIES
    datasets: tuple[str, ...] = TOY_DATASETS
    imperfect_datasets: tuple[str, ...] = TOY_DATASETS
    teacher_nfe: int = 99
    n_projections: int = 256


@dataclass(frozen=True)
class DigitsSettings:
    """The 8x8 digits part: a small UNet flow-matching teacher and its two students."""

    test_fraction: float
    teacher: TrainTeacherConfig
    distill: DistillConfig
    student_ema: float
    feature_steps: int
    feature_batch_size: int
    teacher_choice: str = ""  # where the teacher's budget was chosen, for the report
    teacher_nfe: int = 99
    grid_images: int = 50


@dataclass(frozen=True)
class StudySettings:
    name: str  # "full" | "quick" | "tiny": printed on every result
    seeds: tuple[int, ...]
    alpha: float
    beta: float
    toy: ToySettings
    digits: DigitsSettings | None
    workers: int = 2
    notes: tuple[str, ...] = field(default=())


def _toy_settings() -> ToySettings:
    # A narrower MLP and smaller batches than params.yaml: on 2 cores the 256-wide MLP at batch 512 costs
    # ~3x more per step and the toy sets do not need it.
    model = dataclasses.replace(PIPELINE_MODEL, arch="mlp", hidden_dim=128, depth=3, time_embed_dim=32)
    # The teacher's step count is chosen per family and data set from a ladder of budgets, on a
    # validation set (toy.run_teacher_budget): in bench/results/RESULTS.md 1500 steps left the toy teachers with
    # k-NN precision 0.50-0.77 against the data's 0.98 (mass smeared between the modes) while their
    # sliced W2 looked close to the floor. The ladder stops at 6000 steps, the most that 2 cores can
    # afford for 33 teachers.
    teacher = dataclasses.replace(PIPELINE_TEACHER, model=model, steps=6000, batch_size=512,
                                  checkpoint_every_steps=6000, log_every_steps=100)
    # Distillation: the authors' structure (Adam (0, 0.999), clip 1, 5 fake updates per generator update,
    # fake model from the teacher), with the learning rate raised from 2e-4 to 1e-3 and a short warm-up
    # because the whole run is 400 generator updates instead of hundreds of thousands.
    optim = dataclasses.replace(_DISTILL_OPTIM, lr=1e-3, warmup_steps=50)
    distill = dataclasses.replace(PIPELINE_DISTILL, steps=400, batch_size=256, generator_optim=optim,
                                  fake_optim=optim, ema_decays=[0.99], checkpoint_every_steps=400,
                                  log_every_steps=20)
    return ToySettings(n_train=20000, n_eval=4000, n_curve=2000, pairing_strength=0.5, teacher=teacher,
                       teacher_budget_steps=(1500, 3000, 6000), imperfect_teacher_steps=150, distill=distill,
                       student_ema=0.99)


def _digits_settings() -> DigitsSettings:
    # The pipeline's digits teacher (params.yaml: torchcfm UNet, 32 channels, two levels) at the budget
    # that scored best on the validation split of bench/results/RESULTS-digits.md: 3000 steps at batch 128, FID
    # 0.466 against a floor of 0.193 (1500 steps: 0.642; the one-level net of 3000 steps: 1.055).
    model = dataclasses.replace(PIPELINE_MODEL, arch="unet", channels=32, channel_mult=[1, 2], num_res_blocks=1)
    teacher = dataclasses.replace(PIPELINE_TEACHER, model=model, steps=3000, batch_size=128,
                                  checkpoint_every_steps=3000, log_every_steps=100)
    optim = dataclasses.replace(_DISTILL_OPTIM, lr=5e-4, warmup_steps=20)
    distill = dataclasses.replace(PIPELINE_DISTILL, steps=150, batch_size=64, generator_optim=optim,
                                  fake_optim=optim, ema_decays=[0.95], checkpoint_every_steps=150,
                                  log_every_steps=50)
    return DigitsSettings(test_fraction=0.2, teacher=teacher, distill=distill, student_ema=0.95,
                          feature_steps=600, feature_batch_size=128,
                          teacher_choice="the pipeline's digits teacher at the budget that scored best on the "
                          "validation split of [RESULTS-digits.md](RESULTS-digits.md) (FID 0.466 at 3000 steps, "
                          "0.642 at 1500, floor 0.193)")


def full() -> StudySettings:
    """The recorded study (about an hour on 2 CPU cores)."""
    return StudySettings(name="full", seeds=(0, 1, 2), alpha=0.94, beta=0.96, toy=_toy_settings(),
                         digits=_digits_settings())


def quick() -> StudySettings:
    """The same study at a fraction of the sizes: checks the whole chain in a few minutes."""
    base = full()
    toy = base.toy
    toy = dataclasses.replace(
        toy, n_train=4000, n_eval=1000, n_curve=500, imperfect_teacher_steps=40, teacher_budget_steps=(100, 200),
        teacher=dataclasses.replace(toy.teacher, steps=200, batch_size=256, checkpoint_every_steps=200),
        distill=dataclasses.replace(toy.distill, steps=40, checkpoint_every_steps=40, log_every_steps=10),
    )
    digits = base.digits
    digits = dataclasses.replace(
        digits, feature_steps=60, teacher_choice="",
        teacher=dataclasses.replace(digits.teacher, steps=60, checkpoint_every_steps=60, log_every_steps=20),
        distill=dataclasses.replace(digits.distill, steps=6, checkpoint_every_steps=6, log_every_steps=3),
    )
    return dataclasses.replace(base, name="quick", toy=toy, digits=digits)


def tiny() -> StudySettings:
    """Seconds: one family per kind of path, tiny nets, two seeds (the smoke test of the study code)."""
    base = quick()
    model = dataclasses.replace(base.toy.teacher.model, hidden_dim=16, depth=1, time_embed_dim=8)
    toy = dataclasses.replace(
        base.toy, n_train=512, n_eval=200, n_curve=100, imperfect_teacher_steps=5, teacher_budget_steps=(10, 20),
        families=("fm", "bridge"),
        datasets=("gmm8",), imperfect_datasets=("gmm8",),
        teacher=dataclasses.replace(base.toy.teacher, model=model, steps=20, batch_size=64,
                                    checkpoint_every_steps=20, log_every_steps=10),
        distill=dataclasses.replace(base.toy.distill, steps=4, batch_size=64, checkpoint_every_steps=4,
                                    log_every_steps=2, fake_updates_per_generator_update=2),
        teacher_nfe=5, n_projections=32,
    )
    return dataclasses.replace(base, name="tiny", seeds=(0, 1), toy=toy, digits=None, workers=1)


PRESETS = {"full": full, "quick": quick, "tiny": tiny}
