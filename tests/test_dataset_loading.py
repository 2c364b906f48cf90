"""Loading dataset directories: every validation error names file, row and problem; skipped rows are counted.

Each test writes a tiny CSV or Parquet table into ``tmp_path`` whose right answer can be read off the file.
CSV locations are ``line N`` with the header on line 1; Parquet locations are ``row N``, counting from 1.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from m6rec.data.dataset import load_dataset
from m6rec.data.interactions import IdIndex, InteractionMatrix
from m6rec.errors import DataError

SKIP_HINT = "--skip-invalid-rows"


def write_csv(directory: Path, stem: str, text: str | bytes) -> Path:
    """Write ``text`` byte for byte (no newline translation) as ``directory/stem.csv``."""
    path = directory / f"{stem}.csv"
    path.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    return path


def write_parquet(directory: Path, stem: str, columns: dict[str, pa.Array | list]) -> Path:
    path = directory / f"{stem}.parquet"
    pq.write_table(pa.table(columns), path)
    return path


def load_error(directory: Path) -> DataError:
    with pytest.raises(DataError) as caught:
        load_dataset(directory)
    return caught.value


def assert_error(error: DataError, path: Path, location: str | None, problem: str) -> None:
    assert error.file == str(path)
    assert error.location == location
    assert problem in error.problem, error.problem
    assert "\n" not in str(error)


def test_missing_required_column_in_csv_points_at_the_header(tmp_path):
    path = write_csv(tmp_path, "interactions", "user_id,product\n1,2\n")
    error = load_error(tmp_path)
    assert_error(error, path, "line 1", "missing required column 'item_id' (found columns: user_id, product)")


def test_missing_required_column_in_parquet(tmp_path):
    path = write_parquet(tmp_path, "interactions", {"item_id": ["a"], "rating": [4.0]})
    assert_error(load_error(tmp_path), path, None, "missing required column 'user_id'")


def test_missing_required_column_of_an_optional_table(tmp_path):
    write_csv(tmp_path, "interactions", "user_id,item_id\n1,a\n")
    path = write_csv(tmp_path, "kg", "head,relation\na,genre\n")
    assert_error(load_error(tmp_path), path, "line 1", "missing required column 'tail'")


@pytest.mark.parametrize(
    "content", [b"", b"\n\n  \n", b"\xef\xbb\xbf"], ids=["zero-bytes", "blank", "bom-only"]
)
def test_empty_csv(tmp_path, content):
    path = write_csv(tmp_path, "interactions", content)
    assert_error(load_error(tmp_path), path, None, "file is empty")


def test_empty_parquet_file(tmp_path):
    path = tmp_path / "interactions.parquet"
    path.write_bytes(b"")
    assert_error(load_error(tmp_path), path, None, "file is empty")


def test_header_only_csv(tmp_path):
    path = write_csv(tmp_path, "interactions", "user_id,item_id,rating\n")
    assert_error(load_error(tmp_path), path, None, "has a header but no data rows")


def test_parquet_without_rows(tmp_path):
    path = write_parquet(
        tmp_path, "interactions", {"user_id": pa.array([], pa.string()), "item_id": pa.array([], pa.string())}
    )
    assert_error(load_error(tmp_path), path, None, "no data rows")


def test_corrupt_parquet(tmp_path):
    path = tmp_path / "interactions.parquet"
    path.write_bytes(b"user_id,item_id\n1,a\n")
    assert_error(load_error(tmp_path), path, None, "not a readable Parquet file")


def test_latin1_byte_is_located_on_its_line(tmp_path):
    path = write_csv(tmp_path, "items", "item_id,title\n1,Heat\n2,Caf\xe9 Society\n3,Up\n".encode("latin-1"))
    write_csv(tmp_path, "interactions", "user_id,item_id\n1,1\n")
    assert_error(load_error(tmp_path), path, "line 3", "not valid UTF-8 (byte 0xe9)")


def test_latin1_byte_after_a_byte_order_mark_is_located_on_its_line(tmp_path):
    text = b"\xef\xbb\xbfuser_id,item_id\n\xe9,1\n"
    path = write_csv(tmp_path, "interactions", text)
    assert_error(load_error(tmp_path), path, "line 2", "byte 0xe9")


def test_byte_order_mark_is_not_part_of_the_first_column_name(tmp_path):
    write_csv(tmp_path, "interactions", b"\xef\xbb\xbfuser_id,item_id\nu1,a\n")
    assert load_dataset(tmp_path).interactions["user_id"].tolist() == ["u1"]


def test_row_with_too_many_fields_names_its_line(tmp_path):
    path = write_csv(tmp_path, "interactions", "user_id,item_id\n1,a\n2,b\n3,c,5\n4,d\n")
    error = load_error(tmp_path)
    assert_error(error, path, "line 4", "malformed CSV: expected 2 fields, saw 3")
    assert "quote" in error.hint


def test_unclosed_quote_names_the_line_it_opens_on(tmp_path):
    path = write_csv(tmp_path, "interactions", 'user_id,item_id\n1,a\n2,b\n3,"c\n4,d\n')
    assert_error(load_error(tmp_path), path, "line 4", "quote opened here is never closed")


def test_both_csv_and_parquet_of_one_table(tmp_path):
    write_csv(tmp_path, "interactions", "user_id,item_id\n1,a\n")
    write_parquet(tmp_path, "interactions", {"user_id": ["1"], "item_id": ["a"]})
    error = load_error(tmp_path)
    assert error.file == str(tmp_path)
    assert "interactions.parquet and interactions.csv" in error.problem


def test_missing_interactions_table(tmp_path):
    write_csv(tmp_path, "items", "item_id\n1\n")
    error = load_error(tmp_path)
    assert "required table 'interactions' not found" in error.problem
    assert "interactions.csv" in error.problem and "interactions.parquet" in error.problem


def test_missing_directory(tmp_path):
    error = load_error(tmp_path / "nowhere")
    assert_error(error, tmp_path / "nowhere", None, "dataset directory does not exist")


@pytest.mark.parametrize(
    ("text", "location", "problem"),
    [
        ("user_id,item_id,rating\n1,a,5\n2,b,five\n3,c,4\n", "line 3", "rating 'five' is not a number"),
        ("user_id,item_id,rating\n1,a,5\n2,b,inf\n", "line 3", "rating 'inf' is not a number"),
        (
            "user_id,item_id,timestamp\n1,a,100\n2,b,200\n3,c,yesterday\n",
            "line 4",
            "timestamp 'yesterday' is not a number",
        ),
        (
            "user_id,item_id,timestamp\n1,a,2020-01-01\n2,b,2020-02-30\n",
            "line 3",
            "timestamp '2020-02-30' is neither a unix time nor an ISO 8601 date",
        ),
        ("user_id,item_id\n1,a\n,b\n", "line 3", "empty user_id"),
        ("user_id,item_id\n1,a\n2,b\n   ,c\n", "line 4", "empty user_id"),
        ("user_id,item_id\n1,a\n2,\n", "line 3", "empty item_id"),
    ],
    ids=[
        "rating",
        "infinite-rating",
        "timestamp",
        "impossible-date",
        "empty-user",
        "blank-user",
        "empty-item",
    ],
)
def test_bad_csv_row(tmp_path, text, location, problem):
    path = write_csv(tmp_path, "interactions", text)
    error = load_error(tmp_path)
    assert_error(error, path, location, problem)
    assert SKIP_HINT in error.hint


@pytest.mark.parametrize(
    ("columns", "location", "problem"),
    [
        (
            {"user_id": ["1", "2"], "item_id": ["a", "b"], "rating": ["4", "four"]},
            "row 2",
            "rating 'four' is not a number",
        ),
        ({"user_id": ["1", None, "3"], "item_id": ["a", "b", "c"]}, "row 2", "empty user_id"),
        ({"user_id": ["1", "2", ""], "item_id": ["a", "b", "c"]}, "row 3", "empty user_id"),
        ({"user_id": pa.array([1.0, None], pa.float64()), "item_id": ["a", "b"]}, "row 2", "empty user_id"),
        (
            {"user_id": [1, 2], "item_id": ["a", "b"], "timestamp": ["10", "noon"]},
            "row 2",
            "timestamp 'noon'",
        ),
    ],
    ids=["rating", "null-user", "empty-string-user", "float-null-user", "timestamp"],
)
def test_bad_parquet_row(tmp_path, columns, location, problem):
    path = write_parquet(tmp_path, "interactions", columns)
    assert_error(load_error(tmp_path), path, location, problem)


def test_duplicate_item_rows_in_items(tmp_path):
    write_csv(tmp_path, "interactions", "user_id,item_id\n1,007\n")
    path = write_csv(tmp_path, "items", "item_id,title\n007,Dr. No\n008,Goldfinger\n007,Skyfall\n")
    assert_error(load_error(tmp_path), path, "line 4", "duplicate item_id '007'")


def test_duplicate_item_rows_in_parquet_items(tmp_path):
    write_csv(tmp_path, "interactions", "user_id,item_id\n1,5\n")
    path = write_parquet(tmp_path, "items", {"item_id": [5, 6, 7, 6]})
    assert_error(load_error(tmp_path), path, "row 4", "duplicate item_id '6'")


def test_duplicate_user_rows_in_users(tmp_path):
    write_csv(tmp_path, "interactions", "user_id,item_id\n1,a\n")
    path = write_csv(tmp_path, "users", "user_id,age\nu1,30\nu1,31\n")
    assert_error(load_error(tmp_path), path, "line 3", "duplicate user_id 'u1'")


def test_interaction_with_an_item_absent_from_items(tmp_path):
    write_csv(tmp_path, "items", "item_id\n1\n2\n")
    path = write_csv(tmp_path, "interactions", "user_id,item_id\nu1,1\nu1,2\nu2,3\n")
    assert_error(load_error(tmp_path), path, "line 4", "item_id '3' is not in the items table")


def test_test_table_is_checked_against_items_too(tmp_path):
    write_csv(tmp_path, "items", "item_id\n1\n2\n")
    write_csv(tmp_path, "interactions", "user_id,item_id\nu1,1\n")
    path = write_parquet(tmp_path, "test", {"user_id": ["u1", "u1"], "item_id": ["2", "9"]})
    assert_error(load_error(tmp_path), path, "row 2", "item_id '9' is not in the items table")


def test_first_bad_row_in_file_order_is_reported_with_the_count_of_the_others(tmp_path):
    write_csv(tmp_path, "items", "item_id\na\nb\n")
    # line 2: unknown item, line 3: bad rating, line 4: empty user -- three different checks.
    path = write_csv(tmp_path, "interactions", "user_id,item_id,rating\n1,zzz,5\n2,a,x\n,b,3\n3,a,4\n")
    error = load_error(tmp_path)
    assert_error(error, path, "line 2", "item_id 'zzz' is not in the items table (2 more rows with problems)")


BAD_INTERACTIONS = (
    "user_id,item_id,rating,timestamp\n"
    "u1,a,5,100\n"  # line 2: good
    ",a,4,101\n"  # line 3: empty user_id
    "u2,b,four,102\n"  # line 4: bad rating
    "u2,a,3,noon\n"  # line 5: bad timestamp
    "u3,zzz,2,103\n"  # line 6: item not in items
    "u3,b,1,104\n"  # line 7: good
)


def test_skip_invalid_rows_drops_and_counts_the_bad_rows(tmp_path):
    write_csv(tmp_path, "items", "item_id\na\nb\n")
    path = write_csv(tmp_path, "interactions", BAD_INTERACTIONS)
    dataset = load_dataset(tmp_path, skip_invalid_rows=True)

    kept = dataset.interactions
    assert kept[["user_id", "item_id"]].values.tolist() == [["u1", "a"], ["u3", "b"]]
    assert kept["weight"].tolist() == [5.0, 1.0]
    assert kept["timestamp"].tolist() == [100, 104]
    report = dataset.report.to_dict()
    assert report["rows_read"] == {"items": 2, "interactions": 6}
    assert report["rows_kept"] == {"items": 2, "interactions": 2}
    assert report["skipped_rows"] == {"interactions: invalid row": 4}
    assert report["skipped_total"] == 4
    assert report["problems"] == [
        f"{path}: line 3: empty user_id",
        f"{path}: line 4: rating 'four' is not a number",
        f"{path}: line 5: timestamp 'noon' is not a number",
        f"{path}: line 6: item_id 'zzz' is not in the items table",
    ]


def test_skip_invalid_rows_in_items_reports_original_lines(tmp_path):
    write_csv(tmp_path, "interactions", "user_id,item_id\nu1,1\nu1,2\n")
    # line 3 (empty id) is dropped first; the duplicate must still be reported on its own line, 5.
    path = write_csv(tmp_path, "items", "item_id,title\n1,One\n,Nameless\n2,Two\n1,One again\n")
    dataset = load_dataset(tmp_path, skip_invalid_rows=True)
    assert dataset.items["item_id"].tolist() == ["1", "2"]
    assert dataset.items["title"].tolist() == ["One", "Two"]
    assert dict(dataset.report.skipped) == {"items: empty id": 1, "items: duplicate id": 1}
    assert [str(problem) for problem in dataset.report.problems] == [
        f"{path}: line 3: empty item_id",
        f"{path}: line 5: duplicate item_id '1'",
    ]


def test_skip_invalid_rows_in_parquet_counts_rows(tmp_path):
    path = write_parquet(
        tmp_path,
        "interactions",
        {"user_id": ["1", None, "3", "4"], "item_id": ["a", "b", "c", "d"], "rating": ["1", "2", "x", "4"]},
    )
    dataset = load_dataset(tmp_path, skip_invalid_rows=True)
    assert dataset.interactions["user_id"].tolist() == ["1", "4"]
    assert [str(problem) for problem in dataset.report.problems] == [
        f"{path}: row 2: empty user_id",
        f"{path}: row 3: rating 'x' is not a number",
    ]


def test_skip_invalid_rows_does_not_excuse_file_level_errors(tmp_path):
    write_csv(tmp_path, "interactions", "user_id,item\n1,a\n")
    with pytest.raises(DataError, match="missing required column 'item_id'"):
        load_dataset(tmp_path, skip_invalid_rows=True)


def test_duplicate_interactions_keep_the_latest_and_are_counted(tmp_path):
    write_csv(
        tmp_path,
        "interactions",
        "user_id,item_id,rating,timestamp\nu1,a,1,100\nu1,a,5,300\nu2,a,2,50\nu1,a,3,200\nu1,b,4,10\n",
    )
    dataset = load_dataset(tmp_path)
    kept = dataset.interactions.sort_values(["user_id", "item_id"])
    assert kept[["user_id", "item_id", "weight", "timestamp"]].values.tolist() == [
        ["u1", "a", 5.0, 300],
        ["u1", "b", 4.0, 10],
        ["u2", "a", 2.0, 50],
    ]
    report = dataset.report
    assert report.merged_duplicate_interactions == 2
    assert report.rows_read["interactions"] == report.rows_kept["interactions"] + 2


def test_duplicate_interactions_without_timestamps_keep_the_last_row(tmp_path):
    write_csv(tmp_path, "interactions", "user_id,item_id,rating\nu1,a,1\nu1,a,5\nu1,a,3\nu2,a,2\n")
    dataset = load_dataset(tmp_path)
    assert dataset.interactions[["user_id", "item_id", "weight"]].values.tolist() == [
        ["u1", "a", 3.0],
        ["u2", "a", 2.0],
    ]
    assert dataset.report.merged_duplicate_interactions == 2


def test_rows_read_equal_rows_kept_plus_skipped_plus_merged(tmp_path):
    write_csv(tmp_path, "items", "item_id\na\nb\n")
    write_csv(tmp_path, "interactions", BAD_INTERACTIONS + "u1,a,2,500\nu3,b,1,90\n")
    report = load_dataset(tmp_path, skip_invalid_rows=True).report
    assert report.merged_duplicate_interactions == 2
    assert report.rows_read["interactions"] == (
        report.rows_kept["interactions"] + sum(report.skipped.values()) + report.merged_duplicate_interactions
    )


def test_csv_ids_stay_the_raw_strings(tmp_path):
    write_csv(tmp_path, "items", "item_id,title\n007,Bond\n7,Seven\n1e3,Thousand\n")
    write_csv(tmp_path, "interactions", "user_id,item_id\n0042,007\n 42 ,7\n0042,1e3\n")
    dataset = load_dataset(tmp_path)
    assert dataset.items["item_id"].tolist() == ["007", "7", "1e3"]
    assert dataset.interactions[["user_id", "item_id"]].values.tolist() == [
        ["0042", "007"],
        ["42", "7"],
        ["0042", "1e3"],
    ]


def test_parquet_integer_ids_become_decimal_strings(tmp_path):
    write_parquet(
        tmp_path,
        "interactions",
        {"user_id": pa.array([1, 2], pa.int64()), "item_id": pa.array([10, 20], pa.int32())},
    )
    interactions = load_dataset(tmp_path).interactions
    assert interactions["user_id"].tolist() == ["1", "2"]
    assert interactions["item_id"].tolist() == ["10", "20"]


def test_parquet_float_ids_holding_whole_numbers_lose_the_decimal_point(tmp_path):
    write_parquet(
        tmp_path, "interactions", {"user_id": pa.array([1.0, 2.0], pa.float64()), "item_id": ["a", "b"]}
    )
    write_parquet(tmp_path, "items", {"item_id": ["a", "b"], "brand": [3.0, 4.0]})
    dataset = load_dataset(tmp_path)
    assert dataset.interactions["user_id"].tolist() == ["1", "2"]
    assert dataset.items["brand"].tolist() == [3.0, 4.0]  # only ID columns are turned into strings


def test_parquet_float_ids_with_a_missing_value_skip_that_row(tmp_path):
    write_parquet(
        tmp_path, "interactions", {"user_id": pa.array([1.0, None, 3.0]), "item_id": ["a", "b", "c"]}
    )
    dataset = load_dataset(tmp_path, skip_invalid_rows=True)
    assert dataset.interactions["user_id"].tolist() == ["1", "3"]


def test_ids_match_across_formats_as_strings(tmp_path):
    write_parquet(tmp_path, "items", {"item_id": [7, 8]})
    write_csv(tmp_path, "interactions", "user_id,item_id\nu1,7\nu1,8\n")
    assert load_dataset(tmp_path).interactions["item_id"].tolist() == ["7", "8"]
    # "007" is a different raw ID from the integer 7.
    (tmp_path / "interactions.csv").write_text("user_id,item_id\nu1,007\n")
    assert "item_id '007' is not in the items table" in load_error(tmp_path).problem


def test_kg_ids_are_strings_and_duplicate_triples_collapse(tmp_path):
    write_csv(tmp_path, "interactions", "user_id,item_id\n1,a\n")
    write_parquet(
        tmp_path, "kg", {"head": [1, 1, 2], "relation": ["genre", "genre", "genre"], "tail": [9, 9, 9]}
    )
    dataset = load_dataset(tmp_path)
    assert dataset.kg.values.tolist() == [["1", "genre", "9"], ["2", "genre", "9"]]
    assert dataset.report.rows_read["kg"] == 3 and dataset.report.rows_kept["kg"] == 2


def test_iso_dates_parse_to_unix_seconds(tmp_path):
    write_csv(
        tmp_path,
        "interactions",
        "user_id,item_id,timestamp\n"
        "1,a,2020-01-01\n"
        "1,b,2020-01-01T00:00:01Z\n"
        "1,c,2020-01-01T02:00:00+01:00\n"
        "1,d,1970-01-02 00:00:00\n",
    )
    interactions = load_dataset(tmp_path).interactions
    assert interactions["timestamp"].tolist() == [1577836800, 1577836801, 1577840400, 86400]
    assert str(interactions["timestamp"].dtype) == "Int64"


def test_unix_timestamps_are_kept_and_fractions_dropped(tmp_path):
    write_csv(tmp_path, "interactions", "user_id,item_id,timestamp\n1,a,1577836800\n1,b,1577836800.9\n1,c,\n")
    interactions = load_dataset(tmp_path).interactions
    assert interactions["timestamp"].tolist()[:2] == [1577836800, 1577836800]
    assert interactions["timestamp"].isna().tolist() == [False, False, True]


@pytest.mark.parametrize("unit", ["s", "ms", "us", "ns"])
def test_parquet_datetime_columns_become_unix_seconds(tmp_path, unit):
    moments = pa.array([pd.Timestamp("2020-01-01"), pd.Timestamp("2020-01-01 00:00:05")], pa.timestamp(unit))
    write_parquet(
        tmp_path, "interactions", {"user_id": ["1", "1"], "item_id": ["a", "b"], "timestamp": moments}
    )
    assert load_dataset(tmp_path).interactions["timestamp"].tolist() == [1577836800, 1577836805]


def test_parquet_timezone_aware_datetimes_become_unix_seconds(tmp_path):
    moments = pa.array(
        [pd.Timestamp("2020-01-01 01:00", tz="Europe/Paris")], pa.timestamp("ms", tz="Europe/Paris")
    )
    write_parquet(tmp_path, "interactions", {"user_id": ["1"], "item_id": ["a"], "timestamp": moments})
    assert load_dataset(tmp_path).interactions["timestamp"].tolist() == [1577836800]


def test_weight_comes_from_the_first_alias_present_or_defaults_to_one(tmp_path):
    write_csv(tmp_path, "interactions", "user_id,item_id,play_count\n1,a,12\n1,b,3\n")
    dataset = load_dataset(tmp_path)
    assert dataset.weight_column == "play_count"
    assert dataset.interactions["weight"].tolist() == [12.0, 3.0]
    (tmp_path / "interactions.csv").write_text("user_id,item_id\n1,a\n")
    dataset = load_dataset(tmp_path)
    assert dataset.weight_column is None
    assert dataset.interactions["weight"].tolist() == [1.0]
    assert not dataset.has_timestamps


def test_id_index_orders_by_first_appearance_and_returns_minus_one_for_unknown():
    index = IdIndex.from_values(pd.Series(["b", "a", "b"]), None, np.array(["c", "a"], dtype=object))
    assert index.ids.tolist() == ["b", "a", "c"]
    assert len(index) == 3
    positions = index.positions(pd.Series(["c", "zzz", "b", "a"]))
    assert positions.tolist() == [2, -1, 0, 1]
    assert positions.dtype == np.int64


def test_id_index_positions_compare_raw_strings_not_numbers():
    index = IdIndex.from_values(pd.Series(["1", "007"]))
    assert index.positions(np.array([1, "7", "007", "1"], dtype=object)).tolist() == [-1, -1, 1, 0]


def test_id_index_save_load_round_trip(tmp_path):
    index = IdIndex.from_values(pd.Series(["007", "7", "x y"]))
    index.save(tmp_path / "items.parquet", "item_id")
    loaded = IdIndex.load(tmp_path / "items.parquet", "item_id")
    assert loaded.ids.tolist() == ["007", "7", "x y"]


def test_interaction_matrix_is_binary_with_duplicates_collapsed():
    frame = pd.DataFrame(
        {
            "user_id": ["u1", "u1", "u1", "u2", "u3", "ghost"],
            "item_id": ["a", "a", "b", "b", "unknown", "a"],
        }
    )
    users = IdIndex.from_values(pd.Series(["u1", "u2", "u3"]))
    items = IdIndex.from_values(pd.Series(["a", "b", "c"]))
    matrix = InteractionMatrix.from_frame(frame, users, items)
    assert (matrix.n_users, matrix.n_items) == (3, 3)
    assert matrix.matrix.dtype == np.float32
    assert matrix.matrix.toarray().tolist() == [[1, 1, 0], [0, 1, 0], [0, 0, 0]]
    assert matrix.matrix.nnz == 3
    assert matrix.item_popularity().tolist() == [1, 2, 0]
    assert matrix.user_activity().tolist() == [2, 1, 0]


def test_line_numbers_count_blank_lines_and_multi_line_fields(tmp_path):
    (tmp_path / "interactions.csv").write_text("user_id,item_id,rating\n1,a,3\n\n2,b,x\n")
    with pytest.raises(DataError) as error:
        load_dataset(tmp_path)
    assert error.value.location == "line 4"
    (tmp_path / "interactions.csv").write_text("user_id,item_id\n1,a\n")
    (tmp_path / "items.csv").write_text('item_id,description\na,"two\nlines"\n,x\n')
    with pytest.raises(DataError) as error:
        load_dataset(tmp_path)
    assert (error.value.location, error.value.problem) == ("line 4", "empty item_id")


@pytest.mark.parametrize("suffix", ["csv", "parquet"])
def test_loaded_ids_are_compact_strings_with_their_values(tmp_path, suffix):
    """At 20M interactions Python string objects (about 60 bytes each) were most of the table's memory:
    the loaded ID columns keep the same values in a few bytes each."""
    users = [f" u{n % 5000:06d}" for n in range(20_000)]
    items = [f"i{n % 997:06d} " for n in range(20_000)]
    if suffix == "csv":
        lines = ["user_id,item_id"] + [f"{u},{i}" for u, i in zip(users, items, strict=True)]
        write_csv(tmp_path, "interactions", "\n".join(lines) + "\n")
    else:
        write_parquet(tmp_path, "interactions", {"user_id": users, "item_id": items})
    frame = load_dataset(tmp_path).interactions
    assert frame["user_id"].tolist() == [u.strip() for u in users]
    assert frame["item_id"].tolist() == [i.strip() for i in items]
    bytes_per_id = frame[["user_id", "item_id"]].memory_usage(deep=True, index=False).sum() / (2 * len(frame))
    assert bytes_per_id < 24


def test_duplicate_interactions_at_the_same_time_keep_the_later_row_and_the_file_order(tmp_path):
    write_csv(
        tmp_path,
        "interactions",
        "user_id,item_id,rating,timestamp\nu2,c,1,5\nu1,a,2,100\nu1,b,3,7\nu1,a,4,100\nu3,d,5,1\n",
    )
    frame = load_dataset(tmp_path).interactions
    assert frame[["user_id", "item_id", "weight"]].values.tolist() == [
        ["u2", "c", 1.0],
        ["u1", "b", 3.0],
        ["u1", "a", 4.0],
        ["u3", "d", 5.0],
    ]


def test_min_rating_keeps_only_the_ratings_that_count_and_says_how_many_it_dropped(tmp_path):
    (tmp_path / "interactions.csv").write_text(
        "user_id,item_id,rating\nu1,a,1\nu1,b,4\nu2,a,5\nu2,c,2\nu3,c,3\n"
    )
    everything = load_dataset(tmp_path)
    assert len(everything.interactions) == 5
    kept = load_dataset(tmp_path, min_rating=3)
    assert sorted(map(tuple, kept.interactions[["user_id", "item_id"]].to_numpy())) == [
        ("u1", "b"),
        ("u2", "a"),
        ("u3", "c"),
    ]
    assert kept.report.below_min_rating == {"interactions": 2}
    assert kept.report.to_dict()["min_rating"] == 3
