"""What a loop does around its steps: curves and their host syncs, the divergence check, checkpoint
cadence, resuming, the progress bar, and the names and records of a run's state."""

from __future__ import annotations

import csv
import hashlib
import json
import math
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from ..atomic import atomic_open
from ..checkpoints import read_state, save_state
from ..distributed import SINGLE_PROCESS, Dist
from ..errors import TrainingDiverged


def state_key(*parts) -> str:
    """Short stable hash of JSON-serialisable parts, naming the state folder of a configuration."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


class CurveLog:
    """Training curves as CSV (one row per log interval), trimmed to the checkpoint step on resume.

    Floats are written with ``float_format`` (6 significant digits by default; ``repr`` keeps every digit,
    for tables that later choose by the value).
    """

    def __init__(self, path: Path, fields: list[str], float_format: Callable[[float], str] = "{:.6g}".format):
        self.path, self.fields, self.float_format = path, ["step", *fields], float_format

    def trim(self, last_step: int) -> None:
        """Drop rows logged after ``last_step`` (the run was killed before its next checkpoint)."""
        rows = self.rows()
        kept = [r for r in rows if int(r["step"]) <= last_step]
        self._write(kept)

    def rows(self) -> list[dict]:
        if not self.path.exists():
            return []
        with open(self.path, newline="") as fh:
            return list(csv.DictReader(fh))

    def _write(self, rows: list[dict]) -> None:
        with atomic_open(self.path, "w", newline="") as fh:
            writer = csv.DictWriter(fh, self.fields)
            writer.writeheader()
            writer.writerows(rows)

    def append(self, row: dict) -> None:
        new = not self.path.exists()
        with open(self.path, "a", newline="") as fh:
            writer = csv.DictWriter(fh, self.fields)
            if new:
                writer.writeheader()
            writer.writerow({k: (self.float_format(v) if isinstance(v, float) else v) for k, v in row.items()})


class Meter:
    """Sums of per-step scalars kept on the device; read (one host sync) at log boundaries."""

    def __init__(self):
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0

    def add(self, **values: torch.Tensor) -> None:
        for k, v in values.items():
            v = v.detach().float()
            self.sums[k] = self.sums[k] + v if k in self.sums else v
        self.count += 1

    def read(self, dist: Dist = SINGLE_PROCESS) -> dict[str, float]:
        """Means since the last read, averaged over processes (one all-reduce and one host sync)."""
        names = list(self.sums)
        if not names:
            return {}
        sums = torch.stack([self.sums[k] for k in names])
        dist.average_([sums])
        values = [v / max(self.count, 1) for v in sums.tolist()]
        self.sums, self.count = {}, 0
        return dict(zip(names, values))


def _check_finite(means: dict[str, float], step: int, checkpoint: Path) -> None:
    bad = {k: v for k, v in means.items() if not math.isfinite(v)}
    if bad:
        where = f"the last good checkpoint is kept at {checkpoint}" if checkpoint.exists() else "no checkpoint yet"
        raise TrainingDiverged(
            f"training diverged before step {step}: {', '.join(f'{k}={v}' for k, v in bad.items())}; "
            f"{where}. Lower the learning rate or raise the warm-up, then run the same command again."
        )


def after_step(done: int, *, cfg, stop_after, meter: Meter, dist: Dist, log: CurveLog, bar, ckpt_path: Path,
                state: Callable[[], dict], extra: Callable[[], dict] | None = None,
                on_row: Callable[[dict], None] | None = None,
                evaluate: Callable[[int], None] | None = None) -> bool:
    """Bookkeeping after step ``done`` of either loop: at log boundaries read the meter (one host sync),
    stop on a non-finite loss, append the curves row; then ``evaluate(done)`` on every process (the
    evaluation is shared among them; rank 0 writes its rows); at checkpoint
    boundaries save ``state()`` (rank 0). Evaluating before the checkpoint means a checkpoint at step s
    never precedes the rows of step s, so trimming to the checkpoint on resume loses no row.
    Returns True when the loop should stop here (``stop_after``)."""
    bar.update(1)
    at_log, at_ckpt = _boundaries(done, cfg, stop_after)
    if at_log or at_ckpt:
        means = meter.read(dist)
        _check_finite(means, done, ckpt_path)  # same means on every process: all stop together
        row = {"step": done, **means, **(extra() if extra else {})}
        if dist.is_main:
            log.append(row)
            if on_row is not None:
                on_row(row)
        bar.set_postfix({k: f"{v:.4g}" for k, v in means.items() if not k.endswith("grad_norm")})
    if evaluate is not None:
        evaluate(done)
    if at_ckpt:
        if dist.is_main:
            save_state({"step": done, **state()}, ckpt_path)
        dist.barrier()  # nobody runs ahead of a checkpoint that is not on disk yet
    return done == stop_after


def _boundaries(done: int, cfg, stop_after: int | None) -> tuple[bool, bool]:
    """Whether step ``done`` ends a log interval and whether it is a checkpoint (the last step is both)."""
    last = done == cfg.steps
    return (done % cfg.log_every_steps == 0 or last,
            done % cfg.checkpoint_every_steps == 0 or last or done == stop_after)


def resume_state(ckpt_path: Path, dist: Dist) -> dict | None:
    """The checkpoint every process resumes from (None: start afresh), on the CPU: loading it into the
    modules and optimizers puts each tensor where its parameter lives.

    Every process reads the same file; processes that see different states (a state folder that is
    not on a filesystem shared by every node) stop with an error instead of silently diverging.
    """
    state = read_state(ckpt_path, needed_by=f"resuming from {ckpt_path.parent}") if ckpt_path.exists() else None
    dist.same_everywhere(None if state is None else state["step"], f"the step to resume from in {ckpt_path.parent} "
                         "(the state folder must be on a filesystem that every node shares)")
    return state


def progress_bar(total: int, start: int, desc: str, enabled: bool):
    return tqdm(total=total, initial=start, desc=desc, disable=not enabled, mininterval=1.0, dynamic_ncols=True)


def config_record(cfg) -> dict:
    """The settings in effect of the training section a run used, as plain data for its checkpoint (empty
    for a non-dataclass): a key the run ignores does not change the file's bytes."""
    import dataclasses

    from ..config import in_effect

    return in_effect(cfg) if dataclasses.is_dataclass(cfg) else {}
