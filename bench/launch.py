"""How every ``bench/<command>`` starts: in the project's environment, with its sources importable.

Standard library only: this runs before anything says torch is importable here.
"""

import importlib
import os
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"


def run(script: str, module: str, *, needs: str = "torch", in_root: bool = False) -> None:
    """Exit with ``module.main()``'s status, for the launcher file ``script``.

    Started by a Python that cannot import ``needs``, the command starts again under the project's virtual
    env. ``module`` is imported from bench/ with src/ ahead of any installed realuid; ``in_root`` runs it in
    the repository's root (for commands that act on it, such as dvc's).
    """
    try:
        importlib.import_module(needs)
    except ImportError:
        # The venv's python is usually a symlink to this same binary, so compare environments, not files.
        if VENV_PYTHON.exists() and Path(sys.prefix).resolve() != VENV_PYTHON.parents[1].resolve():
            os.execv(str(VENV_PYTHON), [str(VENV_PYTHON), script, *sys.argv[1:]])
        sys.exit(f"error: {needs} is not importable; create the environment first (make test) or use .venv/bin/python")
    sys.path[:0] = [str(ROOT / "src"), str(BENCH)]
    if in_root:
        os.chdir(ROOT)
    sys.exit(importlib.import_module(module).main())
