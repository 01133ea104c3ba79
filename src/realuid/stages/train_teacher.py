"""Stage ``train_teacher``: fit the multi-step matching model on the prepared training split."""

from __future__ import annotations

import sys

import shutil
from pathlib import Path

from ..config import to_dict
from ..models import model_spec
from ..checkpoints import atomic_save, file_digest
from ..training import resolve_device, state_key, train_teacher
from . import common


def main(args, params) -> None:
    cfg = params.train_teacher
    family = common.make_family(params)
    split = common.load_split(args.data)
    common.check_family_matches_data(family, split)
    spec = model_spec(cfg.model, split.sample_shape, split.num_classes)
    device = resolve_device(cfg.device)

    # The state folder is keyed by everything the result depends on, so a changed config starts afresh
    # while the same command after an interruption resumes.
    key = state_key("train_teacher", to_dict(params.family), to_dict(cfg), spec, file_digest(args.data))
    state_dir = Path(args.state) / key
    print(f"train_teacher: {params.family.name} on {split.sample_shape} x {len(split)}, {device}, state {state_dir}")
    result = train_teacher(family, common.train_data(split, device), spec, cfg, state_dir)
    result["family"] = {"name": params.family.name, "options": params.family.options()}

    with common.atomic_dir(args.out) as tmp:
        atomic_save(result, tmp / "teacher.pt")
        shutil.copyfile(state_dir / "curves.csv", tmp / "curves.csv")


def cli(argv: list[str] | None = None) -> int:
    p = common.parser(__doc__)
    p.add_argument("--data", required=True, help="training split (HDF5) from prepare")
    p.add_argument("--out", required=True, help="output folder: teacher.pt, curves.csv")
    p.add_argument("--state", default="state/train_teacher", help="resumable state (not a pipeline output)")
    return common.run(main, p, argv)


if __name__ == "__main__":
    sys.exit(cli())
