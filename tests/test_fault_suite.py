"""The fault suite: every named bad input of ``tests/fault_cases.py`` has its outcome (a one-line error,
a counted skip, one item's reported problem), hypothesis-generated tables never crash the validator, and
docs/reliability.md says what the code does."""

from __future__ import annotations

import csv
import io
import math

import numpy as np
import pytest
from fault_cases import CASES, check
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reliability_doc import PAGE, observe_all, render

from m6rec.data.dataset import MAX_UNIX_SECONDS, load_dataset
from m6rec.errors import DataError


@pytest.fixture(scope="module")
def observed(tmp_path_factory):
    return observe_all(tmp_path_factory.mktemp("faults"))


def test_at_least_forty_named_cases_over_every_kind_of_input():
    assert len(CASES) >= 40 and len({case.name for case in CASES}) == len(CASES)
    assert {case.category for case in CASES} >= {
        "tables",
        "ids",
        "timestamps",
        "media",
        "kg",
        "config",
        "cli",
    }


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_every_bad_input_has_its_outcome(observed, case):
    assert check(case, observed[case.name]) == ""


def test_the_reliability_page_is_what_the_code_does(observed):
    assert PAGE.read_text() == render(observed), (
        "docs/reliability.md is stale: run .venv/bin/python tests/reliability_doc.py"
    )


# --- generated tables -----------------------------------------------------------------------------------

_ID = st.one_of(
    st.text(
        alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n\x00"), max_size=6
    ),
    st.integers(-5, 5).map(str),
    st.sampled_from(["", " ", "007", "1.0", "nan", "None", "u1", "a"]),
)
_WEIGHT = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(-3, 6).map(str),
    st.sampled_from(["", "five", "1e400", "-0", "0x10"]),
)
_TIME = st.one_of(
    st.integers(-(10**13), 10**13).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["", "2024-01-01", "2024-01-01T10:00:00+02:00", "yesterday", "1e30", "1700000000000"]),
)
_ROW = st.tuples(_ID, _ID, _WEIGHT, _TIME)


def _write(directory, rows) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["user_id", "item_id", "rating", "timestamp"])
    writer.writerows(rows)
    (directory / "interactions.csv").write_text(buffer.getvalue())


def _meets_the_contract(dataset) -> None:
    frame = dataset.interactions
    assert len(frame) > 0
    for column in ("user_id", "item_id"):
        assert (frame[column].astype(str).str.strip() != "").all()
    weights = frame["weight"].to_numpy(dtype=float)
    assert np.isfinite(weights).all() and (weights >= 0).all()
    if "timestamp" in frame.columns:
        times = frame["timestamp"].dropna().to_numpy(dtype=float)
        assert (np.abs(times) < MAX_UNIX_SECONDS).all()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(_ROW, min_size=1, max_size=12))
def test_any_interactions_table_loads_within_the_contract_or_is_one_line_error(tmp_path_factory, rows):
    directory = tmp_path_factory.mktemp("generated")
    _write(directory, rows)
    try:
        dataset = load_dataset(directory)
    except DataError as error:
        assert "\n" not in str(error) and str(error).startswith(str(directory))
    else:
        _meets_the_contract(dataset)

    try:
        skipping = load_dataset(directory, skip_invalid_rows=True)
    except DataError as error:  # only what no row can fix: an empty table, no valid row at all
        assert "\n" not in str(error)
        return
    _meets_the_contract(skipping)
    report = skipping.report
    kept = report.rows_kept["interactions"] + report.merged_duplicate_interactions
    assert kept + sum(report.skipped.values()) == report.rows_read["interactions"] == len(rows)
    assert math.isfinite(float(skipping.interactions["weight"].sum()))
