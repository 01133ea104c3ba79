"""Stage ``finetune``: optionally continue RealUID from a distilled generator with new coefficients.

Disabled (the default), the distilled generator passes through unchanged, so the graph is the same
either way and ``sample`` always reads this stage's output.
"""

from __future__ import annotations

import dataclasses
import shutil
import sys
from pathlib import Path

from ..api import family_of, load_teacher, network
from ..checkpoints import family_record, file_digest, read_checkpoint
from ..config import in_effect, to_dict
from ..data import read_split
from ..devices import resolve_device
from ..distributed import launched_rank, session
from ..code_digest import code_digest
from ..training.bookkeeping import state_key
from ..training.distillation import distill
from . import common
from . import runs
from .distill import build_evaluator, check_gan_backbone, evaluation_settings


def main(args, params) -> None:
    cfg = params.finetune
    if not cfg.enabled:
        if launched_rank() != 0:
            return  # started under a torchrun job anyway: one process copies
        read_checkpoint(args.generator, "generator", needed_by="finetune")  # passes on only what sample can read
        common.check_folders({common.output_folder(args.out): Path(args.generator).stat().st_size})
        with common.atomic_dir(args.out) as tmp:
            shutil.copyfile(args.generator, tmp / "generator.pt")
            runs.write_empty_eval_table(tmp / "eval.csv")  # the plot dvc.yaml declares, with no rows
        print("finetune: disabled, the distilled generator passes through")
        return

    split = read_split(args.data)
    runs.check_batch_size(params.distill.batch_size, split, "distill")
    distilled = read_checkpoint(args.generator, "generator", needed_by="finetune")
    family = family_of(distilled)  # the generator keeps reading its input where it was distilled
    check_gan_backbone(params.distill, distilled.spec)
    # The fake model restarts from the teacher: the distilled fake model chased the old coefficients.
    run_cfg = dataclasses.replace(
        params.distill, steps=cfg.steps, fake_init="teacher",
        generator_optim=dataclasses.replace(params.distill.generator_optim, lr=cfg.generator_lr),
        fake_optim=dataclasses.replace(params.distill.fake_optim, lr=cfg.fake_lr),
    )
    weights, evaluation = evaluation_settings(params, split, args.features)
    key = state_key("finetune", to_dict(cfg), in_effect(run_cfg), family_record(family),
                    file_digest(args.data), file_digest(args.teacher), file_digest(args.generator),
                    *([evaluation] if evaluation else []), code_digest("realuid.stages.finetune"))
    state_dir = Path(args.state) / key
    needs = runs.distill_needs(args.out, state_dir, args.teacher, run_cfg)
    with session(resolve_device(params.distill.device)) as dist, common.working_folders(dist, needs, state_dir):
        device = dist.device
        teacher = load_teacher(args.teacher, device=device, needed_by="finetune", expect_family=params.family.name)
        start = network(distilled, cfg.from_ema, device)
        if dist.is_main:
            print(f"finetune: alpha={cfg.alpha} beta={cfg.beta} from copy {cfg.from_ema}, {device}"
                  f"{f' x {dist.world_size} processes' if dist.parallel else ''}, state {state_dir}")
        evaluator = build_evaluator(params, run_cfg, family, split, teacher.spec, weights, args.features, dist)
        result = distill(family, runs.train_data(split, device), teacher.net, teacher.spec, run_cfg,
                         state_dir, alpha=cfg.alpha, beta=cfg.beta, student_init=start, evaluator=evaluator, dist=dist)
        result.meta["finetuned_from"] = {"copy": cfg.from_ema, **{k: distilled.meta[k] for k in ("alpha", "beta", "step")
                                                                   if k in distilled.meta}}
        if dist.is_main:
            runs.publish_training(args.out, "generator.pt", result, state_dir)
        dist.barrier()  # every process ends once the output is there


def processes(params) -> int:
    """Processes this stage runs as: ``distill.nproc`` when fine-tuning, one for the pass-through."""
    return params.distill.nproc if params.finetune.enabled else 1


def cli(argv: list[str] | None = None) -> int:
    p = common.parser(__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="training split (HDF5) from prepare")
    p.add_argument("--teacher", required=True, help="teacher.pt from train_teacher")
    p.add_argument("--generator", required=True, help="generator.pt from distill")
    p.add_argument("--features", required=True, help="folder from the features stage (image evaluation's extractor)")
    p.add_argument("--out", required=True, help="output folder: generator.pt (+ curves.csv, eval.csv when enabled)")
    p.add_argument("--state", default="state/finetune", help="resumable state (not a pipeline output)")
    return common.run(main, p, argv, module="realuid.stages.finetune", processes=processes)


if __name__ == "__main__":
    sys.exit(cli())
