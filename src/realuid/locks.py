"""One run per state folder: a lock file that a second run of the same configuration stops at.

Two runs resuming the same state folder would both train and both append to its curves, and the
published curves would repeat steps. The lock is ``run.lock`` inside the state folder, held with
``flock`` for as long as the run lives: the kernel drops it when the process dies, however it dies,
so a lock file left by a killed run (``kill -9``, a lost node) is simply taken over. The file records
the holder (pid, host, start time, command) for the message the second run prints.

Where the filesystem has no ``flock`` (some network and parallel filesystems), the record alone
decides: a holder on this host whose pid is no longer alive is taken over; one on another host is
respected, and the message says which file to remove if that run is gone.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import sys
import time
from pathlib import Path

from .errors import FolderError

__all__ = ["LOCK_NAME", "StateLocked", "StateLock"]

LOCK_NAME = "run.lock"
# flock failing with these means the filesystem cannot lock, not that someone holds the lock.
_NO_LOCKING = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


class StateLocked(FolderError):
    """Another live run holds the state folder's lock."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def _describe(record: dict) -> str:
    started = record.get("started")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if isinstance(started, (int, float)) else "?"
    command = " ".join(str(record.get("command", "?")).split())  # one line, whatever the holder's argv held
    return f"pid {record.get('pid', '?')} on {record.get('host', '?')}, started {when}: {command}"


class StateLock:
    """The lock of one state folder; ``with StateLock(folder):`` holds it for the block.

    :meth:`acquire` creates the folder (and its missing parents) and raises :class:`StateLocked` naming
    the running process when another live run holds it. :meth:`release` removes the lock file, and the
    folders :meth:`acquire` made if the run left nothing in them (a run that failed before its first
    checkpoint leaves no empty state folder behind).
    """

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self._fd: int | None = None
        self._made: list[Path] = []

    def record(self) -> dict:
        return {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                "command": " ".join(getattr(sys, "orig_argv", sys.argv))[:300]}

    def acquire(self) -> None:
        try:
            absolute = Path(os.path.abspath(self.folder))
            for part in reversed([absolute, *absolute.parents]):
                if not part.exists():
                    part.mkdir(exist_ok=True)
                    self._made.append(part)
            self._take()
        except BaseException:
            self.release()
            raise

    def _take(self) -> None:
        for _ in range(10):  # retried only when a finishing holder removed the file as we opened it
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                locked = self._flock(fd)
            except BaseException:
                os.close(fd)
                raise
            if locked is None:  # no flock here: the record decides
                self._by_record(fd)
                return
            try:
                same_file = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same_file = False
            if same_file:
                self._fd = fd
                self._write_record(fd)
                return
            os.close(fd)
        raise StateLocked(f"{self.path}: could not take the lock (other runs keep replacing it)")

    def _flock(self, fd: int) -> bool | None:
        """True once locked; None where the filesystem cannot lock; raises StateLocked when held."""
        try:
            import fcntl
        except ImportError:  # not a POSIX system
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StateLocked(self._held_message(self._read(fd))) from None
        except OSError as err:
            if err.errno in _NO_LOCKING:
                return None
            raise
        return True

    def _by_record(self, fd: int) -> None:
        holder = self._read(fd)
        pid, host = holder.get("pid"), holder.get("host")
        if isinstance(pid, int) and pid != os.getpid():
            if host != socket.gethostname():
                os.close(fd)
                raise StateLocked(self._held_message(holder) + f" (this filesystem cannot lock: if that run is "
                                  f"gone, remove {self.path})")
            if _pid_alive(pid):
                os.close(fd)
                raise StateLocked(self._held_message(holder))
        self._fd = fd
        self._write_record(fd)

    def _held_message(self, holder: dict) -> str:
        return (f"{self.folder} is in use by another run of the same configuration ({_describe(holder)}); "
                "wait for it to finish or stop it, then run the same command again")

    @staticmethod
    def _read(fd: int) -> dict:
        os.lseek(fd, 0, os.SEEK_SET)
        try:
            record = json.loads(os.read(fd, 4096).decode("utf-8", "replace") or "{}")
        except ValueError:
            return {}
        return record if isinstance(record, dict) else {}

    def _write_record(self, fd: int) -> None:
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, (json.dumps(self.record()) + "\n").encode())

    def release(self) -> None:
        """Remove the lock file (if held) and the folders :meth:`acquire` made, where they are empty."""
        if self._fd is not None:
            # Remove the file while still holding it: a run waiting on the old file then sees it was removed
            # (another inode than the path's) and makes a new one, so two runs never hold two files at once.
            self.path.unlink(missing_ok=True)
            os.close(self._fd)
            self._fd = None
        for part in reversed(self._made):
            try:
                part.rmdir()  # only if empty: a checkpoint or curves keep the folder
            except OSError:
                break
        self._made = []

    def __enter__(self) -> "StateLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
