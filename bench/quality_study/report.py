"""bench/results/RESULTS.md: tables, figures and conclusions computed from the job results.

Every conclusion sentence below is derived from the numbers with the rule of :mod:`.stats` (a
difference smaller than the spread over seeds is "no difference"), never written by hand, so a rerun
on other data or other seeds rewrites it honestly.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np

from realuid.atomic import atomic_write

from . import figures
from .settings import FAMILY_OPTIONS, TEACHER_METHOD, StudySettings
from .stats import crossing_steps, paired_wins, phrase, ratio, summarize, verdict
from .toy import BUDGET_PRECISION_GAP, BUDGET_SW2_FACTOR
from .digits import N_GENERATED
from .tasks import UserPoints

METRICS = {"sw2": "sliced W2", "energy": "energy distance²", "knn_precision": "k-NN precision",
           "knn_recall": "k-NN recall"}
HIGHER_IS_BETTER = {"knn_precision", "knn_recall"}  # the distances are lower-is-better
TOY_ROWS = ("floor", "teacher_nfe99", "teacher_nfe1", "data_free", "realuid")
FAMILY_NAMES = {"fm": "flow matching", "diffusion": "diffusion (VP, ε)", "si": "stochastic interpolant",
                "bridge": "bridge matching"}


# --------------------------------------------------------------------------------------------------
# Extracting per-seed values


class Results:
    """Access to the job results by (variant, family, data set): per-seed lists in seed order."""

    def __init__(self, results: dict, study: StudySettings, datasets: tuple[str, ...], user_name: str = "user"):
        self.results, self.study, self.datasets = results, study, datasets
        self.user_name = user_name

    def name(self, dataset: str) -> str:
        """How a data set is called in the text: a user's file by its name."""
        return self.user_name if dataset == "user" else dataset

    def toy(self, variant: str, family: str, dataset: str) -> list[dict]:
        keys = [f"toy-{variant}-{family}-{dataset}-s{s}" for s in self.study.seeds]
        return [self.results[k] for k in keys if k in self.results]

    def values(self, variant: str, family: str, dataset: str, row: str, metric: str) -> list[float]:
        return [r["metrics"][row][metric] for r in self.toy(variant, family, dataset)]

    def has(self, variant: str, family: str, dataset: str) -> bool:
        return bool(self.toy(variant, family, dataset))

    def curves(self, variant: str, family: str, dataset: str, student: str, metric: str) -> dict:
        runs = self.toy(variant, family, dataset)
        steps = [e["step"] for e in runs[0]["curves"][student]]
        return {"step": steps, "values": [[e[metric] for e in r["curves"][student]] for r in runs]}


def _vs(a: list[float], b: list[float], metric: str) -> str:
    """The spread-rule verdict of a relative to b in the metric's own direction."""
    return verdict(a, b, lower_is_better=metric not in HIGHER_IS_BETTER)


def _wins(a: list[float], b: list[float], metric: str) -> str:
    """``k/n``: seeds in which a is strictly better than b (lower distance, higher precision or recall)."""
    return paired_wins(b, a) if metric in HIGHER_IS_BETTER else paired_wins(a, b)


def _direction(metric: str) -> str:
    return "higher is better" if metric in HIGHER_IS_BETTER else "lower is better"


def _cell(values: list[float], digits: int = 3) -> str:
    return summarize(values).text(digits)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


# --------------------------------------------------------------------------------------------------
# Sections


def _toy_tables(res: Results, families: tuple[str, ...]) -> tuple[list[str], dict]:
    """Per data set and metric: the five rows of every family, ratios and verdicts. Returns (lines, facts)."""
    lines, facts = [], {"student_vs_teacher": [], "student_vs_start": [], "realuid_vs_data_free": []}
    for dataset in res.datasets:
        for metric, label in METRICS.items():
            rows = []
            for fam in families:
                if not res.has("main", fam, dataset):
                    continue
                v = {row: res.values("main", fam, dataset, row, metric) for row in TOY_ROWS}
                cells = [FAMILY_NAMES[fam]] + [_cell(v[row]) for row in TOY_ROWS]
                cells += [ratio(v["data_free"], v["teacher_nfe99"]).text(2),
                          ratio(v["realuid"], v["teacher_nfe99"]).text(2)]
                vs = _vs(v["realuid"], v["data_free"], metric)
                cells.append(f"{vs} ({_wins(v['realuid'], v['data_free'], metric)} seeds better)")
                rows.append(cells)
                for student in ("data_free", "realuid"):
                    facts["student_vs_teacher"].append(
                        (res.name(dataset), metric, fam, student, _vs(v[student], v["teacher_nfe99"], metric),
                         ratio(v[student], v["teacher_nfe99"])))
                    facts["student_vs_start"].append((res.name(dataset), metric, fam, student,
                                                      _vs(v[student], v["teacher_nfe1"], metric)))
                facts["realuid_vs_data_free"].append((res.name(dataset), metric, fam, vs))
            lines += [f"**{res.name(dataset)}, {label}** ({_direction(metric)}; mean ± std over "
                      f"{len(res.study.seeds)} seeds)", ""]
            lines += _table(["family", "floor (real vs real)", "teacher NFE 99", "teacher NFE 1", "data-free",
                             "RealUID", "data-free / teacher", "RealUID / teacher", "RealUID vs data-free"], rows)
            lines.append("")
    return lines, facts


