"""What every stage CLI shares: argument parsing, error reporting, atomic outputs, checking folders first."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import torch

from ..atomic import atomic_write, temporary_folder
from ..config import Params, load_params
from ..errors import StageError, UserError


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    return p


def run(main: Callable[[argparse.Namespace, Params], None], args_parser: argparse.ArgumentParser,
        argv: list[str] | None = None, *, module: str | None = None,
        processes: Callable[[Params], int] | None = None) -> int:
    """Parse arguments, validate the whole params file, run ``main``; returns the exit code.

    ``processes(params)``, when given, is the number of processes the stage asks for: more than one
    starts ``module`` with the same arguments under ``torchrun`` on this machine and returns its exit
    code (unless this process already belongs to a torchrun job). Expected problems (a
    :class:`realuid.errors.UserError`: bad params, unusable data or checkpoints, a diverged run; a
    file-system error such as a full or read-only disk; a GPU out of memory) print one ``error:`` line, after any progress
    bar is closed, and give exit code 1 (130 when interrupted); set ``REALUID_TRACEBACK=1`` to see where
    they came from. Any other exception is a bug in the library and ends the stage with its traceback.
    """
    from ..distributed import launch_if_needed

    args = args_parser.parse_args(argv)
    try:
        params = load_params(args.params)
        if processes is not None:
            code = launch_if_needed(processes(params), module, sys.argv[1:] if argv is None else list(argv))
            if code is not None:
                return code
        main(args, params)
    except KeyboardInterrupt as err:
        close_progress_bars(err)
        print(f"{_rank_prefix()}error: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except torch.cuda.OutOfMemoryError as err:  # the run's size, not a bug: say which knobs make it fit
        close_progress_bars(err)
        if os.environ.get("REALUID_TRACEBACK"):
            traceback.print_exc()
        first = str(err).splitlines()[0] if str(err) else "CUDA out of memory"
        print(f"{_rank_prefix()}error: {first}; lower the stage's batch_size, use precision: bf16, or spread the "
              "batch over more processes (nproc); training stages resume from their last checkpoint", file=sys.stderr)
        return 1
    except (UserError, OSError) as err:  # anything else is a bug: Python prints its traceback
        close_progress_bars(err)
        if os.environ.get("REALUID_TRACEBACK"):
            traceback.print_exc()
        message = describe_os_error(err) if isinstance(err, OSError) else str(err)
        print(f"{_rank_prefix()}error: {message}", file=sys.stderr)
        return 1
    return 0


def describe_os_error(err: OSError) -> str:
    """One line for a file-system error: ``path: cause`` (h5py's and others' messages, on one line)."""
    if err.filename is not None and err.strerror:
        names = f"{err.filename} -> {err.filename2}" if err.filename2 is not None else f"{err.filename}"
        return f"{names}: {err.strerror}"
    return " ".join(str(err).split())  # h5py's messages hold the file name and a line break


def close_progress_bars(err: BaseException) -> None:
    """Close the tqdm bars of the loops ``err`` came through, so none is redrawn below the error message.

    A bar left open by an exception is closed (and drawn once more) only when the loop's frame is
    freed, which is after the message was printed: the user's last line would be the bar. Those
    frames are the traceback's (and those of the exceptions it chains to), alive until then.
    """
    from tqdm import tqdm

    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        tb = err.__traceback__
        while tb is not None:
            for value in list(tb.tb_frame.f_locals.values()):
                if isinstance(value, tqdm):
                    value.close()
            tb = tb.tb_next
        err = err.__cause__ or err.__context__


def _rank_prefix() -> str:
    """``"[rank r] "`` inside a multi-process job (every process reports its own error), else ``""``."""
    world = os.environ.get("WORLD_SIZE", "1")
    return f"[rank {os.environ.get('RANK', '?')}] " if world not in ("", "1") else ""


@contextmanager
def atomic_dir(out: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``out``; on success it replaces ``out``, on failure it vanishes.

    Outputs of a stage therefore appear all at once or not at all: on failure the earlier ``out`` is
    kept as it was, and parent folders made for it are removed again. A file-system error that names no
    file (a full disk while writing) is raised naming ``out``.
    """
    out = Path(out)
    made = _make_parents(out.parent)
    tmp = None
    try:
        tmp = temporary_folder(out)
        try:
            yield tmp
        except OSError as err:
            raise _named(err, out) from err
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
            try:
                tmp.rename(out)
            except BaseException:
                old.rename(out)  # the earlier output stays in place
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
        made = []
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        _remove_empty(made)


