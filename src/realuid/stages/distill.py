"""Stage ``distill``: RealUID distillation of the teacher into a one-step generator."""

from __future__ import annotations

import sys

from pathlib import Path

from ..config import to_dict
from ..checkpoints import file_digest
from ..distributed import session
from ..training import distill, resolve_device, state_key
from . import common


def main(args, params) -> None:
    cfg = params.distill
    family = common.generator_family(params)
    split = common.load_split(args.data)
    common.check_family_matches_data(family, split)
    common.check_batch_size(cfg.batch_size, split, "distill")
    key = state_key("distill", params.alpha, params.beta, to_dict(params.family), common.state_settings(cfg),
                    file_digest(args.data), file_digest(args.teacher))
    state_dir = Path(args.state) / key
    needs = common.distill_needs(args.out, state_dir, args.teacher, cfg)
    with session(resolve_device(cfg.device)) as dist, common.working_folders(dist, needs, state_dir):
        device = dist.device
        teacher_ckpt, teacher = common.load_teacher(args.teacher, params, device)
        if dist.is_main:
            print(f"distill: alpha={params.alpha} beta={params.beta}, {device}"
                  f"{f' x {dist.world_size} processes' if dist.parallel else ''}, state {state_dir}")
        result = distill(family, common.train_data(split, device), teacher, teacher_ckpt["spec"], cfg, state_dir,
                         alpha=params.alpha, beta=params.beta, dist=dist)
        result["family"] = common.family_record(family)  # the generator's input convention included
        if dist.is_main:
            common.publish_training(args.out, "generator.pt", result, state_dir)
        dist.barrier()  # every process ends once the output is there


def cli(argv: list[str] | None = None) -> int:
    p = common.parser(__doc__)
    p.add_argument("--data", required=True, help="training split (HDF5) from prepare")
    p.add_argument("--teacher", required=True, help="teacher.pt from train_teacher")
    p.add_argument("--out", required=True, help="output folder: generator.pt, curves.csv")
    p.add_argument("--state", default="state/distill", help="resumable state (not a pipeline output)")
    return common.run(main, p, argv, module="realuid.stages.distill", processes=lambda params: params.distill.nproc)


if __name__ == "__main__":
    sys.exit(cli())
