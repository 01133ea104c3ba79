"""bench/diffusers_digits at a tiny size: it writes its results, its teacher is diffusers' own pipeline folder, and
the teacher realuid distils is that folder's field."""

import json
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")
from diffusers import DDPMPipeline  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from quality_study import diffusers_digits  # noqa: E402

TINY = ["--teacher-steps", "3", "6", "--channels", "8", "16", "--features-steps", "5", "--distill-steps", "2",
        "--eval-every", "1", "--samples", "20", "--ddim-steps", "3", "--nfe", "5", "--seeds", "0", "1",
        "--distill-batch", "16", "--teacher-batch", "16", "--workers", "1"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("diffusers_digits")
    args = TINY + ["--work", str(root / "work"), "--json", str(root / "r.json"), "--out", str(root / "r.md"),
                   "--grid", str(root / "grid.png")]
    diffusers_digits.main(args)
    return root, args


def test_tiny_run_writes_its_results(tiny_run):
    root, _ = tiny_run
    result = json.loads((root / "r.json").read_text())
    assert result["teacher_steps"] in (3, 6) and result["setting"] in ("0.2,1", "0.94,0.96")
    assert len(result["ratios"]) == 2 and result["target"] in ("reached", "not reached")
    for row in ("ddim", "ddim_unclipped", "ours", "floor"):
        assert result["teacher_test"][row]["finite"], row
    report = (root / "r.md").read_text()
    assert "our sampler after import (heun, NFE 5)" in report and "student (" in report
    assert "![samples](grid.png)" in report and (root / "grid.png").stat().st_size > 1000


def test_the_teacher_is_a_diffusers_pipeline_and_the_import_reads_its_field(tiny_run):
    root, _ = tiny_run
    result = json.loads((root / "r.json").read_text())
    folder = root / "work" / result["teacher_folder"]
    pipeline = DDPMPipeline.from_pretrained(folder, local_files_only=True)
    unet, scheduler = pipeline.unet.double().eval(), pipeline.scheduler
    teacher = diffusers_digits.import_teacher(str(folder))
    teacher.net.double()
    gen = torch.Generator().manual_seed(0)
    x_t = torch.randn(4, 1, 8, 8, generator=gen, dtype=torch.float64)
    for k in (999, 500, 20):
        t = torch.full((4,), 1 - k / (scheduler.config.num_train_timesteps - 1), dtype=torch.float64)
        with torch.no_grad():
            theirs = scheduler.step(unet(x_t, k).sample, k, x_t).pred_original_sample
            ours = teacher.family.predict_x1(t, x_t, teacher(t, x_t))
        # The saved scheduler clips its estimate (clip_sample); the import does not: compare unclipped values.
        inside = theirs.abs() < 1
        torch.testing.assert_close(ours[inside], theirs[inside], rtol=1e-6, atol=1e-6)


def test_a_second_run_comes_from_the_cache(tiny_run):
    root, args = tiny_run
    jobs = sorted(p.name for p in (root / "work" / "jobs").iterdir())
    before = (root / "r.json").read_text()
    diffusers_digits.main(args)
    assert sorted(p.name for p in (root / "work" / "jobs").iterdir()) == jobs
    keep = lambda text: {k: v for k, v in json.loads(text).items() if k not in ("wall_seconds", "code")}  # noqa: E731
    assert keep((root / "r.json").read_text()) == keep(before)


def test_bad_settings_are_one_error_line(tmp_path):
    with pytest.raises(SystemExit, match="^error: alpha and beta must be in"):
        diffusers_digits.main(TINY + ["--settings", "0,1", "--work", str(tmp_path / "w"), "--json",
                                      str(tmp_path / "r.json"), "--out", str(tmp_path / "r.md")])
    assert not any(tmp_path.iterdir())


def test_keep_best_hands_over_the_copy_of_lowest_validation_fid(tiny_run, tmp_path):
    root, _ = tiny_run  # the same teacher and features come from the first run's cache
    args = TINY + ["--keep-best", "--generator-lr", "1e-4", "--settings", "0.2,1", "--seeds", "0",
                   "--work", str(root / "work"), "--json", str(tmp_path / "r.json"), "--out", str(tmp_path / "r.md")]
    diffusers_digits.main(args)
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["distill"]["keep_best"] and result["distill"]["generator_optim"]["lr"] == 1e-4
    run = result["runs"][0]
    best = min(run["curve"], key=lambda r: r["fid"])
    assert run["handed"] == {"copy": best["copy"], "step": int(best["step"])}
    assert run["validation_fid"] == best["fid"]
    assert "lowest validation FID (`keep_best`)" in (tmp_path / "r.md").read_text()
