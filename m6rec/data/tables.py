"""Reading one contract table from CSV or Parquet into a string-keyed DataFrame.

File-level problems (unreadable, empty, not UTF-8, missing columns) raise :class:`DataError`.
Row-level problems (empty IDs, unparsable numbers) are returned as :class:`RowProblem` so the
caller can fail on the first one or skip and count them.
"""

from __future__ import annotations

import codecs
import csv
import functools
import io
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from m6rec.data.contract import TABLE_SUFFIXES, TableSpec
from m6rec.errors import DataError


@dataclass(frozen=True)
class RowProblem:
    """One bad row: the file, where in it (``line N`` for CSV, ``row N`` for Parquet) and what is wrong."""

    file: str
    location: str
    problem: str

    def __str__(self) -> str:
        return f"{self.file}: {self.location}: {self.problem}"


def find_table(directory: Path, spec: TableSpec) -> Path | None:
    """Return the file holding ``spec`` in ``directory``; error if both a CSV and a Parquet exist."""
    found = [directory / f"{spec.stem}{suffix}" for suffix in TABLE_SUFFIXES]
    found = [path for path in found if path.exists()]
    if len(found) > 1:
        names = " and ".join(path.name for path in found)
        raise DataError(str(directory), f"both {names} exist; keep one of them")
    if not found and not spec.optional:
        raise DataError(
            str(directory / f"{spec.stem}.csv"),
            f"required table '{spec.stem}' not found (looked for {spec.stem}.csv and {spec.stem}.parquet)",
        )
    return found[0] if found else None


def row_location(path: Path, row_position: int) -> str:
    """Human location of the data row at 0-based ``row_position``: the CSV line or the Parquet row.

    CSV lines count blank lines and multi-line quoted fields, as an editor shows them.
    """
    if path.suffix != ".csv":
        return f"row {row_position + 1}"
    starts = _record_start_lines(Path(path), Path(path).stat().st_mtime_ns)
    data_starts = starts[1:]
    if row_position < len(data_starts):
        return f"line {data_starts[row_position]}"
    return f"line {row_position + 2}"


@functools.lru_cache(maxsize=8)
def _record_start_lines(path: Path, _mtime_ns: int) -> tuple[int, ...]:
    """First physical line of every non-blank CSV record (the header included); computed only for errors."""
    text = path.read_bytes().removeprefix(codecs.BOM_UTF8).decode("utf-8", errors="replace")
    reader = csv.reader(io.StringIO(text))
    starts = []
    previous_end = 0
    for record in reader:
        if record:
            starts.append(previous_end + 1)
        previous_end = reader.line_num
    return tuple(starts)


def read_table(path: Path, spec: TableSpec) -> pd.DataFrame:
    """Read ``path`` with every column as written; ID columns become strings.

    Raises :class:`DataError` for an empty file, undecodable text, a malformed CSV or Parquet file, or
    missing required columns.
    """
    if path.stat().st_size == 0:
        raise DataError(str(path), "file is empty")
    frame = _read_csv(path) if path.suffix == ".csv" else _read_parquet(path, spec.id_columns)
    missing = [column for column in spec.required_columns if column not in frame.columns]
    if missing:
        found = ", ".join(map(str, frame.columns)) or "none"
        raise DataError(
            str(path),
            f"missing required column '{missing[0]}' (found columns: {found})",
            location="line 1" if path.suffix == ".csv" else None,
        )
    if frame.empty:
        raise DataError(str(path), "has a header but no data rows")
    for column in spec.id_columns:
        frame[column] = _as_id_strings(frame[column])
    return frame.reset_index(drop=True)


def id_problems(
    path: Path, frame: pd.DataFrame, columns: tuple[str, ...]
) -> tuple[np.ndarray, list[RowProblem]]:
    """Rows whose ID columns are empty. Returns (bad row mask, problems)."""
    bad = np.zeros(len(frame), dtype=bool)
    problems = []
    for column in columns:
        empty = frame[column].isna().to_numpy() | (frame[column].fillna("").str.strip() == "").to_numpy()
        for position in np.flatnonzero(empty & ~bad):
            problems.append(RowProblem(str(path), row_location(path, position), f"empty {column}"))
        bad |= empty
    return bad, problems


