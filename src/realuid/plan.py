"""A plan before the run: what each stage of ``dvc.yaml`` will cost under a params file, measured here.

``python -m realuid.plan [--params params.yaml] [--json] [--device auto] [--slurm-resources plan.json]``

For every stage the plan builds the networks the params describe at their configured sizes, counts the
FLOPs of one step with :class:`torch.utils.flop_counter.FlopCounterMode` (matrix products and
convolutions, forward and backward, as the training loops run them) and times a few real steps on the
present device through the library's own entry points (``train_teacher`` and ``distill`` with
``stop_after``, the samplers, the feature extractor and the metrics). Time is projected as measured
seconds per step times the stage's steps: FLOPs alone miss what the step does besides matrix products
(normalisations, the optimizer, the EMA, host synchronisation), which dominates small networks.

Each stage's time is ``fixed + steps x seconds_per_step / processes``: the fixed part is a process's start
(Python and the library imported, measured once in a subprocess), DVC's bookkeeping (:data:`DVC_STAGE_SECONDS`,
a stated constant) and the measured cost of a loop call (building, resuming and checkpointing the
networks), counted once per checkpoint. Several processes are assumed to divide the steps evenly
(ideal data parallelism: communication is not counted, a CPU cannot measure it).

Peak memory is ``torch.cuda.max_memory_allocated`` of the measured steps on a GPU; on a CPU it is an
estimate: the process's resident memory after importing the library, plus the data set, plus the peak of
the tensors autograd keeps for the backward pass of one measured step, plus the networks' weights,
gradients, optimizer moments and EMA copies.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from .errors import UserError

# DVC's work around one stage (hashing its deps and outs, writing dvc.lock); stated, not measured.
DVC_STAGE_SECONDS = 2.0
# The cheap report stage (a few plots and a table) beside its process start; stated, not measured.
REPORT_SECONDS = 3.0
# Slurm requests: the projection with this margin, rounded up, and never below the floors.
RUNTIME_MARGIN = 1.5
RUNTIME_FLOOR_MINUTES = 5
MEMORY_MARGIN = 1.5
MEMORY_FLOOR_MB = 1000
# Metrics whose cost grows with the square of the rows (pairwise distances) are timed on at most this
# many rows and scaled by the square of the ratio (an upper bound for their linear parts).
METRIC_ROWS_TIMED = 2000
MIB = 2**20


class PlanError(UserError, RuntimeError):
    """A params file or data set the plan cannot work from; reported as one ``error:`` line."""


@dataclass
class StagePlan:
    """One stage's projection: wall ``seconds``, total ``flops``, ``peak_memory_mb`` (``memory`` says how
    it was obtained), ``processes``, ``gpu_hours`` (processes x hours, GPU stages) and ``slurm`` resources."""

    stage: str
    seconds: float
    flops: float
    peak_memory_mb: float
    memory: str
    processes: int
    gpu: bool
    basis: str
    gpu_hours: float = 0.0
    slurm: dict = field(default_factory=dict)


@dataclass
class Measured:
    """A loop measured on the present device: FLOPs and seconds of one step, the fixed cost of one call,
    and the peak memory of the measured steps (bytes; None when only estimated)."""

    flops_per_step: float
    seconds_per_step: float
    call_seconds: float
    peak_bytes: float


# --------------------------------------------------------------------------------------------------
# Counting and timing
# --------------------------------------------------------------------------------------------------


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of ``fn()`` as :class:`FlopCounterMode` counts them (matrix products, convolutions, attention)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


class SavedTensorPeak:
    """The peak bytes of tensors autograd holds for backward passes run inside the context (the
    activations of a step; weights saved by their operations are counted too). Storages shared by
    several saved tensors count once."""

    def __init__(self):
        self.live = self.peak = 0
        self._refs: dict[int, list[int]] = {}
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)

    def _pack(self, tensor: torch.Tensor):
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        ref = self._refs.setdefault(key, [0, storage.nbytes()])
        if ref[0] == 0:
            self.live += ref[1]
            self.peak = max(self.peak, self.live)
        ref[0] += 1
        return key, tensor

    def _unpack(self, packed):
        key, tensor = packed
        ref = self._refs.get(key)
        if ref is not None:
            ref[0] -= 1
            if ref[0] == 0:
                self.live -= ref[1]
                del self._refs[key]
        return tensor

    def __enter__(self):
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc):
        return self._hooks.__exit__(*exc)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _seconds(fn: Callable[[], object], device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def measure_loop(run: Callable[[int], object], device: torch.device, steps: int) -> Measured:
    """Measure a resumable loop: ``run(n)`` continues it up to step ``n`` (the loops' ``stop_after``).

    Step 1 is the warm-up; its FLOPs and saved tensors are counted. Then the loop runs on to
    ``1 + steps`` (``steps`` steps) and on to ``1 + 3 * steps`` (``2 * steps`` more): both calls pay the
    same fixed cost (building, resuming, checkpointing), so their difference is ``steps`` steps' worth.
    """
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with SavedTensorPeak() as saved:
        flops = count_flops(lambda: run(1))
    short = _seconds(lambda: run(1 + steps), device)
    long = _seconds(lambda: run(1 + 3 * steps), device)
    per_step = max((long - short) / steps, 0.0) or long / (2 * steps)  # the fallback: a shared machine's noise
    fixed = max(short - steps * per_step, 0.0)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else saved.peak
    return Measured(flops, per_step, fixed, peak)


def measure_calls(call: Callable[[], object], device: torch.device, repeats: int) -> tuple[float, float]:
    """(FLOPs, seconds) of one ``call()``: counted on a warm-up call, timed as the mean of ``repeats``."""
    flops = count_flops(call)
    return flops, _seconds(lambda: [call() for _ in range(repeats)], device) / repeats


def _library_env() -> dict:
    """The environment of a stage's process: this library's sources first, as dvc.yaml's commands set."""
    import realuid

    return {**os.environ, "PYTHONPATH": str(Path(realuid.__file__).resolve().parents[1])}


def run_prepare(params_path: str | Path, out: Path) -> float:
    """Run the prepare stage into ``out`` as the pipeline does (its own process); returns its seconds.
    Its error line becomes the plan's."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "realuid.stages.prepare", "--params", str(params_path),
                           "--out", str(out)], env=_library_env(), capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
        raise PlanError(lines[-1].removeprefix("error: ") if lines else f"the prepare stage failed: {done.stderr.strip()}")
    return seconds


def process_start_seconds() -> float:
    """Seconds a fresh Python process takes to import a stage of the library (torch included)."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import realuid.stages.distill"], env=_library_env(), check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def base_resident_bytes() -> float:
    """This process's peak resident memory so far (Linux reports kibibytes): torch and the library loaded."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024.0


def weight_bytes(net: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in (*net.parameters(), *net.buffers()))


# --------------------------------------------------------------------------------------------------
# The stages
# --------------------------------------------------------------------------------------------------


@dataclass
class Context:
    """What every stage's estimate reads: params, the measuring device, the prepared splits, a scratch
    folder, the measured steps per loop, a process's start, the base memory and dvc.yaml's stages."""

    params: object
    device: torch.device
    train: object
    test: object
    scratch: Path
    steps: int
    start_seconds: float
    base_bytes: float
    stages: dict
    extractor_path: str | None = None
    teacher: tuple[torch.nn.Module, dict] | None = None


def _stage(ctx: Context, name: str, *, compute_seconds: float, flops: float, peak_bytes: float | None,
           state_bytes: float, basis: str, processes: int = 1, fixed_seconds: float = 0.0) -> StagePlan:
    """A stage's projection from its measured parts (see the module's docstring for the model). Stages
    dvc.yaml does not mark ``gpu`` run on the CPU (``features`` trains its extractor there), so their
    memory is the estimate."""
    seconds = ctx.start_seconds + DVC_STAGE_SECONDS + fixed_seconds + compute_seconds / processes
    data_bytes = sum(a.nbytes for split in (ctx.train, ctx.test) for a in (split.x1, split.y, split.x0) if a is not None)
    meta = ctx.stages[name]
    gpu = bool(meta.get("gpu"))
    on_gpu = gpu and ctx.device.type == "cuda"
    if on_gpu and peak_bytes is not None:
        memory, peak = "cuda max_memory_allocated", peak_bytes
    else:
        memory = "estimate: base RSS + data + saved activations + weights/optimizer/EMA"
        peak = ctx.base_bytes + data_bytes + (peak_bytes or 0.0) + state_bytes
    hours = seconds / 3600.0
    host_bytes = ctx.base_bytes + data_bytes + state_bytes + (0.0 if on_gpu else peak_bytes or 0.0)
    slurm = {"runtime": max(RUNTIME_FLOOR_MINUTES, math.ceil(RUNTIME_MARGIN * seconds / 60.0)),
             "mem_mb": max(MEMORY_FLOOR_MB, 1000 * math.ceil(MEMORY_MARGIN * host_bytes / MIB / 1000.0)),
             "cpus": max(int((meta.get("slurm") or {}).get("cpus", 1)), processes),
             "gpus": processes if gpu else 0}
    return StagePlan(name, seconds, float(flops), peak / MIB, memory, processes, gpu, basis,
                     gpu_hours=processes * hours if gpu else 0.0, slurm=slurm)


def plan_prepare(ctx: Context, seconds: float) -> StagePlan:
    """Timed directly: the plan runs the stage (process start included) for the data it measures on."""
    return _stage(ctx, "prepare", compute_seconds=seconds - ctx.start_seconds, flops=0, peak_bytes=0, state_bytes=0,
                  basis="timed directly (the plan prepares the data itself)")


def plan_features(ctx: Context) -> StagePlan:
    """The offline extractor's training (always on the CPU, as the stage runs it) and the reference features."""
    from .features import save_feature_net, train_feature_net

    params, train = ctx.params, ctx.train
    if train.kind == "points":
        return _stage(ctx, "features", compute_seconds=0, flops=0, peak_bytes=0, state_bytes=0,
                      basis="points: no extractor")
    cfg = params.features
    images = torch.as_tensor(train.x1)
    labels = None if train.y is None else torch.as_tensor(train.y)
    cpu = torch.device("cpu")
    fit = lambda n: train_feature_net(images, labels, steps=n, batch_size=cfg.batch_size, lr=cfg.lr,  # noqa: E731
                                      seed=cfg.seed, progress=False)
    with SavedTensorPeak() as saved:
        flops = count_flops(lambda: fit(1))
    short = _seconds(lambda: fit(ctx.steps), cpu)
    fitted = []  # the extractor later stages time (any weights time the same)
    long = _seconds(lambda: fitted.append(fit(3 * ctx.steps)), cpu)
    per_step = max((long - short) / (2 * ctx.steps), 0.0) or long / (3 * ctx.steps)
    net = fitted[0]
    ctx.extractor_path = str(ctx.scratch / "extractor.pt")
    save_feature_net(ctx.extractor_path, net, {"source": train.attrs.get("source")})
    reference = ctx.train if params.evaluate.reference == "train" else ctx.test
    extract_seconds, extract_flops = _extraction(ctx, len(reference), cpu)
    state = 4 * weight_bytes(net)  # weights, gradients, two Adam moments
    return _stage(ctx, "features", compute_seconds=cfg.steps * per_step + extract_seconds,
                  flops=cfg.steps * flops + extract_flops, peak_bytes=saved.peak, state_bytes=state,
                  fixed_seconds=max(short - ctx.steps * per_step, 0.0),
                  basis=f"seconds/step timed over {4 * ctx.steps} extractor steps x {cfg.steps} steps, "
                        f"plus {len(reference)} reference rows' features")


