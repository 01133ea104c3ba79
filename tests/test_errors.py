"""Every failure is one clear line, found before the work: file-system errors, full and read-only disks,
duplicate keys, progress bars, concurrent runs.

Each case runs a stage CLI as a user would (``python -m realuid.stages.<name>`` in a project folder) on
a tiny configuration and checks what the user gets: exit code 1, a last stderr line starting with
``error:``, no new files, and earlier outputs unchanged (hashed before and after). Full and read-only
disks are small tmpfs mounts (root, as in CI); where mounting is not allowed those tests are skipped
with the reason.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from helpers.project import TOY, make_project, tiny_params
from realuid.errors import StageError

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable



def dvc_args(name: str) -> tuple[str, ...]:
    """A stage's arguments after ``--params params.yaml``, as dvc.yaml runs it."""
    sys.path.insert(0, str(ROOT / "workflow"))
    from registry import load_stages

    [command] = [s.cmd for s in load_stages(ROOT / "dvc.yaml") if s.name == name]
    argv = shlex.split(command)
    argv = argv[argv.index(f"realuid.stages.{name}") + 1 :]
    assert argv[:2] == ["--params", "params.yaml"], argv
    return tuple(argv[2:])


TEACHER_ARGS = dvc_args("train_teacher")
DISTILL_ARGS = dvc_args("distill")
assert TEACHER_ARGS[-2:] == ("--state", "state/train_teacher") and "data/distill" in DISTILL_ARGS


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


def env() -> dict:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT / "src")
    e["OMP_NUM_THREADS"] = "1"
    e.pop("REALUID_TRACEBACK", None)
    return e


def stage_cmd(name: str, *args: str, params: str = "params.yaml") -> list[str]:
    return [PYTHON, "-m", f"realuid.stages.{name}", "--params", params, *args]


def stage(project: Path, name: str, *args: str, params: str = "params.yaml", timeout: float = 120):
    return subprocess.run(stage_cmd(name, *args, params=params), cwd=project, capture_output=True, text=True,
                          env=env(), timeout=timeout)


def _ctrl_c_as_in_a_terminal() -> None:
    # A shell without job control starts background commands with SIGINT ignored, and an ignored signal
    # stays ignored across exec: a test suite started with `&` would send its Ctrl-C into the void.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_stage(project: Path, name: str, *args: str) -> subprocess.Popen:
    """A stage running in the background, which takes SIGINT as a Ctrl-C in its terminal."""
    return subprocess.Popen(stage_cmd(name, *args), cwd=project, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env(), preexec_fn=_ctrl_c_as_in_a_terminal)


def last_line(stderr: str) -> str:
    # tqdm redraws with carriage returns: those are line ends on a terminal too.
    lines = [line for line in stderr.replace("\r", "\n").splitlines() if line.strip()]
    return lines[-1] if lines else ""


def assert_failed(result, *fragments: str, code: int = 1) -> str:
    """The run exited with ``code`` and its last stderr line is an ``error:`` line holding ``fragments``."""
    line = last_line(result.stderr)
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert line.startswith("error:"), result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in line, (fragment, line)
    return line


