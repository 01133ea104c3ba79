"""Seconds per distillation update of the 8x8 digits UNet on CPU, one setting changed at a time.

Every variant runs the library's own distillation updates
(:func:`realuid.training.distillation.distillation_update`: the loop's fake phases, then its generator
phase) on the digits for ``--updates`` timed updates after ``--warmup`` untimed ones, in this one
process, one after the other, so the ratios come from one run on one machine state. Run it on
an idle machine: another busy process slows torch's threads many times over.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch

from realuid import config as config_module
from realuid.data import build_splits
from realuid.matching import make_family
from realuid.models import build_model, model_spec
from realuid.training.batches import BatchStream, TrainData
from realuid.training.distillation import RealUID, distillation_update

ROOT = Path(__file__).resolve().parents[2]


def time_updates(params, *, threads: int, updates: int, warmup: int, alpha: float, beta: float,
                 fake_updates: int | None = None, batch_size: int | None = None, channels: int | None = None,
                 channel_mult: list[int] | None = None,
                 channels_last: bool = False, compile_nets: bool = False) -> dict:
    """Mean seconds per generator update (with its fake updates) for one setting."""
    torch.set_num_threads(threads)
    train, _ = build_splits(params.prepare)
    model_cfg = params.train_teacher.model
    if channels is not None:
        model_cfg = dataclasses.replace(model_cfg, channels=channels)
    if channel_mult is not None:
        model_cfg = dataclasses.replace(model_cfg, channel_mult=channel_mult)
    spec = model_spec(model_cfg, train.sample_shape, 0)
    torch.manual_seed(0)
    teacher = build_model(spec)
    cfg = params.distill
    cfg = dataclasses.replace(cfg, fake_updates_per_generator_update=fake_updates or cfg.fake_updates_per_generator_update,
                              batch_size=batch_size or cfg.batch_size)
    family = make_family("fm")
    uid = RealUID(family, teacher, spec, cfg, alpha=alpha, beta=beta, device=torch.device("cpu"))
    compile_seconds = 0.0
    if channels_last:
        for net in (uid.teacher, uid.fake, uid.generator.net):
            net.to(memory_format=torch.channels_last)
    if compile_nets:  # in place (Module.compile), so state-dict keys and the EMA stay as they are
        for net in (uid.teacher, uid.fake, uid.generator.net):
            net.compile()
    stream = BatchStream(TrainData(torch.as_tensor(train.x1)), cfg.batch_size, 0)
    update = lambda step: distillation_update(uid, stream, step, seed=0)  # noqa: E731

    start = time.perf_counter()
    update(0)
    first = time.perf_counter() - start
    for step in range(1, warmup):
        update(step)
    start = time.perf_counter()
    for step in range(warmup, warmup + updates):
        update(step)
    per_update = (time.perf_counter() - start) / updates
    return {"seconds_per_update": per_update, "first_update_seconds": first,
            "parameters": sum(p.numel() for p in teacher.parameters())}


VARIANTS = {
    "base (params.yaml, 1 thread)": {},
    "2 threads": {"threads": 2},
    "data-free (alpha = beta = 1)": {"alpha": 1.0, "beta": 1.0},
    "5 fake updates": {"fake_updates": 5},
    "batch 128": {"batch_size": 128},
    "channels_last": {"channels_last": True},
    "64 channels": {"channels": 64},
    "one level (channel_mult [1])": {"channel_mult": [1]},
    "torch.compile": {"compile_nets": True},
    "torch.compile, 2 threads": {"compile_nets": True, "threads": 2},
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench/digits_speed", description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--updates", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    params = config_module.load_params(args.params)
    rows = {}
    for name in args.variants:
        setting = {"threads": 1, "alpha": params.alpha, "beta": params.beta, **VARIANTS[name]}
        rows[name] = time_updates(params, updates=args.updates, warmup=args.warmup, **setting)
        base = rows[args.variants[0]]["seconds_per_update"]
        r = rows[name]
        print(f"{name:>32}: {r['seconds_per_update'] * 1e3:7.1f} ms / update ({r['seconds_per_update'] / base:.2f}x), "
              f"first update {r['first_update_seconds']:.1f} s, {r['parameters']} parameters", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"params": str(args.params), "updates": args.updates, "rows": rows}, indent=1))
