"""The matching families of a configuration: the teacher's, and the one-step generator's placement."""

from __future__ import annotations

from ..config import Params
from ..matching import make_family
from .common import StageError


def teacher_family(params: Params):
    """The family of the teacher (its own options only: another family's keys and the generator's are not read)."""
    return make_family(params.family.name, **params.family.options())


def generator_family(params: Params):
    """The family as the one-step generator uses it: placed where the ``generator`` block says."""
    return make_family(params.family.name, **params.family.options(), **params.generator.options(params.family.name))


def check_family_matches_data(family, split) -> None:
    if family.paired and split.x0 is None:
        raise StageError(
            f"the {family.name} family needs paired data (x0, x1): set prepare.pairing and rerun prepare"
        )
