"""Stage ``report``: one Markdown page with metrics, samples side by side and training curves."""

from __future__ import annotations

import sys

import json
import shutil
from pathlib import Path

from ..plots import curves, read_curves
from . import common

ROWS = (("teacher", "teacher (multi-step)"), ("student", "one-step student"), ("real", "real data (floor)"))


def metrics_table(metrics: dict) -> str:
    # Per-class accuracies of class-conditional models would swamp the table; the metrics file has them.
    keys = [k for k in metrics["student"] if k not in ("nfe", "samples_per_second") and "_accuracy_" not in k]
    head = ["model", *keys, "NFE", "samples/s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    copies = [(who, f"student copy `{who.removeprefix('student_')}`") for who in sorted(metrics) if who.startswith("student_")]
    for who, label in [*ROWS, *copies]:
        row = metrics[who]
        cells = [f"{row[k]:.4g}" if k in row else "–" for k in keys]
        speed = [str(row.get("nfe", "–")), f"{row['samples_per_second']:.0f}" if "samples_per_second" in row else "–"]
        lines.append("| " + " | ".join([label, *cells, *speed]) + " |")
    return "\n".join(lines)


def main(args, params) -> None:
    common.check_folders({common.output_folder(args.out): 0})  # pictures and a page: the margin holds them
    metrics = json.loads(Path(args.metrics).read_text())
    samples = Path(args.samples)
    with common.atomic_dir(args.out) as tmp:
        for who in ("teacher", "student"):
            shutil.copyfile(samples / f"{who}.png", tmp / f"{who}.png")
        panels = {"teacher (matching loss)": read_curves(args.teacher_curves),
                  "distillation": read_curves(args.distill_curves)}
        if params.finetune.enabled:
            panels["fine-tuning"] = read_curves(Path(args.finetune) / "curves.csv")
        curves(panels, tmp / "curves.png", title="training curves")
        t, s = metrics["teacher"], metrics["student"]
        headline = json.loads((samples / "timing.json").read_text())["student_copy"].removeprefix("student_")
        speedup = s["samples_per_second"] / t["samples_per_second"]
        finetuned = ", then fine-tuned (see the curves)" if params.finetune.enabled else ""
        page = f"""# RealUID report

Family **{params.family.name}**, data **{params.prepare.source}**, alpha = {params.alpha}, beta = {params.beta}
(beta/alpha = {params.beta / params.alpha:.3f}){finetuned}.

## Metrics

Lower is better for every distance; `real` scores held-out real data the same way (the floor).
The one-step student is the generator copy `{headline}`; every copy is listed below it.

{metrics_table(metrics)}

The one-step student samples {speedup:.0f}x faster than the teacher at NFE {t['nfe']}.

## Samples

| teacher, NFE {t['nfe']} | one-step student |
|---|---|
| ![teacher](teacher.png) | ![student](student.png) |

## Training curves

![curves](curves.png)
"""
        (tmp / "index.md").write_text(page)
    print(f"report: {Path(args.out) / 'index.md'}")


def cli(argv: list[str] | None = None) -> int:
    p = common.parser(__doc__)
    p.add_argument("--metrics", required=True)
    p.add_argument("--samples", required=True)
    p.add_argument("--teacher-curves", required=True)
    p.add_argument("--distill-curves", required=True)
    p.add_argument("--finetune", required=True, help="folder from the finetune stage")
    p.add_argument("--out", required=True, help="output folder: index.md and pictures")
    return common.run(main, p, argv)


if __name__ == "__main__":
    sys.exit(cli())
