"""Nearest neighbours by cosine of one vector, streamed in batches so memory holds one batch and the best
``k`` so far."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipelines.inspect.reading import _batches
from pipelines.inspect.vectors import _vector_matrix


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
