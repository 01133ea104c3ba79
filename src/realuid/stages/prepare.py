"""Stage ``prepare``: build the train/test splits, validate them, and publish them as HDF5.

    python -m realuid.stages.prepare --params params.yaml --out data/prepare

Writes ``train.h5``, ``test.h5`` and ``validation.json`` into ``--out`` only when both splits pass
validation; everything is assembled in a temporary folder beside ``--out`` and renamed into place,
so a reader never sees half a data set. On a failed validation the failures go to stderr, the exit
code is 1 and ``--out`` is left absent (an earlier output would no longer match the params).
Unusable params or data (a missing file, a bad setting) print one ``error:`` line and exit with 1.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

from ..data import Split, build_splits, expected_sample_shape, save_split
from ..data_checks import ValidationResult, json_ready, validate_split
from . import common

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


def summary_line(splits: dict[str, Split], hashes: dict[str, str]) -> str:
    train, test = splits["train"], splits["test"]
    classes = f"{train.num_classes} classes" if train.num_classes else "unlabelled"
    paired = "paired" if train.x0 is not None else "unpaired"
    return (
        f"prepare: {train.attrs['dataset']} {train.kind} {tuple(train.sample_shape)}: "
        f"train {len(train)}, test {len(test)}, {classes}, {paired}; "
        f"hash train {hashes['train'][:HASH_PREFIX_CHARS]} test {hashes['test'][:HASH_PREFIX_CHARS]}"
    )


def main(args, params) -> None:
    cfg = params.prepare
    out = Path(args.out)
    common.check_folders({common.output_folder(out): 0})  # writable, before reading a data set
    train, test = build_splits(cfg)
    splits = {"train": train, "test": test}
    results = validate_both(cfg, splits)
    if not all(r.success for r in results.values()):
        lines = [f"  {name}: {failure}" for name, r in results.items() for failure in r.failures]
        if out.exists() or out.is_symlink():
            remove_path(out)
            lines.append(f"  (removed the earlier {out}, which no longer matches the params)")
        raise common.StageError("validation failed, nothing written:\n" + "\n".join(lines))
    common.check_folders({common.output_folder(out): sum(common.split_bytes(s) for s in splits.values())})
    with common.atomic_dir(out) as staging:
        hashes = {name: save_split(split, staging / f"{name}.h5") for name, split in splits.items()}
        report = json.dumps(validation_report(results), indent=2, sort_keys=True) + "\n"
        (staging / VALIDATION_FILE).write_text(report)
    print(summary_line(splits, hashes))


def cli(argv: list[str] | None = None) -> int:
    p = common.parser(__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="output folder (train.h5, test.h5, validation.json)")
    return common.run(main, p, argv)


if __name__ == "__main__":
    sys.exit(cli())
