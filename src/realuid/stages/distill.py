"""Stage ``distill``: RealUID distillation of the teacher into a one-step generator.

With ``distill.eval_every_steps`` > 0 it also scores the raw generator and every EMA copy during training
(:mod:`realuid.in_training_eval`) into ``eval.csv``; ``finetune`` does the same with the helpers here.
"""

from __future__ import annotations

import sys

from pathlib import Path

from ..api import load_teacher
from ..checkpoints import family_record, file_digest, read_checkpoint
from ..config import in_effect
from ..data import read_split
from ..devices import resolve_device
from ..distributed import session
from ..code_digest import code_digest
from ..training.bookkeeping import state_key
from ..training.distillation import distill, generator_times
from . import common
from . import families
from . import runs


def main(args, params) -> None:
    cfg = params.distill
    split = read_split(args.data)
    families.check_family_matches_data(families.teacher_family(params), split)
    runs.check_batch_size(cfg.batch_size, split, "distill")
    weights, evaluation = evaluation_settings(params, split, args.features)
    # The teacher file's family record is the family (an imported teacher brings its own schedule).
    teacher_file = read_checkpoint(args.teacher, "teacher", needed_by="distill")
    families.check_teacher_family(teacher_file, params, "distill")
    check_gan_backbone(cfg, teacher_file.spec)
    family = families.generator_family(params, teacher_file.family)
    generator_times(family, cfg)  # a k-step student's times in the family's range, before any work
    key = state_key("distill", params.alpha, params.beta, family_record(family), in_effect(cfg),
                    file_digest(args.data), file_digest(args.teacher), *([evaluation] if evaluation else []),
                    code_digest("realuid.stages.distill"))
    state_dir = Path(args.state) / key
    needs = runs.distill_needs(args.out, state_dir, args.teacher, cfg)
    with session(resolve_device(cfg.device)) as dist, common.working_folders(dist, needs, state_dir):
        device = dist.device
        teacher = load_teacher(teacher_file, device=device, needed_by="distill", expect_family=params.family.name)
        if dist.is_main:
            print(f"distill: alpha={params.alpha} beta={params.beta}, {device}"
                  f"{f' x {dist.world_size} processes' if dist.parallel else ''}, state {state_dir}")
        evaluator = build_evaluator(params, cfg, family, split, teacher.spec, weights, args.features, dist)
        result = distill(family, runs.train_data(split, device), teacher.net, teacher.spec, cfg, state_dir,
                         alpha=params.alpha, beta=params.beta, evaluator=evaluator, dist=dist)
        if dist.is_main:
            runs.publish_training(args.out, "generator.pt", result, state_dir)
        dist.barrier()  # every process ends once the output is there


def check_gan_backbone(cfg, teacher_spec: dict) -> None:
    """The GAN head reads realuid's own MLP or UNet encoder; an imported architecture has none."""
    if cfg.gan.enabled and teacher_spec["arch"] not in ("mlp", "unet"):
        raise common.StageError(f"distill.gan.enabled: the GAN head reads realuid's own UNet encoder, and the "
                                f"teacher is a {teacher_spec['arch']!r} network; set distill.gan.enabled: false")


def evaluation_settings(params, split, features_dir: str) -> tuple[str | None, dict | None]:
    """Check the in-training evaluation settings against the data before any work.

    Returns the image extractor's weights file (None for points or when off) and what the evaluation's
    rows depend on beyond ``distill`` (the extractor and its weights, KID's subset size), which names the
    state folder with the rest.
    """
    from .. import in_training_eval

    cfg = params.distill
    in_training_eval.check_settings(cfg, params.evaluate, split)
    if cfg.eval_every_steps == 0 or split.kind == "points":
        return None, None
    from .features import reference_weights

    weights = reference_weights(params, Path(features_dir))
    if not Path(weights).is_file():
        raise common.StageError(f"the in-training evaluation needs the feature extractor {weights}: run the features stage")
    return weights, in_training_eval.identity(cfg, params.evaluate, split, weights)


def build_evaluator(params, cfg, family, split, teacher_spec: dict, weights: str | None, features_dir: str, dist):
    """The in-training evaluator, on every process (they share the work), or None when
    ``cfg.eval_every_steps`` is 0."""
    from .. import in_training_eval

    if cfg.eval_every_steps == 0:
        return None
    evaluator = in_training_eval.build(family, split, cfg, params.evaluate, weights_path=weights,
                              cache_root=Path(features_dir) / "reference_cache",
                              num_classes=teacher_spec["args"].get("num_classes", 0), device=dist.device, dist=dist)
    if dist.is_main:
        print(f"in-training evaluation: every {cfg.eval_every_steps} generator updates, {evaluator.describe}"
              f"{'; keeps the best copy' if cfg.keep_best else ''}")
    return evaluator


def cli(argv: list[str] | None = None) -> int:
    p = common.parser(__doc__)
    p.add_argument("--data", required=True, help="training split (HDF5) from prepare")
    p.add_argument("--teacher", required=True, help="teacher.pt from train_teacher")
    p.add_argument("--features", required=True, help="folder from the features stage (image evaluation's extractor)")
    p.add_argument("--out", required=True, help="output folder: generator.pt, curves.csv, eval.csv")
    p.add_argument("--state", default="state/distill", help="resumable state (not a pipeline output)")
    return common.run(main, p, argv, module="realuid.stages.distill", processes=lambda params: params.distill.nproc)


if __name__ == "__main__":
    sys.exit(cli())
