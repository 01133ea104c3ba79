"""Strict loading of ``params.yaml``: one frozen dataclass per section.

Every stage validates the whole file before doing any work, so a typo anywhere stops the pipeline at the
first stage with a message that names the key. Unknown keys, missing keys, wrong types and values out of
range are all errors; nothing is filled in silently.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .yamlfile import YamlFileError, read_yaml


def _spec(*, choices=None, ge=None, gt=None, le=None, lt=None, doc: str = "") -> dict:
    return {"choices": choices, "ge": ge, "gt": gt, "le": le, "lt": lt, "doc": doc}


def opt(default=dataclasses.MISSING, **spec) -> Any:
    """A dataclass field carrying validation metadata (choices and numeric bounds)."""
    if isinstance(default, list):
        return field(default_factory=lambda d=default: list(d), metadata=_spec(**spec))
    return field(default=default, metadata=_spec(**spec))


# --------------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FamilyConfig:
    """The matching family's path, shared by teacher, distillation and sampling (where the generator
    starts on it is :class:`GeneratorConfig`; :func:`realuid.matching.make_family` gets both)."""

    name: str = opt(choices=("fm", "diffusion", "si", "bridge"))
    schedule: str = opt(choices=("vp", "ve"), doc="diffusion: noise schedule")
    prediction: str = opt(choices=("eps", "x1"), doc="diffusion: regression target")
    interpolant: str = opt(choices=("linear", "trig"), doc="si: the A(t), B(t) pair")
    sigma: float = opt(ge=0, doc="si, bridge: scale of the path noise; si: gamma(t) = sigma*sqrt(t(1-t)); "
                                 "bridge: Brownian noise sigma dW")

    def options(self) -> dict:
        """Keyword arguments of :func:`realuid.matching.make_family` for this family."""
        by_family = {
            "fm": {},
            "diffusion": {"schedule": self.schedule, "prediction": self.prediction},
            "si": {"interpolant": self.interpolant, "sigma": self.sigma},
            "bridge": {"sigma": self.sigma},
        }
        return by_family[self.name]


@dataclass(frozen=True)
class GeneratorConfig:
    """Where the one-step generator reads its input, one block for every family: each family reads its
    own key and ignores the others, so a key of another family never reruns anything."""

    sigma: float = opt(gt=0, doc="diffusion: noise level s/a (EDM units) the generator starts from")
    t: float = opt(ge=0, lt=0.5, doc="bridge: time the generator reads the bridge at; > 0 gives it noise, "
                                     "so it can match p(x1 | x0) (needs family.sigma > 0)")

    def options(self, family: str) -> dict:
        """Keyword arguments of :func:`realuid.matching.make_family` that place ``family``'s generator."""
        return {"diffusion": {"generator_sigma": self.sigma}, "bridge": {"generator_t": self.t}}.get(family, {})


@dataclass(frozen=True)
class PrepareConfig:
    source: str = opt(choices=("toy", "digits", "cifar10", "file"))
    toy: str = opt(choices=("gmm8", "checkerboard", "moons"))
    path: str = opt(doc="file: .npz/.h5 of the user's data; cifar10: torchvision folder or archive")
    pairing: str = opt(choices=("none", "noise", "mask", "downsample"), doc="x0 = degraded x1 (bridges)")
    pairing_strength: float = opt(ge=0)
    normalize: bool = opt(doc="file: map each dimension affinely into [-1, 1]")
    n_train: int = opt(gt=0, doc="toy: number of training points")
    n_test: int = opt(gt=0, doc="toy: number of held-out points")
    test_fraction: float = opt(gt=0, lt=1, doc="digits/file: held-out fraction")
    download: bool = opt(doc="cifar10: allow torchvision to download")
    seed: int = opt(ge=0)


@dataclass(frozen=True)
class FeaturesConfig:
    """The offline feature extractor behind the default image metrics."""

    steps: int = opt(gt=0)
    batch_size: int = opt(gt=0)
    lr: float = opt(gt=0)
    seed: int = opt(ge=0)
    device: str = opt("auto", doc="auto | cpu | cuda | cuda:N: where the extractor trains and the reference "
                                  "features are extracted")


