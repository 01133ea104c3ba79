"""Sampling in batches: ``n`` samples of one module (``Generator.sample``, ``Teacher.sample``), and the
teacher beside any number of generators over the processes of a run (the ``sample`` stage).

Each batch takes its inputs from :mod:`realuid.sampling.seeds`, so sample ``i`` is the same whatever the
batch split; only the teacher's SDE noise is drawn per batch (from the seed and the batch's first index).
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Callable

import torch
from torch import Tensor

from ..devices import autocast
from ..distributed import SINGLE_PROCESS, Dist
from .seeds import check_noise, one_step_inputs
from .solvers import sample_teacher_batch


def _batches(n: int, batch_size: int | None):
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    size = n if batch_size is None else batch_size
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    return [(start, min(size, n - start)) for start in range(0, n, max(size, 1))]


def _to(device, *tensors):
    return tuple(None if a is None else a.to(device) for a in tensors)


def sample_in_batches(module, n: int, batch_size: int | None, *, seed: int, labels, x0: Tensor | None,
                      noise: Tensor | None, refusal: str | None, sample) -> Tensor:
    """``n`` samples ``[n, *shape]`` of a :class:`realuid.api.Generator` or :class:`realuid.api.Teacher`
    (``family``, ``net``, ``shape``, ``num_classes``) on its device, batch by batch:
    ``sample(start, z, y, noise)`` from each batch's :func:`one_step_inputs`. ``refusal``: the error for
    a given ``noise`` the module does not take (None: it takes it)."""
    device = next(module.net.parameters()).device
    _batches(n, batch_size)  # n and batch_size are checked before noise's shape, which uses n
    check_noise(noise, n, module.shape, module.net)
    if noise is not None and refusal is not None:
        raise ValueError(refusal)
    out = []
    for start, m in _batches(n, batch_size):
        z, y, z_noise = _to(device, *one_step_inputs(module.family, start, m, seed=seed, shape=module.shape,
                                                     num_classes=module.num_classes, x0=x0, labels=labels,
                                                     noise=noise))
        out.append(sample(start, z, y, z_noise))
    return torch.cat(out) if out else torch.empty((0, *module.shape), device=device)


def _timed(fn, device: torch.device):
    """Run ``fn`` and return (result, seconds), synchronising CUDA so the time is the real one."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return out, time.perf_counter() - start