def _make_parents(folder: Path) -> list[Path]:
    """Create ``folder`` and its missing parents; returns those made, outermost first."""
    missing = [p for p in reversed([folder, *folder.parents]) if not p.exists()]
    folder.mkdir(parents=True, exist_ok=True)
    return missing


def _remove_empty(folders: list[Path]) -> None:
    """Remove ``folders`` (outermost first) where they are empty, innermost first."""
    for folder in reversed(folders):
        try:
            folder.rmdir()
        except OSError:
            return


def _named(err: OSError, path: str | Path) -> OSError:
    """``err`` itself when it names a file, else the same error naming ``path``."""
    if err.filename is not None or err.errno is None:
        return err
    return type(err)(err.errno, err.strerror or os.strerror(err.errno), str(path))


def write_json(obj, path: str | Path) -> None:
    """Pretty, key-sorted JSON written atomically (small metric and info files)."""
    atomic_write(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


# --------------------------------------------------------------------------------------------------
# Before any work: the folders a stage writes, their free space, and the state folder's lock
# --------------------------------------------------------------------------------------------------

def split_bytes(split) -> int:
    """Uncompressed bytes of a data split's arrays: an upper bound on its HDF5 file."""
    return sum(a.nbytes for a in (split.x1, split.y, split.x0) if a is not None)


def output_folder(out: str | Path) -> Path:
    """The folder a stage writes ``--out`` in: outputs are assembled beside it and renamed into place."""
    return Path(out).parent


def check_folders(needs: dict, dist=None) -> None:
    """Before any work: each folder of ``needs`` ({folder: expected bytes}) can be created and written,
    and its disk has room (:func:`realuid.preflight.check_folders`). Under torchrun rank 0 checks and
    every process stops with its message."""
    from ..preflight import check_folders as check

    _on_main(lambda: check(needs), dist)


def _on_main(action: Callable[[], object], dist) -> object:
    """``action()`` on rank 0 only; a failure there stops every process with the same message."""
    if dist is None or not dist.parallel:
        return action()
    from ..locks import StateLocked
    from ..preflight import PreflightError

    result, message = None, None
    if dist.is_main:
        try:
            result = action()
        except (PreflightError, StateLocked, OSError) as err:
            message = describe_os_error(err) if isinstance(err, OSError) else str(err)
    message = dist.all_gather(message)[0]
    if message is not None:
        raise StageError(message)
    return result


@contextmanager
def working_folders(dist, needs: dict, state_dir: str | Path | None = None) -> Iterator[None]:
    """Check the folders of ``needs`` (:func:`check_folders`), then hold ``state_dir``'s lock for the block.

    The lock (:class:`realuid.locks.StateLock`, held by rank 0) stops a second run of the same
    configuration at once, naming the running process. A file-system error in the block that names no
    file (a full disk during a checkpoint) is raised naming ``state_dir``: the state keeps its last good
    checkpoint, and the same command resumes.
    """
    from ..locks import StateLock

    check_folders(needs, dist)
    if state_dir is None:
        yield
        return
    lock = StateLock(state_dir)
    _on_main(lock.acquire, dist)
    try:
        yield
    except OSError as err:
        # The writers name their file (a checkpoint in state_dir, say); either way the hint belongs to the state.
        inside = err.filename is None or Path(err.filename).resolve().is_relative_to(Path(state_dir).resolve())
        if err.errno is None or not inside:
            raise
        raise type(err)(err.errno, f"{err.strerror or os.strerror(err.errno)}; the state keeps its last good "
                        "checkpoint: make room and run the same command again to resume",
                        err.filename or str(state_dir)) from err
    finally:
        lock.release()


