"""Files that appear whole or not at all, with the permissions a plain ``open()`` gives them.

A writer fills a temporary file beside the target (same folder, so the rename never crosses a file
system) and renames it over the target only once it is complete: neither a reader, a crash nor a full
disk ever sees a half-written file under the final name, and a failure of any kind, Ctrl-C included,
removes the temporary. The temporary is created by ``open()`` itself, so it gets the mode every other
file gets under the current umask, not the owner-only mode of ``tempfile.mkstemp``: on a shared file
system a colleague can load the checkpoints this pipeline wrote.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path
from typing import IO, Iterator

__all__ = ["atomic_open", "atomic_write", "temporary_file", "temporary_folder"]


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", *, durable: bool = False,
                newline: str | None = None) -> Iterator[IO]:
    """An open file (``mode`` ``"wb"``, or ``"w"`` for UTF-8 text) whose content replaces ``path`` when
    the block ends without an exception; on any exception ``path`` is untouched and nothing is left.

    ``durable=True`` also forces the bytes and the rename to the disk before returning, for the state a
    run resumes from after the machine crashed (a rename alone may reach the disk before the data).
    An ``OSError`` that names no file (a full disk) is raised naming ``path``.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    tmp = None
    try:
        tmp, fh = _create_beside(path, mode, newline)
        with fh:
            yield fh
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
        tmp = None
        if durable:
            _sync_folder(path.parent)
    except BaseException as err:
        if tmp is not None:
            with contextlib.suppress(OSError):
                tmp.unlink()
        if isinstance(err, OSError) and err.filename is None and err.errno is not None:
            raise type(err)(err.errno, err.strerror or os.strerror(err.errno), str(path)) from err
        raise


def atomic_write(path: str | os.PathLike, data: bytes | memoryview | str, *, durable: bool = False) -> None:
    """Replace ``path`` by ``data`` (bytes, or ``str`` written as UTF-8) as :func:`atomic_open` does."""
    with atomic_open(path, "w" if isinstance(data, str) else "wb", durable=durable) as fh:
        fh.write(data)


def temporary_folder(beside: str | os.PathLike) -> Path:
    """A new empty folder ``.<name>.<random>.tmp`` next to ``beside``, with a plain ``mkdir``'s mode
    (``tempfile.mkdtemp`` makes it owner-only, and files moved out of it keep theirs)."""
    beside = Path(beside)
    while True:
        folder = _sibling(beside)
        try:
            folder.mkdir()
            return folder
        except FileExistsError:  # another writer's temporary of the same name: draw again
            continue


def temporary_file(beside: str | os.PathLike) -> Path:
    """A new empty file ``.<name>.<random>.tmp`` next to ``beside`` with a plain ``open()``'s mode, for a
    writer that must open the file by name itself (HDF5); the caller renames it into place or removes it."""
    tmp, fh = _create_beside(Path(beside), "wb", None)
    fh.close()
    return tmp


def _create_beside(path: Path, mode: str, newline: str | None) -> tuple[Path, IO]:
    while True:
        tmp = _sibling(path)
        try:
            # "x": created here or not at all (never another writer's file), mode 0o666 less the umask.
            return tmp, open(tmp, mode.replace("w", "x"), encoding=None if "b" in mode else "utf-8",
                             newline=newline)
        except FileExistsError:
            continue


def _sibling(path: Path) -> Path:
    """A hidden name beside ``path``, random so concurrent writers of the same file never share it."""
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")


def _sync_folder(folder: Path) -> None:
    # Some file systems cannot sync a folder; the file's own bytes are on the disk already.
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
