"""In-training quality: the evaluation table, exact resume, no effect on training, the best copy."""

import csv
import dataclasses

import numpy as np
import pytest
import torch

from helpers.training import DISTILL, Crash, crash_at, same_weights, spec_for, toy_data
from realuid import in_training_eval as quality
from realuid.config import ConfigError, build, Params
from realuid.data import Split
from realuid.matching import make_family
from realuid.metrics import PointReference, energy_distance, sliced_wasserstein2
from realuid.models import build_model
from realuid.sampling import OneStepGenerator
from realuid.training.distillation import distill

# 12 generator updates, checkpoints at 4 and 8, evaluations every 2: 6 rows per copy.
CFG = dataclasses.replace(DISTILL, steps=12, checkpoint_every_steps=4, eval_every_steps=2, eval_samples=64)


def setup(family_name="fm"):
    family = make_family(family_name)
    data, spec = toy_data(family), spec_for()
    torch.manual_seed(0)
    teacher = build_model(spec)
    split = Split(data.x1.numpy(), None, None if data.x0 is None else data.x0.numpy())
    return family, data, spec, teacher, split


def evaluator(family, split, cfg=CFG):
    return quality.point_evaluator(family, split, cfg, num_classes=0, device=torch.device("cpu"))


def run(tmp, family, data, spec, teacher, cfg=CFG, evaluate=True, **kwargs):
    ev = evaluator(family, Split(data.x1.numpy(), None, None if data.x0 is None else data.x0.numpy()), cfg) \
        if evaluate else None
    return distill(family, data, teacher, spec, cfg, tmp, alpha=0.94, beta=0.96, progress=False, evaluator=ev, **kwargs)


