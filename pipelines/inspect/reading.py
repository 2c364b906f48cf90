"""Opening one Parquet file for inspection: its record batches, its decoded schema metadata and field
descriptions, and which columns are the ID and the vectors."""

from __future__ import annotations

import json
from pathlib import Path

from m6rec.errors import DataError

BATCH_ROWS = 16_384
READ_BUFFER_BYTES = 1 << 20
ID_COLUMNS = ("user_id", "item_id")


def _open(path: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not path.exists():
        raise DataError(str(path), "no such file or directory")
    if path.is_dir():
        raise DataError(str(path), "is a directory; give one Parquet file", hint=_hint_files(path))
    if path.stat().st_size == 0:
        raise DataError(str(path), "file is empty, not a Parquet file")
    try:
        # without pre-buffering, pyarrow holds one read buffer per column, not every row group at once
        return pq.ParquetFile(path, pre_buffer=False, buffer_size=READ_BUFFER_BYTES)
    except (pa.ArrowException, OSError) as error:
        if "magic bytes" in str(error):
            raise DataError(str(path), "not a Parquet file (no Parquet magic bytes at its end)") from error
        raise DataError(str(path), f"not a readable Parquet file ({error})") from error


def _batches(parquet_file, path: Path, columns: list[str] | None = None):
    """The file's record batches of ``BATCH_ROWS`` rows; a damaged file becomes a DataError naming it."""
    import pyarrow as pa

    batches = parquet_file.iter_batches(batch_size=BATCH_ROWS, columns=columns)
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except (pa.ArrowException, OSError) as error:
            raise DataError(str(path), f"cannot read the data: {error}") from error
        yield batch


def _hint_files(directory: Path) -> str | None:
    found = sorted(str(p) for p in directory.glob("*.parquet"))
    return f"Parquet files here: {', '.join(found[:5])}" if found else None


def _decode_metadata(raw: dict[bytes, bytes] | None) -> dict[str, object]:
    """Schema key-value metadata as text, with JSON objects and arrays parsed."""
    decoded: dict[str, object] = {}
    for key, value in (raw or {}).items():
        text = value.decode("utf-8", errors="replace")
        parsed: object = text
        if text.lstrip()[:1] in ("{", "["):
            try:
                parsed = json.loads(text)
            except ValueError:
                parsed = text
        decoded[key.decode("utf-8", errors="replace")] = parsed
    return decoded


def _field_description(arrow_field) -> str | None:
    raw = (arrow_field.metadata or {}).get(b"description")
    return raw.decode("utf-8", errors="replace") if raw is not None else None


def _is_vector_type(arrow_type) -> bool:
    import pyarrow as pa

    list_like = pa.types.is_fixed_size_list(arrow_type) or pa.types.is_list(arrow_type)
    list_like = list_like or pa.types.is_large_list(arrow_type)
    return list_like and pa.types.is_floating(arrow_type.value_type)


def _embedding_metadata(metadata: dict[str, object]) -> dict | None:
    m6rec = metadata.get("m6rec")
    return m6rec if isinstance(m6rec, dict) and "encoder" in m6rec else None


def _id_column(path: Path, schema, metadata: dict, requested: str | None, *, needed: bool) -> str | None:
    names = schema.names
    if requested is not None:
        if requested not in names:
            raise DataError(str(path), f"no column {requested!r} (columns: {', '.join(names)})")
        return requested
    if _embedding_metadata(metadata) is not None and names:
        return names[0]
    detected = next((name for name in names if name in ID_COLUMNS), None)
    if detected is None and needed:
        raise DataError(
            str(path),
            f"no ID column ({' or '.join(ID_COLUMNS)}) to look the ID up in",
            hint="name one with --id-column",
        )
    return detected


def _query_vector_column(path: Path, vector_columns: list[str], requested: str | None) -> str:
    if requested is not None:
        if requested not in vector_columns:
            raise DataError(
                str(path),
                f"{requested!r} is not a vector column (vector columns: {', '.join(vector_columns) or 'none'})",
            )
        return requested
    if not vector_columns:
        raise DataError(str(path), "no vector column (a list of floats) to find neighbours in")
    return vector_columns[0]
