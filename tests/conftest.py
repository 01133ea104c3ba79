import os
import sys
from pathlib import Path

import pytest
import torch

# Plain asserts in the shared helpers report their operands as the tests' own do.
pytest.register_assert_rewrite("helpers")

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