def _budgets(res: Results, families, dataset: str) -> dict[str, dict]:
    return {f: res.results[f"toy-budget-{f}-{dataset}"] for f in families
            if f"toy-budget-{f}-{dataset}" in res.results}


def _teachers_section(res: Results, families, study: StudySettings) -> tuple[list[str], list[str], dict]:
    """The teachers before any student: the budget ladder on the validation set, then each chosen
    teacher against the floor on the reference set. Returns (lines, conclusions, {data set: budgets})."""
    ladder = sorted(study.toy.teacher_budget_steps)
    lines = [f"Every teacher is checked before it is distilled. Its budget is chosen per family and data set on a "
             f"**validation set** (a third independent real sample, never the reference set the tables report): "
             f"one teacher of seed {study.seeds[0]} is trained up the ladder {ladder} steps and sampled at NFE "
             f"{study.toy.teacher_nfe} at each rung; the budget is the smallest rung whose sliced W2 is within "
             f"{round((BUDGET_SW2_FACTOR - 1) * 100)}% of the ladder's best **and** whose k-NN precision is within "
             f"{BUDGET_PRECISION_GAP} of the best. Precision is part of the rule because a teacher that smears its "
             f"mass over the data's hull keeps a small sliced W2. The teachers of every seed then train for that "
             f"budget.", ""]
    header = ["data", "family", "floor (validation)"] + [f"{s} steps" for s in ladder] + ["chosen budget"]
    rows, all_budgets, conclusions = [], {}, []
    for dataset in res.datasets:
        budgets = _budgets(res, families, dataset)
        all_budgets[res.name(dataset)] = {FAMILY_NAMES[f]: b for f, b in budgets.items()}
        for fam, b in budgets.items():
            pair = lambda d: f"{d['sw2']:.4f} / {d['knn_precision']:.3f}"  # noqa: E731
            top = " (top of the ladder: may still improve)" if b["chosen_steps"] == ladder[-1] else ""
            rows.append([res.name(dataset), FAMILY_NAMES[fam], pair(b["floor"])] + [pair(r) for r in b["rungs"]]
                        + [f"**{b['chosen_steps']}**{top}"])
    lines += ["**Budget ladder** (seed {}, validation set; each cell: sliced W2 / k-NN precision)".format(study.seeds[0]), ""]
    lines += _table(header, rows) + [""]

    rows = []
    for dataset in res.datasets:
        for fam in families:
            if not res.has("main", fam, dataset):
                continue
            steps = sorted({r.get("teacher_steps") for r in res.toy("main", fam, dataset)}, key=str)
            v = {(row, m): res.values("main", fam, dataset, row, m) for row in ("floor", "teacher_nfe99")
                 for m in ("sw2", "knn_precision", "knn_recall")}
            precision = _vs(v["teacher_nfe99", "knn_precision"], v["floor", "knn_precision"], "knn_precision")
            rows.append([res.name(dataset), FAMILY_NAMES[fam], ", ".join(map(str, steps)),
                         _cell(v["floor", "sw2"]), _cell(v["teacher_nfe99", "sw2"]),
                         ratio(v["teacher_nfe99", "sw2"], v["floor", "sw2"]).text(2),
                         _cell(v["floor", "knn_precision"]), _cell(v["teacher_nfe99", "knn_precision"]),
                         _cell(v["floor", "knn_recall"]), _cell(v["teacher_nfe99", "knn_recall"]), precision])
            conclusions.append((res.name(dataset), fam, precision, summarize(v["teacher_nfe99", "knn_precision"]),
                                summarize(v["floor", "knn_precision"])))
    lines += [f"**The chosen teachers on the reference set** (NFE {study.toy.teacher_nfe}; mean ± std over "
              f"{len(study.seeds)} seeds; the floor is a second real sample)", ""]
    lines += _table(["data", "family", "teacher steps", "floor SW2", "teacher SW2", "teacher / floor SW2",
                     "floor precision", "teacher precision", "floor recall", "teacher recall",
                     "teacher vs floor (precision)"], rows) + [""]
    ladders = [b for budgets in all_budgets.values() for b in budgets.values()]
    if ladders:
        first = [b["rungs"][0]["knn_precision"] for b in ladders]
        chosen = [next(r for r in b["rungs"] if r["steps"] == b["chosen_steps"])["knn_precision"] for b in ladders]
        floors = [b["floor"]["knn_precision"] for b in ladders]
        span = lambda v: f"{min(v):.2f}" if f"{min(v):.2f}" == f"{max(v):.2f}" else f"{min(v):.2f}–{max(v):.2f}"  # noqa: E731
        conclusions_text = [
            f"on the validation set, the teachers of the ladder's first rung ({ladder[0]} steps) reach k-NN precision "
            f"{span(first)} and those of the chosen budgets {span(chosen)}, against the floor's {span(floors)}"]
    else:
        conclusions_text = []
    text = conclusions_text + [f"{fam}/{ds}: the teacher's k-NN precision is {t.mean:.3f} against the floor's {f.mean:.3f} "
            f"({vs} than the floor)" if vs in ("better", "worse") else
            f"{fam}/{ds}: the teacher's k-NN precision is {t.mean:.3f}, no different from the floor's {f.mean:.3f}"
            for ds, fam, vs, t, f in conclusions]
    return lines, text, all_budgets


