"""The plan's check (issue 21): its projection against a measured ``dvc repro`` from an empty state.

Run it on an idle machine (timings on a shared one say nothing), from the repository root, with the
project's environment's ``python`` and ``dvc`` first on PATH::

    python bench/plan_check.py                      # the embedded default (params.yaml)
    python bench/plan_check.py --config toy         # configs/toy.yaml instead
    python bench/plan_check.py --json out.json      # also write the table as JSON

It clones the repository's committed state into a temporary folder, runs ``python -m realuid.plan
--json`` there, then runs every stage with ``dvc repro --force --single-item <stage>`` in the
registry's order (empty cache, no state: each stage from scratch), timing each. It prints, per stage,
the projected and measured seconds and their ratio, and whether the total is within ±30%.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BAND = 0.30


def run(folder: Path, *cmd: str, **extra_env: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # each stage sets its own
    env.update(extra_env)
    done = subprocess.run(cmd, cwd=folder, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done.stdout


def check(config: str | None, keep: bool) -> dict:
    scratch = Path(tempfile.mkdtemp(prefix="realuid-plan-check-"))
    clone = scratch / "clone"
    try:
        subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True)
        if config:
            shutil.copy(clone / "configs" / f"{config}.yaml", clone / "params.yaml")
        start = time.perf_counter()
        plan = json.loads(run(clone, sys.executable, "-m", "realuid.plan", "--json", PYTHONPATH="src"))
        plan_seconds = time.perf_counter() - start
        rows = []
        for stage in plan["stages"]:
            start = time.perf_counter()
            run(clone, "dvc", "repro", "--force", "--single-item", stage["stage"])
            measured = time.perf_counter() - start
            rows.append({"stage": stage["stage"], "planned_s": stage["seconds"], "measured_s": measured,
                         "ratio": stage["seconds"] / measured})
        total = sum(r["measured_s"] for r in rows)
        return {"config": config or "params.yaml", "device": plan["device"], "plan_seconds": plan_seconds,
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
    p.add_argument("--json", default=None, help="also write the results to this file")
    p.add_argument("--keep", action="store_true", help="keep the temporary clone")
    args = p.parse_args()
    result = check(args.config, args.keep)
    print(f"{'stage':14s} {'planned s':>10s} {'measured s':>10s} {'ratio':>6s}")
    for r in result["stages"]:
        print(f"{r['stage']:14s} {r['planned_s']:10.1f} {r['measured_s']:10.1f} {r['ratio']:6.2f}")
    print(f"{'total':14s} {result['planned_total_s']:10.1f} {result['measured_total_s']:10.1f} {result['ratio']:6.2f}"
          f"  ({'within' if result['within_band'] else 'outside'} ±{BAND:.0%}; the plan took "
          f"{result['plan_seconds']:.0f} s on {result['device']})")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