def _extraction(ctx: Context, rows: int, device: torch.device) -> tuple[float, float]:
    """(seconds, FLOPs) of evaluate's extractor over ``rows`` images, timed on one batch."""
    from .metrics import image_features

    cfg = ctx.params.evaluate
    batch = min(cfg.batch_size, max(rows, 1))
    images = torch.rand(batch, *ctx.train.sample_shape) * 2 - 1
    weights = _extractor_weights(ctx)
    call = lambda: image_features(images, extractor=cfg.feature_extractor, extractor_weights_path=weights,  # noqa: E731
                                  batch_size=batch, device=device.type)
    flops, seconds = measure_calls(call, device, repeats=2)
    return seconds * rows / batch, flops * rows / batch


def _extractor_weights(ctx: Context) -> str:
    cfg = ctx.params.evaluate
    if cfg.feature_extractor == "realuid-features":
        return ctx.extractor_path
    if not cfg.feature_extractor_weights_path or not Path(cfg.feature_extractor_weights_path).is_file():
        raise PlanError("evaluate.feature_extractor_weights_path must name the Inception weights file you supply "
                        f"(got {cfg.feature_extractor_weights_path!r}); nothing is downloaded")
    return cfg.feature_extractor_weights_path


def train_data(split, device: torch.device):
    """A data split as the loops take it, on ``device``."""
    from .training.batches import TrainData

    arrays = ((split.x1, torch.float32), (split.y, torch.long), (split.x0, torch.float32))
    return TrainData(*(None if a is None else torch.as_tensor(a, dtype=t, device=device) for a, t in arrays))


