"""What several test modules share: tiny projects, stage runs, training configurations, input files.

Test modules import from here (``from helpers.project import make_project``), never from each other;
pytest puts ``tests/`` on ``sys.path`` because ``tests/conftest.py`` lives there (rootdir-relative
"prepend" import mode), and conftest.py registers this package for assertion rewriting.
"""
