"""Look inside any Parquet file: schema, decoded metadata, null counts, vector statistics, rows with problems,
a sample of rows, the rows of one ID and an item's nearest neighbours by cosine.

Built for m6rec's outputs (``features/*.parquet``, ``recommendations.parquet``, ``ranker_features.parquet``,
``index/*.parquet``) but works on any Parquet file. A *vector column* is any list or fixed-size list of
floats. The file is streamed in record batches, so memory holds one batch of vectors plus the ID column,
never the whole matrix.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path

import numpy as np

from m6rec.errors import DataError

BATCH_ROWS = 16_384
READ_BUFFER_BYTES = 1 << 20
ID_COLUMNS = ("user_id", "item_id")
PROBLEM_COLUMN = "problem"
MAX_ID_ROWS = 1_000
MAX_PROBLEM_EXAMPLES = 10
SAMPLE_SEED = 0
NORM_TOLERANCE = 1e-3
CONSTANT_STD = 1e-6
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


@dataclass
class VectorSummary:
    """Statistics of one vector column over its usable vectors (not null, no NaN or infinity).

    ``dimension`` is None when the lists have different lengths (``length_min`` .. ``length_max``); the
    norm and per-dimension fields are None then, or when no vector is usable. Per-dimension statistics are
    the extremes over dimensions of each dimension's mean and standard deviation (population), with the
    index of the dimension where the std is lowest and highest; ``constant_dimensions`` counts dimensions
    whose std is below ``CONSTANT_STD`` times the mean norm (numerically constant).
    """

    column: str
    dimension: int | None
    length_min: int | None
    length_max: int | None
    null_vectors: int
    nan_vectors: int
    zero_vectors: int
    usable_vectors: int
    norm_min: float | None = None
    norm_mean: float | None = None
    norm_max: float | None = None
    dimension_mean_min: float | None = None
    dimension_mean_max: float | None = None
    dimension_std_min: float | None = None
    dimension_std_min_at: int | None = None
    dimension_std_max: float | None = None
    dimension_std_max_at: int | None = None
    constant_dimensions: int | None = None


@dataclass(frozen=True)
class ProblemRow:
    """A row with a recorded problem or an unusable vector: its position, ID and why."""

    row: int
    id: str | None
    problem: str


@dataclass(frozen=True)
class FileRow:
    """One row of the file: its 0-based position and its values as Python objects (vectors as lists)."""

    row: int
    values: dict


@dataclass(frozen=True)
class IdMatches:
    """Rows whose ``column`` equals ``value`` (compared as text); at most ``MAX_ID_ROWS`` are kept."""

    column: str
    value: str
    total: int
    rows: list[FileRow]


@dataclass(frozen=True)
class Neighbour:
    """A nearest neighbour: its ID, row and cosine similarity to the query vector."""

    id: str
    row: int
    similarity: float


@dataclass(frozen=True)
class NeighbourList:
    """The ``k`` rows most similar by cosine to the vector of ``id`` in ``vector_column``, best first."""

    id_column: str
    id: str
    vector_column: str
    k: int
    neighbours: list[Neighbour]


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

    vectors = [accumulator.summary() for accumulator in scan.vector_stats.values()]
    distinct_ids = scan.distinct_ids()
    inspection = ParquetInspection(
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
    if id_value is not None:
        inspection.id_matches = IdMatches(key_column, str(id_value), scan.id_total, scan.id_rows)
    if neighbours_of is not None:
        query = scan.query_vector(neighbours_of)
        found = _nearest(_open(path), path, key_column, query_column, neighbours_of, query, k)
        inspection.neighbours = NeighbourList(key_column, str(neighbours_of), query_column, k, found)
    return inspection


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


def _vector_matrix(array) -> tuple[np.ndarray, np.ndarray] | None:
    """An Arrow vector array as a float32 [n, dim] matrix (NaN in null rows and null elements) and its
    validity mask; None when the lists of this array have different lengths."""
    import pyarrow as pa
    import pyarrow.compute as pc

    n = len(array)
    valid = array.is_valid().to_numpy(zero_copy_only=False)
    if pa.types.is_fixed_size_list(array.type):
        dimension = array.type.list_size
        values = array.values.slice(array.offset * dimension, n * dimension)
        matrix = values.to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(n, dimension)
    else:
        lengths = pc.list_value_length(array).to_numpy(zero_copy_only=False)
        present = lengths[valid]
        if present.size and (present != present[0]).any():
            return None
        dimension = int(present[0]) if present.size else 0
        matrix = np.zeros((n, dimension), dtype=np.float32)
        flat = array.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
        matrix[valid] = flat.reshape(-1, dimension) if dimension else flat.reshape(int(valid.sum()), 0)
    if not valid.all():
        matrix = matrix if matrix.flags.writeable else matrix.copy()
        matrix[~valid] = np.nan
    return matrix, valid


class _VectorStats:
    """Streaming statistics of one vector column (norms; per-dimension mean and M2, merged with Chan's
    formula so batches of any size give the same answer as one pass)."""

    def __init__(self, column: str, arrow_type):
        import pyarrow as pa

        self.column = column
        self.dimension: int | None = arrow_type.list_size if pa.types.is_fixed_size_list(arrow_type) else None
        self.ragged = False
        self.length_min: int | None = None
        self.length_max: int | None = None
        self.null_vectors = self.nan_vectors = self.zero_vectors = self.usable = 0
        self.norm_min, self.norm_max, self.norm_sum = math.inf, -math.inf, 0.0
        self.mean: np.ndarray | None = None
        self.m2: np.ndarray | None = None

    def add(self, array) -> tuple[np.ndarray, np.ndarray] | None:
        """Add one batch; return its (matrix, usable-row mask), or None when its lengths are ragged."""
        import pyarrow.compute as pc

        self.null_vectors += array.null_count
        lengths = pc.list_value_length(array).drop_null().to_numpy(zero_copy_only=False)
        if lengths.size:
            low, high = int(lengths.min()), int(lengths.max())
            self.length_min = low if self.length_min is None else min(self.length_min, low)
            self.length_max = high if self.length_max is None else max(self.length_max, high)
        if self.length_min is not None and self.length_min != self.length_max:
            self.ragged = True
        converted = None if self.ragged else _vector_matrix(array)
        if converted is None:
            self.ragged = True
            return None
        matrix, valid = converted
        finite = np.isfinite(matrix).all(axis=1)
        self.nan_vectors += int((valid & ~finite).sum())
        usable = valid & finite
        good = matrix[usable]
        self.zero_vectors += int((~good.any(axis=1)).sum()) if good.shape[1] else len(good)
        if self.dimension is None and valid.any():
            self.dimension = matrix.shape[1]
        if len(good):
            self._merge(good)
        return matrix, usable

    def _merge(self, good: np.ndarray) -> None:
        norms = np.sqrt(np.einsum("ij,ij->i", good, good, dtype=np.float64))
        self.norm_min = min(self.norm_min, float(norms.min()))
        self.norm_max = max(self.norm_max, float(norms.max()))
        self.norm_sum += float(norms.sum())
        count = len(good)
        batch_mean = good.mean(axis=0, dtype=np.float64)
        centred = good.astype(np.float64) - batch_mean  # float64: squares of tiny values must not underflow
        batch_m2 = np.einsum("ij,ij->j", centred, centred)
        if self.mean is None:
            self.mean, self.m2 = batch_mean, batch_m2
        else:
            total = self.usable + count
            delta = batch_mean - self.mean
            self.mean = self.mean + delta * count / total
            self.m2 = self.m2 + batch_m2 + delta**2 * self.usable * count / total
        self.usable += count

    def summary(self) -> VectorSummary:
        summary = VectorSummary(
            column=self.column,
            dimension=None if self.ragged else self.dimension,
            length_min=self.length_min,
            length_max=self.length_max,
            null_vectors=self.null_vectors,
            nan_vectors=self.nan_vectors,
            zero_vectors=self.zero_vectors,
            usable_vectors=self.usable,
        )
        if self.ragged or not self.usable or self.mean is None or not len(self.mean):
            return summary
        std = np.sqrt(self.m2 / self.usable)
        summary.norm_min, summary.norm_max = self.norm_min, self.norm_max
        summary.norm_mean = self.norm_sum / self.usable
        summary.dimension_mean_min, summary.dimension_mean_max = (
            float(self.mean.min()),
            float(self.mean.max()),
        )
        summary.dimension_std_min, summary.dimension_std_min_at = float(std.min()), int(std.argmin())
        summary.dimension_std_max, summary.dimension_std_max_at = float(std.max()), int(std.argmax())
        summary.constant_dimensions = int((std <= CONSTANT_STD * summary.norm_mean).sum())
        return summary


class _Scan:
    """One streaming pass over the file: null counts, vector statistics, problems, sample, ID matches and
    the query vector for neighbours."""

    def __init__(
        self,
        *,
        path: Path,
        schema,
        rows: int,
        id_column: str | None,
        vector_columns: list[str],
        sample: int,
        id_value: str | None,
        query_id: str | None,
        query_column: str | None,
    ):
        self.path = path
        self.id_column = id_column
        self.id_value = None if id_value is None else str(id_value)
        self.query_id = None if query_id is None else str(query_id)
        self.query_column = query_column
        self.has_problem_column = PROBLEM_COLUMN in schema.names and _is_text(
            schema.field(PROBLEM_COLUMN).type
        )
        self.nulls = dict.fromkeys(schema.names, 0)
        self.nans = {f.name: 0 for f in schema if _is_float(f.type)}
        self.vector_stats = {name: _VectorStats(name, schema.field(name).type) for name in vector_columns}
        self.sample_positions = _sample_positions(rows, sample)
        self.sample_rows: list[FileRow] = []
        self.id_total = 0
        self.id_rows: list[FileRow] = []
        self.id_chunks: list = []
        self.problem_rows = 0
        self.problem_examples: list[ProblemRow] = []
        self.query: tuple[np.ndarray, bool, str | None] | None = None
        self.start = 0

    def add(self, batch) -> None:
        n = batch.num_rows
        for name in batch.schema.names:
            self.nulls[name] += batch.column(name).null_count
        for name in self.nans:
            self.nans[name] += _nan_count(batch.column(name))
        ids = self._ids(batch)
        unusable: dict[str, np.ndarray] = {}
        matrices: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for name, stats in self.vector_stats.items():
            column = batch.column(name)
            converted = stats.add(column)
            if converted is not None:
                matrices[name] = converted
                unusable[name] = ~converted[1] | ~converted[0].any(axis=1)
            else:
                unusable[name] = ~column.is_valid().to_numpy(zero_copy_only=False)
        self._problems(batch, ids, unusable, matrices)
        self._sample(batch)
        if ids is not None and self.id_value is not None:
            self._match(batch, ids)
        if ids is not None and self.query_id is not None and self.query is None:
            self._find_query(batch, ids, matrices)
        self.start += n

    def _ids(self, batch):
        if self.id_column is None:
            return None
        import pyarrow as pa
        import pyarrow.compute as pc

        column = batch.column(self.id_column)
        self.id_chunks.append(column)
        try:
            return pc.cast(column, pa.string())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as error:
            raise DataError(
                str(self.path), f"ID column {self.id_column!r} of type {column.type} cannot be read as text"
            ) from error

    def _problems(self, batch, ids, unusable: dict[str, np.ndarray], matrices: dict) -> None:
        n = batch.num_rows
        recorded = np.zeros(n, dtype=bool)
        problem_text = None
        if self.has_problem_column:
            problem_column = batch.column(PROBLEM_COLUMN)
            recorded = problem_column.is_valid().to_numpy(zero_copy_only=False)
            problem_text = problem_column
        flagged = recorded.copy()
        for mask in unusable.values():
            flagged |= mask
        self.problem_rows += int(flagged.sum())
        room = MAX_PROBLEM_EXAMPLES - len(self.problem_examples)
        for local in np.flatnonzero(flagged)[: max(room, 0)]:
            local = int(local)
            if recorded[local]:
                reason = str(problem_text[local].as_py())
            else:
                reason = "; ".join(
                    f"{name}: {_vector_trouble(batch.column(name), matrices.get(name), local)}"
                    for name, mask in unusable.items()
                    if mask[local]
                )
            identifier = ids[local].as_py() if ids is not None else None
            self.problem_examples.append(ProblemRow(self.start + local, identifier, reason))

    def _sample(self, batch) -> None:
        import pyarrow as pa

        positions = self.sample_positions
        chosen = positions[(positions >= self.start) & (positions < self.start + batch.num_rows)]
        if chosen.size:
            taken = batch.take(pa.array(chosen - self.start)).to_pylist()
            self.sample_rows.extend(
                FileRow(int(row), values) for row, values in zip(chosen, taken, strict=True)
            )

    def _match(self, batch, ids) -> None:
        import pyarrow as pa
        import pyarrow.compute as pc

        mask = pc.fill_null(pc.equal(ids, self.id_value), False).to_numpy(zero_copy_only=False)
        hits = np.flatnonzero(mask)
        self.id_total += int(hits.size)
        room = MAX_ID_ROWS - len(self.id_rows)
        if hits.size and room > 0:
            keep = hits[:room]
            taken = batch.take(pa.array(keep)).to_pylist()
            self.id_rows.extend(FileRow(self.start + int(h), v) for h, v in zip(keep, taken, strict=True))

    def _find_query(self, batch, ids, matrices: dict) -> None:
        import pyarrow.compute as pc

        mask = pc.fill_null(pc.equal(ids, self.query_id), False).to_numpy(zero_copy_only=False)
        hits = np.flatnonzero(mask)
        if not hits.size:
            return
        local = int(hits[0])
        problem = batch.column(PROBLEM_COLUMN)[local].as_py() if self.has_problem_column else None
        if self.query_column not in matrices:
            return  # ragged lists: inspect_parquet reports it after the scan
        matrix, usable = matrices[self.query_column]
        self.query = (matrix[local].astype(np.float64), bool(usable[local]), problem)

    def query_vector(self, query_id: str) -> np.ndarray:
        """The unit vector of ``query_id``; a DataError naming file and ID when it is absent or unusable."""
        if self.query is None:
            raise DataError(str(self.path), f"{self.id_column} {query_id!r} not found")
        vector, usable, problem = self.query
        norm = float(np.linalg.norm(vector)) if usable else 0.0
        if not usable or norm == 0.0:
            why = "is null or has NaN" if not usable else "is all zeros"
            because = f" (problem: {problem})" if problem else ""
            raise DataError(
                str(self.path),
                f"{self.id_column} {query_id!r}: its {self.query_column} vector {why}{because}; "
                "no neighbours to compute",
            )
        return vector / norm

    def distinct_ids(self) -> int | None:
        if self.id_column is None or not self.id_chunks:
            return None if self.id_column is None else 0
        import pyarrow as pa
        import pyarrow.compute as pc

        chunks = pa.chunked_array(self.id_chunks)
        return int(pc.count_distinct(chunks, mode="only_valid").as_py())


def _is_float(arrow_type) -> bool:
    import pyarrow as pa

    return pa.types.is_floating(arrow_type)


def _nan_count(array) -> int:
    import pyarrow.compute as pc

    return int(pc.sum(pc.is_nan(array)).as_py() or 0)


def _is_text(arrow_type) -> bool:
    import pyarrow as pa

    return pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type)


def _vector_trouble(column, converted, local: int) -> str:
    if not column[local].is_valid or converted is None:
        return "null vector"
    if not np.isfinite(converted[0][local]).all():
        return "vector has NaN or infinity"
    return "vector is all zeros"


def _sample_positions(rows: int, sample: int) -> np.ndarray:
    if sample <= 0 or rows == 0:
        return np.empty(0, dtype=np.int64)
    if sample >= rows:
        return np.arange(rows, dtype=np.int64)
    rng = np.random.default_rng(SAMPLE_SEED)
    return np.sort(rng.choice(rows, size=sample, replace=False)).astype(np.int64)


def _nearest(
    parquet_file, path: Path, id_column: str, vector_column: str, query_id: str, query: np.ndarray, k: int
) -> list[Neighbour]:
    """Top ``k`` rows by cosine to the unit vector ``query``, streamed in batches; the query ID itself,
    null, NaN and all-zero vectors are left out. Ties go to the earlier row."""
    import pyarrow as pa
    import pyarrow.compute as pc

    best_scores = np.empty(0, dtype=np.float64)
    best_rows = np.empty(0, dtype=np.int64)
    best_ids: list[str] = []
    start = 0
    query32 = query.astype(np.float32)
    for batch in _batches(parquet_file, path, [id_column, vector_column]):
        n = batch.num_rows
        ids = pc.cast(batch.column(id_column), pa.string())
        matrix, valid = _vector_matrix(batch.column(vector_column))
        norms = np.sqrt(np.einsum("ij,ij->i", matrix, matrix).astype(np.float64))
        with np.errstate(invalid="ignore", divide="ignore"):
            scores = (matrix @ query32).astype(np.float64) / norms
        eligible = valid & np.isfinite(scores) & (norms > 0)
        eligible &= ~pc.fill_null(pc.equal(ids, query_id), False).to_numpy(zero_copy_only=False)
        candidates = np.flatnonzero(eligible)
        if candidates.size > k:
            kth = np.partition(scores[candidates], candidates.size - k)[candidates.size - k]
            candidates = candidates[scores[candidates] >= kth]  # keeps every tie at the k-th score
        best_scores = np.concatenate([best_scores, scores[candidates]])
        best_rows = np.concatenate([best_rows, start + candidates])
        best_ids.extend(ids.take(pa.array(candidates, type=pa.int64())).to_pylist())
        order = np.lexsort((best_rows, -best_scores))[:k]
        best_scores, best_rows = best_scores[order], best_rows[order]
        best_ids = [best_ids[i] for i in order]
        start += n
    return [
        Neighbour(id=str(identifier), row=int(row), similarity=float(score))
        for identifier, row, score in zip(best_ids, best_rows, best_scores, strict=True)
    ]


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
