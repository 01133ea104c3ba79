"""The plan's check: its projection against a measured ``dvc repro`` from an empty state.

Run it on an idle machine (timings on a shared one say nothing), from the repository root, with the
project's environment's ``python`` and ``dvc`` first on PATH::

    python bench/plan_check.py                      # the embedded default (params.yaml)
    python bench/plan_check.py --config toy         # configs/toy.yaml instead
    python bench/plan_check.py --params my.yaml     # any params file instead
    python bench/plan_check.py --json out.json      # also write the table as JSON

It clones the repository's checked-out commit into a temporary folder, runs ``python -m realuid.plan
--json`` there, then ``dvc repro --force`` (empty cache, no state: every stage from scratch), timing
the whole and each stage (from the line DVC prints as it starts the stage to the next). It prints, per
stage, the projected and measured seconds and their ratio, and whether the total is within ±30%.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BAND = 0.30


def environment(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # each stage sets its own
    return {**env, **extra}


def run(folder: Path, *cmd: str, **extra_env: str) -> str:
    done = subprocess.run(cmd, cwd=folder, env=environment(**extra_env), capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done.stdout


def timed_repro(clone: Path) -> tuple[float, dict[str, float]]:
    """Wall seconds of one ``dvc repro --force``, and each stage's: from the line DVC prints when it starts
    the stage to the next such line (the last one: to the end). DVC's own start counts in the total only."""
    starts: list[tuple[str, float]] = []
    begin = time.perf_counter()
    # unbuffered: each line arrives when DVC writes it, so its time is the stage's start
    with subprocess.Popen(["dvc", "repro", "--force"], cwd=clone, env=environment(PYTHONUNBUFFERED="1"),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        output = []
        for line in proc.stdout:
            output.append(line)
            found = re.match(r"Running stage '([^']+)'", line)
            if found:
                starts.append((found.group(1), time.perf_counter()))
    end = time.perf_counter()
    if proc.returncode != 0:
        sys.exit(f"dvc repro failed ({proc.returncode}):\n{''.join(output)}")
    ends = [t for _, t in starts[1:]] + [end]
    return end - begin, {name: stop - start for (name, start), stop in zip(starts, ends)}


def check(params: Path | None, keep: bool) -> dict:
    scratch = Path(tempfile.mkdtemp(prefix="realuid-plan-check-"))
    clone = scratch / "clone"
    try:
        commit = run(ROOT, "git", "rev-parse", "HEAD").strip()
        run(scratch, "git", "clone", "--quiet", str(ROOT), str(clone))
        run(clone, "git", "checkout", "--quiet", commit)
        if params:
            shutil.copy(params, clone / "params.yaml")
        start = time.perf_counter()
        plan = json.loads(run(clone, sys.executable, "-m", "realuid.plan", "--json", PYTHONPATH="src"))
        plan_seconds = time.perf_counter() - start
        total, seconds = timed_repro(clone)
        rows = [{"stage": p["stage"], "planned_s": p["seconds"], "measured_s": seconds.get(p["stage"], 0.0),
                 "ratio": p["seconds"] / seconds[p["stage"]] if seconds.get(p["stage"]) else None}
                for p in plan["stages"]]
        return {"params": str(params or "params.yaml"), "device": plan["device"], "plan_seconds": plan_seconds,
                "stages": rows, "planned_total_s": plan["total_seconds"], "measured_total_s": total,
                "ratio": plan["total_seconds"] / total,
                "within_band": abs(plan["total_seconds"] / total - 1) <= BAND}
    finally:
        if keep:
            print(f"kept {clone}", file=sys.stderr)
        else:
            shutil.rmtree(scratch, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default=None, help="name of a file in configs/ to use as params.yaml")
    p.add_argument("--params", type=Path, default=None, help="a params file to use as params.yaml")
    p.add_argument("--json", default=None, help="also write the results to this file")
    p.add_argument("--keep", action="store_true", help="keep the temporary clone")
    args = p.parse_args()
    params = ROOT / "configs" / f"{args.config}.yaml" if args.config else args.params
    result = check(params.resolve() if params else None, args.keep)
    print(f"{'stage':14s} {'planned s':>10s} {'measured s':>10s} {'ratio':>6s}")
    for r in result["stages"]:
        ratio = f"{r['ratio']:6.2f}" if r["ratio"] is not None else f"{'-':>6s}"
        print(f"{r['stage']:14s} {r['planned_s']:10.1f} {r['measured_s']:10.1f} {ratio}")
    print(f"{'total':14s} {result['planned_total_s']:10.1f} {result['measured_total_s']:10.1f} {result['ratio']:6.2f}"
          f"  ({'within' if result['within_band'] else 'outside'} ±{BAND:.0%}; the plan took "
          f"{result['plan_seconds']:.0f} s on {result['device']})")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