def _count(items, key) -> dict:
    out: dict[str, int] = {}
    for it in items:
        out[key(it)] = out.get(key(it), 0) + 1
    return out


def _verdict_summary(facts: dict) -> list[str]:
    lines = []
    by_student = {}
    for dataset, metric, fam, student, vs, r in facts["student_vs_teacher"]:
        if metric == "sw2":
            by_student.setdefault(student, []).append((dataset, fam, vs, r))
    for student, items in by_student.items():
        counts = _count(items, lambda it: it[2])
        name = "data-free" if student == "data_free" else "RealUID"
        detail = "; ".join(f"{fam}/{ds}: ratio {r.text(2)} ({vs})" for ds, fam, vs, r in items)
        lines.append(f"- **Does the one-step {name} student reach its teacher (NFE 99)?** By sliced W2, over "
                     f"{len(items)} family × data-set cells: " + _counts_text(counts, "student vs teacher") +
                     f". Ratios student/teacher: {detail}.")
    for metric, label in METRICS.items():
        items = [f for f in facts["realuid_vs_data_free"] if f[1] == metric]
        counts = _count(items, lambda it: it[3])
        which = ", ".join(f"{fam}/{ds}" for ds, _, fam, vs in items if vs == "better") or "none"
        worse = ", ".join(f"{fam}/{ds}" for ds, _, fam, vs in items if vs == "worse") or "none"
        lines.append(f"- **Does RealUID beat data-free ({label})?** {_counts_text(counts, 'RealUID vs data-free')}"
                     f" over {len(items)} cells. Better in: {which}. Worse in: {worse}.")
    return lines


def _short_counts(items: list[str]) -> str:
    """"2 better, 5 no difference, 1 worse" (out of n) from a list of verdicts."""
    counts = _count(items, lambda it: it)
    order = ("better", "no difference", "worse")
    parts = [f"{counts[k]} {k}" for k in order if counts.get(k)] + [f"{v} {k}" for k, v in counts.items() if k not in order]
    return ", ".join(parts) + f" (of {len(items)})"


def _claims_table(facts: dict, imperfect: list[tuple], speedups: list[tuple], digits: dict | None) -> list[str]:
    """The paper's claims next to what this run measured (SW2 unless stated; verdicts under the spread rule)."""
    def of(kind, student, metric="sw2"):
        # Entries are (data set, metric, family, student, verdict, ...).
        return [f[4] for f in facts[kind] if f[1] == metric and f[3] == student]

    rows = [
        ["one inverse-distillation loss works for every family",
         "one-step student vs the teacher read once (NFE 1), every family × data set",
         f"data-free: {_short_counts(of('student_vs_start', 'data_free'))}; "
         f"RealUID: {_short_counts(of('student_vs_start', 'realuid'))}"],
        ["the one-step student matches its multi-step teacher",
         "student vs teacher at NFE 99",
         f"data-free: {_short_counts(of('student_vs_teacher', 'data_free'))}; "
         f"RealUID: {_short_counts(of('student_vs_teacher', 'realuid'))}"],
        ["real data through α, β gives a better student than data-free",
         "RealUID vs data-free student",
         f"sliced W2: {_short_counts([f[3] for f in facts['realuid_vs_data_free'] if f[1] == 'sw2'])}; "
         f"energy: {_short_counts([f[3] for f in facts['realuid_vs_data_free'] if f[1] == 'energy'])}; "
         f"k-NN precision: {_short_counts([f[3] for f in facts['realuid_vs_data_free'] if f[1] == 'knn_precision'])}"
         + (f"; digits FID: {digits['realuid_vs_data_free']}" if digits else "")],
    ]
    if imperfect:
        rows.append(["the RealUID student can beat its own (imperfect) teacher",
                     "RealUID / data-free student vs an under-trained fm teacher at NFE 99",
                     "; ".join(f"{ds}: RealUID {ru}, data-free {df}" for ds, ru, df in imperfect)])
    if speedups:
        rows.append(["RealUID converges about 3× faster",
                     "generator updates to reach the data-free student's final SW2",
                     "; ".join(f"{cell} {up}" for cell, up in speedups)])
    return _table(["claim (paper)", "measured here", "result at this scale (student relative to the other)"], rows)


def _counts_text(counts: dict, what: str) -> str:
    order = ("better", "no difference", "worse")
    parts = [f"{counts.get(k, 0)} × {k}" for k in order if counts.get(k, 0)]
    parts += [f"{v} × {k}" for k, v in counts.items() if k not in order]
    return ", ".join(parts) + f" ({what})"


