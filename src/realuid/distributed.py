"""Data parallelism under ``torchrun``: process-group set-up, gradient averaging and rank-0 output.

A stage runs as one process, or as ``N`` processes started by ``torchrun`` (one per GPU, or several on
CPU), which find each other through torchrun's environment (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``,
``MASTER_ADDR``, ``MASTER_PORT``). The training loops keep a *global* view of every step: each process
takes the whole global batch and draws all of its random numbers, then computes only its own rows, so
the union over processes is exactly the one-process step. The network a phase trains runs inside
:class:`torch.nn.parallel.DistributedDataParallel` (:meth:`Dist.data_parallel`), which averages its
gradients across processes during the backward pass, bucket by bucket as they are ready, so that the
communication overlaps the rest of the backward. Every process then clips and steps the same gradient and
keeps the same weights, optimizer state and EMA; only the main process (rank 0) writes files.

RealUID alternates two networks, each with its own optimizer, and runs the fake model forward in both
phases while only the fake phase may update it. Each phase calls the network it trains through its DDP
wrapper and the other one as the plain module with ``requires_grad`` off (or under ``no_grad``), so the
untrained network never enters DDP's gradient bookkeeping and no ``no_sync`` is needed.

:func:`launch_if_needed` lets a stage read its process count from params and start itself under
``torchrun --standalone`` on this machine, so ``dvc repro`` and Snakemake run the same command for any
count; a stage already started by ``torchrun`` (multi-node rendezvous, user-launched) runs as it is.
"""

from __future__ import annotations

import datetime
import os
import re
import signal
import subprocess
import sys
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
import torch.distributed as torch_dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .errors import ConfigError, FolderError, StageError

__all__ = ["Dist", "SINGLE_PROCESS", "under_torchrun", "launched_rank", "session", "launch_if_needed",
           "launch_command"]

# Collectives wait this long for a slow peer (e.g. rank 0 writing a large checkpoint) before failing.
COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=30)


