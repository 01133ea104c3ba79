"""The matching families of a configuration: the teacher's, and the one-step generator's placement."""

from __future__ import annotations

from ..config import Params
from ..matching import make_family
from .common import StageError


def teacher_family(params: Params):
    """The family of the teacher (its own options only: another family's keys and the generator's are not read)."""
    return make_family(params.family.name, **params.family.options())


def generator_family(params: Params, teacher_record: dict | None = None):
    """The family as the one-step generator uses it: placed where the ``generator`` block says.

    ``teacher_record``: the teacher file's family record, the source of the family when given (an
    imported diffusers teacher brings its own schedule table and prediction); a trained teacher's record
    is the params' own, so it builds the same family.
    """
    record = teacher_record or {"name": params.family.name, "options": params.family.options()}
    return make_family(record["name"], **record["options"], **params.generator.options(record["name"]))


def check_teacher_family(teacher_file, params: Params, needed_by: str) -> None:
    """The teacher file is for ``family.name``: one line that says what to do, before any work."""
    got = (teacher_file.family or {}).get("name")
    if got != params.family.name:
        raise StageError(f"{teacher_file.source or 'the teacher'} is a teacher for family {got}; {needed_by} is set "
                         f"up for family {params.family.name}: set family.name: {got}, or rerun train_teacher")


def check_family_matches_data(family, split) -> None:
    if family.paired and split.x0 is None:
        raise StageError(
            f"the {family.name} family needs paired data (x0, x1): set prepare.pairing and rerun prepare"
        )
