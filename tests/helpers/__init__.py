"""What several test modules share: tiny projects, stage runs, training configurations, input files.

Test modules import from here (``from helpers.project import make_project``), never from one another.
``tests/`` has no ``__init__.py``, so pytest's default ("prepend") import mode puts it on ``sys.path``,
which makes this package importable as ``helpers``; conftest.py registers it for assertion rewriting.
"""
