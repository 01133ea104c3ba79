"""bf16 against fp32 on the generator loss: how much of its value and gradient is rounding.

The RealUID generator loss is a difference of large squared norms, so bf16's 8-bit mantissa could leave
more of it as rounding noise than the loss's own batch noise. This follows one fp32 run of a CIFAR-shaped
distillation (3x32x32 images, torchcfm's UNet with attention at 16x16, a random teacher) and, at every
generator update, takes the generator phase once more in bf16 autocast from the same weights on the same
batch and draws. Recorded per update: both losses, both pre-clip gradient norms and the cosine between
the two gradients. Their differences are set against the loss's update-to-update spread in fp32.

    bench/bf16_check [--size cifar-tiny|paper] [--updates N] [--lr LR --warmup-steps W] [--device D] [--json J]
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

import gpu_check  # bench/gpu_check.py: the random teacher and the authors' distillation settings
from realuid.checkpoints import code_provenance
from realuid.devices import resolve_device
from realuid.matching import make_family
from realuid.training.batches import BatchStream, TrainData
from realuid.training.distillation import RealUID
from realuid.training.rng import seeded

SIZES = {
    # A reduced CIFAR-shaped run that a CPU does in minutes; the paper size is the authors' UNet at batch 256.
    "cifar-tiny": dict(spec={"arch": "unet", "args": dict(shape=[3, 32, 32], channels=32, channel_mult=[1, 2],
                                                          num_res_blocks=1, attention_resolutions="16", num_heads=4,
                                                          num_head_channels=-1, dropout=0.0, num_classes=0)},
                       batch_size=8, fake_updates=1),
    "paper": dict(spec=None, batch_size=256, fake_updates=5),
}


def gradient(net: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in net.parameters() if p.grad is not None])


def compare(size: str, updates: int, device: torch.device, alpha: float, beta: float, lr: float | None = None,
            warmup_steps: int | None = None, compare_every: int = 1) -> list[dict]:
    """One row per ``compare_every``-th generator update of the fp32 run (0, n, 2n, ...): its generator phase
    in fp32 and again in bf16. ``lr`` and ``warmup_steps`` replace the authors' (3e-5 after 500 warm-up
    updates) for both networks. The updates between rows run in fp32 only, so a long run costs little more
    than its fp32 training."""
    setting = dict(SIZES[size])
    if setting["spec"] is None:
        setting["spec"] = gpu_check.paper_size().spec
    spec = setting["spec"]
    cfg = gpu_check.distill_config(gpu_check.ROOT / "params.yaml", setting["batch_size"], str(device),
                                   setting["fake_updates"])
    changes = {k: v for k, v in (("lr", lr), ("warmup_steps", warmup_steps)) if v is not None}
    cfg = dataclasses.replace(cfg, precision="fp32", steps=updates,
                              generator_optim=dataclasses.replace(cfg.generator_optim, **changes),
                              fake_optim=dataclasses.replace(cfg.fake_optim, **changes))
    torch.manual_seed(0)
    data = TrainData(x1=torch.rand(max(1024, 4 * cfg.batch_size), *spec["args"]["shape"], device=device) * 2 - 1)
    uid = RealUID(make_family("fm"), gpu_check.random_teacher(spec, device), spec, cfg, alpha=alpha, beta=beta,
                  device=device)
    stream, phases = BatchStream(data, cfg.batch_size, cfg.seed), cfg.fake_updates_per_generator_update + 1
    rows = []
    for step in range(updates):
        for k in range(phases - 1):
            uid.fake_step(stream(step * phases + k), seeded(cfg.seed, step, k, device=device))
        batch, k = stream(step * phases + phases - 1), phases - 1
        if step % 100 == 0 and step:
            print(f"update {step}/{updates}", file=sys.stderr, flush=True)
        if step % compare_every:
            uid.generator_step(batch, seeded(cfg.seed, step, k, device=device))
            continue
        low = copy.deepcopy(uid)  # same weights and optimizer state; its step is thrown away
        low.cfg = dataclasses.replace(cfg, precision="bf16")
        loss_bf16, norm_bf16 = low.generator_step(batch, seeded(cfg.seed, step, k, device=device))
        loss_fp32, norm_fp32 = uid.generator_step(batch, seeded(cfg.seed, step, k, device=device))
        # Clipping rescales both gradients, which leaves their cosine as it was.
        cosine = torch.nn.functional.cosine_similarity(gradient(uid.generator), gradient(low.generator), dim=0)
        rows.append({"update": step, "loss_fp32": float(loss_fp32), "loss_bf16": float(loss_bf16),
                     "grad_norm_fp32": float(norm_fp32), "grad_norm_bf16": float(norm_bf16),
                     "grad_cosine": float(cosine)})
    return rows


def windows(rows: list[dict], width: int) -> list[dict]:
    """:func:`summary` of the rows of updates ``[0, width)``, ``[width, 2 width)``, ...: how the bf16 error
    moves through the warm-up and the early phase."""
    out = []
    for first in range(0, rows[-1]["update"] + 1, width):
        part = [r for r in rows if first <= r["update"] < first + width]
        if part:
            out.append({"window": [first, first + width], **summary(part)})
    return out


def summary(rows: list[dict]) -> dict:
    loss32, loss16 = (np.array([r[key] for r in rows]) for key in ("loss_fp32", "loss_bf16"))
    norm32, norm16 = (np.array([r[key] for r in rows]) for key in ("grad_norm_fp32", "grad_norm_bf16"))
    loss_error = np.abs(loss16 - loss32)
    return {
        "updates": len(rows),
        "loss_abs_error_mean": float(loss_error.mean()), "loss_abs_error_max": float(loss_error.max()),
        "loss_rel_error_median": float(np.median(loss_error / np.abs(loss32))),
        # The loss's own noise: how much it moves from one row (batch) to the next in fp32.
        "loss_update_to_update_std": float(np.diff(loss32).std()) if len(rows) > 2 else None,
        "grad_norm_rel_error_median": float(np.median(np.abs(norm16 - norm32) / norm32)),
        "grad_norm_rel_error_max": float((np.abs(norm16 - norm32) / norm32).max()),
        "grad_cosine_min": float(min(r["grad_cosine"] for r in rows)),
        "grad_cosine_median": float(np.median([r["grad_cosine"] for r in rows])),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", choices=tuple(SIZES), default="cifar-tiny")
    p.add_argument("--updates", type=int, default=40, help="generator updates of the fp32 run")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--alpha", type=float, default=0.92, help="RealUID alpha (authors' CIFAR-10 uncond)")
    p.add_argument("--beta", type=float, default=0.94, help="RealUID beta (authors' CIFAR-10 uncond)")
    p.add_argument("--lr", type=float, help="both networks' learning rate (default: the authors' 3e-5)")
    p.add_argument("--warmup-steps", type=int, help="their warm-up (default: the authors' 500)")
    p.add_argument("--compare-every", type=int, default=1, help="take the bf16 phase at every n-th update")
    p.add_argument("--window", type=int, default=500, help="also summarise each window of this many updates")
    p.add_argument("--json", type=Path, help="also write the rows and the summary here")
    args = p.parse_args(argv)
    if args.updates < 1:
        p.error(f"--updates must be positive, got {args.updates}")
    if args.compare_every < 1 or args.window < 1:
        p.error("--compare-every and --window must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = resolve_device(args.device)
    started = time.perf_counter()
    with warnings.catch_warnings():
        # The bf16 copy's scheduler is a deep copy of a used one, which torch takes for a reordered step.
        warnings.filterwarnings("ignore", message="Seems like `optimizer.step\\(\\)` has been overridden")
        rows = compare(args.size, args.updates, device, args.alpha, args.beta, args.lr, args.warmup_steps,
                       args.compare_every)
    bench = Path(__file__).resolve().parents[1]
    result = {"code": code_provenance(bench.parent / "src", bench), "device": gpu_check.device_name(device),
              "torch": torch.__version__, "size": args.size,
              "alpha": args.alpha, "beta": args.beta, "lr": args.lr or "authors' 3e-5",
              "warmup_steps": args.warmup_steps if args.warmup_steps is not None else "authors' 500",
              "compare_every": args.compare_every, "summary": summary(rows),
              "windows": windows(rows, args.window),
              "seconds": time.perf_counter() - started, "rows": rows}
    print(json.dumps(result["summary"], indent=2))
    if args.json:
        gpu_check.write_json(args.json, result)
    return 0 if all(np.isfinite([r["loss_bf16"], r["grad_norm_bf16"]]).all() for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
