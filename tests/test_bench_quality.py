"""The quality study of bench/quality: its statistics, its data, and a tiny end-to-end run (so it cannot rot)."""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from quality_study import cli, settings, stats, tasks  # noqa: E402
from quality_study.toy import ToyJob, choose_budget, distances, run_teacher_budget, run_toy_job  # noqa: E402


# ---------------------------------------------------------------------------------------------- stats


def test_summary_mean_and_sample_std():
    s = stats.summarize([1.0, 2.0, 3.0])
    assert (s.mean, s.min, s.max, s.n) == (2.0, 1.0, 3.0, 3)
    assert s.std == pytest.approx(1.0)  # ddof=1
    assert stats.summarize([5.0]).std == 0.0
    assert "nan" in stats.summarize([1.0, float("nan")]).text()
    with pytest.raises(ValueError, match="no values"):
        stats.summarize([])


@pytest.mark.parametrize(
    "a, b, expected",
    [
        ([1.0, 1.1, 0.9], [2.0, 2.1, 1.9], "better"),  # gap 1.0 > spread 0.1
        ([2.0, 2.1, 1.9], [1.0, 1.1, 0.9], "worse"),
        ([1.0, 1.5, 0.5], [1.2, 1.3, 1.1], "no difference"),  # gap 0.2 < spread 0.5
        ([1.0, 1.0, 1.0], [1.0, 1.0, 1.0], "no difference"),
    ],
)
def test_verdict_follows_the_spread_rule(a, b, expected):
    assert stats.verdict(a, b) == expected


def test_phrase_reads_between_two_names():
    assert stats.phrase([1.0, 1.1, 0.9], [2.0, 2.1, 1.9]) == "better than"
    assert stats.phrase([2.0, 2.1, 1.9], [1.0, 1.1, 0.9]) == "worse than"
    assert stats.phrase([1.0, 1.5, 0.5], [1.2, 1.3, 1.1]) == "no different from"


def test_verdict_for_higher_is_better_and_diverged_runs():
    assert stats.verdict([0.9, 0.91, 0.92], [0.5, 0.5, 0.51], lower_is_better=False) == "better"
    assert stats.verdict([float("nan"), 1, 1], [1, 1, 1]).startswith("undetermined")


def test_paired_wins_and_ratio():
    assert stats.paired_wins([1, 2, 3], [2, 2, 4]) == "2/3"
    with pytest.raises(ValueError, match="same seeds"):
        stats.paired_wins([1, 2], [1, 2, 3])
    r = stats.ratio([2.0, 4.0], [1.0, 2.0])
    assert (r.mean, r.std) == (2.0, 0.0)


def test_crossing_steps():
    curves = [{"step": [0, 10, 20, 30], "value": [5, 3, 1, 0.5]}, {"step": [0, 10, 20, 30], "value": [5, 4, 3, 2]}]
    assert stats.crossing_steps(curves, 1.0) == [20, None]
    assert stats.first_step_at_or_below([0, 10], [0.5, 0.1], 1.0) == 0


# ---------------------------------------------------------------------------------------------- data


def test_toy_task_sets_are_independent_and_reproducible():
    a = tasks.toy_task("gmm8", 0, n_train=300, n_eval=100, paired=True, pairing_strength=0.5)
    b = tasks.toy_task("gmm8", 0, n_train=300, n_eval=100, paired=True, pairing_strength=0.5)
    assert np.array_equal(a.train_x1, b.train_x1) and np.array_equal(a.floor_x0, b.floor_x0)
    assert a.train_x1.shape == (300, 2) and a.reference.shape == a.floor.shape == a.validation.shape == (100, 2)
    assert not np.array_equal(a.reference, a.floor) and not np.array_equal(a.reference, a.validation)
    # Bridge pairs are noisy copies of their own x1, clipped into the box.
    assert np.abs(a.train_x0).max() <= 1.0 and 0.2 < np.std(a.train_x0 - a.train_x1) < 0.6
    # A bigger reference set does not move the training points (separate random streams).
    c = tasks.toy_task("gmm8", 0, n_train=300, n_eval=150)
    assert np.array_equal(a.train_x1, c.train_x1) and c.train_x0 is None
    assert not np.array_equal(a.train_x1, tasks.toy_task("gmm8", 1, n_train=300, n_eval=100).train_x1)


