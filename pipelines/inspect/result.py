"""What an inspection returns and how it reads: ``ParquetInspection`` with its parts, as JSON-ready values
(``to_dict``) and as a report for a terminal (``render_text``)."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path

import numpy as np

from pipelines.inspect.neighbours import NeighbourList
from pipelines.inspect.scan import SAMPLE_SEED, FileRow, ProblemRow
from pipelines.inspect.vectors import VectorSummary

DESCRIPTION_WIDTH = 90
METADATA_WIDTH = 100
METADATA_ITEMS = 20
ROW_WIDTH = 200


@dataclass(frozen=True)
class ColumnSummary:
    """One column of the file: name, Arrow type, number of nulls, number of NaN (float columns only, else
    None) and the field's description, if any."""

    name: str
    type: str
    nulls: int
    nans: int | None
    description: str | None = None


@dataclass(frozen=True)
class IdMatches:
    """Rows whose ``column`` equals ``value`` (compared as text); at most ``MAX_ID_ROWS`` are kept."""

    column: str
    value: str
    total: int
    rows: list[FileRow]


@dataclass
class ParquetInspection:
    """What :func:`inspect_parquet` found in one file; ``to_dict()`` for JSON, ``render_text()`` for people."""

    path: Path
    size_bytes: int
    rows: int
    row_groups: int
    created_by: str | None
    columns: list[ColumnSummary]
    metadata: dict[str, object]
    id_column: str | None
    distinct_ids: int | None
    vectors: list[VectorSummary]
    problem_rows: int
    problem_examples: list[ProblemRow]
    warnings: list[str]
    sample: list[FileRow] = field(default_factory=list)
    id_matches: IdMatches | None = None
    neighbours: NeighbourList | None = None

    def to_dict(self) -> dict:
        """Everything found, as JSON-ready values (NaN and infinity become null, vectors stay whole)."""
        return _jsonable(asdict(self))

    def render_text(self) -> str:
        """A report for a terminal: long strings and vectors are shortened, JSON metadata is indented."""
        return "\n".join(_render(self)) + "\n"


def _jsonable(value: object) -> object:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, bytes):
        return value.hex()
    return value


def _render(result: ParquetInspection) -> list[str]:
    lines = [
        str(result.path),
        f"  {_size(result.size_bytes)}, {result.rows:,} rows, {result.row_groups} row group"
        f"{'s' if result.row_groups != 1 else ''}"
        + (f", written by {result.created_by}" if result.created_by else ""),
    ]
    if result.id_column is not None:
        lines.append(f"  ID column {result.id_column}: {result.distinct_ids:,} distinct values")
    lines += ["", *_render_columns(result.columns)]
    if result.metadata:
        lines += ["", "metadata"]
        for key, value in result.metadata.items():
            lines += _render_metadata(key, value)
    for vectors in result.vectors:
        lines += ["", *_render_vectors(vectors)]
    if result.warnings:
        lines += ["", "warnings"] + [f"  {warning}" for warning in result.warnings]
    if result.problem_rows:
        shown = len(result.problem_examples)
        first = f" (first {shown} shown)" if shown < result.problem_rows else ""
        lines += ["", f"rows with problems: {result.problem_rows:,}{first}"]
        for problem in result.problem_examples:
            lines.append(
                f"  row {problem.row}"
                + (f" {problem.id}" if problem.id is not None else "")
                + f": {problem.problem}"
            )
    if result.sample:
        lines += [
            "",
            f"sample: {_count(len(result.sample), 'row')} drawn at random (seed {SAMPLE_SEED}), in file order",
        ]
        lines += _render_rows(result.sample, result.id_column)
    if result.id_matches is not None:
        matches = result.id_matches
        shown = f", first {len(matches.rows)} shown" if len(matches.rows) < matches.total else ""
        lines += ["", f"rows with {matches.column} = {matches.value!r}: {matches.total:,}{shown}"]
        lines += _render_rows(matches.rows, result.id_column)
    if result.neighbours is not None:
        found = result.neighbours
        lines += [
            "",
            f"nearest neighbours of {found.id_column} {found.id!r} by cosine on {found.vector_column} "
            f"(k={found.k})",
        ]
        id_width = max((len(n.id) for n in found.neighbours), default=0)
        for rank, neighbour in enumerate(found.neighbours, start=1):
            lines.append(
                f"  {rank:>3}. {neighbour.id:<{id_width}}  {neighbour.similarity:.4f}  (row {neighbour.row})"
            )
        if not found.neighbours:
            lines.append("  none: no other row has a usable vector")
    return lines


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


def _render_columns(columns: list[ColumnSummary]) -> list[str]:
    table = [("column", "type", "nulls", "NaN", "description")]
    for column in columns:
        nans = "" if column.nans is None else f"{column.nans:,}"
        description = _shorten(column.description or "", DESCRIPTION_WIDTH)
        table.append((column.name, _type_name(column.type), f"{column.nulls:,}", nans, description))
    widths = [max(len(row[i]) for row in table) for i in range(4)]
    return [
        f"  {name:<{widths[0]}}  {kind:<{widths[1]}}  {nulls:>{widths[2]}}  {nans:>{widths[3]}}  {text}".rstrip()
        for name, kind, nulls, nans, text in table
    ]