@dataclass(frozen=True)
class ModelConfig:
    """Backbone of teacher, fake model and generator (they share one architecture)."""

    arch: str = opt(choices=("auto", "mlp", "unet"), doc="auto: mlp for points, unet for images")
    hidden_dim: int = opt(gt=0, doc="mlp")
    depth: int = opt(gt=0, doc="mlp: hidden layers")
    time_embed_dim: int = opt(gt=0, doc="mlp")
    channels: int = opt(gt=0, doc="unet: base channels")
    channel_mult: list[int] = opt(doc="unet: per-resolution multipliers")
    num_res_blocks: int = opt(gt=0, doc="unet")
    attention_resolutions: str = opt(doc="unet: comma-separated resolutions, '' for none")
    num_heads: int = opt(gt=0, doc="unet")
    num_head_channels: int = opt(doc="unet: -1 to use num_heads")
    dropout: float = opt(ge=0, lt=1)
    class_cond: bool = opt(doc="condition on the data set's labels")
    class_dropout: float = opt(0.0, ge=0, lt=1, doc="teacher: probability of training on the learned null "
                                                    "label instead (classifier-free guidance; 0 = none)")


@dataclass(frozen=True)
class OptimConfig:
    """Adam with linear warm-up, an optional cosine decay and global-norm clipping."""

    lr: float = opt(gt=0)
    betas: list[float] = opt()
    warmup_steps: int = opt(ge=0)
    grad_clip: float = opt(ge=0, doc="0 disables clipping")
    # A default so code that builds an OptimConfig by hand stays valid; params files still list it.
    decay: str = opt("constant", choices=("constant", "cosine"),
                     doc="cosine: after the warm-up, the rate falls to 0 at the run's last update")


@dataclass(frozen=True)
class SpeedConfig:
    """Faster steps at the same result up to float rounding (:mod:`realuid.speed`); all off by default."""

    compile: bool = opt(False, doc="torch.compile the networks (the first update compiles; its time is printed)")
    fused_adam: bool = opt(False, doc="Adam's fused kernel (CUDA, CPU)")
    channels_last: bool = opt(False, doc="image networks and their inputs in NHWC memory format")
    cudnn_benchmark: bool = opt(False, doc="cuDNN autotunes convolutions per shape (CUDA only)")
    attention: str = opt("classic", choices=("classic", "sdpa"), doc="sdpa: torch's fused attention")
    groupnorm: str = opt("fp32", choices=("fp32", "autocast"),
                         doc="autocast: GroupNorm in the autocast dtype (statistics still float32)")


IMPORT_FORMATS = ("none", "authors", "torchcfm", "diffusers")


@dataclass(frozen=True)
class TrainTeacherConfig:
    model: ModelConfig = opt()
    optim: OptimConfig = opt()
    steps: int = opt(gt=0)
    batch_size: int = opt(gt=0)
    ema_decay: float = opt(ge=0, lt=1)
    checkpoint_every_steps: int = opt(gt=0)
    log_every_steps: int = opt(gt=0)
    seed: int = opt(ge=0)
    device: str = opt(doc="auto | cpu | cuda | cuda:N")
    import_checkpoint: str = opt("", doc="a teacher file or folder to use instead of training ('' = train)")
    import_format: str = opt("none", choices=IMPORT_FORMATS,
                             doc="what import_checkpoint is: authors (RealUID authors' .pt), torchcfm (its "
                                 "checkpoint), diffusers (a pipeline folder); none = train")
    import_ema: str = opt("0.999", doc="the EMA copy of the imported file ('none' = its raw net_model); "
                                       "a diffusers folder holds one network and does not use it")
    precision: str = opt("fp32", choices=("fp32", "bf16"), doc="bf16: autocast forward passes (GPU speed)")
    nproc: int = opt(1, ge=1, doc="processes (one per GPU) under torchrun; the global batch stays batch_size")
    speed: SpeedConfig = opt(SpeedConfig())


@dataclass(frozen=True)
class GanConfig:
    """RealUID + GAN: a discriminator head on the fake model's encoder, judged at t in (0.8, 1]."""

    enabled: bool = opt(doc="false: the 'No GANs' RealUID losses alone")
    gen_coef: float = opt(ge=0, doc="weight of softplus(-D(x_gen)) in the generator loss")
    disc_coef: float = opt(ge=0, doc="weight of the discriminator loss in the fake loss (authors: 3 x gen_coef)")