def test_user_points_are_scaled_into_the_box_with_a_recorded_map(tmp_path):
    rng = np.random.default_rng(0)
    raw = rng.normal([10.0, -3.0], [4.0, 0.5], size=(1000, 2))
    np.savez(tmp_path / "p.npz", x=raw)
    user = tasks.load_user_points(tmp_path / "p.npz")
    assert np.abs(user.points).max() <= 1.0 + 1e-6
    np.testing.assert_allclose(user.points * np.array(user.scale) + np.array(user.shift), raw, rtol=1e-5, atol=1e-4)
    task = tasks.user_task(user, 0, n_train=10_000, n_eval=400)
    assert task.reference.shape == task.floor.shape == task.validation.shape == (200, 2)  # a fifth each at most
    assert len(task.train_x1) == 400
    held_out = {tuple(p) for p in np.concatenate([task.reference, task.floor, task.validation])}
    assert len(held_out) == 600 and not held_out & {tuple(p) for p in task.train_x1}


def test_user_points_inside_the_box_are_kept_as_they_are(tmp_path):
    raw = np.random.default_rng(0).uniform(-0.5, 0.5, size=(600, 2)).astype(np.float32)
    np.savez(tmp_path / "p.npz", x1=raw)
    user = tasks.load_user_points(tmp_path / "p.npz")
    assert np.array_equal(user.points, raw) and user.scale == [1.0, 1.0] and user.shift == [0.0, 0.0]


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"y": np.zeros((600, 2))}, "named 'x' or 'x1'"),
        ({"x": np.zeros(600)}, r"shape \[N, D\]"),
        ({"x": np.zeros((10, 2))}, "at least 500"),
        ({"x": np.full((600, 2), np.nan)}, "NaN"),
    ],
)
def test_bad_point_files_are_clear_errors(tmp_path, arrays, message):
    np.savez(tmp_path / "p.npz", **arrays)
    with pytest.raises(ValueError, match=message):
        tasks.load_user_points(tmp_path / "p.npz")


def test_missing_point_file():
    with pytest.raises(FileNotFoundError):
        tasks.load_user_points("/nonexistent/points.npz")


def test_distances_zero_for_identical_sets_and_nan_for_diverged_samples():
    x = np.random.default_rng(0).normal(size=(200, 2))
    d = distances(x, x, n_projections=16, seed=0)
    assert d["sw2"] == pytest.approx(0.0, abs=1e-12) and d["energy"] == pytest.approx(0.0, abs=1e-12)
    shifted = distances(x + 1.0, x, n_projections=64, seed=0)
    assert shifted["sw2"] > 0.5 and shifted["energy"] > 0.5
    bad = x.copy()
    bad[0, 0] = np.inf
    assert all(np.isnan(v) for v in distances(bad, x, n_projections=16, seed=0).values())
    assert d["knn_precision"] == d["knn_recall"] == 1.0


def test_distances_see_a_sample_set_that_fills_the_hull_instead_of_the_modes():
    rng = np.random.default_rng(0)
    modes = np.array([[-1.0, 0.0], [1.0, 0.0]])
    data = modes[rng.integers(0, 2, 1000)] + 0.05 * rng.normal(size=(1000, 2))
    hull = np.stack([rng.uniform(-1.1, 1.1, 1000), 0.05 * rng.normal(size=1000)], axis=1)
    d = distances(hull, data, n_projections=64, seed=0)
    # Most of the segment between the modes lies outside every data neighbourhood.
    assert d["knn_precision"] < 0.3 and d["knn_recall"] > 0.9


