"""A user's data mistake reaches the terminal as one ``error:`` line, an optional ``hint:`` and exit code 2.

A few cases run the installed ``m6rec`` console script in a subprocess (about a second each); the rest call
``m6rec.cli.main`` in-process, which is the same code path minus interpreter start-up.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

M6REC = Path(sys.executable).with_name("m6rec")
SKIP_HINT = "hint: fix the file, or pass --skip-invalid-rows to skip bad rows and count them in the report"


def m6rec(*args: str) -> subprocess.CompletedProcess:
    if not M6REC.exists():
        pytest.skip(f"console script {M6REC} not installed")
    return subprocess.run([str(M6REC), *map(str, args)], capture_output=True, text=True, timeout=120)


def write_csv(directory: Path, stem: str, text: str | bytes) -> Path:
    path = directory / f"{stem}.csv"
    path.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    return path


def write_parquet(directory: Path, stem: str, columns: dict) -> Path:
    path = directory / f"{stem}.parquet"
    pq.write_table(pa.table(columns), path)
    return path


def assert_user_error(stderr: str, error_line: str, hint: str | None = None) -> None:
    """``stderr`` is exactly ``error_line`` then ``hint`` (no hint line when None); never a traceback."""
    assert "Traceback" not in stderr, stderr
    assert stderr.splitlines() == [error_line, *([hint] if hint else [])]


def test_validate_missing_required_column(tmp_path):
    path = write_csv(tmp_path, "interactions", "user,item_id\n1,a\n")
    result = m6rec("validate", tmp_path)
    assert result.returncode == 2
    assert result.stdout == ""
    assert_user_error(
        result.stderr,
        f"error: {path}: line 1: missing required column 'user_id' (found columns: user, item_id)",
    )


def test_validate_latin1_text_names_the_line(tmp_path):
    write_csv(tmp_path, "interactions", "user_id,item_id\n1,1\n")
    path = write_csv(tmp_path, "items", "item_id,title\n1,Heat\n2,Caf\xe9 Society\n".encode("latin-1"))
    result = m6rec("validate", tmp_path)
    assert result.returncode == 2
    assert_user_error(
        result.stderr, f"error: {path}: line 3: not valid UTF-8 (byte 0xe9); re-encode the file as UTF-8"
    )


def test_validate_row_with_too_many_fields_names_the_line(tmp_path):
    path = write_csv(tmp_path, "interactions", "user_id,item_id,rating\n1,a,5\n2,b,4\n3,Crime, Drama,2\n")
    result = m6rec("validate", tmp_path)
    assert result.returncode == 2
    assert_user_error(
        result.stderr,
        f"error: {path}: line 4: malformed CSV: expected 3 fields, saw 4",
        "hint: fields are separated by commas; quote any field that contains a comma",
    )


def test_validate_parquet_empty_user_id_names_the_row(tmp_path):
    path = write_parquet(tmp_path, "interactions", {"user_id": [1, 2, None], "item_id": ["a", "b", "c"]})
    result = m6rec("validate", tmp_path)
    assert result.returncode == 2
    assert_user_error(result.stderr, f"error: {path}: row 3: empty user_id", SKIP_HINT)


def test_validate_both_csv_and_parquet(tmp_path):
    write_csv(tmp_path, "interactions", "user_id,item_id\n1,a\n")
    write_parquet(tmp_path, "interactions", {"user_id": ["1"], "item_id": ["a"]})
    result = m6rec("validate", tmp_path)
    assert result.returncode == 2
    assert_user_error(
        result.stderr,
        f"error: {tmp_path}: both interactions.parquet and interactions.csv exist; keep one of them",
    )


def test_validate_skip_invalid_rows_prints_the_report(tmp_path):
    write_csv(tmp_path, "items", "item_id\na\nb\na\n")
    path = write_csv(
        tmp_path,
        "interactions",
        "user_id,item_id,rating,timestamp\n"
        "u1,a,5,2020-01-01\n"
        ",b,4,2020-01-02\n"
        "u2,b,x,2020-01-03\n"
        "u2,c,3,2020-01-04\n"
        "u2,b,3,2020-01-05\n"
        "u2,b,1,2020-01-06\n",
    )
    result = m6rec("validate", tmp_path, "--skip-invalid-rows", "--json")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    report = json.loads(result.stdout)
    assert report["rows_read"] == {"items": 3, "interactions": 6}
    assert report["rows_kept"] == {"items": 2, "interactions": 2}
    assert report["skipped_rows"] == {"items: duplicate id": 1, "interactions: invalid row": 3}
    assert report["skipped_total"] == 4
    assert report["merged_duplicate_interactions"] == 1
    assert report["problems"][1:] == [
        f"{path}: line 3: empty user_id",
        f"{path}: line 4: rating 'x' is not a number",
        f"{path}: line 5: item_id 'c' is not in the items table",
    ]
    assert report["problems"][0].endswith("items.csv: line 4: duplicate item_id 'a'")


def test_run_duplicate_items(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    write_csv(data, "interactions", "user_id,item_id\n1,007\n")
    path = write_csv(data, "items", "item_id,title\n007,Dr. No\n008,Goldfinger\n007,Skyfall\n")
    result = m6rec("run", data, "--out", tmp_path / "out")
    assert result.returncode == 2
    assert_user_error(result.stderr, f"error: {path}: line 4: duplicate item_id '007'", SKIP_HINT)


@pytest.mark.parametrize(
    ("files", "culprit", "location", "problem", "hint"),
    [
        (
            {"interactions.csv": b"user_id,item_id,rating\n1,a,5\n2,b,five\n"},
            "interactions.csv",
            "line 3",
            "rating 'five' is not a number",
            SKIP_HINT,
        ),
        (
            {"interactions.csv": b"user_id,item_id,timestamp\n1,a,100\n2,b,soon\n"},
            "interactions.csv",
            "line 3",
            "timestamp 'soon' is not a number",
            SKIP_HINT,
        ),
        (
            {"interactions.csv": b"user_id,item_id\n1,a\n \t,b\n"},
            "interactions.csv",
            "line 3",
            "empty user_id",
            SKIP_HINT,
        ),
        (
            {"items.csv": b"item_id\n1\n2\n", "interactions.csv": b"user_id,item_id\nu,1\nu,2\nu,3\n"},
            "interactions.csv",
            "line 4",
            "item_id '3' is not in the items table",
            SKIP_HINT,
        ),
        (
            {"interactions.csv": b'user_id,item_id\n1,a\n2,b\n3,"c\n'},
            "interactions.csv",
            "line 4",
            "malformed CSV: a quote opened here is never closed",
            None,
        ),
        ({"interactions.parquet": b""}, "interactions.parquet", None, "file is empty", None),
        (
            {"interactions.csv": b"user_id,item_id\n"},
            "interactions.csv",
            None,
            "has a header but no data rows",
            None,
        ),
        (
            {"interactions.csv": b"user_id,item_id\n", "kg.csv": b"head,relation,tail\n"},
            "interactions.csv",
            None,
            "has a header but no data rows",
            None,
        ),
    ],
    ids=[
        "rating",
        "timestamp",
        "blank-user",
        "unknown-item",
        "unclosed-quote",
        "zero-bytes",
        "header-only",
        "first-of-two",
    ],
)
def test_main_prints_one_error_line(
    tmp_path, monkeypatch, capsys, files, culprit, location, problem, hint, m6rec_main
):
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    code, out, err = m6rec_main("validate", tmp_path)
    assert code == 2
    assert out == ""
    where = f"{tmp_path / culprit}: {location}" if location else f"{tmp_path / culprit}"
    assert_user_error(err, f"error: {where}: {problem}", hint)


def test_main_missing_interactions_table(tmp_path, monkeypatch, capsys, m6rec_main):
    write_csv(tmp_path, "items", "item_id\n1\n")
    code, _, err = m6rec_main("validate", tmp_path)
    assert code == 2
    assert_user_error(
        err,
        f"error: {tmp_path / 'interactions.csv'}: required table 'interactions' not found "
        "(looked for interactions.csv and interactions.parquet)",
    )


def test_main_missing_directory(tmp_path, monkeypatch, capsys, m6rec_main):
    code, _, err = m6rec_main("validate", tmp_path / "nowhere")
    assert code == 2
    assert_user_error(err, f"error: {tmp_path / 'nowhere'}: dataset directory does not exist")


def test_main_valid_directory_prints_the_report(tmp_path, monkeypatch, capsys, m6rec_main):
    write_parquet(tmp_path, "interactions", {"user_id": [1, 1, 2], "item_id": [7, 7, 8]})
    code, out, err = m6rec_main("validate", tmp_path, "--json")
    assert (code, err) == (0, "")
    report = json.loads(out)
    assert report["rows_read"] == {"interactions": 3}
    assert report["rows_kept"] == {"interactions": 2}
    assert report["merged_duplicate_interactions"] == 1
    assert report["skipped_total"] == 0 and report["problems"] == []