def _families(params):
    from .matching import make_family

    name, options = params.family.name, params.family.options()
    return make_family(name, **options), make_family(name, **options, **params.generator.options(name))


def _teacher_net(ctx: Context) -> tuple[torch.nn.Module, dict]:
    """A teacher network as the params build it (random weights: the cost does not depend on them) and
    its spec, built once."""
    from .models import build_model, model_spec

    if ctx.teacher is not None:
        return ctx.teacher
    cfg = ctx.params.train_teacher
    if cfg.import_checkpoint:
        from .authors import load_authors_teacher

        spec, _ = load_authors_teacher(cfg.import_checkpoint, ema=None if cfg.import_ema == "none" else cfg.import_ema)
    else:
        spec = model_spec(cfg.model, ctx.train.sample_shape, ctx.train.num_classes)
    torch.manual_seed(0)
    ctx.teacher = build_model(spec).to(ctx.device), spec
    return ctx.teacher


def plan_train_teacher(ctx: Context) -> StagePlan:
    from .training.teacher import train_teacher

    cfg = ctx.params.train_teacher
    family, _ = _families(ctx.params)
    net, spec = _teacher_net(ctx)
    weights = weight_bytes(net)
    if cfg.import_checkpoint:
        return _stage(ctx, "train_teacher", compute_seconds=0, flops=0, peak_bytes=None, state_bytes=2 * weights,
                      basis="imported teacher: no training")
    data = train_data(ctx.train, ctx.device)
    state = ctx.scratch / "train_teacher"
    m = measure_loop(lambda n: train_teacher(family, data, spec, cfg, state, progress=False, stop_after=n),
                     ctx.device, ctx.steps)
    checkpoints = math.ceil(cfg.steps / cfg.checkpoint_every_steps)
    return _stage(ctx, "train_teacher", compute_seconds=cfg.steps * m.seconds_per_step, flops=cfg.steps * m.flops_per_step,
                  peak_bytes=m.peak_bytes, state_bytes=5 * weights, processes=cfg.nproc,
                  fixed_seconds=checkpoints * m.call_seconds,
                  basis=f"seconds/step timed over {3 * ctx.steps} steps x {cfg.steps} steps; {checkpoints} checkpoint(s)")


