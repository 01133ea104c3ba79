"""bench/fixed_points: the command runs, a tiny grid goes end to end, bad input stops before any work."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from quality_study import fixed_points  # noqa: E402

TINY = ["--theory-step", "0.4", "--seeds", "0", "1", "2", "--steps", "4", "--log-every", "2", "--init-steps", "5",
        "--hidden", "8", "--n-train", "256", "--n-eval", "64", "--batch-size", "32"]


def test_help_runs():
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "fixed_points"), "--help"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0 and "--teacher-weights" in out.stdout and "--data-weights" in out.stdout


def test_tiny_grid_end_to_end(tmp_path):
    out, js, figs = tmp_path / "r.md", tmp_path / "r.json", tmp_path / "figs"
    code = fixed_points.main(["--cases", "two-modes", "--families", "fm", "--theory-families", "fm", "si",
                              "--trained", "1,1", "0.6,1", *TINY, "--work", str(tmp_path / "w"), "--out", str(out),
                              "--json", str(js), "--figures", str(figs)])
    assert code == 0
    text = out.read_text()
    assert "Command: `bench/fixed_points" in text and "Code version at the start:" in text and "Wall time:" in text
    assert "| (1, 1) | 0.500 |" in text  # data-free: the theory returns the teacher's weight
    assert "#### two-modes, si" in text  # a theory-only family gets its table too
    results = json.loads(js.read_text())["results"]["two-modes"]
    assert results["theory"]["fm"]["1,1"]["weights"] == pytest.approx([0.5, 0.5], abs=1e-9)
    # beta = 1, alpha < 1: the theory moves the student towards the data's 0.75 (issue 14)
    assert results["theory"]["fm"]["0.6,1"]["weights"][0] > 0.51
    runs = results["train"]["fm"]["runs"]
    assert sorted(runs) == sorted(f"{p},{s}" for p in ("1,1", "0.6,1") for s in (0, 1, 2))
    for run in runs.values():
        assert len(run["trajectory"]) == 2 and 0 <= run["final"]["knn_recall"] <= 1
    assert (figs / "fixed_points_two-modes_heatmap.png").stat().st_size > 0
    assert (figs / "fixed_points_two-modes_samples.png").stat().st_size > 0
    # the figures can be redrawn from the JSON and the run cache alone
    again = tmp_path / "again"
    assert fixed_points.main(["--replot", str(js), "--work", str(tmp_path / "w"), "--figures", str(again)]) == 0
    assert sorted(p.name for p in again.iterdir()) == sorted(p.name for p in figs.iterdir())


def test_a_case_of_your_own_from_the_command_line_in_one_dimension(tmp_path):
    out = tmp_path / "r.md"
    code = fixed_points.main(["--means", "-1 1", "--stds", "0.3", "0.3", "--teacher-weights", "1", "1",
                              "--data-weights", "3", "1", "--families", "fm", "--theory-families", "fm",
                              "--trained", "0.5,0.5", *TINY, "--work", str(tmp_path / "w"), "--out", str(out)])
    assert code == 0
    # alpha = beta = 0.5: the closed form 0.5 + (0.5 - 0.75) = 0.25, i.e. away from the data's 0.75
    assert "| (0.5, 0.5) | 0.250 |" in out.read_text()


@pytest.mark.parametrize("argv,match", [
    (["--means", "-1,0 1,0"], "needs all of"),
    (["--means", "-1,0 1,0", "--stds", "0.2", "--teacher-weights", "1", "1", "--data-weights", "1", "1"], "stds"),
    (["--theory-step", "0.3"], "divide 0.8"),
    (["--steps", "0"], "--steps"),
])
def test_bad_input_is_one_error_line_before_any_work(tmp_path, capsys, argv, match):
    assert fixed_points.main([*argv, "--work", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and match in err[0]
    assert not (tmp_path / "w").exists()


def test_bad_alpha_beta_pair_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit):
        fixed_points.main(["--trained", "1.2,1"])
    assert "alpha and beta must lie in (0, 1]" in capsys.readouterr().err