# ---------------------------------------------------------------------------------------------- jobs


def test_a_toy_job_returns_every_row_and_curve(tmp_path):
    study = settings.tiny()
    result = run_toy_job(ToyJob("bridge", "gmm8", 0), study, tmp_path / "job")
    assert set(result["metrics"]) == {"floor", "teacher_nfe99", "teacher_nfe1", "data_free", "realuid",
                                      "data_free_raw", "realuid_raw"}
    for row in result["metrics"].values():
        assert np.isfinite(row["sw2"]) and np.isfinite(row["energy"])
    steps = [e["step"] for e in result["curves"]["realuid"]]
    assert steps == [0, 2, 4]  # the start, then every log interval
    assert result["samples"]["realuid"].shape == (study.toy.n_eval, 2)


@pytest.mark.parametrize("rungs, expected", [
    # gmm8-like: 3000 steps is within 10% of the best SW2 and 0.02 of the best precision.
    ([(1500, 0.059, 0.63), (3000, 0.040, 0.948), (6000, 0.039, 0.962)], 3000),
    # Sliced W2 is already near its best at 1500 steps, but the precision is not: precision decides.
    ([(1500, 0.0250, 0.77), (3000, 0.0247, 0.84), (6000, 0.0240, 0.88)], 6000),
    # Precision already at its best, sliced W2 still falling: sliced W2 decides.
    ([(1500, 0.060, 0.95), (3000, 0.050, 0.95), (6000, 0.040, 0.95)], 6000),
    ([(1500, 0.041, 0.95), (3000, 0.040, 0.96), (6000, 0.042, 0.94)], 1500),
    # The two bests lie on different rungs and no rung is within reach of both: precision decides.
    ([(1500, 0.0387, 0.702), (3000, 0.0427, 0.777), (6000, 0.0405, 0.7925)], 6000),
    ([(1500, 0.030, 0.90), (3000, 0.040, 0.95), (6000, 0.038, 0.92)], 3000),
    # A diverged rung is never chosen.
    ([(1500, float("nan"), float("nan")), (3000, 0.040, 0.96)], 3000),
])
def test_teacher_budget_is_the_smallest_rung_within_reach_of_the_best(rungs, expected):
    assert choose_budget([{"steps": s, "sw2": w, "knn_precision": p} for s, w, p in rungs]) == expected


def test_teacher_budget_job_scores_each_rung_on_the_validation_set(tmp_path):
    study = settings.tiny()
    budget = run_teacher_budget("fm", "gmm8", study, tmp_path / "budget")
    assert [r["steps"] for r in budget["rungs"]] == sorted(study.toy.teacher_budget_steps)
    assert budget["chosen_steps"] in study.toy.teacher_budget_steps
    # The top rung is the teacher a plain run of that many steps trains (constant learning rate), and the
    # distances are against the validation set, not the reference set.
    task = tasks.toy_task("gmm8", 0, n_train=study.toy.n_train, n_eval=study.toy.n_eval)
    floor = distances(task.floor, task.validation, n_projections=study.toy.n_projections, seed=0)
    assert budget["floor"] == floor
    job = run_toy_job(ToyJob("fm", "gmm8", 0), study, tmp_path / "job",
                      budget={**budget, "chosen_steps": max(study.toy.teacher_budget_steps)})
    assert job["teacher_steps"] == max(study.toy.teacher_budget_steps)
    top = distances(job["samples"]["teacher_nfe99"], task.validation, n_projections=study.toy.n_projections, seed=0)
    assert {"steps": job["teacher_steps"], **top} == budget["rungs"][-1]


