"""Peak memory of ``evaluate`` and ``sample`` at two sample counts: ``evaluate`` may grow by what it must
hold for the row it scores (that row's images and features), never by all rows at once; ``sample`` by
nothing but its labels (it streams every batch into its files).

The stage runs in a fresh interpreter that reports its own peak resident set (``ru_maxrss``, kB on
Linux); the difference between the two sizes is compared with what one more row may hold. Before,
``evaluate`` held every row at once and [10k, N] blocks of precision/recall distances.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from realuid.data import write_split

ROOT = Path(__file__).resolve().parents[1]
MB = 1 << 20
SHAPE = (1, 8, 8)


def peak_rss_bytes(module: str, argv: list[str], env: dict) -> int:
    """Peak resident set of ``module``'s stage CLI run with ``argv`` in a fresh interpreter."""
    code = (f"import resource, sys; from {module} import cli; code = cli({argv!r}); "
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(code)")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return int(done.stdout.strip().splitlines()[-1]) * 1024


@pytest.mark.slow
def test_evaluate_memory_grows_only_by_the_rows_it_scores(tmp_path, subprocess_env):
    from helpers.digits import evaluate_inputs

    params, argv = evaluate_inputs(tmp_path)  # digits splits, an extractor; sample rows rewritten below
    params["evaluate"]["fid_blocks"] = 1
    rng = np.random.default_rng(0)
    peaks, feature_dim = {}, None
    for n in (2_000, 8_000):
        samples = tmp_path / f"samples{n}"
        for who in ("teacher", "student", "student_raw"):
            write_split(samples / f"{who}.h5", rng.uniform(-1, 1, (n, *SHAPE)).astype(np.float32),
                        attrs={"source": who})
        (samples / "timing.json").write_text((tmp_path / "samples" / "timing.json").read_text())
        params["sample"]["n_samples"] = n
        (tmp_path / f"params{n}.yaml").write_text(yaml.safe_dump(params))
        args = [*argv, "--features", str(tmp_path / "features_cached"), "--out", str(tmp_path / f"m{n}.json")]
        args[args.index("--samples") + 1] = str(samples)
        peaks[n] = peak_rss_bytes("realuid.stages.evaluate", ["--params", str(tmp_path / f"params{n}.yaml"), *args],
                                  subprocess_env)
    from realuid.features import load_feature_net

    with torch.no_grad():
        net = load_feature_net(tmp_path / "features_cached" / "extractor.pt")
        feature_dim = net.features_and_logits(torch.zeros(1, *SHAPE))[0].shape[1]
    grown = 8_000 - 2_000
    # What one row may hold more: its images (float32, read and as a tensor) and its features (float32).
    allowed = grown * (2 * np.prod(SHAPE) * 4 + feature_dim * 4) + 8 * MB
    assert peaks[8_000] - peaks[2_000] < allowed, (peaks, allowed)


def peak_traced_bytes(module: str, argv: list[str], env: dict) -> int:
    """Peak of the memory Python allocates (numpy arrays included; torch's own allocator is not traced)
    while ``module``'s stage CLI runs with ``argv`` in a fresh interpreter: exact, unlike the resident
    set, which moves with the allocator's arenas."""
    code = (f"import sys, tracemalloc; from {module} import cli; tracemalloc.start(); code = cli({argv!r}); "
            "print(tracemalloc.get_traced_memory()[1]); sys.exit(code)")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return int(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_sample_memory_does_not_grow_with_the_samples_it_writes(tmp_path, subprocess_env):
    import dataclasses

    from helpers.training import MODEL
    from realuid.checkpoints import Checkpoint, save_checkpoint
    from realuid.models import build_model, model_spec

    spec = model_spec(dataclasses.replace(MODEL, channels=32), SHAPE, 0)
    torch.manual_seed(0)
    net = build_model(spec)
    fm = {"name": "fm", "options": {}}
    save_checkpoint(Checkpoint("teacher", spec, fm, net.state_dict(), {}, {"step": 1}), tmp_path / "teacher.pt")
    save_checkpoint(Checkpoint("generator", spec, fm, net.state_dict(), {"ema_0.999": net.state_dict()},
                               {"step": 1, "alpha": 0.9, "beta": 0.9}), tmp_path / "generator.pt")
    write_split(tmp_path / "test.h5", np.zeros((8, *SHAPE), np.float32), attrs={"source": "zeros"})
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    peaks = {}
    for n in (2_048, 8_192):  # 3 rows of 8x8 images: teacher, student_raw, student_ema_0_999 (+ student)
        params["sample"].update(n_samples=n, batch_size=256, teacher_nfe=1, device="cpu", nproc=1, generator_ema="0.999")
        (tmp_path / f"params{n}.yaml").write_text(yaml.safe_dump(params))
        argv = ["--params", str(tmp_path / f"params{n}.yaml"), "--teacher", str(tmp_path / "teacher.pt"),
                "--generator", str(tmp_path / "generator.pt"), "--data", str(tmp_path / "test.h5"),
                "--out", str(tmp_path / f"out{n}")]
        peaks[n] = peak_traced_bytes("realuid.stages.sample", argv, subprocess_env)
    # Holding every row (as before streaming) would add 6 MB here: 4 files x 6144 rows x 256 B. The chunk band a
    # writer holds is checked at larger sizes in tests/test_data.py.
    assert peaks[8_192] - peaks[2_048] < 256 * 1024, peaks