def _exact_section(res: Results) -> tuple[list[str], list[str]]:
    if not res.has("exact", "fm", "gmm8"):
        return [], []
    lines = ["Flow matching on gmm8 with the closed-form velocity `analytic.ExactFMTeacher` as the teacher. "
             "The generator starts from a trained MLP teacher (the `main` one of the same seed: *student start*) "
             "and the fake model from random weights (an MLP cannot copy the closed form; the `main` runs start "
             "it from the teacher). The exact teacher's own samples sit at the floor, so what remains between "
             "a student and the floor is the student's error alone.", ""]
    rows, conclusions = [], []
    for variant, name in (("exact", "exact teacher"),):
        for metric, label in METRICS.items():
            v = {row: res.values(variant, "fm", "gmm8", row, metric)
                 for row in ("floor", "teacher_nfe99", "teacher_nfe1", "student_start", "data_free", "realuid")}
            rows.append([name, label] + [_cell(v[r]) for r in v] +
                        [f"{_vs(v['realuid'], v['data_free'], metric)} ({_wins(v['realuid'], v['data_free'], metric)})"])
            if metric == "sw2":
                for student in ("data_free", "realuid"):
                    conclusions.append(
                        f"the {student.replace('_', '-')} student (SW2 {_cell(v[student])}) is "
                        f"{phrase(v[student], v['teacher_nfe99'])} the exact teacher at NFE 99 "
                        f"({_cell(v['teacher_nfe99'])}), {phrase(v[student], v['floor'])} the floor "
                        f"({_cell(v['floor'])}) and {phrase(v[student], v['student_start'])} its starting point "
                        f"({_cell(v['student_start'])})")
    lines += _table(["teacher", "metric", "floor", "teacher NFE 99", "teacher NFE 1", "student start",
                     "data-free", "RealUID", "RealUID vs data-free (seeds better)"], rows)
    return lines + [""], conclusions


def _imperfect_section(res: Results, datasets: tuple[str, ...]) -> tuple[list[str], list[str], list[tuple]]:
    rows, conclusions, claims = [], [], []
    for dataset in datasets:
        if not res.has("imperfect", "fm", dataset):
            continue
        for metric, label in METRICS.items():
            v = {row: res.values("imperfect", "fm", dataset, row, metric) for row in TOY_ROWS}
            full = res.values("main", "fm", dataset, "teacher_nfe99", metric) if res.has("main", "fm", dataset) else None
            rows.append([res.name(dataset), label, _cell(v["floor"]), _cell(full) if full else "–", _cell(v["teacher_nfe99"]),
                         _cell(v["data_free"]), _cell(v["realuid"]),
                         f"{_vs(v['data_free'], v['teacher_nfe99'], metric)} ({_wins(v['data_free'], v['teacher_nfe99'], metric)})",
                         f"{_vs(v['realuid'], v['teacher_nfe99'], metric)} ({_wins(v['realuid'], v['teacher_nfe99'], metric)})",
                         f"{_vs(v['realuid'], v['data_free'], metric)} ({_wins(v['realuid'], v['data_free'], metric)})"])
            if metric == "sw2":
                claims.append((res.name(dataset), verdict(v["realuid"], v["teacher_nfe99"]),
                               verdict(v["data_free"], v["teacher_nfe99"])))
                conclusions.append(
                    f"{res.name(dataset)}: the RealUID student is **{phrase(v['realuid'], v['teacher_nfe99'])}** its "
                    f"under-trained teacher (SW2 {_cell(v['realuid'])} vs {_cell(v['teacher_nfe99'])}); the "
                    f"data-free student is {phrase(v['data_free'], v['teacher_nfe99'])} it "
                    f"({_cell(v['data_free'])}); RealUID is {phrase(v['realuid'], v['data_free'])} data-free")
    lines = _table(["data", "metric", "floor", "fully trained teacher NFE 99", "under-trained teacher NFE 99",
                    "data-free", "RealUID", "data-free vs teacher", "RealUID vs teacher", "RealUID vs data-free"],
                   rows)
    return lines + [""], conclusions, claims