def test_exact_variant_uses_the_closed_form_teacher(tmp_path):
    result = run_toy_job(ToyJob("fm", "gmm8", 0, "exact"), settings.tiny(), tmp_path / "job")
    # The exact teacher read once maps every noise to the mixture mean: a collapse, far from the data...
    assert result["metrics"]["teacher_nfe1"]["sw2"] > 0.4
    # ...while its 99-step ODE is close to real data (here only 5 steps: within a loose bound).
    assert result["metrics"]["teacher_nfe99"]["sw2"] < 0.2
    assert "student_start" in result["metrics"]
    with pytest.raises(ValueError, match="flow matching on gmm8"):
        run_toy_job(ToyJob("si", "gmm8", 0, "exact"), settings.tiny(), tmp_path / "job2")


def test_unknown_variant(tmp_path):
    with pytest.raises(ValueError, match="unknown variant"):
        run_toy_job(ToyJob("fm", "gmm8", 0, "bogus"), settings.tiny(), tmp_path / "job")


def test_presets_are_consistent():
    for make in settings.PRESETS.values():
        study = make()
        assert len(study.seeds) >= 2 and 0 < study.alpha <= 1 and 0 < study.beta <= 1
        assert repr(float(study.toy.student_ema)) in {repr(float(d)) for d in study.toy.distill.ema_decays}
        if study.digits is not None:
            assert repr(float(study.digits.student_ema)) in {repr(float(d)) for d in study.digits.distill.ema_decays}
    full = settings.full()
    assert full.seeds == (0, 1, 2) and set(full.toy.families) == {"fm", "diffusion", "si", "bridge"}
    assert 0.98 <= full.beta / full.alpha <= 1.06  # the authors' advice


def test_settings_digest_changes_with_settings():
    a, b = settings.tiny(), dataclasses.replace(settings.tiny(), alpha=0.9)
    assert cli.settings_digest(a, None) != cli.settings_digest(b, None)
    assert cli.settings_digest(a, None) == cli.settings_digest(settings.tiny(), None)
    # An option at a value that changes nothing is left out, as if it did not exist; any other value counts.
    with_guide = lambda on: dataclasses.replace(a, toy=dataclasses.replace(  # noqa: E731
        a.toy, distill=dataclasses.replace(a.toy.distill, guide_fake=on)))
    blob = dataclasses.asdict(a)
    del blob["toy"]["distill"]["guide_fake"]
    assert cli._without_inert(dataclasses.asdict(with_guide(False))) == blob
    assert cli.settings_digest(with_guide(True), None) != cli.settings_digest(a, None)


# ---------------------------------------------------------------------------------------------- end to end


def test_tiny_study_end_to_end_then_resumes_from_cache(tmp_path, capsys):
    out, work = tmp_path / "out", tmp_path / "work"
    assert cli.main(["--preset", "tiny", "--work", str(work), "--out", str(out)]) == 0
    report = (out / "RESULTS-tiny.md").read_text()
    assert "TINY SETTINGS" in report
    headings = ["## 1. Teachers first", "## 2. Toy 2-D students", "## 3. Exact teacher", "## 4. Imperfect teacher",
                "## 5. Convergence", "## Conclusions"]
    assert [report.index(h) for h in headings] == sorted(report.index(h) for h in headings)
    # The teachers, with their budget and their distance to the floor, come before any student row.
    assert "**Budget ladder**" in report and report.index("teacher vs floor (precision)") < report.index("data-free /")
    assert "**gmm8, k-NN precision** (higher is better" in report and "**gmm8, k-NN recall**" in report
    assert "flow matching" in report and "bridge matching" in report
    for figure in ("tiny-toy_teacher_budgets.png", "tiny-toy_teachers.png", "tiny-toy_samples_gmm8.png",
                   "tiny-toy_sw2_gmm8.png", "tiny-toy_convergence.png"):
        assert (out / "figures" / figure).stat().st_size > 1000
        assert f"figures/{figure}" in report
    numbers = json.loads((out / "RESULTS-tiny.json").read_text())
    assert "toy-main-fm-gmm8-s1" in numbers["jobs"]
    budget = numbers["jobs"]["toy-budget-fm-gmm8"]
    assert numbers["jobs"]["toy-main-fm-gmm8-s1"]["teacher_steps"] == budget["chosen_steps"]
    capsys.readouterr()
    # Same command again: every job comes from the cache, nothing is recomputed.
    assert cli.main(["--preset", "tiny", "--work", str(work), "--out", str(out)]) == 0
    assert "already done (cached), 0 to run" in capsys.readouterr().out
    # The report keeps the wall time of the run that computed the jobs, not the cached rerun's.
    assert json.loads((work / "wall.json").read_text())["invocations"] == 1
    assert "1 invocation(s)" in (out / "RESULTS-tiny.md").read_text()