@dataclass(frozen=True)
class Dist:
    """This process's place in the job: ``rank`` of ``world_size``, on ``device``.

    The default instance is a single process: every collective is then a no-op (no process group needed).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        """Whether this process writes checkpoints, logs and outputs (rank 0)."""
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        return self.world_size > 1

    # -- the global batch

    def rows(self, global_batch: int) -> slice:
        """This process's rows ``[rank*b, (rank+1)*b)`` of a global batch, ``b = global_batch / world_size``."""
        if global_batch % self.world_size:
            raise ConfigError(
                f"batch_size {global_batch} is not divisible by the {self.world_size} processes: the global "
                f"batch is split evenly, so choose a multiple of {self.world_size}"
            )
        per_rank = global_batch // self.world_size
        return slice(self.rank * per_rank, (self.rank + 1) * per_rank)

    # -- work dealt in whole batches (sampling, feature extraction)

    def batch_starts(self, n_items: int, batch_size: int) -> list[int]:
        """First item of each batch this process takes: batch ``j`` goes to rank ``j % world_size``.

        Each batch is computed as one process would compute it, so the gathered result equals a
        one-process run exactly (same device type), whatever the process count.
        """
        return list(range(self.rank * batch_size, n_items, batch_size * self.world_size))

    def gather_batches(self, mine: dict[int, Any]) -> list[Any] | None:
        """Every process's ``{batch start: result}`` on rank 0, as one list in batch order; ``None`` elsewhere."""
        shards = self.gather_to_main(mine)
        if shards is None:
            return None
        batches = {start: out for shard in shards for start, out in shard.items()}
        return [batches[start] for start in sorted(batches)]

    def all_gather_batches(self, mine: dict[int, torch.Tensor], n_items: int, batch_size: int) -> torch.Tensor:
        """Every process's batches ``{start: rows [b, ...]}`` (as dealt by :meth:`batch_starts`) joined in
        batch order, ``[n_items, ...]``, on every process and on the batches' device.

        One tensor all-gather (NCCL needs equal sizes: each shard is padded to the largest and trimmed
        after), so every rank can score the whole set without a rank-0 bottleneck.
        """
        if not self.parallel:
            return torch.cat([mine[start] for start in sorted(mine)])
        starts = [list(range(rank * batch_size, n_items, batch_size * self.world_size)) for rank in range(self.world_size)]
        sizes = [sum(min(batch_size, n_items - s) for s in rank_starts) for rank_starts in starts]
        # A process with no batch (fewer batches than processes) learns the row shape from the others.
        shard = torch.cat([mine[start] for start in sorted(mine)]) if mine else None
        row, dtype = next(meta for meta in self.all_gather(None if shard is None else (shard.shape[1:], shard.dtype))
                          if meta is not None)
        padded = torch.zeros((max(sizes), *row), dtype=dtype, device=self.device)
        if shard is not None:
            padded[:shard.shape[0]] = shard
        parts = [torch.empty_like(padded) for _ in range(self.world_size)]
        torch_dist.all_gather(parts, padded)
        batches = {}
        for rank, rank_starts in enumerate(starts):
            offset = 0
            for start in rank_starts:
                size = min(batch_size, n_items - start)
                batches[start] = parts[rank][offset:offset + size]
                offset += size
        return torch.cat([batches[start] for start in sorted(batches)])

    # -- collectives (no-ops in one process)

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Replace ``tensor`` by its sum over processes, in place (returned for chaining)."""
        if self.parallel:
            torch_dist.all_reduce(tensor)
        return tensor

    def average_(self, tensors: Sequence[torch.Tensor]) -> None:
        """Replace each tensor by its mean over processes, in place: one flat all-reduce per dtype.

        Used on gradients after backward and before clipping; one bucket instead of one call per tensor
        keeps the cost at a single collective for a whole network.
        """
        if not self.parallel:
            return
        by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
        for t in tensors:
            by_dtype.setdefault(t.dtype, []).append(t)
        for group in by_dtype.values():
            flat = torch.cat([t.reshape(-1) for t in group])
            torch_dist.all_reduce(flat)
            flat /= self.world_size
            offset = 0
            for t in group:
                t.copy_(flat[offset : offset + t.numel()].view_as(t))
                offset += t.numel()

    def data_parallel(self, module: nn.Module, *, every_parameter_used: bool = True) -> nn.Module:
        """``module`` inside :class:`~torch.nn.parallel.DistributedDataParallel` when there are several
        processes, else ``module`` itself. Call the result for the forward passes whose gradients a step
        uses: the backward pass then leaves every parameter's ``.grad`` averaged over processes.

        The wrapper starts by copying rank 0's parameters and buffers to every process. With
        ``every_parameter_used`` (true of every network realuid builds, tested) each backward after a call of
        the wrapper must give every parameter a gradient; otherwise DDP searches the graph for unused ones
        after each forward (a module of one's own, whose parameters nobody has checked). Buffers are not
        re-broadcast before each forward: the networks here keep no batch statistics.
        """
        if not self.parallel:
            return module
        device = next(module.parameters()).device
        return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None,
                                       broadcast_buffers=False, find_unused_parameters=not every_parameter_used)

    def all_gather(self, obj: Any) -> list[Any]:
        """Every process's ``obj`` (picklable), in rank order, on every process."""
        if not self.parallel:
            return [obj]
        out: list[Any] = [None] * self.world_size
        torch_dist.all_gather_object(out, obj)
        return out

    def gather_to_main(self, obj: Any) -> list[Any] | None:
        """Every process's ``obj`` in rank order on rank 0; ``None`` elsewhere."""
        if not self.parallel:
            return [obj]
        out: list[Any] | None = [None] * self.world_size if self.is_main else None
        torch_dist.gather_object(obj, out, dst=0)
        return out

    def same_everywhere(self, value: Any, what: str) -> Any:
        """``value``, after checking that every process has the same one (else a RuntimeError naming ``what``)."""
        values = self.all_gather(value)
        if any(v != values[0] for v in values):
            raise FolderError(f"the processes disagree on {what}: {values}")
        return value

    def barrier(self) -> None:
        if self.parallel:
            torch_dist.barrier()


SINGLE_PROCESS = Dist()


# --------------------------------------------------------------------------------------------------
# Set-up from torchrun's environment
# --------------------------------------------------------------------------------------------------


def under_torchrun() -> bool:
    """Whether this process was started by torchrun (or anything that sets its environment)."""
    return "WORLD_SIZE" in os.environ


def launched_rank() -> int:
    """This process's ``RANK`` in a torchrun job; 0 outside one (for stages that need no process group)."""
    return _env_int("RANK") if under_torchrun() else 0


def _env_int(name: str) -> int:
    value = os.environ.get(name)
    if value is None or not value.isdigit():
        raise StageError(f"torchrun environment variable {name} is missing or not an integer: {value!r}")
    return int(value)


def process_device(device: torch.device, local_rank: int, local_world_size: int) -> torch.device:
    """The device of this process: ``cuda:LOCAL_RANK`` for a CUDA run, else ``device`` itself.

    When the launcher shows each process a single GPU (e.g. Slurm's GPU binding), that GPU is ``cuda:0``.
    """
    if device.type != "cuda":
        return device
    if device.index is not None and local_world_size > 1:
        raise ConfigError(
            f"device {device} names one GPU, but {local_world_size} processes share this node: "
            "set the device to auto or cuda so each process takes the GPU of its local rank"
        )
    if device.index is not None:
        return device
    visible = torch.cuda.device_count()
    if visible == 1:
        return torch.device("cuda", 0)
    if local_rank >= visible:
        raise StageError(f"local rank {local_rank} has no GPU: only {visible} are visible on this node")
    return torch.device("cuda", local_rank)


@contextmanager
def session(device: torch.device) -> Iterator[Dist]:
    """The :class:`Dist` of this process, with its process group for the duration of the block.

    Outside torchrun: one process on ``device``. Under torchrun: NCCL between GPUs, gloo on CPU, each
    process on its own GPU (see :func:`process_device`); the group is destroyed on exit.
    """
    if not under_torchrun():
        yield Dist(device=device)
        return
    world, rank, local_rank = _env_int("WORLD_SIZE"), _env_int("RANK"), _env_int("LOCAL_RANK")
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    device = process_device(device, local_rank, local_world)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch_dist.init_process_group("nccl", timeout=COLLECTIVE_TIMEOUT, device_id=device)
    else:
        torch_dist.init_process_group("gloo", timeout=COLLECTIVE_TIMEOUT)
    try:
        yield Dist(rank=rank, world_size=world, local_rank=local_rank, device=device)
    finally:
        torch_dist.destroy_process_group()


# --------------------------------------------------------------------------------------------------
# Launching a stage under torchrun
# --------------------------------------------------------------------------------------------------


def launch_command(nproc: int, module: str, argv: Sequence[str]) -> list[str]:
    """``python -m torch.distributed.run --standalone --nproc_per_node N -m <module> <argv>``."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
            "-m", module, *argv]


def launch_if_needed(nproc: int, module: str, argv: Sequence[str]) -> int | None:
    """Run ``module`` as ``nproc`` processes on this machine; returns their exit code.

    Returns ``None`` (the caller goes on in this process) when one process is asked for, or when this
    process is already part of a torchrun job: then torchrun's own world (e.g. several nodes) holds.
    """
    if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1:
        raise ConfigError(f"the number of processes must be an integer >= 1, got {nproc!r}")
    if nproc == 1 or under_torchrun():
        return None
    env = dict(os.environ)
    # The workers import this very package, wherever it was imported from here.
    package_root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH", "")) if p)
    launcher = subprocess.Popen(launch_command(nproc, module, argv), env=env, stderr=subprocess.PIPE)
    relay = threading.Thread(target=_relay_stderr, args=(launcher.stderr, sys.stderr), daemon=True)
    relay.start()
    with _forwarding_signals(launcher):
        try:
            code = launcher.wait()
        except KeyboardInterrupt:
            # torchrun passes the interrupt on to its workers and waits for them: never leave orphans.
            launcher.send_signal(signal.SIGINT)
            launcher.wait()
            raise
        finally:
            relay.join()
    return code


_TORCHRUN_LOG = re.compile(rb"[DIWEF]\d{4} \d\d:\d\d:\d\d")  # torch's own log lines: level, date, time


def _relay_stderr(source, sink) -> None:
    """Copy the workers' stderr (progress bars included) to ``sink`` as it comes, until a worker has
    printed its ``error:`` line; after that, drop torchrun's own report of the failed workers (its
    ``E1201 12:00:00 ... failed (exitcode: 1)`` log lines and a ``ChildFailedError`` traceback), so the
    user's last lines are the workers' error lines. ``REALUID_TRACEBACK=1`` keeps everything."""
    keep_all = bool(os.environ.get("REALUID_TRACEBACK"))
    failed, dropping, pending = False, False, b""
    out = getattr(sink, "buffer", sink)
    for chunk in iter(lambda: source.read1(1 << 16), b""):
        if not failed and not keep_all:
            out.write(chunk)
            out.flush()
            pending = (pending + chunk)[-4096:]
            failed = b"error: " in pending
            continue
        for line in chunk.splitlines(keepends=True):
            dropping = dropping or (not keep_all and line.startswith(b"Traceback (most recent call last)"))
            if not (dropping or (not keep_all and _TORCHRUN_LOG.match(line))):
                out.write(line)
        out.flush()


@contextmanager
def _forwarding_signals(child: subprocess.Popen) -> Iterator[None]:
    """Pass SIGTERM (DVC, Snakemake or Slurm stopping the stage) on to ``child`` while it runs."""
    try:
        previous = signal.signal(signal.SIGTERM, lambda signum, frame: child.send_signal(signum))
    except ValueError:  # not the main thread: signals cannot be handled here
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
