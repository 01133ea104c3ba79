"""bench/few_step_digits: its students' settings, its verdicts, and the tiny preset end to end (slow: ~25 s)."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from quality_study import few_step_digits as fsd  # noqa: E402
from realuid.matching import make_family  # noqa: E402
from realuid.sampling import check_generator_times  # noqa: E402


def test_generator_times_are_evenly_spaced_and_valid_for_flow_matching():
    assert fsd.generator_times(1) == [] and fsd.generator_times(2) == [0.5]
    assert fsd.generator_times(4) == [0.25, 0.5, 0.75]
    for k in (2, 3, 4, 8):
        assert len(check_generator_times(make_family("fm"), fsd.generator_times(k))) == k - 1


def test_the_two_sweeps_share_the_one_step_unguided_student():
    assert fsd.study_settings([1, 2, 4], [1.5, 2, 3]) == [(1, 1.0, False), (2, 1.0, False), (4, 1.0, False),
                                                          (1, 1.5, False), (1, 2, False), (1, 3, False)]
    assert fsd.study_settings([1], [1.0, 2.0]) == [(1, 1.0, False), (1, 2.0, False)]
    assert fsd.study_settings([1], [1.0, 2.0], guide_fake=True) == [(1, 1.0, False), (1, 2.0, False), (1, 2.0, True)]


def _scores(fid: float, label_accuracy: float = 0.9) -> dict:
    return {split: {"fid": fid, "precision": 0.5, "recall": 0.5, "class_tv": 0.1, "label_accuracy": label_accuracy}
            for split in fsd.SPLIT_SEEDS}


def test_verdicts_follow_the_spread_rule():
    settings, seeds = [(1, 1.0, False), (2, 1.0, False), (1, 2.0, False)], [0, 1, 2]
    fids = {(1, 1.0): [2.0, 2.2, 2.4], (2, 1.0): [1.0, 1.1, 1.2], (1, 2.0): [2.1, 2.3, 2.5]}
    # Guidance reads better: label accuracy 0.95 against 0.9, a spread of 0.001 over seeds.
    runs = {(k, w, g, s): {**_scores(fids[(k, w)][s], 0.9 + 0.05 * (w == 2) + 0.001 * s), "seconds": 1.0,
                           "seconds_per_update": 0.1}
            for k, w, g in settings for s in seeds}
    teacher = {(n, w): _scores(fid) for (n, w), fid in {(1, 1.0): 2.2, (2, 1.0): 2.0, (1, 2.0): 1.0, (99, 1.0): 1.0,
                                                       (99, 2.0): 0.5}.items()}
    summary = fsd.summarize_students(runs, teacher, settings, seeds, nfe=99)
    test = {name: s["test"] for name, s in summary.items()}
    # k=2: 1.1 against 2.2, the std over seeds is 0.2 or less: better than both references.
    assert test["k=2, w=1"]["vs_base"] == "better" and test["k=2, w=1"]["vs_teacher"] == "better"
    # w=2: 2.3 against 2.2 with std 0.2 is no difference; against its teacher's 1.0 at NFE 1 it is worse.
    assert test["k=1, w=2"]["vs_base"] == "no difference" and test["k=1, w=2"]["vs_teacher"] == "worse"
    assert test["k=1, w=2"]["label_vs_base"] == "better" and test["k=2, w=1"]["label_vs_base"] == "no difference"
    assert test["k=1, w=1"]["vs_base"] is None and test["k=1, w=1"]["vs_teacher"] == "no difference"
    assert test["k=1, w=2"]["ratio"]["mean"] == pytest.approx(2.3 / 0.5)
    assert test["k=2, w=1"]["fid"]["std"] == pytest.approx(0.1)


def test_the_reference_grid_puts_each_class_in_its_column():
    from realuid.data import Split

    y = np.repeat(np.arange(10), 6)[::-1].copy()
    x1 = y.reshape(-1, 1, 1, 1).astype(np.float32) * np.ones((1, 1, 8, 8), np.float32)
    grid = fsd.by_label(Split(x1=x1, y=y))
    assert grid.shape == (fsd.GRID_IMAGES, 1, 8, 8)
    assert (grid[:, 0, 0, 0] == np.arange(fsd.GRID_IMAGES) % 10).all()


def test_guidance_without_label_dropout_is_one_error_line_before_any_work(tmp_path):
    with pytest.raises(SystemExit, match=r"^error: guidance \(--ws other than 1\) needs train_teacher.model.class_"):
        fsd.main(["--preset", "tiny", "--base", "train_teacher.model.class_dropout=0", "--work", str(tmp_path / "w"),
                  "--json", str(tmp_path / "r.json"), "--out", str(tmp_path / "r.md")])
    assert not any(tmp_path.iterdir())


def test_no_in_training_scores_is_refused_before_any_work(tmp_path, capsys):
    with pytest.raises(SystemExit):
        fsd.main(["--eval-every", "0", "--work", str(tmp_path / "w"), "--json", str(tmp_path / "r.json"),
                  "--out", str(tmp_path / "r.md")])
    assert "--eval-every: must be a positive number of updates, got 0" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("few_step_digits")
    args = ["--preset", "tiny", "--work", str(root / "work"), "--json", str(root / "r.json"), "--out",
            str(root / "r.md"), "--grid", str(root / "grid.png"), "--figure", str(root / "fid.png")]
    fsd.main(args)
    return root, args


@pytest.mark.slow
def test_tiny_study_trains_each_setting_and_writes_its_report(tiny_run):
    root, _ = tiny_run
    result = json.loads((root / "r.json").read_text())
    assert result["settings"] == [[1, 1.0, False], [2, 1.0, False], [1, 2.0, False], [1, 2.0, True]]
    assert result["nfes"] == [1, 2, 3]
    assert result["base"]["train_teacher"]["model"]["class_cond"] is True
    for run in result["runs"]:  # what each student's checkpoint says it was trained with
        assert run["trained_with"] == {"generator_steps": run["k"], "generator_times": fsd.generator_times(run["k"]),
                                       "guidance_scale": run["w"], "guide_fake": run["fake_guided"]}
        assert run["step"] == result["steps"] == 2 and run["validation"]["finite"] and run["test"]["finite"]
    assert sorted((r["nfe"], r["w"]) for r in result["teacher"]) == [(n, w) for n in (1, 2, 3) for w in (1.0, 2.0)]
    report = (root / "r.md").read_text()
    for text in ("### Students, validation digits", "### Students, test digits", "| k=2, w=1 | 2 |",
                 "| k=1, w=2, fake guided | 1 |",
                 "| teacher, NFE 3, w=2 |", "![samples](grid.png)", "![test FID against NFE](fid.png)"):
        assert text in report, text
    assert (root / "grid.png").stat().st_size > 1000 and (root / "fid.png").stat().st_size > 1000


@pytest.mark.slow
def test_a_second_run_comes_from_the_cache(tiny_run):
    root, args = tiny_run
    jobs = sorted(p.name for p in (root / "work" / "jobs").iterdir())
    assert len(jobs) == 1 + 8 + 6  # the floor, 4 settings x 2 seeds, 3 NFE x 2 w
    before = (root / "r.json").read_text()
    fsd.main(args)
    assert sorted(p.name for p in (root / "work" / "jobs").iterdir()) == jobs
    varies = ("wall_seconds", "code", "trained_now_seconds")  # nothing is trained the second time
    keep = lambda text: {k: v for k, v in json.loads(text).items() if k not in varies}  # noqa: E731
    assert keep((root / "r.json").read_text()) == keep(before)