def _type_name(arrow_type: str) -> str:
    """Arrow's type text made shorter: no child field names, no dictionary index details."""
    text = arrow_type.replace("<element: ", "<").replace("<item: ", "<")
    if text.startswith("dictionary<values="):
        text = "dictionary<" + text[len("dictionary<values=") :].split(",")[0] + ">"
    return _shorten(text, 48)


def _render_metadata(key: str, value: object) -> list[str]:
    if key == "pandas" and isinstance(value, dict):
        return [f"  pandas: index and dtypes of {len(value.get('columns', []))} columns (shown with --json)"]
    if isinstance(value, dict):
        lines = [f"  {key}:"]
        for inner, item in value.items():
            lines += _render_metadata_value(inner, item, indent="    ")
        return lines
    return _render_metadata_value(key, value, indent="  ")


def _render_metadata_value(key: str, value: object, *, indent: str) -> list[str]:
    """One metadata entry: inline when short, else one item per line (at most ``METADATA_ITEMS``)."""
    text = value if isinstance(value, str) else json.dumps(value, default=str, ensure_ascii=False)
    if len(text) <= METADATA_WIDTH or not isinstance(value, list | dict):
        return [f"{indent}{key}: {text}"]
    items = list(value.items()) if isinstance(value, dict) else list(enumerate(value))
    lines = [f"{indent}{key}:"]
    for inner, item in items[:METADATA_ITEMS]:
        label = f"{inner}: " if isinstance(value, dict) else "- "
        lines.append(f"{indent}  {label}{json.dumps(item, default=str, ensure_ascii=False)}")
    if len(items) > METADATA_ITEMS:
        lines.append(f"{indent}  … {len(items) - METADATA_ITEMS} more (shown with --json)")
    return lines


def _render_vectors(summary: VectorSummary) -> list[str]:
    if summary.dimension is None and summary.length_min is not None:
        shape = f"lists of {summary.length_min} to {summary.length_max} values (not one dimension)"
    else:
        shape = f"dimension {summary.dimension if summary.dimension is not None else 'unknown (no vectors)'}"
    lines = [
        f"vector column {summary.column}: {shape}",
        f"  {summary.usable_vectors:,} usable, {summary.null_vectors:,} null, "
        f"{summary.nan_vectors:,} with NaN or infinity, {summary.zero_vectors:,} all zeros",
    ]
    if summary.norm_min is not None:
        lines.append(
            f"  norm min {summary.norm_min:.6g}  mean {summary.norm_mean:.6g}  max {summary.norm_max:.6g}"
        )
        lines.append(
            f"  per-dimension mean from {summary.dimension_mean_min:.4g} to {summary.dimension_mean_max:.4g}; "
            f"std from {summary.dimension_std_min:.4g} (dim {summary.dimension_std_min_at}) "
            f"to {summary.dimension_std_max:.4g} (dim {summary.dimension_std_max_at}); "
            f"{summary.constant_dimensions} constant dimensions"
        )
    return lines


def _render_rows(rows: list[FileRow], id_column: str | None) -> list[str]:
    """One line per row, ``#position  column=value ...``; one line per value when that line is too wide."""
    lines = []
    for row in rows:
        names = list(row.values)
        if id_column in row.values:
            names.remove(id_column)
            names.insert(0, id_column)
        values = {name: _short_value(row.values[name]) for name in names}
        line = f"  #{row.row}  " + "  ".join(f"{name}={value}" for name, value in values.items())
        if len(line) <= ROW_WIDTH:
            lines.append(line)
            continue
        width = max(len(name) for name in names)
        lines.append(f"  #{row.row}")
        lines += [f"    {name:<{width}}  {value}" for name, value in values.items()]
    return lines


def _short_value(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, str):
        text = _shorten(value, 40)
        return json.dumps(text, ensure_ascii=False) if (not text or any(c.isspace() for c in text)) else text
    if isinstance(value, list):
        return _short_list(value)
    if isinstance(value, dict):
        return _shorten(json.dumps(_jsonable(value), default=str), 60)
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    return _shorten(str(value), 40)


def _short_list(values: list) -> str:
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, float) for v in present):
        head = ", ".join("null" if v is None else f"{v:.3g}" for v in values[:3])
        more = ", …" if len(values) > 3 else ""
        usable = len(present) == len(values) and all(math.isfinite(v) for v in present)
        norm = f"{math.sqrt(sum(v * v for v in present)):.4g}" if usable else "n/a"
        return f"[{head}{more}] (dim {len(values)}, norm {norm})"
    head = ", ".join(_short_value(v) for v in values[:5])
    return f"[{head}{', …' if len(values) > 5 else ''}] ({len(values)} items)"


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _size(size: int) -> str:
    value = float(size)
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{int(value)} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} bytes"
