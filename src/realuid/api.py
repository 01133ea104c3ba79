"""Teachers and distilled generators as modules that sample: :func:`load_generator`, :func:`load_teacher`.

    import realuid
    generator = realuid.load_generator("data/distill/generator.pt", ema=0.999)
    x = generator.sample(16, seed=0)            # [16, ...]: sample i comes from the noise of seed 0 + i

Sample ``i`` of ``.sample(n, seed=s)`` starts from the noise of seed ``s + i`` (EDM's per-seed noise), is
labelled ``i % num_classes`` when the model is class-conditional and no labels are given, and reads the
``i``-th corrupted input (cycled) of ``x0`` for a paired family, whatever ``n`` and ``batch_size``.
What the network makes of those inputs is bit-identical between two calls that evaluate sample ``i`` in
a batch of the same size: the same ``batch_size`` (None: one batch of all ``n``) with ``i`` in a full
batch in both calls, or the same ``n`` as well. In a batch of another size the network's kernels add
in another order, and samples agree to float rounding only (a few float32 units in the last place on
CPU; more where a GPU computes in TF32 or bf16). The ``sample`` stage samples with these same
functions: ``n = sample.n_samples``, ``seed = sample.seed`` and ``batch_size = sample.batch_size``
reproduce its files exactly (on the same device).
A k-step student's re-noising noise continues each seed's own stream
(:func:`realuid.sampling.renoise_noise`), so its sample i is also the same whatever ``n``, and its first
draw stays the one-step sample's. The per-seed inputs and the batch loop are :mod:`realuid.sampling`'s.

"""

from __future__ import annotations

import os

import torch
from torch import Tensor, nn

from .checkpoints import Checkpoint, CheckpointError, read_checkpoint
from .errors import ConfigError
from .models import build_model, check_guidance, data_shape
from .sampling import OneStepGenerator, generate_steps, renoise_noise, sample_in_batches, sample_teacher_batch

__all__ = ["Generator", "Teacher", "family_of", "load_generator", "load_teacher", "network", "sample_layout"]


def family_of(checkpoint: Checkpoint):
    """The matching family a checkpoint was written for (its ``family`` record)."""
    from .matching import make_family

    record = checkpoint.family
    if not isinstance(record, dict) or not isinstance(record.get("options"), dict) or "name" not in record:
        raise CheckpointError(f"{checkpoint.source or 'the checkpoint'} names no family record "
                              f"({{'name', 'options'}}), got {record!r}")
    return make_family(record["name"], **record["options"])


def network(checkpoint: Checkpoint, copy: str | float | None, device: torch.device | str = "cpu",
            net: nn.Module | None = None) -> nn.Module:
    """The network of a checkpoint with the weights of ``copy`` (None: raw; a decay; a copy name), in eval mode.

    ``net``: the module to load the weights into, in place of the one the checkpoint's spec builds; needed
    for a checkpoint of a module of one's own (:func:`realuid.distill`), which has no spec. Loading is
    strict: a layout that does not match is an error, never ignored.
    """
    where = checkpoint.source or "the checkpoint"
    if net is None:
        if checkpoint.spec is None:
            raise CheckpointError(f"{where} holds the weights of a module of one's own (no model spec): pass that "
                                  "module to load them into, e.g. load_generator(path, net=MyModule())")
        net = build_model(checkpoint.spec)
    try:
        net.load_state_dict(checkpoint.state_dict(copy))
    except RuntimeError as err:
        raise CheckpointError(f"{where}: the weights of copy {copy!r} do not fit "
                              f"{'its model spec' if checkpoint.spec is not None else 'the module given'}: "
                              f"{str(err).splitlines()[0]}") from None
    return net.to(device).eval()


def sample_layout(spec: dict | None, meta: dict) -> tuple[tuple[int, ...], int]:
    """(shape of one sample, number of classes) of a network: from its spec, or for a module of one's own
    (no spec) from the checkpoint's ``meta`` (``data_shape``, ``num_classes``, which :func:`realuid.distill`
    records)."""
    if spec is not None:
        return data_shape(spec), int(spec["args"].get("num_classes", 0))
    return tuple(int(s) for s in meta["data_shape"]), int(meta["num_classes"])


def _read(source: str | os.PathLike | Checkpoint, kind: str, needed_by: str, expect_family: str | None) -> Checkpoint:
    checkpoint = source if isinstance(source, Checkpoint) else read_checkpoint(source, kind, needed_by=needed_by)
    if checkpoint.kind != kind:
        raise CheckpointError(f"{checkpoint.source or 'the checkpoint'} is a {checkpoint.kind} checkpoint; "
                              f"{needed_by} needs a {kind} checkpoint")
    got = (checkpoint.family or {}).get("name")
    if expect_family is not None and got != expect_family:
        raise CheckpointError(f"{checkpoint.source or 'the checkpoint'} is a {kind} for family {got}; {needed_by} "
                              f"is set up for family {expect_family}: rerun the stage that writes it")
    return checkpoint


