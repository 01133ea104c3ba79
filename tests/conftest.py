import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    # Tests run many tiny tensor ops: one intra-op thread is as fast, and far faster when other jobs
    # share the two cores (every OpenMP region then waits for a busy core).
    torch.set_num_threads(1)
    yield


@pytest.fixture
def subprocess_env():
    """Environment for running stage CLIs as real subprocesses (the package from src/, one thread)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return env


def current_umask() -> int:
    """The process's umask, read without changing it where Linux shows it (``Umask:`` in /proc/self/status)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # elsewhere reading it means setting it: restore it at once
    os.umask(mask)
    return mask