def _convergence_section(res: Results, families, datasets) -> tuple[list[str], dict, list[str], list[tuple]]:
    """Steps RealUID needs to reach the data-free student's final SW2 (raw generators, curve points)."""
    rows, panels, conclusions = [], {}, []
    cells = [("main", f, d) for d in datasets for f in families] + \
            [("imperfect", "fm", d) for d in datasets] + [("exact", "fm", "gmm8")]
    for variant, fam, dataset in cells:
        if not res.has(variant, fam, dataset):
            continue
        name = f"{fam}/{res.name(dataset)}" + ("" if variant == "main" else f" ({variant})")
        df = res.curves(variant, fam, dataset, "data_free", "sw2")
        ru = res.curves(variant, fam, dataset, "realuid", "sw2")
        target = float(np.mean([c[-1] for c in df["values"]]))
        steps_total = df["step"][-1]
        per_seed = crossing_steps([{"step": ru["step"], "value": c} for c in ru["values"]], target)
        reached = [s for s in per_seed if s is not None]
        df_own = crossing_steps([{"step": df["step"], "value": c} for c in df["values"]], target)
        df_reached = [s for s in df_own if s is not None]
        ru_text = f"{_cell(reached, 3)} ({len(reached)}/{len(per_seed)} seeds)" if reached else f"not reached (0/{len(per_seed)})"
        df_text = f"{_cell(df_reached, 3)} ({len(df_reached)}/{len(df_own)})" if df_reached else "–"
        speedup = "–"
        if reached and df_reached and len(reached) == len(per_seed):
            # A student already at the target when distillation starts has no meaningful speed-up.
            speedup = f"{np.mean(df_reached) / np.mean(reached):.2f}×" if np.mean(reached) > 0 else "at target from step 0"
        rows.append([name, f"{target:.4f}", df_text, ru_text, speedup, str(steps_total)])
        floor = float(np.mean(res.values(variant, fam, dataset, "floor", "sw2")))
        teacher = float(np.mean(res.values(variant, fam, dataset, "teacher_nfe99", "sw2")))
        panels[name] = {"curves": {"data_free": df, "realuid": ru},
                        "lines": {"teacher NFE 99": (teacher, "tab:green"), "floor": (floor, "0.5")}}
    lines = ["The data-free target is the mean over seeds of its last curve point; a run reaches it at the first "
             "logged step at or below it. Curves are measured on the raw generator (no EMA) with "
             "fewer points than the tables, so they are noisier.", ""]
    lines += _table(["cell", "data-free final SW2", "data-free reaches it at step", "RealUID reaches it at step",
                     "speed-up (data-free steps / RealUID steps)", "steps run"], rows)
    ups = [r for r in rows if r[4].endswith("×")]
    if ups:
        conclusions.append("speed-ups where every RealUID seed reached the target: "
                           + ", ".join(f"{r[0]} {r[4]}" for r in ups))
    missing = [r[0] for r in rows if r[3].startswith("not reached")]
    if missing:
        conclusions.append("RealUID never reached the data-free final quality in: " + ", ".join(missing))
    speedups = [(r[0], r[4] if r[4] != "–" else f"RealUID reached it in {r[3]}") for r in rows]
    return lines + [""], panels, conclusions, speedups


def _digits_section(results: dict, study: StudySettings) -> tuple[list[str], dict, list[str], dict | None]:
    if study.digits is None or "digits-teacher" not in results:
        return [], {}, [], None
    keys = ("fid", "kid_mean", "precision", "recall")
    evals = [results[f"digits-teacher-eval-s{s}"] for s in study.seeds]
    values = {row: {k: [e["metrics"][row][k] for e in evals] for k in keys}
              for row in ("floor", "teacher_nfe99", "teacher_nfe1")}
    for student in ("data_free", "realuid"):
        runs = [results[f"digits-{student}-s{s}"] for s in study.seeds]
        values[student] = {k: [r["metrics"][k] for r in runs] for k in keys}
    teacher, features = results["digits-teacher"], results["digits-features"]
    d = study.digits
    lines = [f"8×8 scikit-learn digits (train {features['n_train']} / test {features['n_test']}, stratified), "
             f"unconditional flow matching. Teacher: torchcfm UNet, "
             f"{d.teacher.model.channels} channels, multipliers {d.teacher.model.channel_mult}, "
             f"{d.teacher.model.num_res_blocks} res block, {teacher['parameters']:,} parameters, "
             f"{d.teacher.steps} steps at batch {d.teacher.batch_size} ({teacher['seconds'] / 60:.1f} min), trained "
             f"once{': ' + d.teacher_choice if d.teacher_choice else ''}. Seeds vary the distillation and the sampling noise. Students: {d.distill.steps} generator "
             f"updates at batch {d.distill.batch_size}, EMA {d.student_ema}. Metrics: the pipeline's offline "
             f"extractor (a classifier trained on the training digits, test accuracy "
             f"{features['test_accuracy']:.3f}), {N_GENERATED} generated images against the test split; the floor "
             f"is {N_GENERATED} training digits. FID/KID: lower is better; precision/recall: higher is better.", ""]
    labels = {"floor": "real (training digits)", "teacher_nfe99": "teacher NFE 99", "teacher_nfe1": "teacher NFE 1",
              "data_free": "data-free student", "realuid": "RealUID student"}
    rows = [[labels[r]] + [_cell(values[r][k]) for k in keys] for r in labels]
    lines += _table(["samples", "FID (offline)", "KID", "precision", "recall"], rows) + [""]
    fid = {row: values[row]["fid"] for row in values}
    conclusions = [
        f"by offline FID the RealUID student is **{phrase(fid['realuid'], fid['data_free'])}** the data-free one "
        f"({_cell(fid['realuid'])} vs {_cell(fid['data_free'])}); against the teacher at NFE 99 "
        f"({_cell(fid['teacher_nfe99'])}) the data-free student is {phrase(fid['data_free'], fid['teacher_nfe99'])} "
        f"it and the RealUID student {phrase(fid['realuid'], fid['teacher_nfe99'])} it; both start from the "
        f"teacher at NFE 1 ({_cell(fid['teacher_nfe1'])}); real digits score {_cell(fid['floor'])}"]
    claim = {"realuid_vs_data_free": verdict(fid["realuid"], fid["data_free"])}
    grids = dict(evals[0]["grids"])
    for student in ("data_free", "realuid"):
        grids[student] = results[f"digits-{student}-s{study.seeds[0]}"]["grid"]
    ordered = {k: grids[k] for k in ("test", "teacher_nfe99", "teacher_nfe1", "data_free", "realuid") if k in grids}
    return lines, ordered, conclusions, claim