def snapshot(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` (hidden ones too), by relative path; folders as ``/``."""
    out = {}
    for path in sorted(folder.rglob("*")):
        rel = str(path.relative_to(folder))
        out[rel] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "/"
    return out


def write_params(project: Path, params: dict) -> None:
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A 2-D project folder with prepare and train_teacher done (copied by each test that changes it)."""
    project = tmp_path_factory.mktemp("trained")
    write_params(project, tiny_params(TOY))
    for name, args in (("prepare", ("--out", "data/prepare")), ("train_teacher", TEACHER_ARGS)):
        done = stage(project, name, *args)
        assert done.returncode == 0, done.stderr
    return project


@pytest.fixture
def project(trained, tmp_path) -> Path:
    """A private copy of the trained project."""
    copy = tmp_path / "project"
    subprocess.run(["cp", "-a", str(trained), str(copy)], check=True)
    return copy


@pytest.fixture
def mounts():
    """``mount(folder, size, read_only=False)``: a tmpfs at ``folder``; every mount is undone afterwards."""
    mounted: list[Path] = []

    def mount(folder: Path, size: str) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({(done.stderr or done.stdout).strip()}); needs root")
        mounted.append(folder)
        return folder

    yield mount
    for folder in reversed(mounted):
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def make_read_only(folder: Path) -> None:
    done = subprocess.run(["mount", "-o", "remount,ro", str(folder)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot remount {folder} read-only: {done.stderr.strip()}")


def fill(folder: Path) -> Path:
    """Write a file into ``folder`` until its filesystem is full; returns the file."""
    filler = folder / "filler"
    chunk = b"\0" * (1 << 16)
    with open(filler, "wb", buffering=0) as fh:
        try:
            while True:
                fh.write(chunk)
        except OSError:
            pass
    return filler


# --------------------------------------------------------------------------------------------------
# 1. File-system errors are one line naming the path and the cause
# --------------------------------------------------------------------------------------------------


def test_params_naming_a_folder_is_one_error_line(tmp_path):
    (tmp_path / "folder").mkdir()
    before = snapshot(tmp_path)
    result = stage(tmp_path, "prepare", "--out", "data/prepare", params="folder")
    assert_failed(result, "folder", "Is a directory")
    assert snapshot(tmp_path) == before


def test_an_output_folder_under_a_file_is_one_error_line(tmp_path):
    write_params(tmp_path, tiny_params())
    (tmp_path / "data").write_text("a file where the output folder should go\n")
    before = snapshot(tmp_path)
    assert_failed(stage(tmp_path, "prepare", "--out", "data/prepare"), "data", "Not a directory")
    assert snapshot(tmp_path) == before


# --------------------------------------------------------------------------------------------------
# 2. Read-only and full disks fail before any work; a disk that fills up during a run fails with one
#    line, keeps the last good checkpoint, and the same command resumes
# --------------------------------------------------------------------------------------------------


def test_read_only_output_folder_stops_distill_before_training(project, mounts, tmp_path):
    # Earlier distill outputs sit on a disk that has since become read-only.
    disk = mounts(tmp_path / "ro", "4m")
    (disk / "distill").mkdir()
    (disk / "distill" / "generator.pt").write_bytes(b"an earlier generator")
    make_read_only(disk)
    before, state_before = snapshot(disk), snapshot(project / "state")
    args = [a if a != "data/distill" else str(disk / "distill") for a in DISTILL_ARGS]
    started = time.monotonic()
    result = stage(project, "distill", *args)
    assert_failed(result, str(disk), "Read-only file system")
    assert "distill a=" not in result.stderr, "training started before the check"
    assert time.monotonic() - started < 60
    assert snapshot(disk) == before and snapshot(project / "state") == state_before


def test_read_only_state_folder_stops_train_teacher_before_training(project, mounts):
    make_read_only(mounts(project / "state2", "4m"))
    before = snapshot(project)
    result = stage(project, "train_teacher", *TEACHER_ARGS[:-1], "state2/train_teacher")
    assert_failed(result, "state2/train_teacher", "Read-only file system")
    assert "teacher:" not in result.stderr
    assert snapshot(project) == before


def test_full_disk_stops_train_teacher_before_training(project, mounts):
    # Only 1 MiB free where the state goes: less than a checkpoint plus the margin.
    before = snapshot(project)
    mounts(project / "state2", "1m")
    result = stage(project, "train_teacher", *TEACHER_ARGS[:-1], "state2/train_teacher")
    assert_failed(result, "not enough free space", "state2/train_teacher")
    assert "teacher:" not in result.stderr
    assert snapshot(project / "state2") == {}
    assert snapshot(project) == {**before, "state2": "/"}


@pytest.mark.slow
def test_disk_filling_up_during_training_keeps_the_last_checkpoint_and_resumes(project, mounts):
    # A network large enough that one checkpoint passes the free-space check and a second one (written
    # beside the first before it replaces it) does not: the disk fills up during the run.
    from realuid.preflight import MARGIN
    from realuid.stages import runs

    params = tiny_params(TOY, train_teacher__model__hidden_dim=512, train_teacher__model__depth=2,
                         train_teacher__steps=4, train_teacher__checkpoint_every_steps=2,
                         train_teacher__log_every_steps=2, train_teacher__batch_size=64)
    write_params(project, params)
    from realuid.config import load_params
    from realuid.models import model_spec

    spec = model_spec(load_params(project / "params.yaml").train_teacher.model, (2,), 0)
    checkpoint = runs.TEACHER_CHECKPOINT_COPIES * runs.weight_bytes(spec)
    assert checkpoint > 8 << 20  # the test is about a second checkpoint not fitting
    state = mounts(project / "state2", str(MARGIN + checkpoint + checkpoint // 2))
    args = (*TEACHER_ARGS[:-1], "state2/train_teacher")
    before = snapshot(project / "data")

    result = stage(project, "train_teacher", *args)
    assert_failed(result, "No space left on device", "state2/train_teacher", "last good checkpoint")
    [folder] = [p for p in (state / "train_teacher").iterdir()]
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint.pt", "curves.csv"], "no temporary file left"
    assert snapshot(project / "data") == before

    remount = subprocess.run(["mount", "-o", f"remount,size={MARGIN + 4 * checkpoint}", str(state)])
    assert remount.returncode == 0
    resumed = stage(project, "train_teacher", *args)  # the same command, with room again
    assert resumed.returncode == 0, resumed.stderr
    first_bar = next(line for line in resumed.stderr.replace("\r", "\n").splitlines() if line.strip())
    assert "2/4" in first_bar, f"it did not resume from step 2: {first_bar}"
    assert snapshot(project / "data") != before


# --------------------------------------------------------------------------------------------------
# 3. HDF5 on a full disk: no crash, no half file
# --------------------------------------------------------------------------------------------------


def test_prepare_on_a_full_disk_is_one_line_and_leaves_nothing(tmp_path, mounts):
    write_params(tmp_path, tiny_params())
    disk = mounts(tmp_path / "disk", "16k")
    result = stage(tmp_path, "prepare", "--out", "disk/prepare")
    assert_failed(result, "not enough free space", "disk")
    assert snapshot(disk) == {}


@pytest.mark.parametrize("size", ["4k", "12k", "20k"])
def test_hdf5_writer_on_a_full_disk_raises_one_error_and_leaves_no_file(tmp_path, mounts, size):
    # The writer itself, past every check: the disk is too small for the file. HDF5 writing straight to
    # such a disk crashed the interpreter (signal 11 inside h5py) at some of these sizes.
    disk = mounts(tmp_path / "disk", size)
    script = (
        "import numpy as np\n"
        "from realuid.data import write_split\n"
        "x = np.random.default_rng(0).normal(size=(4000, 2)).astype('float32')\n"
        f"write_split({str(disk / 'train.h5')!r}, x, attrs={{'source': 'toy'}})\n"
    )
    done = subprocess.run([PYTHON, "-c", script], capture_output=True, text=True, env=env())
    assert done.returncode == 1, (done.returncode, done.stderr)  # a Python exception, not a signal
    assert last_line(done.stderr) == f"OSError: [Errno 28] No space left on device: '{disk / 'train.h5'}'"
    assert "Exception ignored" not in done.stderr
    assert snapshot(disk) == {}


# --------------------------------------------------------------------------------------------------
# 5. Duplicate keys, bad encoding and YAML errors name the file (and the key and line)
# --------------------------------------------------------------------------------------------------


def test_duplicate_key_in_params_is_an_error_naming_key_and_line(tmp_path):
    write_params(tmp_path, tiny_params())
    text = (tmp_path / "params.yaml").read_text()
    (tmp_path / "params.yaml").write_text(text + "alpha: 0.5\n")
    line = len(text.splitlines()) + 1
    before = snapshot(tmp_path)
    assert_failed(stage(tmp_path, "prepare", "--out", "data/prepare"),
                  "params.yaml", "duplicate key 'alpha'", f"line {line}", "line 1)")
    assert snapshot(tmp_path) == before


def test_duplicate_key_in_a_section_is_an_error_for_the_stage_and_the_registry(tmp_path):
    sys.path.insert(0, str(ROOT / "workflow"))
    from registry import param_values

    from realuid.config import ConfigError, load_params

    write_params(tmp_path, tiny_params())
    path = tmp_path / "params.yaml"
    text = path.read_text().replace("distill:\n", "distill:\n  steps: 99\n", 1)
    path.write_text(text)
    line = text.splitlines().index("  steps: 99") + 1
    with pytest.raises(ConfigError, match=rf"duplicate key 'steps' on line \d+ \(already set on line {line}\)"):
        load_params(path)
    # The Snakemake registry reads params.yaml with the same rule (DVC's parser refuses the file too).
    with pytest.raises(ValueError, match="duplicate key 'steps'"):
        param_values(["distill.steps"], path)


def test_snakemake_refuses_a_params_file_with_a_duplicate_key(tmp_path):
    project = make_project(tmp_path / "project", tiny_params(), git=False)
    (project / "params.yaml").write_text((project / "params.yaml").read_text() + "alpha: 0.5\n")
    done = subprocess.run(["snakemake", "-n", "--cores", "1"], cwd=project, capture_output=True, text=True,
                          env={**env(), "PATH": f"{Path(PYTHON).parent}{os.pathsep}{os.environ['PATH']}"})
    assert done.returncode != 0
    assert "params.yaml: duplicate key 'alpha'" in done.stdout + done.stderr


def test_committed_yaml_files_have_no_duplicate_keys():
    from realuid.yamlfile import read_yaml

    for path in [ROOT / "params.yaml", ROOT / "dvc.yaml", *sorted((ROOT / "configs").glob("*.yaml"))]:
        read_yaml(path)


@pytest.mark.parametrize("content, expected", [
    (b"alpha: \xff\n", "is not UTF-8 text: byte 0xff on line 1"),
    (b"alpha: [0.5\n", "is not valid YAML: line 2, column 1"),
])
def test_unreadable_params_name_the_file(tmp_path, content, expected):
    (tmp_path / "bad.yaml").write_bytes(content)
    before = snapshot(tmp_path)
    line = assert_failed(stage(tmp_path, "prepare", "--out", "data/prepare", params="bad.yaml"), "bad.yaml", expected)
    assert "<unicode string>" not in line
    assert snapshot(tmp_path) == before


# --------------------------------------------------------------------------------------------------
# 6. Errors close progress bars first
# --------------------------------------------------------------------------------------------------


def test_divergence_message_is_the_last_line_after_the_bar(project):
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["train_teacher"]["optim"].update(lr=1e30, warmup_steps=0, grad_clip=0.0)
    write_params(project, params)
    before = snapshot(project / "data")
    result = stage(project, "train_teacher", *TEACHER_ARGS)
    assert_failed(result, "training diverged")
    assert "teacher:" in result.stderr  # a bar was drawn, and closed before the message
    assert snapshot(project / "data") == before


@pytest.mark.parametrize("error", [StageError("it broke"), KeyboardInterrupt()])  # a user's error, or Ctrl-C
def test_an_error_closes_the_bar_of_the_loop_it_came_through_before_its_line(tmp_path, capsys, error):
    import gc

    from tqdm import tqdm

    from realuid.stages import common

    def loop():
        bar = tqdm(total=10, desc="looping", file=sys.stderr, mininterval=0)
        for _ in range(3):
            bar.update(1)
        raise error

    def main(args, params):
        loop()

    write_params(tmp_path, tiny_params())
    code = common.run(main, common.parser("a stage"), ["--params", str(tmp_path / "params.yaml")])
    gc.collect()  # the loop's frame is gone: a bar still open would be drawn a last time now
    stderr = capsys.readouterr().err
    assert "looping:  30%" in stderr
    assert last_line(stderr) == ("error: it broke" if code == 1 else
                                 "error: interrupted; run the same command again to resume"), stderr


# --------------------------------------------------------------------------------------------------
# 7. One run per state folder
# --------------------------------------------------------------------------------------------------


def wait_for(predicate, what: str, timeout: float = 90) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.mark.slow
def test_second_run_on_a_busy_state_folder_stops_naming_the_first_and_ctrl_c_ends_with_the_error(project):
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["train_teacher"].update(steps=10**6, checkpoint_every_steps=10**5, log_every_steps=10)
    write_params(project, params)
    data_before = snapshot(project / "data")
    first = start_stage(project, "train_teacher", *TEACHER_ARGS)
    try:
        wait_for(lambda: list((project / "state/train_teacher").glob("*/run.lock")), "the first run's lock")
        wait_for(lambda: len(list((project / "state/train_teacher").glob("*/curves.csv"))) == 2, "its first curves")
        files_before = set(snapshot(project / "state"))  # the first run keeps appending to its curves
        second = stage(project, "train_teacher", *TEACHER_ARGS)
        assert_failed(second, "in use by another run of the same configuration", f"pid {first.pid}")
        assert first.poll() is None, "the first run was disturbed"
        assert set(snapshot(project / "state")) == files_before
    finally:
        first.send_signal(signal.SIGINT)
        _, stderr = first.communicate(timeout=60)
    assert "teacher:" in stderr
    assert last_line(stderr) == "error: interrupted; run the same command again to resume", stderr
    assert first.returncode == 130
    assert not list((project / "state/train_teacher").glob("*/run.lock")), "the lock outlived the run"
    assert snapshot(project / "data") == data_before


def test_lock_held_by_a_live_process_stops_the_stage_and_is_taken_over_once_it_is_killed(project):
    # Another process holds the lock of the finished teacher's state folder; later it is killed with -9.
    [state_dir] = list((project / "state/train_teacher").iterdir())
    holder = subprocess.Popen([PYTHON, "-c", "import time\nfrom realuid.locks import StateLock\n"
                               f"lock = StateLock({str(state_dir)!r})\nlock.acquire()\n"
                               "print('held', flush=True)\ntime.sleep(600)\n"],
                              stdout=subprocess.PIPE, text=True, env=env())
    try:
        assert holder.stdout.readline().strip() == "held"
        before = snapshot(project)
        busy = stage(project, "train_teacher", *TEACHER_ARGS)
        assert_failed(busy, "in use by another run of the same configuration", f"pid {holder.pid} on ")
        assert snapshot(project) == before
    finally:
        holder.kill()
        holder.wait()
    assert f'"pid": {holder.pid}' in (state_dir / "run.lock").read_text(), "the killed holder left its lock file"
    rerun = stage(project, "train_teacher", *TEACHER_ARGS)
    assert rerun.returncode == 0, rerun.stderr
    assert not (state_dir / "run.lock").exists()


# --------------------------------------------------------------------------------------------------
# 8. A backbone for the other kind of data stops the first stage that can tell
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("base, arch, message", [
    ("params.yaml", "mlp", "'mlp' is a backbone for points, but prepare.source 'digits' gives images; use 'unet'"),
    ("configs/toy.yaml", "unet", "'unet' is a backbone for images, but prepare.source 'toy' gives points; use 'mlp'"),
], ids=["digits-mlp", "toy-unet"])
def test_a_backbone_for_the_other_kind_of_data_stops_prepare_with_one_error_line(tmp_path, base, arch, message):
    write_params(tmp_path, tiny_params(ROOT / base, train_teacher__model__arch=arch))
    before = snapshot(tmp_path)
    result = stage(tmp_path, "prepare", "--out", "data/prepare")
    assert result.returncode == 1, result.stderr
    assert result.stderr.splitlines() == [f"error: train_teacher.model.arch: {message} (or 'auto')"], result.stderr
    assert result.stdout == ""
    assert not (tmp_path / "data").exists() and snapshot(tmp_path) == before


def test_an_mlp_on_a_file_of_images_stops_train_teacher_before_training(tmp_path):
    # A file's kind is known only once it is read: prepare publishes it, the teacher stage refuses it.
    import numpy as np

    pixels = np.random.default_rng(0).integers(0, 256, size=(40, 8, 8, 1), dtype=np.uint8)
    np.savez(tmp_path / "images.npz", x=pixels)
    write_params(tmp_path, tiny_params(prepare__source="file", prepare__path="images.npz",
                                       train_teacher__model__arch="mlp"))
    assert stage(tmp_path, "prepare", "--out", "data/prepare").returncode == 0
    before = snapshot(tmp_path)
    result = stage(tmp_path, "train_teacher", *TEACHER_ARGS)
    assert result.returncode == 1, result.stderr
    # The one line and nothing else: no training bar was drawn.
    assert result.stderr.splitlines() == [
        "error: the mlp backbone needs points of shape [D], the data has shape [1, 8, 8]"], result.stderr
    assert snapshot(tmp_path) == before and not (tmp_path / "state").exists()


# --------------------------------------------------------------------------------------------------
# Smaller ones
# --------------------------------------------------------------------------------------------------


def test_batch_larger_than_the_data_leaves_no_state_folder(project):
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["distill"]["batch_size"] = 5000
    write_params(project, params)
    before = snapshot(project)
    assert_failed(stage(project, "distill", *DISTILL_ARGS), "distill.batch_size 5000", "1000 samples")
    assert snapshot(project) == before


def test_the_docs_say_to_unlock_snakemake_after_killing_it():
    text = " ".join((ROOT / "docs/reliability.md").read_text().split())
    at = text.index("run the same command again")
    assert "snakemake --unlock" in text[at - 600 : at + 600]


def test_a_bug_in_the_library_shows_its_traceback_not_an_error_line(tmp_path):
    # Only the library's user errors (realuid.errors) and file-system errors are one line: a plain
    # ValueError from deep inside, here a shape mismatch planted in a copy of the sources, is a bug.
    project = make_project(tmp_path / "project", tiny_params(), git=False)
    with open(project / "src/realuid/data.py", "a") as fh:
        fh.write("\n\ndef split_indices(*args, **kwargs):\n    return np.ones(3) @ np.ones(4)\n")
    done = subprocess.run(stage_cmd("prepare", "--out", "data/prepare"), cwd=project, capture_output=True,
                          text=True, env={**env(), "PYTHONPATH": str(project / "src")}, timeout=120)
    assert done.returncode == 1, done.stderr
    assert "Traceback" in done.stderr and "split_indices" in done.stderr, done.stderr
    assert last_line(done.stderr).startswith("ValueError: matmul"), done.stderr
    assert not any(line.startswith("error:") for line in done.stderr.splitlines()), done.stderr
    assert not (project / "data").exists()


# --------------------------------------------------------------------------------------------------
# Imported teachers: a file or folder train_teacher cannot use
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits_prepared(tmp_path_factory) -> Path:
    """A digits project with prepare done, and a tiny class-conditional DDPM pipeline folder beside it."""
    from diffusers import DDPMScheduler
    from helpers.diffusers_pipelines import save_pipeline

    project = tmp_path_factory.mktemp("digits")
    write_params(project, tiny_params())
    assert stage(project, "prepare", "--out", "data/prepare").returncode == 0
    save_pipeline(project / "ddpm", DDPMScheduler(num_train_timesteps=50), num_class_embeds=10)
    return project


@pytest.fixture
def importing(digits_prepared, tmp_path):
    """``run(folder_edit, **params)``: train_teacher on a private copy of the pipeline folder, edited by
    ``folder_edit(folder)``, with params changed by ``params``; checks that nothing was written."""
    import shutil

    copy = tmp_path / "project"
    subprocess.run(["cp", "-a", str(digits_prepared), str(copy)], check=True)

    def run(folder_edit=None, **changes):
        if folder_edit is not None:
            folder_edit(copy / "ddpm")
        params = dict(family__name="diffusion", train_teacher__import_checkpoint="ddpm",
                      train_teacher__import_format="diffusers")
        write_params(copy, tiny_params(**{**params, **changes}))
        before = snapshot(copy)
        result = stage(copy, "train_teacher", *TEACHER_ARGS)
        assert snapshot(copy) == before and not (copy / "state").exists()
        return result

    return run


def _edit_json(path: Path, **changes) -> None:
    import json

    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


class _Code:
    """Stands for any object whose unpickling would run code."""


@pytest.mark.parametrize("folder_edit, changes, fragments", [
    (None, {"train_teacher__import_format": "onnx"}, ("train_teacher.import_format", "'onnx'")),
    (None, {"train_teacher__import_format": "none"}, ("train_teacher.import_format", "diffusers")),
    (lambda f: (f / "scheduler" / "scheduler_config.json").unlink(), {}, ("no scheduler_config.json",)),
    (lambda f: _edit_json(f / "scheduler" / "scheduler_config.json", _class_name="EulerDiscreteScheduler"), {},
     ("'EulerDiscreteScheduler' is not supported",)),
    (lambda f: _edit_json(f / "scheduler" / "scheduler_config.json", prediction_type="flow"), {},
     ("prediction_type 'flow'", "not supported")),
    (lambda f: _edit_json(f / "unet" / "config.json", block_out_channels=[16, 64]), {},
     ("do not fit the UNet2DModel", "with another shape")),
    (lambda f: ((f / "unet" / "diffusion_pytorch_model.safetensors").unlink(),
                __import__("torch").save({"weights": _Code()}, f / "unet" / "diffusion_pytorch_model.bin")), {},
     ("would run code",)),
    (None, {"family__name": "fm"}, ("set family.name: diffusion",)),
], ids=["unknown-format", "format-none", "no-scheduler", "scheduler", "prediction", "weights", "pickle", "family"])
def test_a_diffusers_folder_train_teacher_cannot_use_is_one_error_line(importing, folder_edit, changes, fragments):
    assert_failed(importing(folder_edit, **changes), *fragments)


def test_the_gan_head_on_a_diffusers_teacher_stops_distill_before_any_work(digits_prepared, tmp_path):
    project = tmp_path / "project"
    subprocess.run(["cp", "-a", str(digits_prepared), str(project)], check=True)
    write_params(project, tiny_params(family__name="diffusion", train_teacher__import_checkpoint="ddpm",
                                      train_teacher__import_format="diffusers", distill__gan__enabled=True,
                                      distill__eval_every_steps=0, distill__keep_best=False))
    assert stage(project, "train_teacher", *TEACHER_ARGS).returncode == 0
    before = snapshot(project)
    assert_failed(stage(project, "distill", *DISTILL_ARGS), "distill.gan.enabled", "'diffusers-unet2d'")
    assert snapshot(project) == before and not (project / "state" / "distill").exists()


def test_a_class_conditional_teacher_on_unlabelled_data_is_one_error_line(tmp_path):
    import numpy as np
    from diffusers import DDPMScheduler
    from helpers.diffusers_pipelines import save_pipeline

    pixels = np.random.default_rng(0).integers(0, 256, size=(40, 8, 8, 1), dtype=np.uint8)
    np.savez(tmp_path / "images.npz", x=pixels)
    save_pipeline(tmp_path / "ddpm", DDPMScheduler(num_train_timesteps=50), num_class_embeds=10)
    write_params(tmp_path, tiny_params(prepare__source="file", prepare__path="images.npz", family__name="diffusion",
                                       train_teacher__import_checkpoint="ddpm", train_teacher__import_format="diffusers"))
    assert stage(tmp_path, "prepare", "--out", "data/prepare").returncode == 0
    before = snapshot(tmp_path)
    assert_failed(stage(tmp_path, "train_teacher", *TEACHER_ARGS), "class-conditional with 10 classes",
                  "no labels")
    assert snapshot(tmp_path) == before and not (tmp_path / "state").exists()


@pytest.mark.parametrize("change, fragments", [
    ({"generator_steps": 0}, ("distill.generator_steps", ">= 1")),
    ({"generator_steps": 3, "generator_times": [0.6, 0.3]}, ("distill.generator_times", "strictly increasing")),
    ({"generator_steps": 3, "generator_times": [0.5]}, ("distill.generator_times", "2 times")),
    # (A time valid in the file but outside the family's range is the library's check, test_few_step.py; the
    # stage reaches it only with a teacher of that family, which this fm project does not have.)
    # Guidance on the toy's unconditional teacher.
    ({"guidance_scale": 2.0}, ("distill.guidance_scale", "label dropout"))])
def test_bad_k_step_or_guidance_settings_stop_distill_before_any_work(project, change, fragments):
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["distill"].update(change)
    write_params(project, params)
    before = snapshot(project)
    assert_failed(stage(project, "distill", *DISTILL_ARGS), *fragments)
    assert snapshot(project) == before


@pytest.fixture(scope="module")
def distilled(trained, tmp_path_factory) -> Path:
    """The trained 2-D project with a one-step generator distilled too."""
    project = tmp_path_factory.mktemp("distilled")
    subprocess.run(["cp", "-a", f"{trained}/.", str(project)], check=True)
    done = stage(project, "distill", *DISTILL_ARGS)
    assert done.returncode == 0, done.stderr
    return project


@pytest.mark.parametrize("sample_changes, model_changes, fragments", [
    ({"generator_steps": [1, 2]}, {}, ("sample.generator_steps [1, 2]", "trained for 1 step")),
    ({"guidance_scale": 2.0}, {}, ("sample.guidance_scale", "label dropout")),  # the params: unconditional
    # The params promise label dropout; the teacher file, trained before they changed, has no null label.
    ({"guidance_scale": 2.0}, {"class_cond": True, "class_dropout": 0.1}, ("sample.guidance_scale", "no null label")),
], ids=["more-steps-than-trained", "guidance-in-params", "guidance-on-the-teacher-file"])
def test_bad_step_counts_or_guidance_stop_sample_before_any_work(distilled, tmp_path, sample_changes, model_changes,
                                                                 fragments):
    project = tmp_path / "project"
    subprocess.run(["cp", "-a", str(distilled), str(project)], check=True)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["sample"].update(sample_changes)
    params["train_teacher"]["model"].update(model_changes)
    write_params(project, params)
    before = snapshot(project)
    args = [a.replace("data/finetune/", "data/distill/") for a in dvc_args("sample")]  # finetune is off
    assert_failed(stage(project, "sample", *args), *fragments)
    assert snapshot(project) == before


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("name, key", [("features", "features__device"), ("train_teacher", "train_teacher__device")])
def test_a_device_that_is_not_there_is_one_error_line_before_any_work(tmp_path, name, key):
    write_params(tmp_path, tiny_params(TOY, **{key: "cuda:1"}))
    assert stage(tmp_path, "prepare", "--out", "data/prepare").returncode == 0
    before = snapshot(tmp_path)
    assert_failed(stage(tmp_path, name, *dvc_args(name)), "'cuda:1'", "CUDA is not available")
    assert snapshot(tmp_path) == before


def test_a_gpu_out_of_memory_is_one_error_line_with_what_to_change(tmp_path, capsys):
    from realuid.stages import common

    def main(args, params):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.1 GiB total)\n"
                                          "See documentation for Memory Management")

    write_params(tmp_path, tiny_params())
    assert common.run(main, common.parser("a stage"), ["--params", str(tmp_path / "params.yaml")]) == 1
    stderr = capsys.readouterr().err
    assert stderr.count("\n") == 1 and "Traceback" not in stderr, stderr
    assert stderr.startswith("error: CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.1 GiB total); lower")
    assert "batch_size" in stderr and "bf16" in stderr and "nproc" in stderr
