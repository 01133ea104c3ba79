"""Structure-sensitive point metrics: k-NN precision/recall and the mass per known mode."""

import numpy as np
import pytest

from realuid.data import GMM8_STD, gmm8_centers, make_toy, rng_for
from realuid.metrics import knn_precision_recall, mode_masses, mode_metrics


def test_knn_precision_recall_of_a_hand_computed_case():
    """1-D, k = 1. Reference {0, 1, 3}: radii (to the nearest other point) 1, 1, 2. Generated {0.5, 2.5,
    10}: radii 2, 2, 7.5. Precision: 0.5 is within 1 of 0, 2.5 within 2 of 3, 10 is within no ball: 2/3.
    Recall: 0 and 1 are within 2 of 0.5, 3 within 2 of 2.5: 3/3. With k = 2 the reference radii become
    3, 2, 3 (10 is still out) and the generated 9.5, 7.5, 9.5."""
    ref = np.array([[0.0], [1.0], [3.0]])
    gen = np.array([[0.5], [2.5], [10.0]])
    assert knn_precision_recall(gen, ref, k=1) == {"knn_precision": pytest.approx(2 / 3), "knn_recall": 1.0}
    assert knn_precision_recall(gen, ref, k=2) == {"knn_precision": pytest.approx(2 / 3), "knn_recall": 1.0}
    # a generator that collapses onto one reference point: precise, but recall 1/3 (only 0 is covered)
    collapsed = np.array([[0.0], [0.01], [0.02], [0.03]])
    assert knn_precision_recall(collapsed, ref, k=1) == {"knn_precision": 1.0, "knn_recall": pytest.approx(1 / 3)}


def test_knn_metrics_and_mode_masses_see_a_dropped_mode_and_a_blur():
    data = make_toy("gmm8", 2000, rng_for(0, 1))
    held_out = make_toy("gmm8", 2000, rng_for(0, 2))
    rng = np.random.default_rng(3)
    centres = gmm8_centers()
    # seven of eight modes, and a blur that fills the circle's hull
    seven = centres[rng.integers(0, 7, 2000)] + GMM8_STD * rng.standard_normal((2000, 2))
    blur = centres[rng.integers(0, 8, 2000)] + 4 * GMM8_STD * rng.standard_normal((2000, 2))
    floor = knn_precision_recall(held_out, data)
    assert floor["knn_precision"] > 0.9 and floor["knn_recall"] > 0.9
    assert knn_precision_recall(seven, data)["knn_recall"] < 0.9 < knn_precision_recall(seven, data)["knn_precision"]
    assert knn_precision_recall(blur, data)["knn_precision"] < 0.6
    masses = mode_masses(seven, centres, 4 * GMM8_STD)
    assert masses[7] == 0 and masses[-1] < 0.01
    assert mode_metrics(seven, centres, np.full(8, 1 / 8), 4 * GMM8_STD)["min_mode_ratio"] == 0.0


def test_knn_metrics_do_not_depend_on_chunking():
    rng = np.random.default_rng(0)
    gen, ref = rng.standard_normal((97, 2)), rng.standard_normal((131, 2))
    assert knn_precision_recall(gen, ref, chunk_size=7) == knn_precision_recall(gen, ref)


def test_mode_masses_of_a_hand_computed_case():
    """Centres (0, 0) radius 1 and (3, 0) radius 0.5: (0.9, 0) is at the first (0.9 <= 1), (2.6, 0) at the
    second (0.4/0.5 = 0.8 beats 2.6/1), (1.6, 0) at neither (1.6 and 2.8), (3, 0.5) at the second (1.0)."""
    points = np.array([[0.9, 0.0], [2.6, 0.0], [1.6, 0.0], [3.0, 0.5]])
    masses = mode_masses(points, np.array([[0.0, 0.0], [3.0, 0.0]]), [1.0, 0.5])
    np.testing.assert_allclose(masses, [0.25, 0.5, 0.25])
    m = mode_metrics(points, np.array([[0.0, 0.0], [3.0, 0.0]]), [0.5, 0.5], [1.0, 0.5])
    # TV between (0.25, 0.5, 0.25) and (0.5, 0.5, 0): (0.25 + 0 + 0.25) / 2
    assert m == {"mode_mass_tv": pytest.approx(0.25), "off_mode_mass": 0.25, "min_mode_ratio": pytest.approx(0.5)}


@pytest.mark.parametrize("call,match", [
    (lambda: knn_precision_recall(np.zeros((3, 2)), np.zeros((5, 2)), k=3), "more than k"),
    (lambda: knn_precision_recall(np.zeros((5, 2)), np.zeros((5, 2)), k=0), "k must be"),
    (lambda: mode_masses(np.zeros((5, 2)), np.zeros((2, 3)), 1.0), "dimension"),
    (lambda: mode_masses(np.zeros((5, 2)), np.zeros((2, 2)), -1.0), "radius"),
    (lambda: mode_metrics(np.zeros((5, 2)), np.zeros((2, 2)), [0.3, 0.3], 1.0), "summing to 1"),
])
def test_structure_metrics_refuse_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()