# --------------------------------------------------------------------------------------------------
# Modules
# --------------------------------------------------------------------------------------------------


class Generator(OneStepGenerator):
    """A distilled one-step generator: ``generator(z, y, noise)`` as in training, and :meth:`sample`.

    Attributes: ``family``, ``net``, ``spec``, ``shape`` (one sample), ``num_classes`` (0: unconditional),
    ``copy`` (the weights it holds: None for raw, else the copy's name), ``checkpoint_meta`` and ``times``,
    the re-noising times ``t_2 < ... < t_k`` of a k-step student (``()`` for one step; ``steps`` = k).
    Calling it is one step; :meth:`sample` runs any number of its trained steps.
    """

    def __init__(self, family, net: nn.Module, spec: dict | None, *, copy: str | None = None,
                 meta: dict | None = None):
        super().__init__(family, net)
        self.spec, self.copy, self.checkpoint_meta = spec, copy, dict(meta or {})
        self.shape, self.num_classes = sample_layout(spec, self.checkpoint_meta)
        self.times = tuple(float(t) for t in self.checkpoint_meta.get("generator_times", ()))

    @property
    def steps(self) -> int:
        """k, the number of steps the student was trained for."""
        return len(self.times) + 1

    @classmethod
    def from_checkpoint(cls, checkpoint: Checkpoint, ema: str | float | None = None,
                        device: torch.device | str = "cpu", net: nn.Module | None = None) -> "Generator":
        return cls(family_of(checkpoint), network(checkpoint, ema, device, net), checkpoint.spec,
                   copy=checkpoint.copy_name(ema), meta=checkpoint.meta)

    @torch.no_grad()
    def sample(self, n: int, *, steps: int | None = None, seed: int = 0, labels=None, batch_size: int | None = None,
               x0: Tensor | None = None, noise: Tensor | None = None) -> Tensor:
        """``n`` samples ``[n, *shape]`` on the module's device, in batches of ``batch_size`` (None: one).

        See the module doc for what sample i is, and when two calls give it bit for bit. ``steps``: generator
        evaluations per sample, from 1 (the one-step sample) to the trained k (default); a k-step student read
        with fewer steps stops its chain early (NFE = steps).

        ``noise``: the generator's input noise ``[n, *shape]`` in place of the per-seed draws (row i starts
        sample i; labels and a paired family's ``x0`` as without it). For a family whose generator takes
        noise besides the corrupted input ``x0`` (a bridge read at ``generator_t > 0``), that noise. A k-step
        student's re-noising still draws from the seeds.

        """
        steps = self.check_steps(steps)
        refusal = (f"this {self.family.name} generator starts from x0 alone: it takes no noise"
                   if self.family.paired and not self.family.generator_noise else None)
        return sample_in_batches(self, n, batch_size, seed=seed, labels=labels, x0=x0, noise=noise, refusal=refusal,
                                 sample=lambda start, z, y, z_noise: self.sample_batch(z, y, z_noise, start=start,
                                                                                       seed=seed, steps=steps))

    def check_steps(self, steps: int | None) -> int:
        """``steps`` (None: the trained k) if it is an integer from 1 to k, else one :class:`ConfigError`."""
        steps = self.steps if steps is None else steps
        if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= self.steps:
            raise ConfigError(f"steps must be an integer from 1 to {self.steps} (the steps this generator was "
                              f"trained for), got {steps!r}")
        return steps

    @torch.no_grad()
    def sample_batch(self, z: Tensor, y: Tensor | None, noise: Tensor | None, *, start: int, seed: int,
                     steps: int) -> Tensor:
        """Samples ``start .. start+len(z)-1`` ``[B, ...]`` with ``steps`` evaluations from their one-step inputs
        (:func:`realuid.sampling.one_step_inputs`, on the module's device); the re-noising draws come from
        seeds ``seed + i``."""
        steps = self.check_steps(steps)
        renoise = renoise_noise(self.family, z, start, steps - 1, seed=seed, shape=self.shape)
        return generate_steps(self.family, self.net, z, y, noise, times=self.times[:steps - 1], renoise=renoise)