def realuid_iteration(ctx: Context, cfg, alpha: float, beta: float, state: Path) -> Measured:
    """One RealUID iteration measured through ``distill``: ``cfg.fake_updates_per_generator_update`` fake
    updates and one generator update on the configured networks and batch."""
    from .training.distillation import distill

    _, family = _families(ctx.params)
    teacher, spec = _teacher_net(ctx)
    data = train_data(ctx.train, ctx.device)
    return measure_loop(lambda n: distill(family, data, teacher, spec, cfg, state, alpha=alpha, beta=beta,
                                          progress=False, stop_after=n), ctx.device, ctx.steps)


def _in_training_evaluation(ctx: Context, cfg) -> tuple[float, int, float]:
    """(seconds of one evaluation of every generator copy, evaluations in a run of ``cfg.steps``, seconds
    of building the evaluator: the training split's image features, unless the features stage cached them)."""
    if cfg.eval_every_steps == 0:
        return 0.0, 0, 0.0
    from . import in_training_eval
    from .sampling import OneStepGenerator

    _, family = _families(ctx.params)
    teacher, spec = _teacher_net(ctx)
    weights = None if ctx.train.kind == "points" else _extractor_weights(ctx)
    built = []
    build_seconds = _seconds(lambda: built.append(in_training_eval.build(
        family, ctx.train, cfg, ctx.params.evaluate, weights_path=weights, cache_root=None,
        num_classes=spec["args"].get("num_classes", 0), device=ctx.device)), ctx.device)
    if ctx.train.kind == "images" and ctx.params.evaluate.reference == "train":
        build_seconds = 0.0  # the stage reads the features stage's cache of the training split
    evaluator = built[0]
    generator = OneStepGenerator(family, teacher).eval()
    evaluator(generator)  # warm-up
    seconds = _seconds(lambda: evaluator(generator), ctx.device)
    copies = 1 + len(cfg.ema_decays)
    evaluations = cfg.steps // cfg.eval_every_steps + (1 if cfg.steps % cfg.eval_every_steps else 0)
    return copies * seconds, evaluations, build_seconds