def test_wall_time_adds_up_over_resumed_runs(tmp_path):
    path = tmp_path / "wall.json"
    first = cli.accumulate_wall_seconds(path, 10.0, command="bench/quality", code="abc")
    assert first == {"seconds": 10.0, "invocations": 1, "command": "bench/quality", "code": "abc"}
    assert cli.accumulate_wall_seconds(path, 0.0, command="other") == first  # a cached rerun adds nothing
    resumed = cli.accumulate_wall_seconds(path, 5.0, command="other", code="def")
    assert resumed == {"seconds": 15.0, "invocations": 2, "command": "bench/quality", "code": "abc"}
    path.write_text(json.dumps({**resumed, "load": "shared with other work"}))  # a note written by hand stays
    assert cli.accumulate_wall_seconds(path, 1.0)["load"] == "shared with other work"


def test_code_version_names_a_commit():
    version = cli.code_version()
    assert len(version.split()[0]) >= 7


def test_user_points_study(tmp_path):
    rng = np.random.default_rng(0)
    angle = rng.uniform(0, 2 * np.pi, 800)
    ring = np.stack([3 * np.cos(angle), 3 * np.sin(angle)], 1) + 0.1 * rng.normal(size=(800, 2))
    np.savez(tmp_path / "ring.npz", x=ring)
    out = tmp_path / "out"
    assert cli.main(["--preset", "tiny", "--points", str(tmp_path / "ring.npz"), "--work", str(tmp_path / "w"),
                     "--out", str(out)]) == 0
    report = (out / "RESULTS-ring.md").read_text()
    assert "ring.npz" in report and "scale" in report
    assert "## 2. Exact teacher" not in report  # the closed form exists only for the built-in mixture
    assert not (out / "RESULTS.md").exists()


def test_bad_arguments_exit_with_a_message(tmp_path, capsys):
    assert cli.main(["--preset", "tiny", "--points", str(tmp_path / "none.npz")]) == 2
    assert "not found" in capsys.readouterr().err


