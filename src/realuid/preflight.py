"""Checks a stage makes before any work: its folders can be written, and their disks have room.

A read-only or full disk would otherwise surface only when the first file is written, which for a
training stage is after the whole run. :func:`check_folders` takes the folders a stage writes and the
bytes it expects to put in each, and fails at once, naming the folder, when

- a folder (or the parents it still needs) cannot be created, or a probe file cannot be written and
  removed in it;
- a filesystem has less free space than the sum of what its folders expect, plus :data:`MARGIN`.

Nothing is left behind: the probe and every folder made for it are removed again. The expected sizes
are estimates made by the stage (weights times copies, samples times bytes each); they aim to catch
a disk that certainly cannot hold the run, not to predict its size to the byte.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from .errors import FolderError

__all__ = ["PreflightError", "MARGIN", "check_folders", "human_bytes"]

# Room for what the estimates leave out: logs, curves, JSON, pictures, filesystem overhead.
MARGIN = 8 << 20
PROBE_BYTES = 4096  # one page: enough to need a free block on any filesystem


class PreflightError(FolderError):
    """A folder a stage must write cannot be written, or its disk is too full for the expected outputs."""


def human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _existing_ancestor(folder: Path) -> Path:
    while not folder.exists():
        folder = folder.parent
    return folder


def probe_writable(folder: str | os.PathLike) -> None:
    """Create ``folder`` (and missing parents), write and remove a probe file in it, remove what was made."""
    shown, folder = Path(folder), Path(os.path.abspath(folder))
    made: list[Path] = []
    probe = folder / f".realuid-probe-{os.getpid()}"
    try:
        for part in reversed([folder, *folder.parents]):
            if not part.exists():
                part.mkdir()
                made.append(part)
        with open(probe, "wb") as fh:
            fh.write(b"\0" * PROBE_BYTES)
            fh.flush()
            os.fsync(fh.fileno())  # delayed allocation reports a full disk here, not at write()
    except OSError as err:
        where = f" at {err.filename}" if err.filename and Path(err.filename) not in (folder, probe) else ""
        raise PreflightError(f"{shown} cannot be written: {err.strerror or err}{where}") from None
    finally:
        probe.unlink(missing_ok=True)
        for part in reversed(made):
            try:
                part.rmdir()
            except OSError:
                pass


def check_folders(needs: dict[str | os.PathLike, int]) -> None:
    """Probe each folder of ``needs`` (:func:`probe_writable`), then check free space per filesystem.

    ``needs`` maps each folder a stage writes to the bytes it expects to put there. Raises
    :class:`PreflightError` with one line naming the folder and the cause.
    """
    for folder in needs:
        probe_writable(folder)
    by_device: dict[int, tuple[Path, list[Path], int]] = {}
    for folder, nbytes in needs.items():
        anchor = _existing_ancestor(Path(os.path.abspath(folder)))
        device = os.stat(anchor).st_dev
        first, folders, total = by_device.get(device, (anchor, [], 0))
        by_device[device] = (first, [*folders, Path(folder)], total + int(nbytes))
    for anchor, folders, total in by_device.values():
        free = shutil.disk_usage(anchor).free
        need = total + MARGIN
        if free < need:
            names = ", ".join(str(f) for f in folders)
            raise PreflightError(f"not enough free space for {names}: {human_bytes(free)} free, about "
                                 f"{human_bytes(need)} needed for the stage's outputs and state")
