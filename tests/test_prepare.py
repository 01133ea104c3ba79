"""The prepare stage end to end: sources → validated HDF5 splits in --out (realuid.stages.prepare)."""

from __future__ import annotations

import io
import json
import os
import pickle
import subprocess
import sys
import tarfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from realuid import data
from realuid.stages import prepare

REPO = Path(__file__).resolve().parents[1]
SMALL_TOY = {"n_train": 200, "n_test": 50}


@pytest.fixture(scope="module", autouse=True)
def gx_ready():
    """Build the great-expectations context once for the module (the slow part of validation)."""
    from realuid import data_checks as validation

    validation._batch_definition()


def write_params(folder: Path, **prepare_overrides) -> Path:
    """The project's params.yaml with the prepare section changed; for toy sources configs/toy.yaml,
    the 2-D configuration (the committed default's UNet is refused on points)."""
    base = "configs/toy.yaml" if prepare_overrides.get("source") == "toy" else "params.yaml"
    params = yaml.safe_load((REPO / base).read_text())
    params["prepare"].update(prepare_overrides)
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def run_stage(tmp_path: Path, **prepare_overrides) -> tuple[int, Path]:
    params = write_params(tmp_path, **prepare_overrides)
    out = tmp_path / "data" / "prepare"
    code = prepare.cli(["--params", str(params), "--out", str(out)])
    return code, out


