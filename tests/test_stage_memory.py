"""Peak memory of ``evaluate`` at two sample counts: it may grow by what it must hold for the row it
scores (that row's images and features), never by all rows at once.

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
