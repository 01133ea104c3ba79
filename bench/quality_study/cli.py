"""``bench/quality``: run the study's jobs on a small process pool, cache each result, write the report.

Each job runs in a worker process with one torch thread (on 2 cores, two single-threaded jobs finish
more work than one job on two threads: the networks are small). A finished job's result is pickled
into the work folder under a key that hashes the settings, so a killed study resumes where it stopped
when the same command is run again.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import dataclasses
import hashlib
import json
import multiprocessing
import os
import pickle
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

from realuid.atomic import atomic_open, atomic_write

from . import settings as presets
from . import tasks

BENCH = Path(__file__).resolve().parents[1]


def _worker_init() -> None:
    import torch

    torch.set_num_threads(1)


# Options that change nothing at these values stay out of the digest, so caches outlive their arrival.
_INERT_OPTIONS = {"guide_fake": False}


def _without_inert(obj):
    if isinstance(obj, dict):
        return {k: _without_inert(v) for k, v in obj.items() if not (k in _INERT_OPTIONS and v == _INERT_OPTIONS[k])}
    return [_without_inert(v) for v in obj] if isinstance(obj, list) else obj


def settings_digest(study: presets.StudySettings, user: tasks.UserPoints | None) -> str:
    blob = json.dumps([_without_inert(dataclasses.asdict(study)), None if user is None else
                       [user.path, hashlib.sha256(user.points.tobytes()).hexdigest()]], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


class JobCache:
    """Results of finished jobs, one pickle per job key (written atomically)."""

    def __init__(self, folder: Path):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.pkl"

    def get(self, key: str):
        path = self.path(key)
        if not path.exists():
            return None
        with open(path, "rb") as fh:
            return pickle.load(fh)

    def put(self, key: str, value) -> None:
        with atomic_open(self.path(key)) as fh:
            pickle.dump(value, fh)


@dataclasses.dataclass
class Job:
    key: str
    fn: Callable
    args: tuple
    after: tuple[str, ...] = ()  # keys whose results are appended to args when this job starts


def budget_key(family: str, dataset: str) -> str:
    return f"toy-budget-{family}-{dataset}"


def toy_jobs(study: presets.StudySettings, user: tasks.UserPoints | None, work: Path) -> list[Job]:
    """The teacher budgets first (one per family and data set), then the jobs that train at them."""
    from .toy import ToyJob, run_teacher_budget, run_toy_job

    toy = study.toy
    datasets = ("user",) if user is not None else toy.datasets
    jobs = [Job(budget_key(f, d), run_teacher_budget, (f, d, study, work / budget_key(f, d), user))
            for d in datasets for f in toy.families]
    specs = [ToyJob(f, d, s) for d in datasets for f in toy.families for s in study.seeds]
    imperfect = ("user",) if user is not None else toy.imperfect_datasets
    specs += [ToyJob("fm", d, s, "imperfect") for d in imperfect for s in study.seeds]
    if user is None and "gmm8" in toy.datasets:
        specs += [ToyJob("fm", "gmm8", s, "exact") for s in study.seeds]
    # The imperfect teacher's budget is fixed, so it waits for no budget job.
    return jobs + [Job(j.key, run_toy_job, (j, study, work / j.key, user),
                       after=() if j.variant == "imperfect" else (budget_key(j.family, j.dataset),))
                   for j in specs]


def digits_jobs(study: presets.StudySettings, work: Path) -> list[Job]:
    from . import digits

    jobs = [Job("digits-teacher", digits.train_digits_teacher, (study, work / "digits-teacher")),
            Job("digits-features", digits.train_features, (study, work / "digits-features"))]
    for seed in study.seeds:
        jobs.append(Job(f"digits-teacher-eval-s{seed}", _digits_teacher_eval, (seed, study),
                        after=("digits-teacher", "digits-features")))
        for student in ("data_free", "realuid"):
            key = f"digits-{student}-s{seed}"
            jobs.append(Job(key, _digits_student, (student, seed, study, work / key),
                            after=("digits-teacher", "digits-features")))
    return jobs


def _digits_teacher_eval(seed, study, teacher, features):
    from .digits import evaluate_teacher

    return evaluate_teacher(seed, teacher, features, study)


def _digits_student(student, seed, study, work_dir, teacher, features):
    from .digits import run_digits_student

    return run_digits_student(student, seed, teacher, features, study, work_dir)


def _call(fn, args):
    return fn(*args)


def run_jobs(jobs: list[Job], cache: JobCache, workers: int, log: Callable[[str], None]) -> tuple[dict, int]:
    """Run every job not in the cache, dependencies first, ``workers`` at a time.

    Returns ({key: result} for every job, number of jobs this call ran).
    """
    results = {j.key: cache.get(j.key) for j in jobs}
    results = {k: v for k, v in results.items() if v is not None}
    pending = [j for j in jobs if j.key not in results]
    if results:
        log(f"{len(results)} job(s) already done (cached), {len(pending)} to run")
    if not pending:
        return results, 0
    ran = len(pending)
    # Jobs with dependents go first (they gate the rest), then the dependent ones as soon as they can
    # start (the digits students are the longest jobs: started last they would leave a worker idle).
    gating = {k for j in pending for k in j.after}
    pending.sort(key=lambda j: (j.key not in gating, not j.after))

    def start(pool, job):
        return pool.submit(_call, job.fn, job.args + tuple(results[k] for k in job.after))

    ready = lambda j: all(k in results for k in j.after)  # noqa: E731
    context = multiprocessing.get_context("fork")
    started = time.perf_counter()
    with cf.ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_worker_init) as pool:
        running: dict[cf.Future, Job] = {}
        while pending or running:
            for job in [j for j in pending if ready(j)][: max(0, workers - len(running))]:
                pending.remove(job)
                running[start(pool, job)] = job
                log(f"start {job.key}")
            if not running:
                raise RuntimeError(f"jobs wait for results that never come: {[j.key for j in pending]}")
            done, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
            for future in done:
                job = running.pop(future)
                results[job.key] = future.result()
                cache.put(job.key, results[job.key])
                log(f"done  {job.key}  ({time.perf_counter() - started:.0f} s since start, "
                    f"{len(pending) + len(running)} left)")
    return results, ran


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/quality", description="Reproduce the RealUID paper's claims at CPU scale "
                                "(toy 2-D, all four families; 8x8 digits) and write RESULTS.md with tables and figures.")
    p.add_argument("--quick", action="store_true", help="small sizes: checks the whole study in minutes")
    p.add_argument("--preset", choices=sorted(presets.PRESETS), help=argparse.SUPPRESS)
    p.add_argument("--points", help="a .npz with an array 'x' (or 'x1') of 2-D points: run the toy part on it")
    p.add_argument("--seeds", type=int, default=None, help="number of seeds (default 3; at least 3 for a report)")
    p.add_argument("--workers", type=int, default=None, help="parallel jobs (default 2, one torch thread each)")
    p.add_argument("--no-digits", action="store_true", help="skip the 8x8 digits part")
    p.add_argument("--work", help="folder for checkpoints and cached job results (default: a temp folder)")
    p.add_argument("--out", default=str(BENCH / "results"), help="where RESULTS.md, results JSON and figures/ go")
    return p.parse_args(argv)


def build_settings(args) -> presets.StudySettings:
    name = args.preset or ("quick" if args.quick else "full")
    study = presets.PRESETS[name]()
    if args.seeds is not None:
        if args.seeds < 1:
            raise ValueError(f"--seeds must be >= 1, got {args.seeds}")
        study = dataclasses.replace(study, seeds=tuple(range(args.seeds)))
    if args.workers is not None:
        study = dataclasses.replace(study, workers=max(1, args.workers))
    if args.no_digits or args.points:
        study = dataclasses.replace(study, digits=None)
    return study


def main(argv=None) -> int:
    from .report import report_name, write_report

    args = parse_args(argv)
    try:
        study = build_settings(args)
        user = tasks.load_user_points(args.points) if args.points else None
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    digest = settings_digest(study, user)
    work = Path(args.work) if args.work else Path(tempfile.gettempdir()) / f"realuid-bench-quality-{digest}"
    log_lines: list[str] = []

    def log(msg: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {msg}"
        log_lines.append(line)
        print(line, flush=True)

    log(f"study '{study.name}', seeds {list(study.seeds)}, {study.workers} worker(s), work folder {work}")
    started = time.perf_counter()
    # The digits teacher is the longest job that others wait for: listed first, it starts first.
    jobs = digits_jobs(study, work) if study.digits is not None else []
    jobs += toy_jobs(study, user, work)
    command = "bench/quality" + "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:]))
    code = code_version()  # before the jobs: the code they run, whatever is committed while they run
    results, ran = run_jobs(jobs, JobCache(work / "results"), study.workers, log)
    wall = accumulate_wall_seconds(work / "wall.json", time.perf_counter() - started if ran else 0.0,
                                   command=command, code=code)
    machine = {"cpu_cores": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}
    write_report(results, study, user, Path(args.out), command=command, wall=wall, machine=machine)
    log(f"wrote {Path(args.out) / report_name(study, user)} (jobs: {wall['seconds'] / 60:.1f} min of wall time "
        f"over {wall['invocations']} invocation(s))")
    return 0


def accumulate_wall_seconds(path: Path, seconds: float, *, command: str = "", code: str = "") -> dict:
    """Add this invocation's wall time to the study's total (a resumed study is timed across its runs).

    Invocations that found every job cached pass 0 and add nothing: regenerating a report keeps the total.
    The first invocation that computes jobs also records its command line and code version, which the
    report names as the ones that produced the numbers. Other keys of the file (a note on the machine's
    load, written by hand where a report prints it) are kept.
    """
    total = json.loads(path.read_text()) if path.exists() else {"seconds": 0.0, "invocations": 0}
    if seconds > 0:
        total = {**total, "seconds": total["seconds"] + seconds, "invocations": total["invocations"] + 1,
                 "command": total.get("command") or command, "code": total.get("code") or code}
        atomic_write(path, json.dumps(total))
    return total


def code_version() -> str:
    """The repository's commit (short), with a note when tracked files under src/ or bench/ differ from it:
    the code a study ran, for its report."""
    from realuid.checkpoints import code_provenance

    code = code_provenance(BENCH.parent / "src", BENCH)
    if code["commit"] is None:
        return "unknown (not a git checkout, or git not available)"
    return code["commit"][:12] + (" with uncommitted changes under src/ or bench/" if code["dirty"] else "")