class Teacher(nn.Module):
    """A multi-step teacher: ``teacher(t, x, y)`` is its network, :meth:`sample` its sampler.

    Attributes as :class:`Generator` (``family``, ``net``, ``spec``, ``shape``, ``num_classes``, ``copy``,
    ``checkpoint_meta``).
    """

    def __init__(self, family, net: nn.Module, spec: dict, *, copy: str | None = None, meta: dict | None = None):
        super().__init__()
        self.family, self.net = family, net
        self.spec, self.copy, self.checkpoint_meta = spec, copy, dict(meta or {})
        self.shape, self.num_classes = data_shape(spec), int(spec["args"].get("num_classes", 0))

    @classmethod
    def from_checkpoint(cls, checkpoint: Checkpoint, ema: str | float | None = "auto",
                        device: torch.device | str = "cpu") -> "Teacher":
        if ema == "auto":
            ema = _teacher_copy(checkpoint)
        return cls(family_of(checkpoint), network(checkpoint, ema, device), checkpoint.spec,
                   copy=checkpoint.copy_name(ema), meta=checkpoint.meta)

    def forward(self, t: Tensor, x: Tensor, y: Tensor | None = None) -> Tensor:
        return self.net(t, x, y)

    @torch.no_grad()
    def sample(self, n: int, *, nfe: int, method: str, seed: int = 0, labels=None, batch_size: int | None = None,
               x0: Tensor | None = None, noise: Tensor | None = None, guidance_scale: float = 1.0) -> Tensor:
        """``n`` samples ``[n, *shape]`` with ``nfe`` network calls by ``method`` (euler | heun | sde).

        Sample ``i`` starts from the same input as the generator's sample ``i``, and the ODE methods
        repeat it as the generator does (see the module doc). The SDE's own noise is drawn per batch
        (seed + its first index), so SDE samples repeat, and match the stage's, for the same
        ``batch_size`` only. ``noise``: the start noise ``[n, *shape]`` in place of the per-seed draws (row i
        starts sample i; labels as without it), e.g. the noise another library's sampler started from.
        A paired family starts from ``x0`` instead. ``guidance_scale`` w samples the classifier-free guided
        field ``f_uncond + w (f_cond - f_uncond)`` (a teacher trained with label dropout; w = 1: none).
        """
        null = check_guidance(self.spec, guidance_scale)
        refusal = (f"the {self.family.name} teacher starts from x0, the corrupted inputs: it takes no noise"
                   if self.family.paired else None)
        return sample_in_batches(self, n, batch_size, seed=seed, labels=labels, x0=x0, noise=noise, refusal=refusal,
                                 sample=lambda start, z, y, _: sample_teacher_batch(
                                     self.family, self.net, z, y, nfe=nfe, method=method, seed=seed, start=start,
                                     guidance_scale=guidance_scale, null_label=null))


def _teacher_copy(checkpoint: Checkpoint) -> str | None:
    """The weights a teacher samples with: its EMA copy (a trained teacher has one); an imported
    teacher has none, its raw weights being the copy chosen at import."""
    emas = sorted(name for name in checkpoint.copies if name.startswith("ema"))
    if len(emas) > 1:
        raise CheckpointError(f"{checkpoint.source or 'the teacher'} has several EMA copies {emas}: choose one with ema=")
    return emas[0] if emas else None


def load_generator(path: str | os.PathLike | Checkpoint, ema: str | float | None = None, *,
                   device: torch.device | str = "cpu", needed_by: str = "load_generator",
                   expect_family: str | None = None, net: nn.Module | None = None) -> Generator:
    """A distilled generator from ``path`` (a generator checkpoint, or one already read).

    ``ema``: None for the raw weights, a decay (``0.999``) for that EMA copy, or a copy's name (e.g.
    ``"best"``). ``net``: a module to load the weights into (required for the generator of a teacher
    module of one's own, whose checkpoint has no model spec; it must be built like that teacher).
    ``needed_by`` and ``expect_family`` phrase and tighten the checks for a caller (a stage).
    """
    checkpoint = _read(path, "generator", needed_by, expect_family)
    return Generator.from_checkpoint(checkpoint, ema, device, net)


def load_teacher(path: str | os.PathLike | Checkpoint, ema: str | float | None = "auto", *,
                 device: torch.device | str = "cpu", needed_by: str = "load_teacher",
                 expect_family: str | None = None) -> Teacher:
    """A teacher from ``path`` (a teacher checkpoint, or one already read).

    ``ema``: ``"auto"`` for the weights the pipeline samples with (the EMA copy of a trained teacher, the
    weights of an imported one), None for the raw weights, a decay or a copy's name for that copy.
    """
    checkpoint = _read(path, "teacher", needed_by, expect_family)
    return Teacher.from_checkpoint(checkpoint, ema, device)
