"""``inspect_parquet``: one streaming pass that summarises the file, its declared metadata checked against
its data, and the rows and neighbours asked for."""

from __future__ import annotations

from pathlib import Path

from m6rec.errors import DataError
from pipelines.inspect.neighbours import NeighbourList, _nearest
from pipelines.inspect.reading import (
    _batches,
    _decode_metadata,
    _embedding_metadata,
    _field_description,
    _id_column,
    _is_vector_type,
    _open,
    _query_vector_column,
)
from pipelines.inspect.result import ColumnSummary, IdMatches, ParquetInspection
from pipelines.inspect.scan import _Scan
from pipelines.inspect.vectors import VectorSummary

NORM_TOLERANCE = 1e-3


def inspect_parquet(
    path: Path,
    *,
    sample: int = 5,
    id_value: str | None = None,
    id_column: str | None = None,
    neighbours_of: str | None = None,
    k: int = 10,
    vector_column: str | None = None,
) -> ParquetInspection:
    """Inspect the Parquet file at ``path``.

    ``sample`` rows are drawn at random (seed ``SAMPLE_SEED``) and shown in file order. ``id_value`` keeps
    the rows whose ID column equals it (compared as text); the ID column is ``id_column`` or, by default,
    the key of an m6rec embedding file, else the first of ``user_id``/``item_id`` in the schema.
    ``neighbours_of`` lists the ``k`` rows nearest by cosine to that ID's vector in ``vector_column``
    (default: the first vector column). Raises :class:`DataError` naming the file when it is missing, not
    Parquet, or lacks the column, the ID or the vector asked for.
    """
    path = Path(path)
    parquet_file = _open(path)
    schema = parquet_file.schema_arrow
    metadata = _decode_metadata(schema.metadata)
    key_column = _id_column(
        path, schema, metadata, id_column, needed=id_value is not None or neighbours_of is not None
    )
    vector_columns = [f.name for f in schema if _is_vector_type(f.type)]
    query_column = None
    if neighbours_of is not None:
        query_column = _query_vector_column(path, vector_columns, vector_column)
        if k < 1:
            raise DataError(str(path), f"k must be at least 1 to list neighbours, got {k}")

    scan = _Scan(
        path=path,
        schema=schema,
        rows=parquet_file.metadata.num_rows,
        id_column=key_column,
        vector_columns=vector_columns,
        sample=sample,
        id_value=id_value,
        query_id=neighbours_of,
        query_column=query_column,
    )
    for batch in _batches(parquet_file, path):
        scan.add(batch)
    if query_column is not None and scan.vector_stats[query_column].ragged:
        raise DataError(
            str(path),
            f"vector column {query_column!r} holds lists of different lengths; cosine neighbours need one "
            "dimension",
        )

    inspection = _inspection(path, parquet_file, schema, metadata, key_column, scan)
    if id_value is not None:
        inspection.id_matches = IdMatches(key_column, str(id_value), scan.id_total, scan.id_rows)
    if neighbours_of is not None:
        query = scan.query_vector(neighbours_of)
        found = _nearest(_open(path), path, key_column, query_column, neighbours_of, query, k)
        inspection.neighbours = NeighbourList(key_column, str(neighbours_of), query_column, k, found)
    return inspection


def _inspection(
    path: Path, parquet_file, schema, metadata: dict, key_column: str | None, scan
) -> ParquetInspection:
    """What a full scan of the file found, before the ID and neighbour lookups."""
    vectors = [accumulator.summary() for accumulator in scan.vector_stats.values()]
    distinct_ids = scan.distinct_ids()
    return ParquetInspection(
        path=path,
        size_bytes=path.stat().st_size,
        rows=parquet_file.metadata.num_rows,
        row_groups=parquet_file.metadata.num_row_groups,
        created_by=parquet_file.metadata.created_by,
        columns=[
            ColumnSummary(
                f.name, str(f.type), scan.nulls[f.name], scan.nans.get(f.name), _field_description(f)
            )
            for f in schema
        ],
        metadata=metadata,
        id_column=key_column,
        distinct_ids=distinct_ids,
        vectors=vectors,
        problem_rows=scan.problem_rows,
        problem_examples=scan.problem_examples,
        warnings=_warnings(metadata, vectors, parquet_file.metadata.num_rows, key_column, distinct_ids),
        sample=scan.sample_rows,
    )


def _warnings(
    metadata: dict, vectors: list[VectorSummary], rows: int, id_column: str | None, distinct: int | None
) -> list[str]:
    """Disagreements between the declared metadata and the data, and duplicate keys of embedding files."""
    found = []
    declared = metadata.get("m6rec") if isinstance(metadata.get("m6rec"), dict) else {}
    if isinstance(declared.get("rows"), int) and declared["rows"] != rows:
        found.append(f"metadata says {declared['rows']} rows, the file has {rows}")
    embedding = _embedding_metadata(metadata)
    if embedding is None:
        return found
    main = next((v for v in vectors if v.column == "embedding"), vectors[0] if vectors else None)
    if main is None:
        found.append("embedding metadata but no vector column")
        return found
    if "dimension" in embedding and main.dimension is not None and embedding["dimension"] != main.dimension:
        found.append(
            f"metadata dimension {embedding['dimension']} differs from {main.column}'s {main.dimension}"
        )
    if embedding.get("normalized") is True and main.norm_min is not None:
        if main.norm_min < 1 - NORM_TOLERANCE or main.norm_max > 1 + NORM_TOLERANCE:
            found.append(
                f"metadata says normalized, but {main.column} norms range "
                f"{main.norm_min:.4g} .. {main.norm_max:.4g}"
            )
    if id_column is not None and distinct is not None and distinct < rows:
        found.append(f"{rows - distinct} duplicate or null {id_column} values in an embedding file")
    return found