@dataclass(frozen=True)
class DistillConfig:
    steps: int = opt(gt=0, doc="generator updates")
    fake_updates_per_generator_update: int = opt(gt=0)
    batch_size: int = opt(gt=0)
    generator_optim: OptimConfig = opt()
    fake_optim: OptimConfig = opt()
    fake_init: str = opt(choices=("random", "teacher"))
    ema_decays: list[float] = opt()
    checkpoint_every_steps: int = opt(gt=0)
    log_every_steps: int = opt(gt=0)
    seed: int = opt(ge=0)
    device: str = opt(doc="auto | cpu | cuda | cuda:N")
    precision: str = opt("fp32", choices=("fp32", "bf16"), doc="bf16: autocast forward passes (GPU speed)")
    # A default so code that builds a DistillConfig by hand stays valid; params files still list it.
    gan: GanConfig = opt(GanConfig(enabled=False, gen_coef=5.0, disc_coef=15.0))
    speed: SpeedConfig = opt(SpeedConfig())  # finetune too
    nproc: int = opt(1, ge=1, doc="processes (one per GPU) under torchrun; the global batch stays batch_size (finetune too)")
    # In-training quality (defaults so hand-built configs stay valid; params files list them).
    eval_every_steps: int = opt(0, ge=0, doc="score the raw generator and every EMA copy every this many "
                                             "generator updates (0 = off; finetune too)")
    eval_samples: int = opt(1000, ge=2, doc="size of the fixed noise set scored at each evaluation")
    keep_best: bool = opt(False, doc="keep the best (copy, step) by the in-training metric as generator copy 'best'")
    # A k-step student (defaults so hand-built configs stay valid; params files list them).
    generator_steps: int = opt(1, ge=1, doc="k: generator evaluations per sample (1 = the one-step generator)")
    generator_times: list[float] = opt([], doc="the k-1 times t_2 < ... < t_k the student re-noises its estimate "
                                               "to, after its own start (empty for k = 1)")
    guidance_scale: float = opt(1.0, ge=0, doc="w of the teacher's field in the generator loss, "
                                               "f_uncond + w (f_cond - f_uncond) (1 = no guidance)")
    guide_fake: bool = opt(False, doc="the fake model's field guided at the same w, in its own loss and in the "
                                      "generator loss (SiD-LSG's long and short guidance); no effect at w = 1")


@dataclass(frozen=True)
class FinetuneConfig:
    """An optional second RealUID run from a distilled generator, with the fake model restarted from the
    teacher and its own coefficients (the authors move beta/alpha further from 1 here, to ~0.94 or 1.06).
    Batch size, optimizer betas, warm-up, clipping, EMA decays, device and precision come from ``distill``.
    """

    enabled: bool = opt(doc="false: the distilled generator passes through unchanged")
    alpha: float = opt(gt=0, le=1)
    beta: float = opt(gt=0, le=1)
    from_ema: str = opt(doc="the distilled copy to start from: 'none' (raw) or one of distill.ema_decays")
    steps: int = opt(gt=0, doc="generator updates")
    generator_lr: float = opt(gt=0)
    fake_lr: float = opt(gt=0)


@dataclass(frozen=True)
class SampleConfig:
    n_samples: int = opt(gt=0)
    batch_size: int = opt(gt=0)
    teacher_nfe: int = opt(gt=0)
    teacher_method: str = opt(choices=("euler", "heun", "sde"))
    generator_ema: str = opt(doc="'none' for the raw generator, one of distill.ema_decays, or 'best' (keep_best)")
    seed: int = opt(ge=0, doc="sample i uses seed + i")
    device: str = opt(doc="auto | cpu | cuda | cuda:N")
    nproc: int = opt(1, ge=1, doc="processes under torchrun; batches of batch_size samples are dealt round-robin")
    # Defaults so hand-built configs stay valid; params files list them.
    generator_steps: list[int] = opt([], doc="the student's step counts (NFE) to sample, increasing from 1 up to "
                                             "its trained k; [] = every one from 1 to k")
    guidance_scale: float = opt(1.0, ge=0, doc="w of the teacher's sampler, f_uncond + w (f_cond - f_uncond) "
                                               "(1 = no guidance)")
    precision: str = opt("fp32", choices=("fp32", "bf16"), doc="bf16: autocast the networks' forward passes")