def plan_distill(ctx: Context, name: str = "distill") -> StagePlan:
    params = ctx.params
    cfg, alpha, beta = params.distill, params.alpha, params.beta
    if name == "finetune":
        ft = params.finetune
        if not ft.enabled:
            return _stage(ctx, name, compute_seconds=0, flops=0, peak_bytes=None, state_bytes=0,
                          basis="disabled: the generator passes through")
        cfg = dataclasses.replace(cfg, steps=ft.steps, fake_init="teacher",
                                  generator_optim=dataclasses.replace(cfg.generator_optim, lr=ft.generator_lr),
                                  fake_optim=dataclasses.replace(cfg.fake_optim, lr=ft.fake_lr))
        alpha, beta = ft.alpha, ft.beta
    m = realuid_iteration(ctx, cfg, alpha, beta, ctx.scratch / name)
    eval_seconds, evaluations, eval_setup_seconds = _in_training_evaluation(ctx, cfg)
    checkpoints = math.ceil(cfg.steps / cfg.checkpoint_every_steps)
    weights = weight_bytes(_teacher_net(ctx)[0])
    # teacher; generator with gradients, Adam and EMA copies; fake model with gradients and Adam
    state = weights * (1 + 4 + len(cfg.ema_decays) + 4)
    return _stage(ctx, name, compute_seconds=cfg.steps * m.seconds_per_step,
                  flops=cfg.steps * m.flops_per_step, peak_bytes=m.peak_bytes, state_bytes=state,
                  processes=cfg.nproc,
                  fixed_seconds=checkpoints * m.call_seconds + evaluations * eval_seconds + eval_setup_seconds,
                  basis=f"seconds/iteration timed over {3 * ctx.steps} iterations x {cfg.steps} "
                        f"({cfg.fake_updates_per_generator_update} fake + 1 generator update each); "
                        f"{checkpoints} checkpoint(s); {evaluations} in-training evaluations")


def plan_sample(ctx: Context) -> StagePlan:
    """The teacher's ``teacher_nfe`` network evaluations per batch and one per generator copy."""
    cfg, distill_cfg = ctx.params.sample, ctx.params.distill
    net, spec = _teacher_net(ctx)
    batch = min(cfg.batch_size, cfg.n_samples)
    x = torch.randn(batch, *ctx.train.sample_shape, device=ctx.device)
    t = torch.full((batch,), 0.5, device=ctx.device)
    y = torch.zeros(batch, dtype=torch.long, device=ctx.device) if spec["args"].get("num_classes") else None
    if ctx.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(ctx.device)
    with torch.no_grad():
        flops, seconds = measure_calls(lambda: net(t, x, y), ctx.device, repeats=ctx.steps)
    copies = 1 + len(distill_cfg.ema_decays) + (1 if distill_cfg.keep_best else 0)
    batches = math.ceil(cfg.n_samples / batch)
    evaluations = batches * (cfg.teacher_nfe + copies)
    peak = torch.cuda.max_memory_allocated(ctx.device) if ctx.device.type == "cuda" else None
    # Every sample set is held until written: teacher and each copy, float32.
    held = (copies + 1) * cfg.n_samples * x[0].numel() * 4
    return _stage(ctx, "sample", compute_seconds=evaluations * seconds, flops=evaluations * flops, peak_bytes=peak,
                  state_bytes=weight_bytes(net) * (1 + copies) + held, processes=cfg.nproc,
                  basis=f"seconds/forward at batch {batch} x {batches} batches x ({cfg.teacher_nfe} teacher NFE "
                        f"+ {copies} generator copies)")


