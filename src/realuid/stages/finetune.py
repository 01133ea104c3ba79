"""Stage ``finetune``: optionally continue RealUID from a distilled generator with new coefficients.

Disabled (the default), the distilled generator passes through unchanged, so the graph is the same
either way and ``sample`` always reads this stage's output.
"""

from __future__ import annotations

import dataclasses
import shutil
import sys
from pathlib import Path

from ..checkpoints import file_digest, load_checkpoint
from ..config import to_dict
from ..training import distill, resolve_device, state_key
from . import common


def main(args, params) -> None:
    cfg = params.finetune
    if not cfg.enabled:
        with common.atomic_dir(args.out) as tmp:
            shutil.copyfile(args.generator, tmp / "generator.pt")
        print("finetune: disabled, the distilled generator passes through")
        return

    family = common.make_family(params)
    split = common.load_split(args.data)
    device = resolve_device(params.distill.device)
    teacher_ckpt, teacher = common.load_teacher(args.teacher, params, device)
    distilled = load_checkpoint(args.generator)
    start = common.load_model(distilled, use_ema=cfg.from_ema, device=device)
    # The fake model restarts from the teacher: the distilled fake model chased the old coefficients.
    run_cfg = dataclasses.replace(
        params.distill, steps=cfg.steps, fake_init="teacher",
        generator_optim=dataclasses.replace(params.distill.generator_optim, lr=cfg.generator_lr),
        fake_optim=dataclasses.replace(params.distill.fake_optim, lr=cfg.fake_lr),
    )
    key = state_key("finetune", to_dict(cfg), to_dict(run_cfg), to_dict(params.family),
                    file_digest(args.data), file_digest(args.teacher), file_digest(args.generator))
    state_dir = Path(args.state) / key
    print(f"finetune: alpha={cfg.alpha} beta={cfg.beta} from copy {cfg.from_ema}, {device}, state {state_dir}")
    result = distill(family, common.train_data(split, device), teacher, teacher_ckpt["spec"], run_cfg, state_dir,
                     alpha=cfg.alpha, beta=cfg.beta, student_init=start)
    result["family"] = distilled["family"]
    common.publish_training(args.out, "generator.pt", result, state_dir)


def cli(argv: list[str] | None = None) -> int:
    p = common.parser(__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="training split (HDF5) from prepare")
    p.add_argument("--teacher", required=True, help="teacher.pt from train_teacher")
    p.add_argument("--generator", required=True, help="generator.pt from distill")
    p.add_argument("--out", required=True, help="output folder: generator.pt (+ curves.csv when enabled)")
    p.add_argument("--state", default="state/finetune", help="resumable state (not a pipeline output)")
    return common.run(main, p, argv)


if __name__ == "__main__":
    sys.exit(cli())