def numeric_column(
    path: Path, frame: pd.DataFrame, column: str
) -> tuple[pd.Series, np.ndarray, list[RowProblem]]:
    """Parse ``column`` as float64. Returns (values, bad row mask, problems); missing values stay NaN."""
    raw = frame[column]
    values = pd.to_numeric(raw, errors="coerce").astype("float64")
    present = raw.notna().to_numpy() & (raw.astype("string").fillna("").str.strip() != "").to_numpy()
    bad = present & (values.isna().to_numpy() | ~np.isfinite(values.fillna(0).to_numpy()))
    problems = [
        RowProblem(
            str(path), row_location(path, position), f"{column} {raw.iloc[position]!r} is not a number"
        )
        for position in np.flatnonzero(bad)
    ]
    return values, bad, problems


_WRONG_FIELD_COUNT = re.compile(r"Expected (\d+) fields in line (\d+), saw (\d+)")
_UNCLOSED_QUOTE = re.compile(r"EOF inside string starting at row (\d+)")


def _read_csv(path: Path) -> pd.DataFrame:
    raw = path.read_bytes()
    # Strip the BOM ourselves: the utf-8-sig codec reports error offsets relative to the stripped text.
    raw = raw.removeprefix(codecs.BOM_UTF8)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        byte = raw[error.start : error.start + 1].hex()
        raise DataError(
            str(path),
            f"not valid UTF-8 (byte 0x{byte}); re-encode the file as UTF-8",
            location=f"line {line}",
        ) from None
    if not text.strip():
        raise DataError(str(path), "file is empty")
    header = next(csv.reader(io.StringIO(text)), [])
    _refuse_repeated_columns(path, [name.strip() for name in header], location="line 1")
    try:
        return pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, na_values=[""])
    except pd.errors.ParserError as error:
        raise _malformed_csv(path, _first_line(error)) from None


def _refuse_repeated_columns(path: Path, names: list[str], location: str | None = None) -> None:
    """A column named twice would be read as two columns (``x`` and ``x.1``) without a word: refused."""
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise DataError(
            str(path),
            f"column '{repeated[0]}' appears {names.count(repeated[0])} times in the header",
            location=location,
        )


def _malformed_csv(path: Path, message: str) -> DataError:
    """Turn a pandas tokenizer message into a DataError located at the offending line."""
    if match := _WRONG_FIELD_COUNT.search(message):
        expected, line, saw = match.groups()
        return DataError(
            str(path),
            f"malformed CSV: expected {expected} fields, saw {saw}",
            location=f"line {line}",
            hint="fields are separated by commas; quote any field that contains a comma",
        )
    if match := _UNCLOSED_QUOTE.search(message):
        # pandas counts rows from 0 with the header as row 0, so row N is line N + 1.
        return DataError(
            str(path),
            "malformed CSV: a quote opened here is never closed",
            location=f"line {int(match[1]) + 1}",
        )
    return DataError(str(path), f"malformed CSV: {message}")


def _read_parquet(path: Path, id_columns: tuple[str, ...] = ()) -> pd.DataFrame:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        _refuse_repeated_columns(path, pq.read_schema(path).names)
        table = pq.read_table(path)
    except DataError:
        raise
    except Exception as error:  # pyarrow raises several types for corrupt files
        raise DataError(str(path), f"not a readable Parquet file: {_first_line(error)}") from None
    for name in id_columns:
        if name in table.schema.names:
            kind = table.schema.field(name).type
            if pa.types.is_nested(kind) or pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
                raise DataError(
                    str(path), f"column '{name}' holds {kind} values; IDs are strings or integers"
                )
    return table.to_pandas()


def _as_id_strings(column: pd.Series) -> pd.Series:
    if pd.api.types.is_float_dtype(column):
        whole = column.dropna()
        if (whole == np.floor(whole)).all():
            column = column.astype("Int64")
    # pandas' arrow-backed ``str``: a few bytes per ID where Python string objects take about sixty, which
    # is most of a 20M-interaction table's memory.
    return column.astype("str").str.strip()


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
