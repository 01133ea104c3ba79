"""Checks a prepared split with great-expectations before any model sees it.

The split is summarised as one table row per sample (value count, finiteness, range, label, shape);
an expectation suite then checks the table, and every failure is rendered as one readable sentence,
e.g. ``12 samples have values outside [-1, 1] (below -1; e.g. rows 3, 17, 40)``.

great-expectations is imported inside :func:`validate_split` only: importing it takes seconds and
the rest of the library (and the accelerator machine, which lacks it) must not pay for that.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from realuid.data import Split

EXAMPLE_ROWS = 3  # rows quoted per failure message

# Volatile entries of great-expectations' result (load times) that would make the saved JSON differ
# between two runs over the same data.
_VOLATILE_META_KEYS = ("ge_load_time",)


@dataclass
class ValidationResult:
    """Outcome of :func:`validate_split`: ``failures`` holds one readable sentence per failed check."""

    success: bool
    failures: list[str] = field(default_factory=list)
    result_json: dict = field(default_factory=dict)


def shape_string(shape: tuple[int, ...] | list[int]) -> str:
    """The canonical text of a per-sample shape: ``(1, 8, 8)``, ``(2,)``."""
    return str(tuple(int(s) for s in shape))


def summary_table(split: Split) -> pd.DataFrame:
    """One row per sample of ``split.x1`` (``[N, ...]``), indexed by sample number.

    Columns: index, n_values, n_finite, all_finite, min and max (over the finite values; NaN when a
    sample has none), label (-1 when unlabelled), shape (text, e.g. ``(1, 8, 8)``).
    """
    n = len(split.x1)
    flat = np.asarray(split.x1).reshape(n, -1)
    finite = np.isfinite(flat)
    # fmin/fmax skip NaN, so masking non-finite values with NaN gives the range of the finite ones.
    masked = np.where(finite, flat, np.nan)
    labels = np.full(n, -1, dtype=np.int64) if split.y is None else np.asarray(split.y, dtype=np.int64)
    n_finite = finite.sum(axis=1)
    return pd.DataFrame(
        {
            "index": np.arange(n, dtype=np.int64),
            "n_values": np.full(n, flat.shape[1], dtype=np.int64),
            "n_finite": n_finite.astype(np.int64),
            "all_finite": n_finite == flat.shape[1],
            "min": np.fmin.reduce(masked, axis=1).astype(np.float64),
            "max": np.fmax.reduce(masked, axis=1).astype(np.float64),
            "label": labels,
            "shape": [shape_string(split.x1.shape[1:])] * n,
        }
    )


# --------------------------------------------------------------------------------------------------
# great-expectations plumbing
# --------------------------------------------------------------------------------------------------

_BATCH_DEFINITION = None  # one ephemeral context serves every validation of the process


def _batch_definition():
    """The whole-dataframe batch definition of a pandas asset in an ephemeral context (cached)."""
    global _BATCH_DEFINITION
    if _BATCH_DEFINITION is None:
        import great_expectations as gx
        from great_expectations.data_context.types.base import (
            DataContextConfig,
            InMemoryStoreBackendDefaults,
            ProgressBarsConfig,
        )

        config = DataContextConfig(
            analytics_enabled=False,
            # The stage prints its own summary; metric progress bars would flood the logs.
            progress_bars=ProgressBarsConfig(globally=False, metric_calculations=False),
            store_backend_defaults=InMemoryStoreBackendDefaults(),
        )
        context = gx.get_context(mode="ephemeral", project_config=config)
        asset = context.data_sources.add_pandas("realuid").add_dataframe_asset("samples")
        _BATCH_DEFINITION = asset.add_batch_definition_whole_dataframe("all_samples")
    return _BATCH_DEFINITION


def build_suite(name: str, *, expected_shape: tuple[int, ...], num_classes: int, expected_count: int, labelled: bool):
    """The expectation suite for one split; each expectation carries its message in ``meta``."""
    import great_expectations as gx

    e = gx.expectations
    shape_text = shape_string(expected_shape)
    checks = [
        e.ExpectTableRowCountToEqual(value=int(expected_count), meta={"message": "{observed} samples in the split, expected {expected}"}),
        e.ExpectColumnValuesToBeInSet(column="all_finite", value_set=[True], meta={"message": "{samples_have} NaN or infinite values ({examples})"}),
        e.ExpectColumnValuesToBeBetween(column="min", min_value=-1.0, meta={"message": "{samples_have} values outside [-1, 1] (below -1; {examples})"}),
        e.ExpectColumnValuesToBeBetween(column="max", max_value=1.0, meta={"message": "{samples_have} values outside [-1, 1] (above 1; {examples})"}),
        e.ExpectColumnValuesToBeInSet(column="shape", value_set=[shape_text], meta={"message": "{samples_have} shape {values}, expected " + shape_text + " ({examples})"}),
    ]
    for column in ("index", "n_values", "n_finite", "all_finite", "label", "shape"):
        checks.append(e.ExpectColumnValuesToNotBeNull(column=column, meta={"message": "{samples_have} no " + column + " entry ({examples})"}))
    # min/max are null exactly when a sample has no finite value at all.
    checks.append(e.ExpectColumnValuesToNotBeNull(column="min", meta={"message": "{samples_have} no finite value at all ({examples})"}))
    if num_classes > 0:
        message = f"{{samples_have}} labels outside [0, {num_classes - 1}] (-1 = unlabelled; {{examples}})"
        checks.append(e.ExpectColumnValuesToBeBetween(column="label", min_value=0, max_value=num_classes - 1, meta={"message": message}))
    elif labelled:
        message = "{samples_have} labels although the data set declares no classes ({examples})"
        checks.append(e.ExpectColumnValuesToBeInSet(column="label", value_set=[-1], meta={"message": message}))
    suite = gx.ExpectationSuite(name=name)
    for order, check in enumerate(checks):
        # great-expectations reports results grouped by column; the order restores the suite's.
        check.meta["order"] = order
        suite.add_expectation(check)
    return suite


def render_failure(result: dict) -> str:
    """One sentence for a failed expectation result (its JSON dict)."""
    config = result["expectation_config"]
    message = config.get("meta", {}).get("message", config["type"])
    details = result.get("result", {})
    if result.get("exception_info", {}).get("raised_exception"):
        return f"check {config['type']} could not run: {result['exception_info'].get('exception_message')}"
    if config["type"] == "expect_table_row_count_to_equal":
        return message.format(observed=details.get("observed_value"), expected=config["kwargs"]["value"])
    rows = details.get("partial_unexpected_index_list") or []
    values = sorted({str(v) for v in details.get("partial_unexpected_list") or []})
    count = details.get("unexpected_count")
    samples_have = "some samples have" if count is None else f"{count} sample{'' if count == 1 else 's'} {'has' if count == 1 else 'have'}"
    examples = f"e.g. row{'' if len(rows) == 1 else 's'} {', '.join(str(r) for r in rows[:EXAMPLE_ROWS])}" if rows else "rows not reported"
    return message.format(samples_have=samples_have, values=", ".join(values), examples=examples)


def _strip_volatile(result_json: dict) -> dict:
    markers = result_json.get("meta", {}).get("batch_markers", {})
    for key in _VOLATILE_META_KEYS:
        markers.pop(key, None)
    return result_json


def validate_split(split: Split, *, expected_shape: tuple[int, ...], num_classes: int, expected_count: int, name: str = "split") -> ValidationResult:
    """Validate ``split`` against the expected per-sample shape, class count and number of samples.

    Checks: row count, all values finite, values in [-1, 1], labels in [0, num_classes - 1] (when
    labelled or classes are expected), shape, no missing summary entries.
    """
    table = summary_table(split)
    batch_definition = _batch_definition()  # creates the context, which suites need to exist
    suite = build_suite(
        f"realuid_{name}",
        expected_shape=tuple(expected_shape),
        num_classes=int(num_classes),
        expected_count=int(expected_count),
        labelled=split.y is not None,
    )
    batch = batch_definition.get_batch(batch_parameters={"dataframe": table})
    # SUMMARY keeps at most 20 example values/rows per check, so the JSON stays small for 50k rows.
    outcome = batch.validate(suite, result_format="SUMMARY")
    result_json = _strip_volatile(outcome.to_json_dict())
    failures: list[str] = []
    ordered = sorted(result_json["results"], key=lambda r: r["expectation_config"]["meta"].get("order", 0))
    for result in ordered:
        if not result["success"]:
            sentence = render_failure(result)
            if sentence not in failures:
                failures.append(sentence)
    return ValidationResult(success=bool(outcome.success), failures=failures, result_json=result_json)


def json_ready(value: Any) -> Any:
    """``value`` with numpy scalars replaced by Python numbers (for json.dump)."""
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value