def stream_samples(family, teacher, generators: dict, inputs: Callable[[int, int], tuple], n_samples: int, cfg,
                   dist: Dist = SINGLE_PROCESS, sink: Callable[[dict[str, torch.Tensor]], None] | None = None,
                   *, guidance_scale: float = 1.0, null_label: int | None = None) -> dict[str, float]:
    """Samples ``0 .. n_samples-1`` of the teacher and of each named generator, batch by batch.

    ``inputs(start, n)`` gives the generator inputs, labels and generator noise of samples
    ``start .. start+n-1`` (``x0`` [n, ...], ``y`` [n] or None, ``noise`` [n, ...] or None): each process
    makes only those of its own batches. ``generators[name](start, x0, y, noise)`` samples them [n, ...];
    the teacher samples with ``guidance_scale`` and ``null_label`` (:func:`sample_teacher_batch`). Rank 0
    gathers the batches of each round of processes together and hands the round to a writer thread, which
    calls ``sink({who: samples [b, ...] on CPU})`` for every batch in order while the next round is sampled
    (:class:`_BackgroundSink`: at most two rounds are held). An exception of the sink is raised here, and
    the sink's last call is over when this returns. Returns ``{who: seconds}``, the slowest process's (the
    wall time of a parallel run).
    """
    device = dist.device
    seconds = {"teacher": 0.0, **{name: 0.0 for name in generators}}
    batches = -(-n_samples // cfg.batch_size)
    writer = _BackgroundSink(sink if dist.is_main else None)
    # bf16 (sample.precision): forward passes autocast; samples are stored in float32 either way.
    with torch.no_grad(), autocast(device, getattr(cfg, "precision", "fp32")), writer:
        for first in range(0, batches, dist.world_size):  # one round: batch first + rank on each process
            mine = {}
            start = (first + dist.rank) * cfg.batch_size
            if start < n_samples:
                xb, yb, nb = (None if a is None else a.to(device)
                              for a in inputs(start, min(cfg.batch_size, n_samples - start)))
                # SDE noise is drawn per batch from (seed, batch start): reproducible for a fixed batch size.
                out, sec = _timed(lambda: sample_teacher_batch(family, teacher, xb, yb, nfe=cfg.teacher_nfe,
                                                               method=cfg.teacher_method, seed=cfg.seed, start=start,
                                                               guidance_scale=guidance_scale, null_label=null_label),
                                  device)
                mine[start] = {"teacher": out.float().cpu()}
                seconds["teacher"] += sec
                for name, generator in generators.items():
                    out, sec = _timed(lambda: generator(start, xb, yb, nb), device)
                    mine[start][name] = out.float().cpu()
                    seconds[name] += sec
            writer.make_room()  # before the gather, so that the round it brings has a place to go
            writer.hand_off(dist.gather_batches(mine))
        # The last collective comes before the writer is waited for: no process waits there for rank 0's writes.
        slowest = {who: max(s[who] for s in dist.all_gather(seconds)) for who in seconds}
    return slowest


class _BackgroundSink:
    """Calls ``sink(batch)`` for every batch of the rounds handed to it, in order, on a thread of its own,
    so that rank 0 samples and gathers the next round while one is written (``sink`` None: nothing to do).

    Memory stays bounded at two rounds: one being written and one waiting for it. :meth:`make_room`, called
    before gathering a round, waits until fewer than two are held, so the other processes wait on rank 0's
    writes only when writing is slower than sampling.

    The GIL: h5py holds it while it compresses and writes a chunk, yet sampling goes on meanwhile: a GPU
    runs the kernels already queued, and torch's CPU kernels release the GIL while they compute.

    The sink's first exception is raised again in the calling thread, the same object, by the next
    :meth:`make_room` or on leaving the ``with`` block; the sink is not called after it. Leaving the block
    waits for the last call of the sink (after an exception in the block, batches not yet begun are dropped).
    """

    def __init__(self, sink: Callable[[dict[str, torch.Tensor]], None] | None):
        self._sink = sink
        self._rounds: queue.SimpleQueue[list | None] = queue.SimpleQueue()  # None: no more rounds
        self._room = threading.Semaphore(2)  # one round being written, one waiting
        self._error: BaseException | None = None
        self._dropping = False
        self._thread = None if sink is None else threading.Thread(target=self._write, name="sample-writer",
                                                                  daemon=True)

    def __enter__(self) -> _BackgroundSink:
        if self._thread is not None:
            self._thread.start()
        return self

    def make_room(self) -> None:
        """Wait until fewer than two rounds are held; raise the sink's exception if it raised one."""
        if self._thread is not None:
            self._room.acquire()
            self._raise_error()

    def hand_off(self, batches: list[dict[str, torch.Tensor]] | None) -> None:
        """Queue a round's batches, in order, for the sink (after :meth:`make_room`)."""
        if self._thread is not None:
            self._rounds.put(batches)

    def __exit__(self, kind, error, traceback) -> None:
        if self._thread is None:
            return
        self._dropping = error is not None
        self._rounds.put(None)
        self._thread.join()
        if error is None:
            self._raise_error()

    def _write(self) -> None:
        while (batches := self._rounds.get()) is not None:
            try:
                for batch in batches:
                    if self._error is None and not self._dropping:
                        self._sink(batch)
            except BaseException as error:  # raised again in the calling thread
                self._error = error
            self._room.release()

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error


def draw_samples(family, teacher, generators: dict, inputs: Callable[[int, int], tuple], n_samples: int, cfg,
                 dist: Dist = SINGLE_PROCESS, **guidance) -> tuple[dict[str, torch.Tensor] | None, dict[str, float]]:
    """:func:`stream_samples` collected: ``({who: samples [N, ...] on CPU} on rank 0 (None elsewhere),
    {who: seconds})``."""
    batches: list[dict[str, torch.Tensor]] = []
    seconds = stream_samples(family, teacher, generators, inputs, n_samples, cfg, dist, sink=batches.append,
                             **guidance)
    if not dist.is_main:
        return None, seconds
    return {who: torch.cat([b[who] for b in batches]) for who in seconds}, seconds
