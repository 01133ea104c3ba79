"""bench/gpu_check.sh: the CPU-sized run end to end, and how it finds torchcfm on machines without it."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_check.sh"
sys.path.insert(0, str(ROOT / "bench"))
import gpu_check  # noqa: E402


@pytest.fixture
def env(subprocess_env):
    return dict(subprocess_env, PYTHON=sys.executable)


def run_python(code: str, env: dict) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter with bench/ importable (import state cannot leak between tests)."""
    prelude = f"import sys; sys.path.insert(0, {str(ROOT / 'bench')!r})\n"
    return subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_tiny_run_on_cpu_measures_both_precisions(env, tmp_path):
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run(["bash", str(SCRIPT), "--tiny", "--teacher-nfe", "5", "--json", str(out)], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "| precision | distill it/s |" in proc.stdout
    assert "losses and samples finite: yes" in proc.stdout
    result = json.loads(out.read_text())
    assert result["device"].startswith("CPU") and result["batch_size"] == 8 and result["teacher_nfe"] == 5
    rows = {r["precision"]: r for r in result["rows"]}
    assert set(rows) == {"fp32", "bf16"}
    for row in rows.values():
        assert row["losses_finite"] and row["samples_finite"]
        assert row["iterations_per_s"] > 0
        assert row["optimizer_steps_per_s"] == pytest.approx(6 * row["iterations_per_s"])
        # One network call per image against five: one-step sampling must be the faster one.
        assert row["one_step_images_per_s"] > row["teacher_images_per_s"]
        assert row["peak_memory_gib"] is None and row["host_syncs_per_iteration"] is None  # CUDA-only readings
    # bf16 under each speed option but compile (minutes on a CPU), then all of them; the floor is the paper size's.
    assert [r["option"] for r in result["speed_rows"]] == ["none", "fused_adam", "channels_last", "cudnn_benchmark",
                                                           "attention=sdpa", "groupnorm=autocast", "all"]
    assert all(r["losses_finite"] and r["iterations_per_s"] > 0 for r in result["speed_rows"])
    assert result["floor_s"] is None and "| bf16 + | distill it/s |" in proc.stdout
    assert result["evaluate"]["samples"] == 500 and result["evaluate"]["finite"]


def test_torchcfm_models_import_without_pot(env):
    """torchcfm installed, POT missing: its models still import (its package __init__ needs POT)."""
    proc = run_python("""
        sys.modules["ot"] = None  # as on a machine without POT: `import ot` fails
        from pathlib import Path
        import torch, gpu_check
        how = gpu_check.ensure_torchcfm(Path("/nonexistent"))
        from realuid.models import build_model
        net = build_model(gpu_check.tiny_size().spec)
        assert net(torch.rand(2), torch.randn(2, 3, 8, 8)).shape == (2, 3, 8, 8)
        assert "torchcfm.conditional_flow_matching" not in sys.modules
        print(how)
    """, env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("installed, models only (package import failed: ModuleNotFoundError")
    assert "ot" in proc.stdout.split("ModuleNotFoundError", 1)[1]


def test_carried_copy_is_used_when_torchcfm_is_absent(env, tmp_path):
    carry = tmp_path / "carry"
    prep = subprocess.run(["bash", str(SCRIPT), "--prepare-carry", str(carry)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert prep.returncode == 0, prep.stderr
    assert (carry / "torchcfm" / "models" / "unet" / "unet.py").is_file()
    assert (carry / "python" / "ruamel" / "yaml" / "main.py").is_file()  # params.yaml's reader
    assert not list(carry.rglob("__pycache__"))
    proc = run_python(f"""
        sys.modules["torchcfm"] = None  # as on a machine without torchcfm
        sys.modules["ot"] = None
        from pathlib import Path
        import gpu_check
        try:
            gpu_check.ensure_torchcfm(Path({str(tmp_path / 'empty')!r}))
        except gpu_check.MissingDependency as err:
            assert "--prepare-carry" in str(err), err
        else:
            raise AssertionError("no error without torchcfm")
        sys.modules["torchcfm"] = None
        how = gpu_check.ensure_torchcfm(Path({str(carry)!r}))
        import torchcfm.models.unet.unet as unet
        assert unet.__file__.startswith({str(carry)!r}), unet.__file__
        print(how)
    """, env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(str(carry))

    # ruamel.yaml: as on a machine where only the carried copy exists, params.yaml is read with it.
    proc = run_python(f"""
        import importlib.machinery
        from pathlib import Path

        class OnlyTheCarriedRuamel:
            def find_spec(self, name, path=None, target=None):
                if name != "ruamel.yaml":
                    return None
                carried = [p for p in path if p.startswith({str(carry)!r})]
                spec = importlib.machinery.PathFinder.find_spec(name, carried)
                if spec is None:
                    raise ModuleNotFoundError(name)
                return spec

        sys.meta_path.insert(0, OnlyTheCarriedRuamel())
        import gpu_check
        try:
            gpu_check.ensure_libraries(Path({str(tmp_path / 'empty')!r}))
        except gpu_check.MissingDependency as err:
            assert "ruamel.yaml" in str(err) and "--prepare-carry" in str(err), err
        else:
            raise AssertionError("no error without ruamel.yaml")
        gpu_check.ensure_libraries(Path({str(carry)!r}))
        from realuid.config import load_params
        import ruamel.yaml
        assert ruamel.yaml.__file__.startswith({str(carry)!r}), ruamel.yaml.__file__
        print(load_params(gpu_check.ROOT / "params.yaml").distill.generator_optim.lr)
    """, env)
    assert proc.returncode == 0, proc.stderr
    assert float(proc.stdout) > 0


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the no-CUDA refusal")
def test_full_size_is_refused_on_a_cpu_unless_asked_for(capsys):
    assert gpu_check.main([]) == 2
    assert "--tiny" in capsys.readouterr().err


def test_speed_rows_are_each_option_alone_then_all_together():
    rows = gpu_check.speed_rows(gpu_check.parse_args(["--speed", "compile,attention=sdpa,all"]).speed)
    assert rows == {"none": {}, "compile": {"compile": True}, "attention=sdpa": {"attention": "sdpa"},
                    "all": {"compile": True, "attention": "sdpa"}}
    assert gpu_check.speed_rows(gpu_check.parse_args(["--speed", "none"]).speed) == {}
    assert "compile" in gpu_check.parse_args([]).speed and "compile" not in gpu_check.parse_args(["--tiny"]).speed


def test_arguments_are_validated():
    assert gpu_check.parse_args(["--tiny"]).precisions == ["fp32", "bf16"]
    assert gpu_check.parse_args(["--precisions", "bf16"]).precisions == ["bf16"]
    for bad in (["--precisions", "fp16"], ["--precisions", ""], ["--iterations", "0"], ["--speed", "fast"],
                ["--evaluate-samples", "3"]):
        with pytest.raises(SystemExit):
            gpu_check.parse_args(bad)


def test_table_shows_skipped_rows_and_missing_readings():
    rows = [
        {"precision": "fp32", "iterations_per_s": 2.5, "optimizer_steps_per_s": 15.0, "peak_memory_gib": None,
         "host_syncs_per_iteration": 3, "one_step_images_per_s": 1000.0, "teacher_images_per_s": 10.0,
         "losses_finite": True, "samples_finite": False},
        {"precision": "bf16", "skipped": "time budget of 270 s spent"},
    ]
    text = gpu_check.table(rows, 99)
    assert "| fp32 | 2.50 | 15.0 | n/a | 3 | 1000 | 10.0 | 100x | NO |" in text
    assert "| bf16 | skipped: time budget of 270 s spent |" in text


def test_shell_script_is_executable():
    assert os.access(SCRIPT, os.X_OK)


@pytest.mark.slow
def test_bf16_check_scores_both_precisions_from_the_same_weights_each_update():
    import torch
    from quality_study import bf16_check

    rows = bf16_check.compare("cifar-tiny", 2, torch.device("cpu"), 0.92, 0.94)
    assert rows[0]["loss_fp32"] == bf16_check.compare("cifar-tiny", 1, torch.device("cpu"), 0.92, 0.94)[0]["loss_fp32"]
    for row in rows:
        assert row["loss_bf16"] != row["loss_fp32"] and -1 <= row["grad_cosine"] <= 1
    summary = bf16_check.summary(rows)
    assert summary["updates"] == 2 and summary["grad_norm_rel_error_max"] >= summary["grad_norm_rel_error_median"]


@pytest.mark.slow
def test_bf16_check_every_nth_update_follows_the_same_fp32_run():
    import torch
    from quality_study import bf16_check

    every = bf16_check.compare("cifar-tiny", 3, torch.device("cpu"), 0.92, 0.94)
    sparse = bf16_check.compare("cifar-tiny", 3, torch.device("cpu"), 0.92, 0.94, compare_every=2)
    assert [r["update"] for r in sparse] == [0, 2]
    # The bf16 phase is taken on a copy, so skipping it leaves the fp32 run as it was.
    assert sparse[1] == every[2]
    windows = bf16_check.windows(every, 2)
    assert [(w["window"], w["updates"]) for w in windows] == [([0, 2], 2), ([2, 4], 1)]
    assert windows[1]["loss_abs_error_max"] == abs(every[2]["loss_bf16"] - every[2]["loss_fp32"])
