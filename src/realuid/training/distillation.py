"""RealUID distillation: the fake-model and generator phases, the GAN head's use, in-training evaluation."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..checkpoints import Checkpoint, ema_copy_name, family_record
from ..config import BEST_COPY, SpeedConfig
from ..devices import autocast
from ..distributed import SINGLE_PROCESS, Dist
from ..errors import ConfigError
from ..gan import DiscriminatorHead, discriminator_loss, encoder_features, feature_dim, gan_time_sample, generator_gan_loss
from ..distillation_losses import fake_loss, generator_loss
from ..models import build_model, check_guidance, guided
from ..sampling import (OneStepGenerator, check_generator_times, generate_one_step, generate_steps, renoise_inputs,
                        renoise_step)
from ..speed import CompileTimer, prepare_backends, prepare_network
from ..tensors import standard_normal_like
from .batches import BatchStream, TrainData, draw, take
from .bookkeeping import CurveLog, Meter, after_step, config_record, progress_bar, resume_state
from .optimization import EMA, make_optimizer, optimizer_step
from .rng import keeps_global_rng, seeded


class EvaluatedChain(nn.Module):
    """A k-step student as an evaluator calls a generator, ``(z, y, noise) -> x1`` ``[B, ...]``: its whole
    chain, re-noised with draws seeded by ``(seed, batch index)``, so every evaluation of a run sees the
    same noise and the scores of its copies and steps compare."""

    def __init__(self, generator: OneStepGenerator, times: tuple[float, ...], seed: int):
        super().__init__()
        self.generator, self.times, self.seed, self.batches = generator, times, seed, 0

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None, noise: torch.Tensor | None = None):
        rng = seeded(self.seed, self.batches, device=z.device)
        self.batches += 1
        renoise = renoise_inputs(self.generator.family, z, len(self.times), lambda like: standard_normal_like(like, rng))
        return generate_steps(self.generator.family, self.generator.net, z, y, noise, times=self.times, renoise=renoise)


class QualityLog:
    """In-training evaluation of every generator copy (raw weights, then each EMA copy) with ``evaluator``
    (see :mod:`realuid.in_training_eval`; any callable ``evaluator(generator) -> {metric: value}`` with
    ``every_steps``, ``metrics`` and ``rank_by`` will do).

    Rows ``{step, copy, *metrics}`` go to ``path`` (full precision) every ``evaluator.every_steps`` generator
    updates and at the last step; like the curves, the table lives in the state folder and is trimmed to
    the checkpoint on resume. With ``keep_best`` the weights of the best (copy, step) by
    ``evaluator.rank_by`` (lower is better, the first of equals kept) travel in the checkpoint. Every
    process evaluates (the evaluator shares the work and returns the same values everywhere); only ``write``
    (rank 0) appends the rows.
    Each call runs on a fork of the global RNG, so training draws the same numbers with or without it.
    """

    def __init__(self, evaluator, path: Path, *, keep_best: bool, write: bool = True):
        self.evaluator, self.keep_best, self.write = evaluator, keep_best, write
        self.log = CurveLog(path, ["copy", *evaluator.metrics], float_format=repr)
        self.best: dict | None = None  # {"copy", "step", <rank_by>, "state_dict"}
        self._scratch: nn.Module | None = None  # a generator to load EMA copies into

    def due(self, done: int, last_step: int) -> bool:
        return done % self.evaluator.every_steps == 0 or done == last_step

    def evaluate(self, step: int, uid: "RealUID") -> None:
        if self._scratch is None:
            self._scratch = copy.deepcopy(uid.generator).requires_grad_(False)
        copies = [("raw", None), *((ema_copy_name(d), shadow) for d, shadow in uid.ema.shadows.items())]
        rank_by = self.evaluator.rank_by
        for name, weights in copies:
            generator = uid.generator
            if weights is not None:
                self._scratch.net.load_state_dict(weights)
                generator = self._scratch
            if uid.times:  # a k-step student is scored at its k steps
                generator = EvaluatedChain(generator, uid.times, uid.cfg.seed)
            devices = [uid.device] if uid.device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices):
                values = self.evaluator(generator)
            if self.write:
                self.log.append({"step": step, "copy": name, **values})
            if self.keep_best and (self.best is None or values[rank_by] < self.best[rank_by]):
                state = (weights if weights is not None else uid.generator.net.state_dict())
                self.best = {"copy": name, "step": step, rank_by: values[rank_by],
                             "state_dict": {k: v.detach().clone() for k, v in state.items()}}

    def state_dict(self) -> dict:
        return {"best": self.best} if self.keep_best and self.best is not None else {}

    def load_state_dict(self, state: dict) -> None:
        self.best = state.get("best")


class FakeWithHead(nn.Module):
    """The fake model and the GAN head as one module, so that one DDP wrapper averages the gradients of
    both (they share the fake phase's optimizer and clip). Called, it is the fake model; the head reads the
    fake model's encoder through :func:`realuid.gan.encoder_features`."""

    def __init__(self, fake: nn.Module, head: nn.Module):
        super().__init__()
        self.fake, self.head = fake, head

    def forward(self, t: torch.Tensor, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.fake(t, x, y)


@dataclass
class StepDraws:
    """Every random input of one phase, for this process's rows: ``x1``, ``y``, ``x0``, ``t``, ``noise``
    as in :func:`draw`, the generator input ``z`` and the path noise of its start ``z_noise`` (None unless
    the family's generator takes noise), and the GAN head's times ``gan_t`` [b] and path noise ``gan_noise``
    [b, ...], one per (generated, real) pair (None without the GAN); for a k-step student, ``renoise``: the inputs
    ``(x0_j, noise_j)`` of the re-noising stages up to the one this phase trains on (empty: the first)."""

    x1: torch.Tensor
    y: torch.Tensor | None
    z: torch.Tensor
    z_noise: torch.Tensor | None
    x0: torch.Tensor
    t: torch.Tensor
    noise: torch.Tensor | None
    gan_t: torch.Tensor | None = None
    gan_noise: torch.Tensor | None = None
    renoise: list = field(default_factory=list)


class RealUID:
    """The two phases of RealUID distillation over a frozen teacher ``f*``.

    ``generator`` starts as a copy of ``student_init`` (default: the teacher), the fake model from the
    teacher or from random weights (``cfg.fake_init``), or as a copy of ``fake_start`` when given (a network
    that takes the teacher's inputs, e.g. a wider one). Each phase has its own optimizer and touches only
    its own network: the fake step samples the generator without autograd, the generator step freezes the
    fake model so its gradients stay as the fake step left them.

    Both networks run without dropout, whatever the teacher trained with (as the authors distil): they
    stay in eval mode throughout, which for these backbones (GroupNorm, LayerNorm, no batch statistics)
    changes dropout only. With dropout on, the generator would train stochastic but be sampled
    deterministically, and the fake model would learn from dropout-perturbed samples. The weights'
    layout is the teacher's, so any teacher file loads as it is. ``cfg.speed`` options apply to all three
    networks, the caller's teacher module included (in place: compiled, its attention and GroupNorms swapped).

    A phase receives the *global* batch; under ``dist`` each process computes its own rows. Each phase
    calls the network it trains through its DDP wrapper (:meth:`Dist.data_parallel`; the fake model with
    the GAN head as one module), whose backward averages the phase's gradients over processes before the
    clip and step, and the other network as the plain module.
    """

    def __init__(self, family, teacher: nn.Module, spec: dict, cfg, *, alpha: float, beta: float,
                 device: torch.device, student_init: nn.Module | None = None, fake_start: nn.Module | None = None,
                 dist: Dist = SINGLE_PROCESS):
        self.family, self.cfg, self.alpha, self.beta = family, cfg, alpha, beta
        self.device, self.dist = device, dist
        # Without a spec (a module of one's own) the data decide: labels, when the batch has them, condition.
        self.labels = spec is None or spec["args"].get("num_classes", 0) > 0
        self.data_free = alpha == 1 and beta == 1
        self.teacher = teacher.to(device).eval().requires_grad_(False)
        # The field the generator loss reads: the teacher itself, or its classifier-free guided field.
        scale = getattr(cfg, "guidance_scale", 1.0)
        null = check_guidance(spec, scale)
        self.teacher_field = self.teacher if null is None else guided(self.teacher, null, scale)
        # With guide_fake the fake model's field is guided too, where it is trained and where it is read.
        self.fake_guidance = (null, scale) if null is not None and getattr(cfg, "guide_fake", False) else None
        init = student_init if student_init is not None else teacher
        self.generator = OneStepGenerator(family, copy.deepcopy(init).requires_grad_(True)).to(device).eval()
        self.times = generator_times(family, cfg)
        torch.manual_seed(cfg.seed)  # random fake-model weights, when asked for
        if fake_start is not None:
            # The caller's network stays as it is; the wrappers and optimizers below take this copy.
            self.fake = copy.deepcopy(fake_start).to(device).eval()
        elif spec is None:
            # Nothing to build a fresh network from: the fake model starts as a copy of the teacher.
            if cfg.fake_init != "teacher":
                raise ConfigError("fake_init='random' needs a model spec to build the fake model from; a teacher "
                                  "module of one's own starts its fake model as its copy (fake_init='teacher')")
            self.fake = copy.deepcopy(teacher).eval()
        else:
            self.fake = build_model(spec).to(device).eval()
        if cfg.fake_init == "teacher" and spec is not None and fake_start is None:
            if set(teacher.state_dict()) != set(self.fake.state_dict()):
                raise ConfigError("fake_init='teacher' needs a teacher built from the same spec as the fake model; "
                                 "use fake_init='random' for other teachers (e.g. a closed-form one)")
            self.fake.load_state_dict(teacher.state_dict())
        self.fake.requires_grad_(True)
        # RealUID + GAN: the head sits on the fake model's encoder and trains with it, under the same
        # optimizer settings and one joint gradient clip (the authors' head is part of the fake network).
        self.gan = cfg.gan if cfg.gan.enabled else None
        self.disc_head = DiscriminatorHead(feature_dim(self.fake)).to(device).train() if self.gan else None
        speed = getattr(cfg, "speed", SpeedConfig())
        prepare_backends(speed, device)
        for net in (self.teacher, self.generator.net, self.fake):
            prepare_network(net, speed)
        # The wrappers copy rank 0's weights to every process, before the EMA copies are taken.
        built = spec is not None  # a network of one's own may hold parameters its forward never uses
        self.generator_trained = dist.data_parallel(self.generator.net, every_parameter_used=built)
        self.fake_trained = dist.data_parallel(self.fake if self.gan is None else FakeWithHead(self.fake, self.disc_head),
                                               every_parameter_used=built)
        self.fake_params = list(self.fake.parameters()) + (list(self.disc_head.parameters()) if self.gan else [])
        self.gen_opt, self.gen_sched = make_optimizer(self.generator.parameters(), cfg.generator_optim, cfg.steps,
                                                      fused=speed.fused_adam)
        self.fake_opt, self.fake_sched = make_optimizer(self.fake_params, cfg.fake_optim,
                                                        cfg.steps * cfg.fake_updates_per_generator_update,
                                                        fused=speed.fused_adam)
        self.ema = EMA(self.generator.net, cfg.ema_decays)

    def _draws(self, batch: TrainData, rng: torch.Generator) -> StepDraws:
        """All draws of a phase for the global ``batch`` [G, ...], in a fixed order, then this process's rows.

        Order: generator input ``z`` and its noise, then ``x0, t, noise`` (:func:`draw`), then the GAN
        head's G times and path noises, last so that runs without the GAN keep their random streams; then,
        for a k-step student only, the stage ``s ~ U{0..k-1}`` and the inputs of its ``s`` re-noising stages
        (DMD2's backward simulation), after every draw a one-step run makes.
        Drawing for all G rows on every process makes the union over processes exactly the one-process phase.
        """
        total = batch.x1.shape[0]
        rows = self.dist.rows(total)
        y = batch.y if self.labels else None
        z = batch.x0 if self.family.paired else self.family.sample_source(batch.x1, rng=rng)
        z_noise = self.family.sample_noise(z, rng=rng) if self.family.generator_noise else None
        x0, t, noise = draw(self.family, batch, rng)
        gan_t = gan_noise = None
        if self.gan is not None:
            gan_t = gan_time_sample(total, rng, t_max=self.family.t_max, device=batch.x1.device)
            gan_noise = self.family.sample_noise(batch.x1, rng=rng)
        renoise = []
        if self.times:
            stage = int(torch.randint(len(self.times) + 1, (1,), generator=rng, device=rng.device))
            renoise = [take(rows, *inputs)
                       for inputs in renoise_inputs(self.family, z, stage, lambda like: standard_normal_like(like, rng))]
        return StepDraws(*take(rows, batch.x1, y, z, z_noise, x0, t, noise, gan_t, gan_noise), renoise=renoise)

    def _generate(self, d: StepDraws, y: torch.Tensor | None, net: nn.Module) -> torch.Tensor:
        """The student's output ``[b, ...]`` at the phase's stage, its network called as ``net`` (the plain
        generator network, or its DDP wrapper in the generator phase): the chain runs without gradients up to
        the stage before it, and only the stage itself is differentiated (a one-step student: its one step)."""
        if not d.renoise:
            return generate_one_step(self.family, net, d.z, y, d.z_noise)
        *before, (source, noise) = d.renoise
        with torch.no_grad():
            x1 = generate_steps(self.family, self.generator.net, d.z, y, d.z_noise, times=self.times[:len(before)],
                                renoise=before)
        return renoise_step(self.family, net, x1, self.times[len(before)], source, y, noise)

    def _fake_field(self, net: nn.Module):
        """The fake model's field as the losses read it: ``net`` (the fake model or its DDP wrapper), or with
        ``guide_fake`` its guided field, both labels in one forward."""
        return net if self.fake_guidance is None else guided(net, *self.fake_guidance, one_pass=True)

    def _gan_logits(self, x1: torch.Tensor, y: torch.Tensor | None, draws: StepDraws) -> torch.Tensor:
        """Head logits ``[copies*B]`` of ``x1`` [copies*B, ...] on the path at the draws' discriminator
        times in (0.8, t_max].

        ``x1`` stacks ``copies`` blocks of B samples (generated, or generated then real); every block gets
        the same times, path noise, ``x0`` (the step's, as the authors reuse it) and labels, so a
        generated sample and its real partner are seen at one point of the path. One encoder pass covers
        all blocks (no batch-coupled layers).
        """
        copies = x1.shape[0] // draws.x0.shape[0]
        repeat = lambda a: None if a is None else a.repeat(copies, *[1] * (a.dim() - 1))  # noqa: E731
        t = repeat(draws.gan_t)
        x_t = self.family.path_sample(repeat(draws.x0), x1, t, repeat(draws.gan_noise)).x_t
        with autocast(self.device, self.cfg.precision):
            return self.disc_head(encoder_features(self.fake, t, x_t, repeat(y))).float()

    def fake_step(self, batch: TrainData, rng: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """One update of the fake model ``f`` on the global ``batch``; returns (loss, gradient norm) on the device."""
        d = self._draws(batch, rng)
        y, x0, t, noise = d.y, d.x0, d.t, d.noise
        with torch.no_grad(), autocast(self.device, self.cfg.precision):  # the generator is only a sampler here
            x1_gen = self._generate(d, y, self.generator.net).float()
        # Generated and real terms share t, x0 and the path noise within the step.
        gen_path = self.family.path_sample(x0, x1_gen, t, noise)
        with autocast(self.device, self.cfg.precision):
            if self.data_free:
                f_gen, f_data, data_target = self._fake_field(self.fake_trained)(t, gen_path.x_t, y).float(), None, None
            else:
                data_path = self.family.path_sample(x0, d.x1, t, noise)
                # One forward over [generated; real] is cheaper than two half-size ones (no batch-coupled layers).
                both = self._fake_field(self.fake_trained)(t.repeat(2), torch.cat([gen_path.x_t, data_path.x_t]),
                                                           None if y is None else y.repeat(2))
                f_gen, f_data = both.float().chunk(2)
                data_target = data_path.target
        loss = fake_loss(f_gen, gen_path.target, f_data, data_target, alpha=self.alpha, beta=self.beta,
                         weight=gen_path.weight).mean()
        if self.gan is not None:
            logits_gen, logits_data = self._gan_logits(torch.cat([x1_gen, d.x1]), y, d).chunk(2)
            loss = loss + self.gan.disc_coef * discriminator_loss(logits_data, logits_gen).mean()
        norm = optimizer_step(loss, self.fake_params, self.fake_opt, self.fake_sched, self.cfg.fake_optim.grad_clip)
        return loss.detach(), norm

    def generator_step(self, batch: TrainData, rng: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """One update of the generator through ``x1_gen`` on the global ``batch``; returns (loss, gradient norm)."""
        d = self._draws(batch, rng)
        y, x0, t, noise = d.y, d.x0, d.t, d.noise
        self.fake.requires_grad_(False)  # gradients reach the generator only, through x_t and the target
        if self.gan is not None:
            self.disc_head.requires_grad_(False)
        try:
            with autocast(self.device, self.cfg.precision):
                x1_gen = self._generate(d, y, self.generator_trained).float()
                gen_path = self.family.path_sample(x0, x1_gen, t, noise)
                f_fake = self._fake_field(self.fake)(t, gen_path.x_t, y)
                f_teacher = self.teacher_field(t, gen_path.x_t, y)
            loss = generator_loss(f_fake.float(), f_teacher.float(), gen_path.target,
                                  alpha=self.alpha, beta=self.beta, weight=gen_path.weight).mean()
            if self.gan is not None:
                loss = loss + self.gan.gen_coef * generator_gan_loss(self._gan_logits(x1_gen, y, d)).mean()
            norm = optimizer_step(loss, self.generator.parameters(), self.gen_opt, self.gen_sched,
                                  self.cfg.generator_optim.grad_clip)
        finally:
            self.fake.requires_grad_(True)
            if self.gan is not None:
                self.disc_head.requires_grad_(True)
        self.ema.update(self.generator.net)
        return loss.detach(), norm

    def state_dict(self) -> dict:
        return {"generator": self.generator.net.state_dict(), "fake": self.fake.state_dict(),
                "gen_opt": self.gen_opt.state_dict(), "gen_sched": self.gen_sched.state_dict(),
                "fake_opt": self.fake_opt.state_dict(), "fake_sched": self.fake_sched.state_dict(),
                "ema": self.ema.state_dict(),
                **({"disc_head": self.disc_head.state_dict()} if self.gan else {})}

    def load_state_dict(self, state: dict) -> None:
        self.generator.net.load_state_dict(state["generator"])
        self.fake.load_state_dict(state["fake"])
        self.gen_opt.load_state_dict(state["gen_opt"])
        self.gen_sched.load_state_dict(state["gen_sched"])
        self.fake_opt.load_state_dict(state["fake_opt"])
        self.fake_sched.load_state_dict(state["fake_sched"])
        self.ema.load_state_dict(state["ema"])
        if self.gan is not None:
            self.disc_head.load_state_dict(state["disc_head"])


def distillation_update(uid: RealUID, batches: Callable[[int], TrainData], step: int,
                        seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Generator update ``step`` of the loop: ``uid.cfg.fake_updates_per_generator_update`` fake phases, then
    the generator phase.

    Phase ``k`` of update ``step`` takes batch ``batches(step * phases + k)`` (a :class:`BatchStream`, or
    any function of the index) and its draws from ``seeded(seed, step, k)``: the loop's randomness is a
    function of ``step``, which is what makes resuming exact. Returns each phase's (loss, grad norm), 0-d
    tensors left on the device, the generator phase's last.
    """
    phases = uid.cfg.fake_updates_per_generator_update + 1
    results = []
    for k in range(phases):
        phase = uid.generator_step if k == phases - 1 else uid.fake_step
        results.append(phase(batches(step * phases + k), seeded(seed, step, k, device=uid.device)))
    return results


def generator_times(family, cfg) -> tuple[float, ...]:
    """The re-noising times ``t_2 < ... < t_k`` of ``cfg``'s k-step student (``()`` for one step), checked
    against ``family`` (:class:`realuid.errors.ConfigError` otherwise)."""
    steps, times = getattr(cfg, "generator_steps", 1), getattr(cfg, "generator_times", [])
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"distill.generator_steps must be an integer >= 1, got {steps!r}")
    if len(times) != steps - 1:
        raise ConfigError(f"distill.generator_times: a {steps}-step student re-noises at {steps - 1} times "
                          f"t_2 < ... < t_k, got {len(times)}: {list(times)}")
    return check_generator_times(family, times)


@keeps_global_rng
def distill(
    family,
    data: TrainData,
    teacher: nn.Module,
    spec: dict,
    cfg,
    state_dir: str | Path,
    *,
    alpha: float,
    beta: float,
    progress: bool = True,
    stop_after: int | None = None,
    student_init: nn.Module | None = None,
    fake_start: nn.Module | None = None,
    on_log: Callable[[dict, nn.Module], None] | None = None,
    evaluator=None,
    dist: Dist = SINGLE_PROCESS,
) -> dict:
    """RealUID distillation: ``cfg.fake_updates_per_generator_update`` fake steps, then one generator step.

    ``teacher`` is the frozen multi-step model ``f*`` (see :class:`RealUID`) and ``spec`` its model spec, or
    None for a module of one's own (the fake model is then a copy of it, the result's spec None); ``cfg`` is a
    :class:`realuid.config.DistillConfig` (``cfg.batch_size`` is the global batch, split evenly over the
    processes of ``dist``; only rank 0 writes to ``state_dir``); resumes from ``state_dir``.
    ``on_log(row, generator)`` is called on rank 0 at each log interval (benchmarks follow convergence
    with it). ``fake_start``: the fake model starts as a copy of it instead of as ``cfg.fake_init`` says
    (see :class:`RealUID`; a resumed run must pass the same). ``evaluator`` (a
    :class:`realuid.in_training_eval.QualityEvaluator`, or None) scores every copy of the generator every
    ``evaluator.every_steps`` updates (on every process, rank 0 writing) into ``state_dir/eval.csv``
    (:class:`QualityLog`). Returns the generator :class:`realuid.checkpoints.Checkpoint`: raw weights,
    one copy ``ema_<decay>`` per EMA decay, ``meta`` with ``alpha``, ``beta`` and ``step``, and ``cfg`` as
    its config; with ``cfg.keep_best`` (on rank 0) also the copy ``best``, the best copy's weights, and
    ``meta["best"] = {"copy", "step", <metric>}`` saying which it is.
    """
    generator_times(family, cfg)  # bad settings stop here, before anything is written
    check_guidance(spec, getattr(cfg, "guidance_scale", 1.0))
    state_dir = Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = state_dir / "checkpoint.pt"
    device = data.x1.device
    dist.rows(cfg.batch_size)  # a batch that does not split evenly stops here, before any work
    uid = RealUID(family, teacher, spec, cfg, alpha=alpha, beta=beta, device=device, student_init=student_init,
                  fake_start=fake_start, dist=dist)
    log = CurveLog(state_dir / "curves.csv", ["fake_loss", "generator_loss", "fake_grad_norm", "generator_grad_norm"])
    stream = BatchStream(data, cfg.batch_size, cfg.seed)
    keep_best = getattr(cfg, "keep_best", False)
    if keep_best and evaluator is None:
        raise ConfigError("keep_best needs an evaluator: the best copy is chosen by the in-training metric")
    quality = (None if evaluator is None
               else QualityLog(evaluator, state_dir / "eval.csv", keep_best=keep_best, write=dist.is_main))

    start = 0
    state = resume_state(ckpt_path, dist)
    if state is not None:
        uid.load_state_dict(state)
        start = state["step"]
        if quality is not None:
            quality.load_state_dict(state)
    if dist.is_main:
        log.trim(start)
        if quality is not None:
            quality.log.trim(start)

    meter = Meter()
    bar = progress_bar(cfg.steps, start, f"distill a={alpha:g} b={beta:g}", progress and dist.is_main)
    compile_timer = CompileTimer(getattr(cfg, "speed", SpeedConfig()), device, "distill", dist.is_main)
    for step in range(start, cfg.steps):
        *fakes, (g_loss, g_norm) = distillation_update(uid, stream, step, cfg.seed)
        compile_timer.done()
        f_loss, f_norm = fakes[-1]
        meter.add(fake_loss=f_loss, generator_loss=g_loss, fake_grad_norm=f_norm, generator_grad_norm=g_norm)
        if after_step(step + 1, cfg=cfg, stop_after=stop_after, meter=meter, dist=dist, log=log, bar=bar,
                       ckpt_path=ckpt_path, state=lambda: {**uid.state_dict(), **(quality.state_dict() if quality else {})},
                       on_row=None if on_log is None else lambda row: on_log(row, uid.generator),
                       evaluate=None if quality is None else
                       lambda done: quality.evaluate(done, uid) if quality.due(done, cfg.steps) else None):
            break
    bar.close()
    result = Checkpoint(kind="generator", spec=spec, family=family_record(family),
                        weights=uid.generator.net.state_dict(),
                        copies={ema_copy_name(d): s for d, s in uid.ema.shadows.items()},
                        meta={"alpha": alpha, "beta": beta, "step": min(cfg.steps, stop_after or cfg.steps),
                              # The re-noising times of a k-step student (load_generator reads them).
                              **({"generator_times": list(uid.times)} if uid.times else {})},
                        config=config_record(cfg))
    if quality is not None and quality.best is not None:
        # One more named copy beside the EMA ones, so every reader of copies loads it the same way.
        best = dict(quality.best)
        result.copies[BEST_COPY] = best.pop("state_dict")
        result.meta["best"] = best
    return result
