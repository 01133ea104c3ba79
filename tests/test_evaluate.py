"""The evaluate stage's scoring of paired data: pairs, not just marginals."""

from types import SimpleNamespace

import numpy as np

from realuid.metrics import sliced_wasserstein2
from realuid.stages.evaluate import _joint_metrics


def test_joint_score_catches_a_student_that_ignores_its_input():
    rng = np.random.default_rng(0)
    x0 = rng.uniform(-1, 1, size=(3000, 2))
    reference = SimpleNamespace(x0=x0, x1=x0 + 0.05 * rng.standard_normal(x0.shape))
    sources = rng.uniform(-1, 1, size=(3000, 2))
    faithful = sources + 0.05 * rng.standard_normal(sources.shape)
    ignoring = faithful[rng.permutation(len(faithful))]  # the same marginal, paired with the wrong inputs
    gen = {"faithful": faithful, "ignoring": ignoring}
    metrics = {who: {} for who in gen}
    _joint_metrics(metrics, gen, {who: sources for who in gen}, reference, seed=0)
    # Both have the right marginal of x1 ...
    assert sliced_wasserstein2(ignoring, reference.x1) == sliced_wasserstein2(faithful, reference.x1)
    # ... only the pairs tell them apart.
    assert metrics["faithful"]["joint_sliced_wasserstein2"] < 0.03
    assert metrics["ignoring"]["joint_sliced_wasserstein2"] > 5 * metrics["faithful"]["joint_sliced_wasserstein2"]
