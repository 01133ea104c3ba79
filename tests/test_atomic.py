"""Atomic writes: the file a plain ``open()`` would make, appearing whole or not at all.

The helper itself, and two writers that used to leave their temporary behind when they failed half-way
(the training curves' rewrite and the benchmark's job cache).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from helpers.umask import current_umask
from realuid.atomic import atomic_open, atomic_write, temporary_folder

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def umask_027():
    """An umask other than the usual 022, so a mode that merely looks usual cannot pass."""
    before = os.umask(0o027)
    yield
    os.umask(before)


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


@pytest.mark.parametrize("durable", [False, True])
def test_files_and_folders_get_the_mode_of_a_plain_open_under_the_umask(tmp_path, umask_027, durable):
    atomic_write(tmp_path / "a.bin", b"\x00\x01", durable=durable)
    atomic_write(tmp_path / "a.txt", "π\n", durable=durable)
    with open(tmp_path / "plain", "w"):
        pass
    assert mode(tmp_path / "a.bin") == mode(tmp_path / "a.txt") == mode(tmp_path / "plain") == 0o640
    assert (tmp_path / "a.bin").read_bytes() == b"\x00\x01" and (tmp_path / "a.txt").read_text("utf-8") == "π\n"
    folder = temporary_folder(tmp_path / "out")
    assert folder.parent == tmp_path and folder.name.startswith(".out.") and mode(folder) == 0o750
    assert current_umask() == 0o027


@pytest.mark.parametrize("error", [ValueError, KeyboardInterrupt])
def test_a_write_that_fails_half_way_leaves_the_old_file_and_no_temporary(tmp_path, error):
    (tmp_path / "f").write_bytes(b"old")
    with pytest.raises(error):
        with atomic_open(tmp_path / "f") as fh:
            fh.write(b"new" * 100_000)
            fh.flush()
            assert len(list(tmp_path.iterdir())) == 2  # the temporary, beside the file
            raise error("half-way")
    assert [p.name for p in tmp_path.iterdir()] == ["f"] and (tmp_path / "f").read_bytes() == b"old"
    with pytest.raises(error):
        with atomic_open(tmp_path / "new"):
            raise error("before any byte")
    assert [p.name for p in tmp_path.iterdir()] == ["f"]


def test_an_error_that_names_no_file_names_the_target(tmp_path):
    with pytest.raises(OSError) as err:
        with atomic_open(tmp_path / "f"):
            raise OSError(28, "No space left on device")
    assert err.value.filename == str(tmp_path / "f") and err.value.errno == 28
    assert list(tmp_path.iterdir()) == []


def test_curves_trimmed_from_a_damaged_file_keep_it_and_leave_no_temporary(tmp_path):
    from realuid.training.bookkeeping import CurveLog

    damaged = "step,loss\n1,0.5\n2,0.4,0.1\n"  # a row with a field too many fails after the header is written
    (tmp_path / "curves.csv").write_text(damaged)
    with pytest.raises(ValueError, match="fields not in fieldnames"):
        CurveLog(tmp_path / "curves.csv", ["loss"]).trim(5)
    assert [p.name for p in tmp_path.iterdir()] == ["curves.csv"] and (tmp_path / "curves.csv").read_text() == damaged


class _Interrupted:
    def __reduce__(self):
        raise KeyboardInterrupt


def test_job_cache_interrupted_while_pickling_leaves_nothing(tmp_path):
    sys.path.insert(0, str(ROOT / "bench"))
    from quality_study.cli import JobCache

    cache = JobCache(tmp_path / "cache")
    with pytest.raises(KeyboardInterrupt):
        cache.put("job", [bytes(200_000), _Interrupted()])  # the first frames are written by then
    assert list((tmp_path / "cache").iterdir()) == [] and cache.get("job") is None
    cache.put("job", [1, 2])
    assert cache.get("job") == [1, 2] and mode(cache.path("job")) == 0o666 & ~current_umask()