# --------------------------------------------------------------------------------------------------
# Assembly


def _prefix(study: StudySettings, user: UserPoints | None) -> str:
    if user is not None:
        return f"{Path(user.path).stem}-"
    return "" if study.name == "full" else f"{study.name}-"


def summary_json(results: dict) -> dict:
    """Per-job metrics and curves without the sample arrays (they are only for the figures)."""
    out = {}
    for key, r in sorted(results.items()):
        if key.startswith("toy-budget-"):
            out[key] = r
        elif key.startswith("toy-"):
            out[key] = {"metrics": r["metrics"], "curves": r["curves"], "seconds": r["seconds"],
                        "teacher_steps": r.get("teacher_steps")}
        elif key in ("digits-teacher",):
            out[key] = {"parameters": r["parameters"], "seconds": r["seconds"], "spec": r["spec"]}
        elif key.startswith("digits-"):
            out[key] = {k: v for k, v in r.items() if k not in ("grid", "grids", "state_dict", "path")}
    return out


def report_name(study: StudySettings, user: UserPoints | None) -> str:
    """RESULTS.md for the full study on the built-in sets; other runs never overwrite it."""
    if user is not None:
        return f"RESULTS-{Path(user.path).stem}.md"
    return "RESULTS.md" if study.name == "full" else f"RESULTS-{study.name}.md"


