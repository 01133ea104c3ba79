"""Per-sample summary and the great-expectations suite (realuid.data_checks)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from realuid import data_checks as validation
from realuid.data import Split


@pytest.fixture(scope="module")
def gx_ready():
    """Import great-expectations and build its context once for the module (the slow part)."""
    validation._batch_definition()


def image_split(n: int = 50, labelled: bool = True, seed: int = 0) -> Split:
    rng = np.random.default_rng(seed)
    return Split(
        x1=rng.uniform(-1, 1, (n, 1, 8, 8)).astype(np.float32),
        y=rng.integers(0, 10, n).astype(np.int64) if labelled else None,
    )


def check(split: Split, shape=(1, 8, 8), num_classes=10, count=None) -> validation.ValidationResult:
    return validation.validate_split(
        split, expected_shape=shape, num_classes=num_classes, expected_count=len(split) if count is None else count
    )


def test_summary_table_columns_and_values():
    x = np.array([[0.5, -0.25], [np.nan, 0.75], [np.inf, 0.1], [np.nan, np.nan]], np.float32)
    table = validation.summary_table(Split(x, y=np.array([3, 1, 0, 2])))
    assert list(table.columns) == ["index", "n_values", "n_finite", "all_finite", "min", "max", "label", "shape"]
    assert table["index"].tolist() == [0, 1, 2, 3]
    assert table["n_values"].tolist() == [2, 2, 2, 2]
    assert table["n_finite"].tolist() == [2, 1, 1, 0]
    assert table["all_finite"].tolist() == [True, False, False, False]
    # min/max over the finite values only; NaN when a sample has none
    assert table["min"].tolist()[:3] == pytest.approx([-0.25, 0.75, 0.1])
    assert table["max"].tolist()[:3] == pytest.approx([0.5, 0.75, 0.1])
    assert np.isnan(table["min"].iloc[3]) and np.isnan(table["max"].iloc[3])
    assert table["label"].tolist() == [3, 1, 0, 2]
    assert table["shape"].tolist() == ["(2,)"] * 4


def test_summary_table_unlabelled_images():
    table = validation.summary_table(image_split(5, labelled=False))
    assert table["label"].tolist() == [-1] * 5
    assert table["shape"].iloc[0] == "(1, 8, 8)"
    assert table["n_values"].iloc[0] == 64


def test_shape_string():
    assert validation.shape_string((2,)) == "(2,)"
    assert validation.shape_string([3, 32, 32]) == "(3, 32, 32)"


def test_clean_split_passes(gx_ready):
    result = check(image_split())
    assert result.success and result.failures == []
    assert result.result_json["success"] is True
    json.dumps(result.result_json)  # serialisable as it is


def test_unlabelled_points_pass(gx_ready):
    split = Split(np.zeros((20, 2), np.float32))
    assert check(split, shape=(2,), num_classes=0).success


def test_values_outside_range_reported_with_rows(gx_ready):
    split = image_split()
    split.x1[[3, 17, 40], 0, 0, 0] = 1.5
    split.x1[7, 0, 2, 2] = -1.01
    result = check(split)
    assert not result.success
    assert "3 samples have values outside [-1, 1] (above 1; e.g. rows 3, 17, 40)" in result.failures
    assert "1 sample has values outside [-1, 1] (below -1; e.g. row 7)" in result.failures


def test_nan_reported(gx_ready):
    split = image_split()
    split.x1[4, 0, 1, 1] = np.nan
    split.x1[9] = np.nan
    result = check(split)
    assert not result.success
    assert "2 samples have NaN or infinite values (e.g. rows 4, 9)" in result.failures
    assert "1 sample has no finite value at all (e.g. row 9)" in result.failures


def test_labels_out_of_range_reported(gx_ready):
    split = image_split()
    split.y[[2, 5]] = [10, -1]
    result = check(split)
    assert result.failures == ["2 samples have labels outside [0, 9] (-1 = unlabelled; e.g. rows 2, 5)"]


def test_missing_labels_when_classes_expected(gx_ready):
    result = check(image_split(4, labelled=False))
    assert result.failures == ["4 samples have labels outside [0, 9] (-1 = unlabelled; e.g. rows 0, 1, 2)"]


def test_labels_without_classes_reported(gx_ready):
    result = check(image_split(4), num_classes=0)
    assert not result.success
    assert result.failures[0].startswith("4 samples have labels although the data set declares no classes")


def test_shape_and_count_reported(gx_ready):
    result = check(image_split(6), shape=(3, 8, 8), count=7)
    assert result.failures == [
        "6 samples in the split, expected 7",
        "6 samples have shape (1, 8, 8), expected (3, 8, 8) (e.g. rows 0, 1, 2)",
    ]


def test_result_json_is_reproducible(gx_ready):
    split = image_split()
    split.x1[0, 0, 0, 0] = 3.0
    first, second = check(split).result_json, check(split).result_json
    assert json.dumps(first, sort_keys=True) == json.dumps(second, sort_keys=True)
    assert "ge_load_time" not in json.dumps(first)


def test_render_failure_reports_crashed_checks():
    result = {
        "success": False,
        "expectation_config": {"type": "expect_column_values_to_be_between", "kwargs": {}, "meta": {"message": "x"}},
        "result": {},
        "exception_info": {"raised_exception": True, "exception_message": "boom"},
    }
    assert validation.render_failure(result) == "check expect_column_values_to_be_between could not run: boom"


def test_json_ready_converts_numpy_scalars():
    value = validation.json_ready({"a": np.int64(3), "b": [np.float32(0.5), (np.bool_(True),)]})
    assert value == {"a": 3, "b": [0.5, [True]]}
    assert type(value["a"]) is int