def table(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_every_copy_is_scored_every_eval_every_steps(tmp_path):
    family, data, spec, teacher, _ = setup()
    run(tmp_path, family, data, spec, teacher)
    rows = table(tmp_path / "eval.csv")
    assert list(rows[0]) == ["step", "copy", "energy_distance", "sliced_wasserstein2"]
    copies = ["raw", "ema_0.9", "ema_0.99"]
    assert [(int(r["step"]), r["copy"]) for r in rows] == [(s, c) for s in range(2, 13, 2) for c in copies]
    assert all(float(r["sliced_wasserstein2"]) > 0 and float(r["energy_distance"]) >= 0 for r in rows)


def test_evaluation_leaves_training_unchanged(tmp_path):
    family, data, spec, teacher, _ = setup()
    with_eval = run(tmp_path / "on", family, data, spec, teacher)
    without = run(tmp_path / "off", family, data, spec, teacher, evaluate=False)
    assert same_weights(with_eval.weights, without.weights)
    assert all(same_weights(with_eval.copies[k], without.copies[k]) for k in without.copies)
    assert (tmp_path / "on" / "curves.csv").read_bytes() == (tmp_path / "off" / "curves.csv").read_bytes()
    assert not (tmp_path / "off" / "eval.csv").exists()


@pytest.mark.parametrize("how", ["stop_after", "crash"])
def test_a_killed_run_resumes_with_the_rows_of_an_uninterrupted_one(tmp_path, monkeypatch, how):
    family, data, spec, teacher, _ = setup()
    straight = run(tmp_path / "a", family, data, spec, teacher, cfg=dataclasses.replace(CFG, keep_best=True))
    cfg = dataclasses.replace(CFG, keep_best=True)
    if how == "stop_after":
        run(tmp_path / "b", family, data, spec, teacher, cfg=cfg, stop_after=5)  # between evaluations at 4 and 6
    else:
        # Optimizer step 3 * 7 - 1: inside generator update 7, after the evaluation at 6 was written and
        # the checkpoint at 4: the rows of step 6 exist on disk and must be redone once, not twice.
        undo = crash_at(monkeypatch, 3 * 7 - 1)
        with pytest.raises(Crash):
            run(tmp_path / "b", family, data, spec, teacher, cfg=cfg)
        undo()
        assert {int(r["step"]) for r in table(tmp_path / "b" / "eval.csv")} == {2, 4, 6}
    resumed = run(tmp_path / "b", family, data, spec, teacher, cfg=cfg)
    assert (tmp_path / "a" / "eval.csv").read_bytes() == (tmp_path / "b" / "eval.csv").read_bytes()
    assert straight.meta["best"] == resumed.meta["best"]
    assert same_weights(straight.copies["best"], resumed.copies["best"])


def test_keep_best_keeps_the_weights_of_the_lowest_row(tmp_path):
    family, data, spec, teacher, split = setup()
    result = run(tmp_path, family, data, spec, teacher, cfg=dataclasses.replace(CFG, keep_best=True))
    rows = table(tmp_path / "eval.csv")
    lowest = min(rows, key=lambda r: float(r["sliced_wasserstein2"]))  # min keeps the first of equals
    assert result.meta["best"] == {"copy": lowest["copy"], "step": int(lowest["step"]),
                              "sliced_wasserstein2": float(lowest["sliced_wasserstein2"])}
    # The kept weights score exactly what the table says they scored.
    net = build_model(spec)
    net.load_state_dict(result.copies["best"])
    score = evaluator(family, split)(OneStepGenerator(family, net).eval())
    assert score["sliced_wasserstein2"] == result.meta["best"]["sliced_wasserstein2"]
    assert set(result.copies) == {"ema_0.9", "ema_0.99", "best"}


def test_keep_best_without_an_evaluator_is_an_error(tmp_path):
    family, data, spec, teacher, _ = setup()
    with pytest.raises(ValueError, match="keep_best needs an evaluator"):
        run(tmp_path, family, data, spec, teacher, cfg=dataclasses.replace(CFG, keep_best=True), evaluate=False)


def test_point_evaluator_uses_fixed_inputs_and_the_library_metrics():
    family, data, spec, teacher, split = setup()
    ev = evaluator(family, split)
    generator = OneStepGenerator(family, teacher).eval()
    samples = ev.samples(generator)
    again = evaluator(family, split).samples(generator)
    assert torch.equal(samples, again) and samples.shape == (CFG.eval_samples, 2)
    rows = np.sort(np.random.default_rng(quality.EVAL_SEED).choice(len(split), CFG.eval_samples, replace=False))
    ref = split.x1[rows]
    assert ev(generator) == {"energy_distance": energy_distance(samples.numpy(), ref),
                             "sliced_wasserstein2": sliced_wasserstein2(samples.numpy(), ref, seed=0)}


def test_point_reference_equals_the_one_shot_metrics():
    rng = np.random.default_rng(0)
    ref, gen = rng.normal(size=(300, 3)), rng.normal(size=(200, 3)) + 0.3
    prepared = PointReference(ref, seed=4, n_projections=64)
    assert prepared.score(gen) == {"sliced_wasserstein2": sliced_wasserstein2(gen, ref, seed=4, n_projections=64),
                                   "energy_distance": energy_distance(gen, ref)}


def test_non_finite_samples_score_inf():
    family, data, spec, teacher, split = setup()
    broken = lambda x0, y, noise: torch.full_like(x0, float("nan"))  # noqa: E731
    assert evaluator(family, split)(broken) == {"energy_distance": float("inf"), "sliced_wasserstein2": float("inf")}


def test_settings_that_the_metric_cannot_score_are_refused():
    _, data, _, _, split = setup()
    evaluate_cfg = type("E", (), {"kid_subset_size": 100})()
    with pytest.raises(quality.EvaluationError, match="exceeds the 256 training points"):
        quality.check_settings(dataclasses.replace(CFG, eval_samples=257), evaluate_cfg, split)
    images = Split(np.zeros((150, 1, 8, 8), np.float32))
    with pytest.raises(quality.EvaluationError, match="below evaluate.kid_subset_size 100"):
        quality.check_settings(dataclasses.replace(CFG, eval_samples=99), evaluate_cfg, images)
    with pytest.raises(quality.EvaluationError, match="fewer than evaluate.kid_subset_size 200"):
        quality.check_settings(dataclasses.replace(CFG, eval_samples=300), type("E", (), {"kid_subset_size": 200})(),
                               images)
    quality.check_settings(dataclasses.replace(CFG, eval_every_steps=0, eval_samples=10**6), evaluate_cfg, split)