def write_report(results: dict, study: StudySettings, user: UserPoints | None, out: Path, *, command: str,
                 wall: dict, machine: dict) -> Path:
    """Write RESULTS*.md, the figures and a JSON of every number; returns the markdown path."""
    out.mkdir(parents=True, exist_ok=True)
    fig_dir = out / "figures"
    prefix = _prefix(study, user)
    datasets = ("user",) if user is not None else study.toy.datasets
    families = study.toy.families
    res = Results(results, study, datasets, Path(user.path).stem if user is not None else "user")

    label = {"full": "", "quick": " — QUICK SETTINGS (a smoke run, not the study's result)",
             "tiny": " — TINY SETTINGS (test run)"}[study.name]
    lines = [f"# RealUID quality study at CPU scale{label}", ""]
    ran_by = wall.get("command") or command
    regenerated = f"; this file was regenerated from its cached job results by `{command}`" if ran_by != command else ""
    lines += [f"- Command: `{ran_by}` (from the repository root; rerunning it resumes from cached job results "
              f"of identical settings{regenerated})",
              f"- Code: commit {wall.get('code') or 'unknown'} when the jobs ran",
              f"- Machine: {machine['cpu_cores']} CPU cores, no GPU ({machine['platform']}, Python "
              f"{machine['python']}); each job runs in one of {study.workers} worker processes with one torch thread",
              f"- Wall time: {wall['seconds'] / 60:.1f} min for all jobs ({wall['invocations']} invocation(s) of the "
              f"command; a resumed study adds up its runs); job compute: "
              f"{sum(sum(r['seconds'].values()) if isinstance(r.get('seconds'), dict) else r.get('seconds', 0) for r in results.values()) / 60:.1f} worker-minutes in total",
              f"- Seeds: {list(study.seeds)}; every entry is `mean ± std` over them; **a difference smaller than the "
              f"larger of the two spreads is reported as `no difference`**; `(k/n)` counts seeds in which the first "
              f"method is strictly better: a lower distance, a higher precision or recall (paired: same teacher, same random draws)",
              f"- RealUID: alpha = {study.alpha}, beta = {study.beta} (beta/alpha = {study.beta / study.alpha:.3f}); "
              f"data-free: alpha = beta = 1. Same settings for both students, chosen once and not tuned",
              ""]
    if user is not None:
        lines += [f"- Points: `{user.path}`, {len(user.points)} points in {user.points.shape[1]} D; mapped to "
                  f"[-1, 1] by x = unit * scale + shift with scale {user.scale} and shift {user.shift}; per seed "
                  f"split into reference, floor and validation sets of equal size and a training set", ""]
    lines += _settings_lines(study)
    lines += _compute_lines(results) + [""]

    teacher_lines, teacher_conc, budgets = _teachers_section(res, families, study)
    lines += ["## 1. Teachers first", ""] + teacher_lines
    teacher_figs = []
    if any(budgets.values()):
        name = f"{prefix}toy_teacher_budgets.png"
        figures.teacher_budgets({k: v for k, v in budgets.items() if v}, fig_dir / name,
                                title=f"teacher budget ladder, seed {study.seeds[0]}, validation set (ring: chosen)")
        teacher_figs.append(name)
    # One row per data set: a real sample, then each family's chosen teacher (first seed).
    samples, refs = {}, {}
    for dataset in datasets:
        runs = [res.toy("main", f, dataset)[0] for f in families if res.has("main", f, dataset)]
        runs = dict(zip([FAMILY_NAMES[f] for f in families if res.has("main", f, dataset)], runs))
        if runs and all(r["samples"] for r in runs.values()):
            first = next(iter(runs.values()))
            samples[res.name(dataset)] = {"floor": first["samples"]["floor"],
                                          **{k: r["samples"]["teacher_nfe99"] for k, r in runs.items()}}
            refs[res.name(dataset)] = first["reference"]
    if samples:
        name = f"{prefix}toy_teachers.png"
        columns = ["floor"] + [FAMILY_NAMES[f] for f in families]
        figures.scatter_grid(samples, refs, columns, fig_dir / name, f"the chosen teachers at NFE "
                             f"{study.toy.teacher_nfe}, seed {study.seeds[0]} (grey: held-out real points)")
        teacher_figs.append(name)
    lines += [f"![{n}](figures/{n})" for n in teacher_figs] + [""]

    toy_lines, facts = _toy_tables(res, families)
    lines += ["## 2. Toy 2-D students, all four families", "",
              "Distances to held-out real points (the reference set); the floor is the distance between a second "
              "independent real sample of the same size and the reference, i.e. what a perfect generator scores. "
              "*Teacher NFE 1* is the teacher read once at the generator's source time, which is exactly where "
              "both students start. Student rows are the EMA generators.", ""]
    lines += toy_lines
    scatter_figs = []
    for dataset in datasets:
        samples = {FAMILY_NAMES[f]: res.toy("main", f, dataset)[0]["samples"] for f in families
                   if res.has("main", f, dataset) and res.toy("main", f, dataset)[0]["samples"]}
        refs = {FAMILY_NAMES[f]: res.toy("main", f, dataset)[0]["reference"] for f in families
                if res.has("main", f, dataset) and res.toy("main", f, dataset)[0]["reference"] is not None}
        if samples:
            name = f"{prefix}toy_samples_{dataset}.png"
            figures.scatter_grid(samples, refs, TOY_ROWS, fig_dir / name,
                                 f"{res.name(dataset)}: samples of seed {study.seeds[0]} (grey: held-out real points)")
            scatter_figs.append(name)
        groups = {f: {row: res.values("main", f, dataset, row, "sw2") for row in TOY_ROWS}
                  for f in families if res.has("main", f, dataset)}
        name = f"{prefix}toy_sw2_{dataset}.png"
        figures.distance_bars(groups, fig_dir / name, metric_label="sliced W2 to held-out data",
                              title=f"{res.name(dataset)}: mean ± std over {len(study.seeds)} seeds")
        scatter_figs.append(name)
    lines += [f"![{n}](figures/{n})" for n in scatter_figs] + [""]

    exact_lines, exact_conc = ([], []) if user is not None else _exact_section(res)
    if exact_lines:
        lines += ["## 3. Exact teacher (flow matching, gmm8)", ""] + exact_lines
    imp_lines, imp_conc, imp_claims = _imperfect_section(res, datasets)
    lines += ["## 4. Imperfect teacher", "",
              f"Flow matching; the teacher is stopped after {study.toy.imperfect_teacher_steps} steps instead of "
              f"the budget of section 1. Do the students, which see real data only through the RealUID terms, "
              f"beat the teacher they distil?", ""] + imp_lines
    conv_lines, panels, conv_conc, speedups = _convergence_section(res, families, datasets)
    conv_fig = f"{prefix}toy_convergence.png"
    figures.convergence(panels, fig_dir / conv_fig, metric_label="sliced W2",
                        title=f"sliced W2 vs generator updates: mean over {len(study.seeds)} seeds, band = min–max")
    lines += ["## 5. Convergence", ""] + conv_lines + [f"![convergence](figures/{conv_fig})", ""]
    dig_lines, grids, dig_conc, dig_claim = _digits_section(results, study)
    if dig_lines:
        dig_fig = f"{prefix}digits_samples.png"
        figures.image_panels(grids, fig_dir / dig_fig, title=f"8×8 digits, seed {study.seeds[0]}")
        lines += ["## 6. Digits (8×8), offline FID", ""] + dig_lines + [f"![digits](figures/{dig_fig})", ""]
    if user is None:
        lines += ["## 7. α/β sweep through the pipeline", "",
                  "Not run by this command: it needs the DVC pipeline and its own budget (one pipeline run per grid "
                  "point and seed). From the repository root:", "",
                  "```",
                  "bench/sweep queue --seeds 0 1 2   # dvc exp run --queue --set-param alpha=… beta=… distill.seed=…",
                  "bench/sweep start --jobs 1        # dvc queue start; `dvc queue status` shows progress",
                  "bench/sweep collect               # dvc exp show --json -> RESULTS-sweep.md + figures/sweep_heatmap.png",
                  "```", "",
                  "The grid crosses alpha ∈ {0.86, 0.90, 0.94} with β/α ∈ {0.94, 0.98, 1, 1.02, 1.06}, plus the "
                  "data-free point α = β = 1; the metric is the student's sliced W2 (points) in "
                  "`data/evaluate/metrics.json` (`--metric student.fid` for images). The recorded sweep is in "
                  "[RESULTS-sweep.md](RESULTS-sweep.md).", ""]

    lines += ["## Conclusions (computed from the tables above)", ""]
    lines += _claims_table(facts, imp_claims, speedups, dig_claim) + [""]
    lines += [f"- Teachers — {c}." for c in teacher_conc]
    lines += _verdict_summary(facts)
    lines += [f"- Exact teacher — {c}." for c in exact_conc]
    lines += [f"- Imperfect teacher — {c}." for c in imp_conc]
    lines += [f"- Convergence — {c}." for c in conv_conc]
    lines += [f"- Digits — {c}." for c in dig_conc]
    lines += ["", "### Caveats", ""] + CAVEATS
    path = out / report_name(study, user)
    _write_text(path, "\n".join(lines) + "\n")
    _write_text(path.with_suffix(".json"), json.dumps(
        {"settings": dataclasses.asdict(study), "command": command, "wall": wall,
         "machine": machine, "jobs": summary_json(results)}, indent=1, sort_keys=True, default=_json_default) + "\n")
    return path


