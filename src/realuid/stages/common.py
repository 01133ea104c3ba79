"""What every stage CLI shares: argument parsing, error reporting, atomic outputs, loading inputs."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import torch

from ..config import ConfigError, Params, load_params


class StageError(RuntimeError):
    """A problem with the stage's inputs, reported to the user without a traceback."""


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    return p


def run(main: Callable[[argparse.Namespace, Params], None], args_parser: argparse.ArgumentParser,
        argv: list[str] | None = None, *, module: str | None = None,
        processes: Callable[[Params], int] | None = None) -> int:
    """Parse arguments, validate the whole params file, run ``main``; returns the exit code.

    ``processes(params)``, when given, is the number of processes the stage asks for: more than one
    starts ``module`` with the same arguments under ``torchrun`` on this machine and returns its exit
    code (unless this process already belongs to a torchrun job). Expected problems (bad params,
    unusable data, a diverged run) print one ``error:`` message and give exit code 1; set
    ``REALUID_TRACEBACK=1`` to see where they came from.
    """
    from ..distributed import launch_if_needed

    args = args_parser.parse_args(argv)
    try:
        params = load_params(args.params)
        if processes is not None:
            code = launch_if_needed(processes(params), module, sys.argv[1:] if argv is None else list(argv))
            if code is not None:
                return code
        main(args, params)
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except (ConfigError, StageError, ValueError, FileNotFoundError, RuntimeError) as err:
        if os.environ.get("REALUID_TRACEBACK"):
            traceback.print_exc()
        print(f"{_rank_prefix()}error: {err}", file=sys.stderr)
        return 1
    return 0


def _rank_prefix() -> str:
    """``"[rank r] "`` inside a multi-process job (every process reports its own error), else ``""``."""
    world = os.environ.get("WORLD_SIZE", "1")
    return f"[rank {os.environ.get('RANK', '?')}] " if world not in ("", "1") else ""


def state_settings(cfg) -> dict:
    """The settings of a training section that name its resumable state: all but the process count.

    A run's state holds nothing per process, so it resumes with another number of processes.
    """
    from ..config import to_dict

    settings = to_dict(cfg)
    settings.pop("nproc", None)
    return settings


@contextmanager
def atomic_dir(out: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``out``; on success it replaces ``out``, on failure it vanishes.

    Outputs of a stage therefore appear all at once or not at all.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes the folder private; outputs get the usual permissions
    try:
        yield tmp
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_json(obj, path: str | Path) -> None:
    """Pretty, key-sorted JSON written atomically (small metric and info files)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def make_family(params: Params):
    """The family of the teacher."""
    from ..matching import make_family as _make

    return _make(params.family.name, **params.family.options())


def generator_family(params: Params):
    """The family as the one-step generator uses it: a bridge's generator reads ``distill.generator_t``."""
    from ..matching import make_family as _make

    extra = {"generator_t": params.distill.generator_t} if params.family.name == "bridge" else {}
    return _make(params.family.name, **params.family.options(), **extra)


def family_record(family) -> dict:
    """How a checkpoint names its family: ``{"name", "options"}``; :func:`family_of` rebuilds it."""
    return {"name": family.name, "options": family.options()}


def family_of(checkpoint: dict):
    """The family a checkpoint was written for (its ``family`` record)."""
    from ..matching import make_family as _make

    record = checkpoint.get("family")
    if not isinstance(record, dict) or not isinstance(record.get("options"), dict):
        raise StageError(f"the checkpoint names no family record ({{'name', 'options'}}), got {record!r}")
    return _make(record["name"], **record["options"])


def load_split(path: str | Path):
    from ..data import read_split

    return read_split(path)


def train_data(split, device: torch.device):
    """A data split as :class:`realuid.training.TrainData` on ``device``."""
    from ..training import TrainData

    as_tensor = lambda a, dtype: None if a is None else torch.as_tensor(a, dtype=dtype, device=device)  # noqa: E731
    return TrainData(as_tensor(split.x1, torch.float32), as_tensor(split.y, torch.long), as_tensor(split.x0, torch.float32))


def check_family_matches_data(family, split) -> None:
    if family.paired and split.x0 is None:
        raise StageError(
            f"the {family.name} family needs paired data (x0, x1): set prepare.pairing and rerun prepare"
        )


def load_teacher(path: str | Path, params: Params, device: torch.device) -> tuple[dict, torch.nn.Module]:
    """The teacher checkpoint and ``f*``, its EMA copy (the weights its multi-step samples come from)."""
    from ..checkpoints import load_checkpoint

    checkpoint = load_checkpoint(path)
    if checkpoint.get("family", {}).get("name") != params.family.name:
        raise StageError(
            f"the teacher was trained for family {checkpoint.get('family')}, params say {params.family.name}: "
            "rerun train_teacher"
        )
    return checkpoint, load_model(checkpoint, use_ema="ema", device=device)


def publish_training(out: str | Path, name: str, result: dict, state_dir: Path) -> None:
    """Write a finished training run (``name``, e.g. generator.pt) and its curves atomically into ``out``."""
    from ..checkpoints import atomic_save

    with atomic_dir(out) as tmp:
        atomic_save(result, tmp / name)
        shutil.copyfile(state_dir / "curves.csv", tmp / "curves.csv")


def load_model(checkpoint: dict, *, use_ema: str | None, device: torch.device) -> torch.nn.Module:
    """Rebuild the network of a teacher or generator checkpoint from its own spec.

    ``use_ema``: for a teacher, ``"ema"`` picks the EMA weights; for a generator, a decay key such as
    ``"0.999"`` picks that EMA copy. ``None`` takes the raw weights.
    """
    from ..config import ema_key
    from ..models import build_model

    net = build_model(checkpoint["spec"])
    if use_ema is None or use_ema == "none":
        state = checkpoint["state_dict"]
    elif checkpoint["kind"] == "teacher":
        state = checkpoint["ema_state_dict"]
    else:
        key = ema_key(use_ema)
        if key not in checkpoint["ema"]:
            raise StageError(f"the generator has no EMA copy {use_ema!r}; it has {sorted(checkpoint['ema'])}")
        state = checkpoint["ema"][key]
    net.load_state_dict(state)  # strict: a layout mismatch is an error, never ignored
    return net.to(device).eval()
