"""Stage ``sample``: draw samples from the multi-step teacher and the generator at each asked-for step count.

Sample ``i`` starts from the noise of seed ``sample.seed + i`` (paired families: from the ``i``-th
corrupted input of the test split, cycled, and a bridge generator that takes noise gets that seed's
noise), so it is the same whatever the batch size or device.

A k-step student is also sampled with each step count j of ``sample.generator_steps`` ([]: 1 to k), with
``Generator.sample_batch(..., steps=j)``: its one-step rows keep their names (``student.h5``,
``student_raw.h5``, ...), the rows of j > 1 get ``_nfe<j>`` (``student_nfe2.h5``, ``student_raw_nfe2.h5``).
``sample.guidance_scale`` w samples the teacher's classifier-free guided field (w = 1: none).

With ``sample.nproc`` > 1 the stage runs under torchrun and deals whole batches to the processes
round-robin (batch ``j`` to rank ``j % nproc``); after each round of batches rank 0 gathers them, and a
thread of its own streams them into the files while the next round is sampled. A batch is computed
exactly as in one process, SDE noise included, so the files are identical to a one-process run on the
same device type.

Memory: samples are never all held; each batch goes into its HDF5 file as it comes
(:class:`realuid.data.SplitWriter`, the same bytes as writing the whole array at once), and only the
first ``GRID_IMAGES`` images of each row are kept for its picture (points: all of them, for the plot).
"""

from __future__ import annotations

import contextlib
import sys

import numpy as np
import torch

from ..api import load_generator, load_teacher
from ..checkpoints import read_checkpoint
from ..config import BEST_COPY
from ..data import SplitWriter, read_split
from ..devices import resolve_device
from ..distributed import Dist, session
from ..errors import ConfigError
from ..models import check_guidance
from ..plots import image_grid, scatter
from ..sampling import class_labels, one_step_inputs, stream_samples
from . import common
from . import families

GRID_IMAGES = 100