@dataclass(frozen=True)
class EvaluateConfig:
    feature_extractor: str = opt(choices=("realuid-features", "inception-v3-compat"))
    feature_extractor_weights_path: str = opt(doc="inception-v3-compat: weights file you supply")
    reference: str = opt(choices=("test", "train"), doc="split the samples are compared with")
    kid_subset_size: int = opt(gt=1)
    batch_size: int = opt(gt=0, doc="images per feature-extractor batch")
    seed: int = opt(ge=0)
    fid_blocks: int = opt(1, ge=1, doc="images: FID also over K disjoint seed blocks (fid_mean, fid_min, fid_std)")
    device: str = opt("auto", doc="auto | cpu | cuda | cuda:N: where image features are extracted")
    nproc: int = opt(1, ge=1, doc="processes under torchrun; feature batches are dealt round-robin")
    reference_stats: str = opt("", doc="images: .npz of FID statistics (mu, sigma) used for FID instead of the "
                                       "reference split's; empty: the split's own")


@dataclass(frozen=True)
class Params:
    alpha: float = opt(gt=0, le=1, doc="RealUID weight of generated samples in the fake model's norm term")
    beta: float = opt(gt=0, le=1, doc="RealUID weight of generated samples in the fake model's cross term")
    family: FamilyConfig = opt()
    generator: GeneratorConfig = opt()
    prepare: PrepareConfig = opt()
    features: FeaturesConfig = opt()
    train_teacher: TrainTeacherConfig = opt()
    distill: DistillConfig = opt()
    finetune: FinetuneConfig = opt()
    sample: SampleConfig = opt()
    evaluate: EvaluateConfig = opt()


# --------------------------------------------------------------------------------------------------
# Loader
# --------------------------------------------------------------------------------------------------


def _check_value(key: str, value: Any, expected: Any, meta: dict) -> Any:
    """Type-check one leaf value (no coercion except int -> float) and apply its bounds."""
    origin = typing.get_origin(expected)
    if origin is list:
        (item_type,) = typing.get_args(expected)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list of {item_type.__name__}, got {value!r}")
        return [_check_value(f"{key}[{i}]", v, item_type, {}) for i, v in enumerate(value)]
    if expected is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
    elif expected is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
    elif expected is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        value = float(value)
        if not math.isfinite(value):
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
    elif expected is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
    if meta.get("choices") is not None and value not in meta["choices"]:
        raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(str, meta['choices']))}")
    for bound, ok, word in (
        ("ge", lambda v, b: v >= b, ">="),
        ("gt", lambda v, b: v > b, ">"),
        ("le", lambda v, b: v <= b, "<="),
        ("lt", lambda v, b: v < b, "<"),
    ):
        if meta.get(bound) is not None and not ok(value, meta[bound]):
            raise ConfigError(f"{key}: must be {word} {meta[bound]}, got {value!r}")
    return value


