"""Stage ``report``: one Markdown page with metrics, samples side by side and training curves."""

from __future__ import annotations

import sys

import json
import re
import shutil
from pathlib import Path

from ..plots import curves, quality_against_nfe, quality_curves, read_curves, read_table
from . import common

ROWS = (("teacher", "teacher (multi-step)"), ("student", "one-step student"), ("real", "real data (floor)"))
STEPS_ROW = re.compile(r"(student.*)_nfe(\d+)")  # a k-step student's row of j > 1 steps: <row>_nfe<j>


def student_steps_rows(metrics: dict) -> list[str]:
    """The headline student's rows of more than one step (``student_nfe<j>``), by NFE."""
    return sorted((who for who in metrics if who != "student" and copy_and_steps(who)[0] == "student"),
                  key=copy_and_steps)


def metrics_table(metrics: dict) -> str:
    # Per-class accuracies of class-conditional models would swamp the table; the metrics file has them.
    keys = [k for k in metrics["student"] if k not in ("nfe", "samples_per_second") and "_accuracy_" not in k]
    head = ["model", *keys, "NFE", "samples/s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    steps = [(who, f"student, {metrics[who]['nfe']} steps") for who in student_steps_rows(metrics)]
    copies = [(who, copy_label(who)) for who in sorted(metrics, key=copy_and_steps)
              if who.startswith("student_") and who not in dict(steps)]
    for who, label in [*ROWS[:2], *steps, ROWS[2], *copies]:
        row = metrics[who]
        cells = [f"{row[k]:.4g}" if k in row else "–" for k in keys]
        speed = [str(row.get("nfe", "–")), f"{row['samples_per_second']:.0f}" if "samples_per_second" in row else "–"]
        lines.append("| " + " | ".join([label, *cells, *speed]) + " |")
    return "\n".join(lines)


def copy_and_steps(who: str) -> tuple[str, int]:
    """``student_raw_nfe2`` -> ("student_raw", 2); a one-step row -> (its name, 1)."""
    steps = STEPS_ROW.fullmatch(who)
    return (steps.group(1), int(steps.group(2))) if steps else (who, 1)


def copy_label(who: str) -> str:
    """``student_raw`` -> student copy `raw`; ``student_raw_nfe2`` -> student copy `raw`, 2 steps."""
    name, steps = copy_and_steps(who)
    return f"student copy `{name.removeprefix('student_')}`" + (f", {steps} steps" if steps > 1 else "")


def nfe_section(metrics: dict, headline: str, out: Path) -> str:
    """Quality against NFE (``nfe.png`` and a table) when the student was sampled with several step counts."""
    rows = ["student", *student_steps_rows(metrics)]
    if len(rows) == 1:
        return ""
    metric = "fid" if "fid" in metrics["student"] else "sliced_wasserstein2"
    teacher, floor = metrics["teacher"], metrics["real"][metric]
    quality_against_nfe({f"student (copy {headline})": ([metrics[w]["nfe"] for w in rows],
                                                        [metrics[w][metric] for w in rows]),
                         "teacher": ([teacher["nfe"]], [teacher[metric]])},
                        metric, out / "nfe.png", title=f"{metric} against NFE", floor=floor)
    lines = [*(f"| student | {metrics[w]['nfe']} | {metrics[w][metric]:.4g} |" for w in rows),
             f"| teacher | {teacher['nfe']} | {teacher[metric]:.4g} |", f"| real data (floor) | – | {floor:.4g} |"]
    return ("\n## Quality against NFE\n\n"
            f"{metric} of the student at each number of steps, beside the teacher at its NFE; lower is better.\n\n"
            f"| model | NFE | {metric} |\n|---|---|---|\n" + "\n".join(lines) + "\n\n![quality against NFE](nfe.png)\n")


def main(args, params) -> None:
    common.check_folders({common.output_folder(args.out): 0})  # pictures and a page: the margin holds them
    metrics = json.loads(Path(args.metrics).read_text())
    samples = Path(args.samples)
    pictured = {"teacher": f"teacher, NFE {metrics['teacher']['nfe']}", "student": "one-step student",
                **{who: f"student, {metrics[who]['nfe']} steps" for who in student_steps_rows(metrics)}}
    with common.atomic_dir(args.out) as tmp:
        for who in pictured:
            shutil.copyfile(samples / f"{who}.png", tmp / f"{who}.png")
        panels = {"teacher (matching loss)": read_curves(args.teacher_curves),
                  "distillation": read_curves(args.distill_curves)}
        if params.finetune.enabled:
            panels["fine-tuning"] = read_curves(Path(args.finetune) / "curves.csv")
        curves(panels, tmp / "curves.png", title="training curves")
        t, s = metrics["teacher"], metrics["student"]
        timing = json.loads((samples / "timing.json").read_text())
        headline = timing["student_copy"].removeprefix("student_")
        tables = {"distillation": read_table(args.distill_eval)}
        if params.finetune.enabled:
            tables["fine-tuning"] = read_table(Path(args.finetune) / "eval.csv")
        quality = quality_section(tables, timing.get("best"), headline, tmp)
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
{nfe_section(metrics, headline, tmp)}
## Samples

| {" | ".join(pictured.values())} |
|{"---|" * len(pictured)}
| {" | ".join(f"![{who}]({who}.png)" for who in pictured)} |

## Training curves

![curves](curves.png)
{quality}"""
        (tmp / "index.md").write_text(page)
    print(f"report: {Path(args.out) / 'index.md'}")


def best_row(rows: list[dict[str, str]], metric: str) -> dict[str, str]:
    """The first row with the lowest ``metric``: the (copy, step) ``distill.keep_best`` keeps."""
    best = rows[0]
    for row in rows[1:]:
        if float(row[metric]) < float(best[metric]):
            best = row
    return best


def quality_section(tables: dict, best_kept: dict | None, headline: str, out: Path) -> str:
    """In-training quality: the curves per copy (``quality.png``) and the best (copy, step) of each table."""
    tables = {name: rows for name, rows in tables.items() if rows}
    if not tables:
        return ""
    metric = list(next(iter(tables.values()))[0])[-1]  # the headline metric is the table's last column
    quality_curves(tables, metric, out / "quality.png", title=f"in-training {metric} (training split)")
    lines = []
    for name, rows in tables.items():
        best = best_row(rows, metric)
        lines.append(f"- {name}: best `{best['copy']}` at step {best['step']} ({metric} {float(best[metric]):.4g}); "
                     f"{len({r['step'] for r in rows})} evaluations of {len({r['copy'] for r in rows})} copies")
    if headline == "best" and best_kept is not None:
        lines.append(f"- The one-step student is that kept copy (`{best_kept['copy']}` at step {best_kept['step']}). "
                     "Picking a checkpoint by the metric you then report is optimistic: the final copies are "
                     "listed beside it in the table above.")
    return ("\n## Quality during training\n\n"
            f"{metric} of each generator copy against the training split, on a fixed noise set "
            "(`distill.eval_every_steps`, `distill.eval_samples`); lower is better.\n\n"
            + "\n".join(lines) + "\n\n![quality](quality.png)\n")


def cli(argv: list[str] | None = None) -> int:
    p = common.parser(__doc__)
    p.add_argument("--metrics", required=True)
    p.add_argument("--samples", required=True)
    p.add_argument("--teacher-curves", required=True)
    p.add_argument("--distill-curves", required=True)
    p.add_argument("--distill-eval", required=True, help="distill's in-training evaluation table (eval.csv)")
    p.add_argument("--finetune", required=True, help="folder from the finetune stage")
    p.add_argument("--out", required=True, help="output folder: index.md and pictures")
    return common.run(main, p, argv)


if __name__ == "__main__":
    sys.exit(cli())