def test_command_line_entry_point_runs():
    done = subprocess.run([str(ROOT / "bench" / "quality"), "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "--points" in done.stdout and "--quick" in done.stdout


# ---------------------------------------------------------------------------------------------- sweep


def test_sweep_grid_covers_the_authors_ratios_and_stays_in_range():
    from quality_study import sweep

    points = sweep.grid()
    assert (1.0, 1.0) in points and len(points) == len(sweep.ALPHAS) * len(sweep.RATIOS) + 1
    ratios = {round(b / a, 2) for a, b in points}
    assert {0.94, 0.98, 1.0, 1.02, 1.06} <= ratios
    assert all(0 < a <= 1 and 0 < b <= 1 for a, b in points)
    with pytest.raises(ValueError, match="outside"):
        sweep.grid(alphas=(0.99,), ratios=(1.06,))
    names = {sweep.experiment_name(a, b, seed) for a, b in points for seed in (0, 1, 2)}
    assert len(names) == 3 * len(points) and all("." not in n for n in names)
    cmd = sweep.queue_commands([(0.94, 0.96)])[0]
    assert cmd[:4] == ["dvc", "exp", "run", "--queue"] and "alpha=0.94" in cmd and "beta=0.96" in cmd
    assert not any("distill.seed" in c for c in cmd)  # seed 0 is the params.yaml seed: the names stay as they were
    seeded = sweep.queue_commands([(0.94, 0.96)], seeds=(0, 2))
    assert len(seeded) == 2 and "distill.seed=2" in seeded[1] and seeded[1][5] == "sweep-a0p94-b0p96-s2"


def test_sweep_collects_dvc_exp_show_json_and_draws_the_heatmap(tmp_path, capsys):
    from quality_study import sweep

    def exp(alpha, beta, sw2, seed=None):
        distill = {} if seed is None else {"distill": {"seed": seed}}
        return {"rev": "abc", "data": {
            "params": {"params.yaml": {"data": {"alpha": alpha, "beta": beta, "family": {"name": "fm"}, **distill}}},
            "metrics": {sweep.METRICS_FILE: {"data": {"student": {"sliced_wasserstein2": sw2},
                                                      "teacher": {"sliced_wasserstein2": 0.031},
                                                      "real": {"sliced_wasserstein2": 0.021}}}}}}

    shown = [{"rev": "workspace", "data": {"params": {"params.yaml": {"data": {"alpha": 0.94, "beta": 0.96}}},
                                             "metrics": {}}},
             {"rev": "HEAD", "experiments": [{"revs": [exp(0.9, 0.882, 0.05), exp(0.9, 0.918, 0.07)]},
                                             {"revs": [exp(0.9, 0.882, 0.03, seed=1), exp(0.9, 0.918, 0.071, seed=1)]},
                                             {"revs": [exp(1.0, 1.0, 0.09), exp(1.0, 1.0, 0.07, seed=1)]}]}]
    assert sweep.collect(shown) == {(0.9, 0.882): {0: 0.05, 1: 0.03}, (0.9, 0.918): {0: 0.07, 1: 0.071},
                                    (1.0, 1.0): {0: 0.09, 1: 0.07}}
    path = tmp_path / "shown.json"
    path.write_text(json.dumps(shown))
    out = tmp_path / "heat.png"
    page = tmp_path / "RESULTS-sweep.md"
    assert sweep.main(["collect", "--from-json", str(path), "--out", str(out), "--results", str(page)]) == 0
    printed = capsys.readouterr().out
    assert out.stat().st_size > 1000
    # 0.04 ± 0.014 vs 0.08 ± 0.014: a difference beyond the spread; 0.0705 ± 0.0007 vs 0.08: within it.
    assert "| 0.9 | 0.882 | 0.980 | 0.04 ± 0.014 | 0.05, 0.03 | 0, 1 | better |" in printed
    assert "| 0.9 | 0.918 | 1.020 | 0.0705 ± 7.1e-04 | 0.07, 0.071 | 0, 1 | no difference |" in printed
    assert "| 1 | 1 | 1.000 | 0.08 ± 0.014 | 0.09, 0.07 | 0, 1 | – |" in printed
    text = page.read_text()
    assert "1 × better, 1 × no difference" in text and "![sweep](heat.png)" in text
    # The teacher and the floor come before any student row.
    teacher_line = "teacher 0.031 (6 experiments); real floor 0.021 (6 experiments)"
    assert teacher_line in text and text.index(teacher_line) < text.index("| 0.9 | 0.882 |")
    path.write_text("[]")
    assert sweep.main(["collect", "--from-json", str(path), "--out", str(out), "--results", ""]) == 1


def test_sweep_dry_run_prints_the_queue(capsys):
    from quality_study import sweep

    assert sweep.main(["queue", "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("dvc exp run --queue") == len(sweep.grid())
    assert sweep.main(["queue", "--dry-run", "--alphas", "0.94", "--ratios", "1.02", "--seeds", "1", "2"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("dvc exp run --queue") == 4 and "-n sweep-a1-b1-s2 " in printed
    assert sweep.main(["start", "--jobs", "2", "--dry-run"]) == 0
    assert "dvc queue start -j 2" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------- bridge noise


def test_bridge_noise_bench_runs_tiny_and_writes_its_table(tmp_path, capsys):
    from quality_study import bridge_noise

    out = tmp_path / "bridge.md"
    picture = tmp_path / "figures" / "bridge_noise_samples.png"
    argv = ["--generator-t", "0", "0.2", "--steps", "2", "--seeds", "0", "--teacher-steps", "5",
            "--work", str(tmp_path / "work"), "--out", str(out), "--figure", str(picture)]
    assert bridge_noise.main(argv) == 0
    text = out.read_text()
    assert text.startswith("<!-- bench/bridge_noise --generator-t 0 0.2")
    rows = [line.split(" | ")[0].removeprefix("| ") for line in text.splitlines()[3:] if line.startswith("| ")]
    # The floor first, then the teacher, then the students.
    assert rows == ["real pairs (2nd sample): the floor", "teacher (SDE, NFE 99)", "student, generator_t = 0",
                    "student, generator_t = 0.2"]
    floor_marginal = float(text.splitlines()[3].split(" | ")[2].split(" ± ")[0])
    # Two real samples of the same mixture: close, whatever the (tiny) teacher did.
    assert np.isfinite(floor_marginal) and floor_marginal < 0.2
    assert "nan" not in text
    assert picture.stat().st_size > 1000
    assert text.rstrip().endswith("![bridge samples](figures/bridge_noise_samples.png)")
    assert not list(picture.parent.glob(".*tmp*"))  # written atomically, no leftover


# ---------------------------------------------------------------------------------------- digits levers


def _tiny_digits_params(tmp_path: Path) -> Path:
    import yaml

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["features"].update(steps=20)
    params["train_teacher"].update(steps=20, batch_size=32, checkpoint_every_steps=20, log_every_steps=10)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def test_digits_levers_scores_students_against_the_validation_teacher_and_resumes(tmp_path):
    from quality_study import digits_levers

    params = _tiny_digits_params(tmp_path)
    argv = ["--params", str(params), "--levers", "base", "data-free", "--steps", "4", "--eval-every", "2",
            "--eval-samples", "250", "--workers", "1", "--work", str(tmp_path / "work"),
            "--json", str(tmp_path / "r.json"), "--out", str(tmp_path / "r.md")]
    digits_levers.main(argv)
    result = json.loads((tmp_path / "r.json").read_text())
    fit, val = digits_levers.splits(result["base"]["prepare"])
    assert result["n_val"] == len(val) and result["n_fit"] == len(fit) == 1438 - len(val)
    teacher_fid = result["teacher"]["nfe99"]["fid"]
    for lever in ("base", "data-free"):
        row, = result["summary"][lever]
        assert row["final_ratio"] == pytest.approx(row["final_fid"] / teacher_fid)
    runs = {r["lever"]: r for r in result["runs"]}
    assert (runs["data-free"]["alpha"], runs["data-free"]["beta"]) == (1.0, 1.0)
    assert [r["step"] for r in runs["base"]["curve"] if r["copy"] == "raw"] == [2.0, 4.0]
    # The data-free and RealUID students differ (the real-data terms act), on the same noise set.
    assert runs["base"]["curve"][-1]["fid"] != runs["data-free"]["curve"][-1]["fid"]
    # A second call finds the finished runs (named by their settings) and reports the same curves.
    digits_levers.main(argv)
    again = json.loads((tmp_path / "r.json").read_text())
    assert [r["curve"] for r in again["runs"]] == [r["curve"] for r in result["runs"]]
    assert "| base |" in (tmp_path / "r.md").read_text()


def test_digits_imbalance_measures_class_masses_of_an_imbalanced_teacher_and_its_students(tmp_path):
    from quality_study import digits_imbalance, digits_levers

    fit, _ = digits_levers.splits(digits_levers.load_base(ROOT / "params.yaml", [])["prepare"])
    heavy = [0, 1, 2, 3, 4]
    teacher_set = digits_imbalance.imbalanced(fit, heavy, 3)
    counts, before = np.bincount(teacher_set.y, minlength=10), np.bincount(fit.y, minlength=10)
    assert counts[heavy].tolist() == (3 * before[heavy]).tolist() and counts[5:].tolist() == before[5:].tolist()
    first = np.flatnonzero(fit.y == 0)[0]  # an image's copies are the image itself
    assert (teacher_set.x1[np.flatnonzero(teacher_set.y == 0)[:3]] == fit.x1[first]).all()

    argv = ["--params", str(_tiny_digits_params(tmp_path)), "--settings", "1,1", "0.5,1", "--seeds", "0",
            "--steps", "4", "--eval-every", "2", "--eval-samples", "250", "--samples", "200", "--workers", "1",
            "--work", str(tmp_path / "work"), "--json", str(tmp_path / "r.json"), "--out", str(tmp_path / "r.md"),
            "--figure", str(tmp_path / "masses.png"), "--grid", str(tmp_path / "figures" / "samples.png")]
    digits_imbalance.main(argv)
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["teacher_train_counts"] == counts.tolist()
    assert result["teacher_train_heavy"] == pytest.approx(0.75, abs=0.01)
    scored = [result["teacher"], result["real"], *result["runs"]]
    for row in scored:
        masses = np.array(row["class_masses"])
        assert masses.sum() == pytest.approx(1.0) and 0 <= row["heavy_mass"] <= 1
        assert row["heavy_mass"] == pytest.approx(masses[heavy].sum())
        assert 0 <= row["class_tv"] <= 1 and np.isfinite(row["fid"])
    runs = {(r["alpha"], r["beta"]): r for r in result["runs"]}
    assert set(runs) == {(1.0, 1.0), (0.5, 1.0)} and runs[(1.0, 1.0)]["copy"] == "ema_0.999"
    assert [r["step"] for r in runs[(0.5, 1.0)]["curve"] if r["copy"] == "raw"] == [2.0, 4.0]
    # The 2-D analogue's data-free fixed point is the teacher itself.
    assert result["theory"]["heavy_weight"]["1,1"] == pytest.approx(result["teacher"]["heavy_mass"], abs=1e-3)
    assert 0 <= result["theory"]["heavy_weight"]["0.5,1"] <= 1
    text = (tmp_path / "r.md").read_text()
    assert "| data-free (1, 1) |" in text and "| RealUID (0.5, 1) |" in text and "2-D analogue" in text
    assert (tmp_path / "masses.png").stat().st_size > 1000
    # The pictures: a grid of real, teacher and student images, linked before the first student row.
    assert (tmp_path / "figures" / "samples.png").stat().st_size > 1000
    assert [f.name for f in (tmp_path / "figures").iterdir()] == ["samples.png"]  # written atomically
    assert result["grid"] == "figures/samples.png"
    assert text.index("![samples](figures/samples.png)") < text.index("| data-free (1, 1) |")
    # A second call finds the teacher and the finished runs and reports the same numbers.
    digits_imbalance.main(argv)
    again = json.loads((tmp_path / "r.json").read_text())
    assert again["runs"] == result["runs"] and again["teacher"]["class_masses"] == result["teacher"]["class_masses"]
    assert again["trained_now_seconds"] == {} and "teacher_seconds" in result["trained_now_seconds"]


def test_digits_speed_times_the_library_updates(tmp_path, capsys):
    from quality_study import digits_speed

    out = tmp_path / "speed.json"
    digits_speed.main(["--variants", "base (params.yaml, 1 thread)", "data-free (alpha = beta = 1)",
                       "--updates", "1", "--warmup", "1", "--json", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert all(r["seconds_per_update"] > 0 for r in rows.values())
    assert "1.00x" in capsys.readouterr().out