def _metric_seconds(ctx: Context, rows: int, reference_rows: int) -> float:
    """Seconds of the metrics of one row of ``rows`` samples against ``reference_rows`` (scaled, see
    :data:`METRIC_ROWS_TIMED`)."""
    cfg = ctx.params.evaluate
    n, m = min(rows, METRIC_ROWS_TIMED), min(reference_rows, METRIC_ROWS_TIMED)
    scale = (rows / n) * (reference_rows / m)
    if ctx.train.kind == "points":
        from .metrics import point_metrics

        gen, ref = torch.randn(n, *ctx.train.sample_shape).numpy(), torch.randn(m, *ctx.train.sample_shape).numpy()
        return scale * _seconds(lambda: point_metrics(gen, ref, seed=cfg.seed), torch.device("cpu"))
    from .metrics import image_features, image_metrics_from_features

    probe = image_features(torch.rand(2, *ctx.train.sample_shape) * 2 - 1, extractor=cfg.feature_extractor,
                           extractor_weights_path=_extractor_weights(ctx), batch_size=2, device="cpu")
    gen = {k: torch.randn(n, v.shape[1]) for k, v in probe.items()}
    ref = {k: torch.randn(m, v.shape[1]) for k, v in probe.items()}
    subset = min(cfg.kid_subset_size, n, m)
    return scale * _seconds(lambda: image_metrics_from_features(gen, ref, extractor=cfg.feature_extractor,
                                                                kid_subset_size=subset, seed=cfg.seed),
                            torch.device("cpu"))


def plan_evaluate(ctx: Context) -> StagePlan:
    """Features of every sample set (teacher, each generator copy, a real floor) and their metrics."""
    cfg, distill_cfg, n = ctx.params.evaluate, ctx.params.distill, ctx.params.sample.n_samples
    rows_scored = 1 + 1 + len(distill_cfg.ema_decays) + (1 if distill_cfg.keep_best else 0) + 1
    reference = ctx.train if cfg.reference == "train" else ctx.test
    metric_seconds = rows_scored * _metric_seconds(ctx, n, len(reference))
    if ctx.train.kind == "points":
        return _stage(ctx, "evaluate", compute_seconds=0, fixed_seconds=metric_seconds, flops=0, peak_bytes=None,
                      state_bytes=0, processes=cfg.nproc, basis=f"point metrics of {rows_scored} sample sets, timed")
    extract_seconds, extract_flops = _extraction(ctx, rows_scored * n, ctx.device)
    held = rows_scored * n * ctx.train.x1[0].nbytes
    return _stage(ctx, "evaluate", compute_seconds=extract_seconds, flops=extract_flops, peak_bytes=None,
                  state_bytes=held, processes=cfg.nproc, fixed_seconds=metric_seconds,
                  basis=f"extractor seconds/batch x {rows_scored} sets of {n}; metrics timed on "
                        f"<= {METRIC_ROWS_TIMED} rows (pairwise parts scaled by the square)")


def plan_report(ctx: Context) -> StagePlan:
    return _stage(ctx, "report", compute_seconds=REPORT_SECONDS, flops=0, peak_bytes=0, state_bytes=0,
                  basis=f"a stated constant ({REPORT_SECONDS:g} s of plots and tables)")


# --------------------------------------------------------------------------------------------------
# The whole plan
# --------------------------------------------------------------------------------------------------


def dvc_stages(dvc_yaml: Path) -> dict:
    """{stage: meta} of ``dvc.yaml`` in file order."""
    from .yamlfile import read_yaml

    if not dvc_yaml.is_file():
        raise PlanError(f"no stage registry at {dvc_yaml} (pass --dvc)")
    return {name: dict(stage.get("meta") or {}) for name, stage in read_yaml(dvc_yaml)["stages"].items()}