def leftovers(folder: Path) -> list[str]:
    """Hidden temporary entries the stage may have left beside --out."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def assert_published(out: Path) -> tuple[data.Split, data.Split]:
    assert sorted(p.name for p in out.iterdir()) == ["test.h5", "train.h5", "validation.json"]
    report = json.loads((out / "validation.json").read_text())
    assert report["train"]["success"] and report["test"]["success"]
    assert leftovers(out.parent) == []
    return data.read_split(out / "train.h5"), data.read_split(out / "test.h5")


@pytest.mark.parametrize("toy", data.TOY_DATASETS)
def test_toy_sources(tmp_path, toy, capsys):
    code, out = run_stage(tmp_path, source="toy", toy=toy, **SMALL_TOY)
    assert code == 0
    train, test = assert_published(out)
    assert train.x1.shape == (200, 2) and test.x1.shape == (50, 2)
    assert train.attrs["dataset"] == toy and train.attrs["kind"] == "points"
    summary = capsys.readouterr().out.strip()
    assert summary.count("\n") == 0 and "train 200, test 50" in summary and train.attrs["content_hash"][:12] in summary


def test_digits_with_mask_pairs(tmp_path):
    code, out = run_stage(tmp_path, source="digits", pairing="mask", pairing_strength=0.25, test_fraction=0.2)
    assert code == 0
    train, test = assert_published(out)
    assert len(train) + len(test) == 1797 and train.attrs["num_classes"] == 10
    assert train.attrs["paired"] is True and train.x0.shape == train.x1.shape
    assert json.loads(train.attrs["params"])["pairing"] == "mask"


@pytest.mark.parametrize("pairing", ["noise", "downsample"])
def test_digits_pairing_variants(tmp_path, pairing):
    code, out = run_stage(tmp_path, source="digits", pairing=pairing, pairing_strength=0.2)
    assert code == 0
    train, _ = assert_published(out)
    assert train.x0 is not None and not np.array_equal(train.x0, train.x1)


def test_toy_noise_pairs(tmp_path):
    code, out = run_stage(tmp_path, source="toy", pairing="noise", pairing_strength=0.1, **SMALL_TOY)
    assert code == 0
    train, test = assert_published(out)
    assert train.x0.shape == (200, 2) and test.x0.shape == (50, 2)


def test_file_npz_points(tmp_path):
    x = np.random.default_rng(0).uniform(-1, 1, (60, 3))
    np.savez(tmp_path / "points.npz", x=x, y=np.arange(60) % 3)
    code, out = run_stage(tmp_path, source="file", path=str(tmp_path / "points.npz"), test_fraction=0.25)
    assert code == 0
    train, test = assert_published(out)
    assert (len(train), len(test)) == (45, 15) and train.attrs["num_classes"] == 3
    merged = np.concatenate([train.x1, test.x1])
    assert sorted(map(tuple, merged)) == sorted(map(tuple, x.astype(np.float32)))


def test_file_h5_uint8_images(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (20, 6, 6, 3), dtype=np.uint8)
    with h5py.File(tmp_path / "images.h5", "w") as f:
        f["x"] = pixels
    code, out = run_stage(tmp_path, source="file", path=str(tmp_path / "images.h5"), test_fraction=0.2)
    assert code == 0
    train, test = assert_published(out)
    assert train.x1.shape == (16, 3, 6, 6) and test.x1.shape == (4, 3, 6, 6)
    assert train.attrs["kind"] == "images" and train.y is None


def write_cifar_archive(path: Path, n_per_batch: int) -> None:
    """A miniature cifar-10-python.tar.gz: the official member names, pickled dict batches."""
    rng = np.random.default_rng(0)
    with tarfile.open(path, "w:gz") as archive:
        for name in data.CIFAR10_TRAIN_BATCHES + data.CIFAR10_TEST_BATCHES:
            batch = {"data": rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8), "labels": list(range(n_per_batch))}
            raw = pickle.dumps(batch, protocol=2)
            member = tarfile.TarInfo(f"{data.CIFAR10_FOLDER}/{name}")
            member.size = len(raw)
            archive.addfile(member, io.BytesIO(raw))


def test_synthetic_cifar_archive(tmp_path):
    write_cifar_archive(tmp_path / data.CIFAR10_ARCHIVE, n_per_batch=3)
    code, out = run_stage(tmp_path, source="cifar10", path=str(tmp_path / data.CIFAR10_ARCHIVE))
    assert code == 0
    train, test = assert_published(out)
    assert train.x1.shape == (15, 3, 32, 32) and test.x1.shape == (3, 3, 32, 32)
    assert train.attrs["num_classes"] == 10


def test_missing_cifar_is_a_clear_error(tmp_path, capsys):
    code, out = run_stage(tmp_path, source="cifar10", path=str(tmp_path / "absent"))
    assert code == 1 and not out.exists()
    err = capsys.readouterr().err
    assert "download: true" in err and data.CIFAR10_ARCHIVE in err


def test_rerun_is_byte_identical_and_replaces_output(tmp_path):
    code, out = run_stage(tmp_path, source="digits", pairing="noise", pairing_strength=0.1)
    assert code == 0
    first = {p.name: p.read_bytes() for p in out.iterdir()}
    (out / "stale.txt").write_text("from an earlier run")
    code, out = run_stage(tmp_path, source="digits", pairing="noise", pairing_strength=0.1)
    assert code == 0
    assert {p.name: p.read_bytes() for p in out.iterdir()} == first  # stale file gone, bytes equal
    assert leftovers(out.parent) == []


def test_nan_in_user_file_fails_without_output(tmp_path, capsys):
    x = np.random.default_rng(0).uniform(-1, 1, (40, 2))
    x[[3, 21]] = np.nan
    np.savez(tmp_path / "bad.npz", x=x)
    out = tmp_path / "data" / "prepare"
    out.mkdir(parents=True)
    (out / "train.h5").write_text("earlier output")
    code, out = run_stage(tmp_path, source="file", path=str(tmp_path / "bad.npz"), test_fraction=0.5)
    assert code == 1
    assert not out.exists() and leftovers(out.parent) == []
    err = capsys.readouterr().err
    assert "validation failed" in err and "NaN or infinite values" in err


def test_negative_labels_fail(tmp_path, capsys):
    np.savez(tmp_path / "bad.npz", x=np.zeros((30, 2)), y=np.r_[np.zeros(25, int), -np.ones(5, int)])
    code, out = run_stage(tmp_path, source="file", path=str(tmp_path / "bad.npz"))
    assert code == 1 and not out.exists()
    assert "labels outside [0, 0]" in capsys.readouterr().err


def test_out_of_range_values_fail_unless_normalized(tmp_path, capsys):
    x = np.random.default_rng(0).normal(0, 3, (50, 2))
    np.savez(tmp_path / "wide.npz", x=x)
    code, out = run_stage(tmp_path, source="file", path=str(tmp_path / "wide.npz"))
    assert code == 1 and not out.exists()
    assert "values outside [-1, 1]" in capsys.readouterr().err

    code, out = run_stage(tmp_path, source="file", path=str(tmp_path / "wide.npz"), normalize=True)
    assert code == 0
    train, test = assert_published(out)
    restored = data.to_original_units(np.concatenate([train.x1, test.x1]), train.attrs)
    assert sorted(map(tuple, np.round(restored, 4))) == sorted(map(tuple, np.round(x, 4)))


def test_bad_params_name_the_key(tmp_path, capsys):
    code, out = run_stage(tmp_path, source="mnist")
    assert code == 1 and not out.exists()
    assert "prepare.source" in capsys.readouterr().err


def test_downsample_of_points_is_a_clear_error(tmp_path, capsys):
    code, out = run_stage(tmp_path, source="toy", pairing="downsample", **SMALL_TOY)
    assert code == 1 and not out.exists()
    assert "needs images" in capsys.readouterr().err


def test_command_line_subprocess(tmp_path):
    params = write_params(tmp_path, source="toy", toy="checkerboard", **SMALL_TOY)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.run(
        [sys.executable, "-m", "realuid.stages.prepare", "--params", str(params), "--out", str(out)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("prepare: checkerboard points (2,): train 200, test 50")
    assert proc.stderr == ""
    assert_published(out)