def main(args, params) -> None:
    cfg = params.sample
    with session(resolve_device(cfg.device)) as dist:
        if dist.parallel and dist.is_main and -(-cfg.n_samples // cfg.batch_size) < dist.world_size:
            print(f"sample: only {-(-cfg.n_samples // cfg.batch_size)} batches for {dist.world_size} processes; "
                  "lower sample.batch_size to keep every process busy")
        # No barrier after: rank 0 finishes the files alone (pictures, timing) and torchrun waits for
        # every process anyway; a barrier would hold the others in a collective meanwhile.
        _sample(args, params, dist)


def nfe_row(name: str, steps: int) -> str:
    """The row (file stem) of ``name`` sampled with ``steps`` generator steps: one-step rows keep their name."""
    return name if steps == 1 else f"{name}_nfe{steps}"


def generator_steps(cfg, trained: int) -> list[int]:
    """The step counts ``sample.generator_steps`` asks for ([]: 1 to ``trained``), checked against the trained k."""
    steps = cfg.generator_steps or list(range(1, trained + 1))
    if steps[-1] > trained:
        raise common.StageError(f"sample.generator_steps {steps}: the generator was trained for {trained} step(s) "
                                f"(distill.generator_steps); ask for at most {trained}, or [] for every one")
    return steps


def _sample(args, params, dist: Dist) -> None:
    cfg = params.sample
    device = dist.device
    split = read_split(args.data)
    families.check_family_matches_data(families.teacher_family(params), split)
    teacher = load_teacher(args.teacher, device=device, needed_by="sample", expect_family=params.family.name)
    try:
        null = check_guidance(teacher.spec, cfg.guidance_scale)
    except ConfigError as error:
        raise common.StageError(f"sample.guidance_scale: {error}") from None
    gen_ckpt = read_checkpoint(args.generator, "generator", needed_by="sample")
    # Every copy of the generator is sampled: the raw weights, each EMA decay and the best copy when
    # distill kept one. `student` is the one `sample.generator_ema` names, the headline of the report; with
    # `best` the final copies stay beside it, scored the same way.
    names = sorted(gen_ckpt.copies, key=lambda name: (name == BEST_COPY, name))  # EMA copies, then best
    copies = {"student_raw": None, **{f"student_{name.replace('.', '_')}": name for name in names}}
    wanted = gen_ckpt.copy_name(cfg.generator_ema)
    headline = next((name for name, copy in copies.items() if copy == wanted), None)
    if headline is None:
        raise common.StageError(f"sample.generator_ema {cfg.generator_ema!r}: the generator has no such copy; "
                                f"it has the raw weights (none) and {names}")
    loaded = {name: load_generator(gen_ckpt, ema=copy, device=device, needed_by="sample",
                                   expect_family=params.family.name) for name, copy in copies.items()}
    steps = generator_steps(cfg, loaded["student_raw"].steps)
    # Each row runs the library's own k-step chain, so its samples are Generator.sample's bit for bit.
    generators = {nfe_row(name, j): (lambda start, x, y, noise, g=g, j=j:
                                     g.sample_batch(x, y, noise, start=start, seed=cfg.seed, steps=j))
                  for j in steps for name, g in loaded.items()}
    gen_family, classes = loaded["student_raw"].family, teacher.num_classes
    family = teacher.family  # the teacher samples as it was trained
    inputs = lambda start, n: one_step_inputs(gen_family, start, n, seed=cfg.seed, shape=split.sample_shape,  # noqa: E731
                                              num_classes=classes, x0=split.x0 if gen_family.paired else None)
    # One file per row: the teacher, every (copy, steps) and the headline student at every steps: samples
    # (and their inputs x0 when paired) and labels.
    per_sample = split.x1[0].nbytes * (2 if family.paired else 1) + 8
    rows = 1 + len(steps) * (len(copies) + 1)
    common.check_folders({common.output_folder(args.out): rows * cfg.n_samples * per_sample}, dist)

    # `student` (`student_nfe<j>`): the headline copy's samples once more, pictured and timed.
    same = {nfe_row("student", j): nfe_row(headline, j) for j in steps}
    pictured = {"teacher": cfg.teacher_nfe, **{who: j for who, j in zip(same, steps)}}
    # Every row of more than one step also carries its NFE (and speed) into the metrics.
    nfe = {**pictured, **{nfe_row(name, j): j for j in steps[1:] for name in copies}}
    who_files = ["teacher", *generators, *same]
    guidance = {"guidance_scale": cfg.guidance_scale, "null_label": null}
    if not dist.is_main:
        stream_samples(family, teacher, generators, inputs, cfg.n_samples, cfg, dist, **guidance)
        return
    labels = class_labels(np.arange(cfg.n_samples), classes)
    labels = None if labels is None else labels.numpy()
    # Paired families: each sample is stored with the input it was drawn from, so evaluate scores the pairs.
    inputs_x0 = split.x0[np.arange(cfg.n_samples) % len(split)] if family.paired else None
    images = len(split.sample_shape) == 3
    guided_attrs = {"guidance_scale": cfg.guidance_scale} if cfg.guidance_scale != 1 else {}  # w = 1: today's files
    with common.atomic_dir(args.out) as tmp, contextlib.ExitStack() as files:
        writers = {who: files.enter_context(SplitWriter(tmp / f"{who}.h5", cfg.n_samples, split.sample_shape,
                                                        y=labels, x0=inputs_x0,
                                                        attrs={"source": who, "seed": cfg.seed,
                                                               **(guided_attrs if who == "teacher" else {})}))
                   for who in who_files}
        shown: dict[str, list[np.ndarray]] = {who: [] for who in pictured}  # what the pictures need

        def sink(batch: dict[str, torch.Tensor]) -> None:
            batch = {**batch, **{who: batch[row] for who, row in same.items()}}
            for who in who_files:
                x = batch[who].float().numpy()
                if not np.isfinite(x).all():
                    raise common.StageError(f"the {who} generator produced non-finite samples")
                # Samples may leave [-1, 1] slightly; they are stored as drawn (metrics see the truth).
                writers[who].append(x)
                if who in shown and not (images and sum(len(a) for a in shown[who]) >= GRID_IMAGES):
                    shown[who].append(x)

        by_who = stream_samples(family, teacher, generators, inputs, cfg.n_samples, cfg, dist, sink=sink, **guidance)
        for who in pictured:
            x = np.concatenate(shown[who])
            if images:
                image_grid(np.clip(x[:GRID_IMAGES], -1, 1), tmp / f"{who}.png")
            else:
                scatter(x, tmp / f"{who}.png", title=f"{who} ({params.family.name}, NFE {nfe[who]})",
                        reference=split.x1)
        seconds = {**by_who, **{who: by_who[row] for who, row in same.items()}}
        timing = {who: {"nfe": nfe[who], "samples_per_second": cfg.n_samples / max(seconds[who], 1e-9)} for who in nfe}
        timing["teacher"].update(guided_attrs)
        common.write_json({**timing, "device": str(device), "processes": dist.world_size,
                           "n_samples": cfg.n_samples, "student_copy": headline,
                           # which (copy, step) the `best` copy is, by which in-training metric
                           **({"best": gen_ckpt.meta["best"]} if "best" in gen_ckpt.meta else {})}, tmp / "timing.json")
        print("sample: " + ", ".join(f"{k} {timing[k]['samples_per_second']:.0f}/s (NFE {timing[k]['nfe']})"
                                     for k in pictured)
              + f"; student = {headline}, also {', '.join(n for n in loaded if n != headline)}")


def cli(argv: list[str] | None = None) -> int:
    p = common.parser(__doc__)
    p.add_argument("--teacher", required=True, help="teacher.pt from train_teacher")
    p.add_argument("--generator", required=True, help="generator.pt from distill")
    p.add_argument("--data", required=True, help="test split (HDF5): pairs for bridges, shapes, reference plot")
    p.add_argument("--out", required=True, help="output folder: teacher.h5, student.h5, PNGs, timing.json")
    return common.run(main, p, argv, module="realuid.stages.sample", processes=lambda params: params.sample.nproc)


if __name__ == "__main__":
    sys.exit(cli())
