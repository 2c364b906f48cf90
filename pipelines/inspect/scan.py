"""The one streaming pass over the file: null and NaN counts, vector statistics, rows with problems, the
random sample, the rows of one ID and the query vector for neighbours."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from m6rec.errors import DataError
from pipelines.inspect.vectors import _VectorStats

PROBLEM_COLUMN = "problem"
MAX_ID_ROWS = 1_000
MAX_PROBLEM_EXAMPLES = 10
SAMPLE_SEED = 0


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
