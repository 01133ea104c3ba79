"""The library's own errors: problems with what the user gave it, as opposed to bugs.

A stage prints one ``error:`` line for a :class:`UserError` (and for a file-system ``OSError``) and a
traceback for anything else, so a shape bug in the library never reads like a user's mistake.

Each class also derives from the built-in exception that the library raised for it before
(``ValueError`` for bad values, ``RuntimeError`` for a run that cannot go on), so Python callers that
catch those keep working; :class:`UserError` itself stays neutral, since it covers both kinds.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix (a setting, a file, a folder); the message says which and how."""


class ConfigError(UserError, ValueError):
    """A params file that cannot be used; the message names the offending key."""


class DataError(UserError, ValueError):
    """Data that cannot be read or used: missing, corrupted, or of the wrong layout."""


class CheckpointError(UserError, ValueError):
    """A file that is not the checkpoint a reader needs (wrong kind, damaged, unreadable)."""


class FolderError(UserError, RuntimeError):
    """A folder a stage needs cannot be used: not writable, too full, or held by another run."""


class StageError(UserError, RuntimeError):
    """A problem with a stage's inputs that the stage itself finds (or one rank 0 found, told to every process)."""


class TrainingDiverged(UserError, RuntimeError):
    """A loss became NaN or infinite; the last good checkpoint is kept."""