def build(cls: type, data: Any, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping, rejecting unknown and missing keys."""
    where = prefix.rstrip(".") or "params"
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of keys, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"unknown key {prefix}{unknown[0]} (valid keys of {where}: {', '.join(fields)})")
    missing = [name for name in fields if name not in data]
    if missing:
        raise ConfigError(f"missing key {prefix}{missing[0]}")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, f in fields.items():
        key = prefix + name
        if dataclasses.is_dataclass(hints[name]):
            values[name] = build(hints[name], data[name], key + ".")
        else:
            values[name] = _check_value(key, data[name], hints[name], f.metadata)
    obj = cls(**values)
    _check_cross_fields(obj, prefix)
    return obj


def _check_cross_fields(obj: Any, prefix: str) -> None:
    """Constraints that involve more than one key."""
    if isinstance(obj, OptimConfig):
        if len(obj.betas) != 2 or not all(0 <= b < 1 for b in obj.betas):
            raise ConfigError(f"{prefix}betas: expected two numbers in [0, 1), got {obj.betas!r}")
    if isinstance(obj, ModelConfig):
        if not obj.channel_mult or any(m <= 0 for m in obj.channel_mult):
            raise ConfigError(f"{prefix}channel_mult: expected positive integers, got {obj.channel_mult!r}")
        if obj.attention_resolutions and not all(
            p.strip().isdigit() for p in obj.attention_resolutions.split(",")
        ):
            raise ConfigError(f"{prefix}attention_resolutions: expected e.g. '16' or '16,8' or ''")
    if isinstance(obj, DistillConfig):
        if not all(0 < d < 1 for d in obj.ema_decays):
            raise ConfigError(f"{prefix}ema_decays: each decay must be in (0, 1), got {obj.ema_decays!r}")
        if len(set(obj.ema_decays)) != len(obj.ema_decays):
            raise ConfigError(f"{prefix}ema_decays: duplicate decays {obj.ema_decays!r}")
        times = obj.generator_times
        if len(times) != obj.generator_steps - 1:
            raise ConfigError(f"{prefix}generator_times: a {obj.generator_steps}-step student re-noises at "
                              f"{obj.generator_steps - 1} times t_2 < ... < t_k, got {len(times)}: {times!r}")
        if any(not 0 < t < 1 for t in times) or any(a >= b for a, b in zip(times, times[1:])):
            raise ConfigError(f"{prefix}generator_times: expected strictly increasing times in (0, 1), got {times!r}")
    if isinstance(obj, SampleConfig):
        steps = obj.generator_steps
        if steps and (steps[0] != 1 or any(a >= b for a, b in zip(steps, steps[1:]))):
            raise ConfigError(f"{prefix}generator_steps: expected step counts increasing from 1 (the one-step "
                              f"samples are always written), e.g. [1, 2, 4], or [] for every one; got {steps!r}")
    if isinstance(obj, TrainTeacherConfig):
        if obj.import_checkpoint and obj.import_format == "none":
            raise ConfigError(f"{prefix}import_format: import_checkpoint is set; say what it is: "
                              "authors, torchcfm or diffusers")
        if obj.import_format != "none" and not obj.import_checkpoint:
            raise ConfigError(f"{prefix}import_checkpoint: import_format is {obj.import_format!r}; give the "
                              "teacher's file or folder (or set import_format: none to train one)")
    if hasattr(obj, "device"):
        dev = obj.device
        if not (dev in ("auto", "cpu", "cuda") or (dev.startswith("cuda:") and dev[5:].isdigit())):
            raise ConfigError(f"{prefix}device: expected auto, cpu, cuda or cuda:N, got {dev!r}")
    if isinstance(obj, Params):
        decays = {ema_key(d) for d in obj.distill.ema_decays}
        for key, ema in (("sample.generator_ema", obj.sample.generator_ema), ("finetune.from_ema", obj.finetune.from_ema)):
            if key == "sample.generator_ema" and ema == BEST_COPY:
                continue  # checked below, with keep_best
            if ema != "none" and _ema_or_none(ema) not in decays:
                raise ConfigError(f"{key}: {ema!r} is not 'none' nor one of distill.ema_decays {obj.distill.ema_decays}")
        if obj.family.name == "bridge" and obj.prepare.pairing == "none":
            raise ConfigError("family.name: the bridge family needs paired data; set prepare.pairing")
        if obj.family.name == "bridge" and obj.family.sigma > 0 and obj.sample.teacher_method != "sde":
            # A noisy bridge's learned drift is not a probability-flow velocity: only its SDE samples it.
            raise ConfigError("sample.teacher_method: the bridge family with sigma > 0 samples with 'sde'")
        if obj.family.name == "bridge" and obj.generator.t > 0 and obj.family.sigma == 0:
            raise ConfigError("generator.t: a bridge with family.sigma = 0 has no noise to give its generator; "
                              "keep it 0 or set family.sigma > 0")
        model = obj.train_teacher.model
        for key, scale in (("distill.guidance_scale", obj.distill.guidance_scale),
                           ("sample.guidance_scale", obj.sample.guidance_scale)):
            if scale != 1 and (obj.train_teacher.import_checkpoint or not model.class_cond or model.class_dropout == 0):
                raise ConfigError(f"{key}: guidance needs a class-conditional teacher trained with label dropout "
                                  "(train_teacher.model.class_cond: true, class_dropout > 0, trained here); keep it 1")
        if model.class_dropout > 0 and not model.class_cond:
            raise ConfigError("train_teacher.model.class_dropout: label dropout needs class_cond: true")
        if obj.distill.keep_best and obj.distill.eval_every_steps == 0:
            raise ConfigError("distill.keep_best: the best copy is chosen by the in-training evaluation; "
                              "set distill.eval_every_steps > 0")
        if obj.sample.generator_ema == BEST_COPY and not obj.distill.keep_best:
            raise ConfigError("sample.generator_ema: 'best' needs distill.keep_best: true (and "
                              "distill.eval_every_steps > 0)")
        if obj.sample.n_samples % obj.evaluate.fid_blocks:
            raise ConfigError(f"evaluate.fid_blocks: {obj.evaluate.fid_blocks} blocks do not split "
                              f"sample.n_samples {obj.sample.n_samples} evenly")
        if obj.sample.n_samples // obj.evaluate.fid_blocks < 2:
            raise ConfigError(f"evaluate.fid_blocks: blocks of {obj.sample.n_samples // obj.evaluate.fid_blocks} "
                              "sample cannot give a covariance; need at least 2 samples per block")
        _check_backbone(obj)
        if obj.sample.teacher_method == "sde" and obj.family.name not in ("diffusion", "bridge"):
            raise ConfigError("sample.teacher_method: 'sde' is available for the diffusion and bridge families")


# What each built-in source yields (a user file's kind is known once it is read: the teacher stage checks it).
SOURCE_KINDS = {"toy": "points", "digits": "images", "cifar10": "images"}
BACKBONE_KINDS = {"mlp": "points", "unet": "images"}


def _check_backbone(params: "Params") -> None:
    """A points-only backbone on images, or the reverse, stops the first stage instead of the teacher's."""
    model, source = params.train_teacher.model, params.prepare.source
    if params.train_teacher.import_checkpoint or model.arch == "auto" or source not in SOURCE_KINDS:
        return
    data, backbone = SOURCE_KINDS[source], BACKBONE_KINDS[model.arch]
    if data != backbone:
        fit = next(arch for arch, kind in BACKBONE_KINDS.items() if kind == data)
        raise ConfigError(f"train_teacher.model.arch: {model.arch!r} is a backbone for {backbone}, but "
                          f"prepare.source {source!r} gives {data}; use {fit!r} (or 'auto')")


BEST_COPY = "best"  # the named generator copy that distill.keep_best keeps, beside the EMA copies


def _ema_or_none(value: str) -> str | None:
    try:
        return ema_key(value)
    except ValueError:
        return None


def ema_key(decay: float | str) -> str:
    """Canonical string of an EMA decay, as used for checkpoint keys (``0.999`` -> ``"0.999"``)."""
    return repr(float(decay))


def load_params(path: str | Path) -> Params:
    """Read and validate a params file; raises :class:`ConfigError` naming the first bad key."""
    path = Path(path)
    try:
        data = read_yaml(path)  # duplicate keys are errors here, as in DVC's own parser
    except FileNotFoundError:
        raise ConfigError(f"params file not found: {path}") from None
    except OSError as err:  # a folder, no permission, an I/O error
        raise ConfigError(f"cannot read the params file {path}: {err.strerror or err}") from None
    except YamlFileError as err:
        raise ConfigError(str(err)) from None
    return build(Params, data)


def with_changes(settings: dict, changes: dict) -> dict:
    """``settings`` (a params mapping or one of its sections) with ``changes``: a nested section takes a dict of
    the keys it changes and keeps the others; tuples become lists, as YAML gives them. Neither input is
    modified; :func:`build` checks the result."""
    out = dict(settings)
    for key, value in changes.items():
        if isinstance(value, tuple):
            value = list(value)
        out[key] = (with_changes(settings[key], value)
                    if isinstance(value, dict) and isinstance(settings.get(key), dict) else value)
    return out


def to_dict(obj: Any) -> dict:
    """Plain-dict view of a config dataclass (for checkpoints, hashes and logs)."""
    return dataclasses.asdict(obj)


def in_effect(cfg) -> dict:
    """The settings of a training section that shape its result: they name the run's state folder and
    are recorded in its checkpoint.

    The process count is left out: a run's state holds nothing per process, so it resumes, and writes
    the same files, with another number of processes. Keys the
    configuration does not use never start a run afresh: the GAN's coefficients while it is off, the
    evaluation's sample count while it is off, the speed options while all are off, and for the teacher
    the model keys (its spec, hashed beside this, holds those the architecture uses) and the import
    settings (an imported teacher keeps no state); a one-step student's (empty) re-noising times.
    """
    settings = to_dict(cfg)
    settings.pop("nproc", None)
    if settings.get("speed") == to_dict(SpeedConfig()):  # off: runs keep their state folders
        settings.pop("speed")
    if "gan" in settings and not settings["gan"]["enabled"]:
        settings["gan"] = {"enabled": False}
    if settings.get("eval_every_steps") == 0:
        settings.pop("eval_samples")
    if settings.get("guidance_scale") == 1:  # no guidance: its runs keep their state folders
        settings.pop("guidance_scale")
        settings.pop("guide_fake", None)
    if settings.get("guide_fake") is False:
        settings.pop("guide_fake")
    if settings.get("generator_steps") == 1:  # the one-step generator: its runs keep their state folders
        settings.pop("generator_steps")
        settings.pop("generator_times")
    if "import_checkpoint" in settings:
        for key in ("model", "import_checkpoint", "import_format", "import_ema"):
            settings.pop(key)
    return settings
