"""Stage ``prepare``: build the train/test splits, validate them, and publish them as HDF5.

    python -m realuid.stages.prepare --params params.yaml --out data/prepare

Writes ``train.h5``, ``test.h5`` and ``validation.json`` into ``--out`` only when both splits pass
validation; everything is assembled in a temporary folder beside ``--out`` and renamed into place,
so a reader never sees half a data set. On a failed validation the failures go to stderr, the exit
code is 1 and ``--out`` is left absent (an earlier output would no longer match the params).
Unusable params or data (a missing file, a bad setting) print one ``error:`` line and exit with 1.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from realuid.config import ConfigError, load_params
from realuid.data import DataError, Split, build_splits, current_umask, expected_sample_shape, save_split
from realuid.validation import ValidationResult, json_ready, validate_split

SPLIT_NAMES = ("train", "test")
VALIDATION_FILE = "validation.json"
HASH_PREFIX_CHARS = 12


def expected_counts(params: Any, train: Split, test: Split) -> dict[str, int]:
    """The number of samples each split must hold: the params' sizes for toy data, else the size the
    source defines (official CIFAR-10 split, test_fraction split of digits / a user file)."""
    if params.source == "toy":
        return {"train": params.n_train, "test": params.n_test}
    return {"train": len(train), "test": len(test)}


def validate_both(params: Any, splits: dict[str, Split]) -> dict[str, ValidationResult]:
    """Validate train and test against the same shape and class count (the train split's)."""
    shape = expected_sample_shape(params) or splits["train"].sample_shape
    num_classes = splits["train"].num_classes
    counts = expected_counts(params, splits["train"], splits["test"])
    return {
        name: validate_split(
            split, expected_shape=shape, num_classes=num_classes, expected_count=counts[name], name=name
        )
        for name, split in splits.items()
    }


def validation_report(results: dict[str, ValidationResult]) -> dict:
    """The JSON written next to the splits: verdict, readable failures and the full suite result."""
    return json_ready(
        {
            name: {"success": r.success, "failures": r.failures, "great_expectations": r.result_json}
            for name, r in results.items()
        }
    )


def remove_path(path: Path) -> None:
    """Delete a file or folder if it exists."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def publish(folder: Path, out: Path) -> None:
    """Move a finished ``folder`` to ``out``, replacing an earlier ``out``.

    Both renames stay on one file system (the folder sits beside ``out``), so each is atomic; the
    earlier output is only deleted once the new one is in place.
    """
    old = None
    if out.exists() or out.is_symlink():
        old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
        old.rmdir()
        out.rename(old)
    folder.rename(out)
    if old is not None:
        remove_path(old)


def summary_line(splits: dict[str, Split], hashes: dict[str, str]) -> str:
    train, test = splits["train"], splits["test"]
    classes = f"{train.num_classes} classes" if train.num_classes else "unlabelled"
    paired = "paired" if train.x0 is not None else "unpaired"
    return (
        f"prepare: {train.attrs['dataset']} {train.kind} {tuple(train.sample_shape)}: "
        f"train {len(train)}, test {len(test)}, {classes}, {paired}; "
        f"hash train {hashes['train'][:HASH_PREFIX_CHARS]} test {hashes['test'][:HASH_PREFIX_CHARS]}"
    )


def run(params_path: Path, out: Path) -> int:
    """The stage; returns the process exit code: 0 when published, 1 otherwise."""
    try:
        params = load_params(params_path).prepare
        train, test = build_splits(params)
    except (ConfigError, DataError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    splits = {"train": train, "test": test}

    results = validate_both(params, splits)
    if not all(r.success for r in results.values()):
        print("prepare: validation failed, nothing written:", file=sys.stderr)
        for name, result in results.items():
            for failure in result.failures:
                print(f"  {name}: {failure}", file=sys.stderr)
        if out.exists() or out.is_symlink():
            remove_path(out)
            print(f"prepare: removed the earlier {out}, which no longer matches the params", file=sys.stderr)
        return 1

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        staging.chmod(0o777 & ~current_umask())  # mkdtemp makes it private (0700)
        hashes = {name: save_split(split, staging / f"{name}.h5") for name, split in splits.items()}
        report = json.dumps(validation_report(results), indent=2, sort_keys=True) + "\n"
        (staging / VALIDATION_FILE).write_text(report)
        publish(staging, out)
    finally:
        if staging.exists():
            remove_path(staging)
    print(summary_line(splits, hashes))
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m realuid.stages.prepare", description=__doc__.split("\n")[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file (section 'prepare')")
    parser.add_argument("--out", type=Path, required=True, help="output folder (train.h5, test.h5, validation.json)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run(args.params, args.out)


if __name__ == "__main__":
    sys.exit(main())