CAVEATS = [
    "- Scale: 2-D toys and 8×8 digits with small networks and a few hundred generator updates; the paper's "
    "claims are about CIFAR-10 with 400k-step teachers. A claim that does not show here may still hold there, "
    "and the converse.",
    "- The bridge generator is deterministic given its corrupted input (as in the pipeline): it can match the "
    "marginal of x1 but not the spread of x1 given x0, which the bridge teacher's SDE samples. Its distances "
    "are marginal ones.",
    "- Distances near the floor are dominated by finite-sample noise; ratios of such distances are close to "
    "1 by construction.",
]


def _settings_lines(study: StudySettings) -> list[str]:
    toy = study.toy
    t, d = toy.teacher, toy.distill
    return [
        "### Settings", "",
        f"- Toy data: {toy.n_train} training points per seed (fresh draws of `realuid.data.make_toy`), "
        f"{toy.n_eval} points in each evaluated set; sliced W2 with {toy.n_projections} directions; energy "
        f"distance (squared, V-statistic) from `realuid.metrics`. Bridge pairs: x0 = clip(x1 + "
        f"{toy.pairing_strength}·N(0, I), -1, 1).",
        "- Families (options; teacher sampler): " + "; ".join(
            f"{f} ({', '.join(f'{k}={v}' for k, v in FAMILY_OPTIONS[f].items()) or 'linear path'}; "
            f"{TEACHER_METHOD[f]})" for f in toy.families)
        + f"; teachers sampled with {toy.teacher_nfe} function evaluations. Diffusion uses its SDE sampler: its "
        "probability-flow ODE sends ~0.2% of the samples far outside the data (|x| up to ~50, unchanged from 99 "
        "to 999 steps), and those few points alone dominate sliced W2.",
        f"- Toy networks: MLP {t.model.hidden_dim} wide, {t.model.depth} residual blocks. Teacher: the budget of section 1 (ladder "
        f"{sorted(toy.teacher_budget_steps)} steps), batch {t.batch_size}, Adam lr {t.optim.lr}, EMA {t.ema_decay}. Distillation: {d.steps} generator updates, "
        f"{d.fake_updates_per_generator_update} fake updates each, batch {d.batch_size}, Adam (0, 0.999) lr "
        f"{d.generator_optim.lr} (both), warm-up {d.generator_optim.warmup_steps}, clip {d.generator_optim.grad_clip}, "
        f"fake model from the teacher, generator EMA {toy.student_ema} reported.",
        "",
    ]


def _compute_lines(results: dict) -> list[str]:
    """Mean seconds per piece of work (one worker, one torch thread), so budgets can be planned."""
    parts: dict[str, list[float]] = {}
    for key, r in results.items():
        if key.startswith("toy-budget-"):
            parts.setdefault("toy teacher budget ladder", []).append(r["seconds"])
        elif key.startswith("toy-") and isinstance(r.get("seconds"), dict):
            for piece, sec in r["seconds"].items():
                parts.setdefault(f"toy {piece.replace('_', ' ')}", []).append(sec)
        elif key.startswith("digits-") and "seconds" in r:
            name = "digits " + ("teacher eval" if "teacher-eval" in key else
                                key.split("-")[1] if key.count("-") > 1 else key.split("-", 1)[1])
            parts.setdefault(name.replace("_", "-"), []).append(r["seconds"])
    text = ", ".join(f"{name} {np.mean(v):.0f} s (×{len(v)})" for name, v in sorted(parts.items()))
    return [f"- Compute per piece (mean seconds on one worker; count): {text}."] if parts else []


def _json_default(obj):
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    raise TypeError(f"not JSON-serialisable: {type(obj).__name__}")


def _write_text(path: Path, text: str) -> None:
    atomic_write(path, text)