def make_plan(params_path: str | Path, *, device: str = "auto", dvc_yaml: str | Path | None = None,
              steps: int | None = None) -> dict:
    """The plan of ``params_path``'s run: ``{"device", "stages": [StagePlan as dict], "total_seconds"}``."""
    from .config import load_params
    from .data import read_split
    from .devices import resolve_device

    params = load_params(params_path)
    dvc_yaml = Path(dvc_yaml) if dvc_yaml else Path(params_path).resolve().parent / "dvc.yaml"
    stages = dvc_stages(dvc_yaml)
    known = ("prepare", "features", "train_teacher", "distill", "finetune", "sample", "evaluate", "report")
    unknown = [name for name in stages if name not in known]
    if unknown:
        raise PlanError(f"{dvc_yaml} has stage(s) the plan cannot estimate: {', '.join(unknown)}")
    dev = resolve_device(device)
    steps = steps or (5 if dev.type == "cuda" else 2)
    base = base_resident_bytes()
    with tempfile.TemporaryDirectory(prefix="realuid-plan-") as scratch, contextlib.redirect_stdout(sys.stderr):
        scratch = Path(scratch)
        prepare_seconds = run_prepare(params_path, scratch / "prepare")
        ctx = Context(params, dev, read_split(scratch / "prepare" / "train.h5"),
                      read_split(scratch / "prepare" / "test.h5"), scratch, steps, process_start_seconds(), base,
                      stages)
        estimates = {"prepare": lambda: plan_prepare(ctx, prepare_seconds), "features": lambda: plan_features(ctx),
                     "train_teacher": lambda: plan_train_teacher(ctx), "distill": lambda: plan_distill(ctx),
                     "finetune": lambda: plan_distill(ctx, "finetune"), "sample": lambda: plan_sample(ctx),
                     "evaluate": lambda: plan_evaluate(ctx), "report": lambda: plan_report(ctx)}
        # features first: later stages time the extractor it trains; train_teacher fixes the teacher's spec
        order = [s for s in ("prepare", "features", "train_teacher") if s in stages] + list(stages)
        done: dict[str, StagePlan] = {}
        for name in order:
            if name not in done:
                done[name] = estimates[name]()
    plans = [dataclasses.asdict(done[name]) for name in stages]
    return {"params": str(params_path), "device": str(dev), "measured_steps": steps, "stages": plans,
            "total_seconds": sum(p["seconds"] for p in plans)}


def slurm_resources(plan: dict) -> dict:
    """The plan's Slurm requests as the registry reads them (``plan.json``): ``{stage: {runtime, mem_mb,
    cpus}}``. GPUs are left out: the registry asks for one per process already."""
    return {"stages": {p["stage"]: {k: p["slurm"][k] for k in ("runtime", "mem_mb", "cpus")} for p in plan["stages"]}}


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def format_plan(plan: dict) -> str:
    lines = [f"plan of {plan['params']} measured on {plan['device']} ({plan['measured_steps']} steps per loop, "
             "after a warm-up step)",
             f"{'stage':14s} {'wall':>9s} {'TFLOP':>9s} {'peak MiB':>9s} {'GPU-h':>7s}  "
             f"{'runtime':>7s} {'mem_mb':>7s} {'cpus':>4s} {'gpus':>4s}  basis"]
    for p in plan["stages"]:
        s = p["slurm"]
        lines.append(f"{p['stage']:14s} {_duration(p['seconds']):>9s} {p['flops'] / 1e12:9.3g} "
                     f"{p['peak_memory_mb']:9.0f} {p['gpu_hours']:7.3g}  {s['runtime']:>7d} {s['mem_mb']:>7d} "
                     f"{s['cpus']:>4d} {s['gpus']:>4d}  {p['basis']}")
    lines.append(f"{'total':14s} {_duration(plan['total_seconds']):>9s}   "
                 f"GPU-hours {sum(p['gpu_hours'] for p in plan['stages']):.3g}")
    lines.append("peak memory: " + "; ".join(sorted({p["memory"] for p in plan["stages"]})))
    return "\n".join(lines)


def write_json_atomic(obj: dict, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def cli(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    p.add_argument("--dvc", default=None, help="stage registry (default: dvc.yaml beside the params file)")
    p.add_argument("--device", default="auto", help="device to measure on: auto | cpu | cuda | cuda:N")
    p.add_argument("--steps", type=int, default=None, help="steps timed per loop (default: 2 on CPU, 5 on GPU)")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.add_argument("--slurm-resources", metavar="FILE", default=None,
                   help="also write the Slurm requests for the registry (dvc.yaml's folder's plan.json)")
    args = p.parse_args(argv)
    try:
        if args.steps is not None and args.steps < 1:
            raise PlanError(f"--steps must be at least 1, got {args.steps}")
        plan = make_plan(args.params, device=args.device, dvc_yaml=args.dvc, steps=args.steps)
        if args.slurm_resources:
            write_json_atomic(slurm_resources(plan), Path(args.slurm_resources))
    except (UserError, OSError) as err:  # bad params, data or folders; anything else is a bug with its traceback
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return 1
    print(json.dumps(plan, indent=2) if args.json else format_plan(plan))
    return 0


if __name__ == "__main__":
    sys.exit(cli())
