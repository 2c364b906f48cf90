"""Item-based k-nearest-neighbours with shrunk cosine similarity."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from m6rec.candidates.base import CandidateSource


class ItemKNNSource(CandidateSource):
    """Score = sum of the similarities between an item and the user's history items.

    Similarity is cosine between item columns, shrunk by ``shrink`` (``dot / (norm_i * norm_j + shrink)``),
    keeping each item's ``neighbours`` most similar items.
    """

    name = "itemknn"
    state_arrays = ("similarity",)

    def __init__(self, *, neighbours: int = 100, shrink: float = 10.0):
        super().__init__(neighbours=neighbours, shrink=shrink)

    def _fit(self, matrix: sp.csr_matrix) -> None:
        columns = matrix.tocsc().astype(np.float32)
        co_counts = (columns.T @ columns).tocsr()
        norms = np.sqrt(np.asarray(columns.multiply(columns).sum(axis=0)).ravel())
        co_counts.setdiag(0)
        co_counts.eliminate_zeros()
        rows = np.repeat(np.arange(co_counts.shape[0]), np.diff(co_counts.indptr))
        co_counts.data = co_counts.data / (norms[rows] * norms[co_counts.indices] + self.params["shrink"])
        self.similarity = _keep_top_per_row(co_counts, self.params["neighbours"]).T.tocsr()

    def score(self, user_rows: np.ndarray) -> np.ndarray:
        history = self._history(user_rows)
        return np.asarray((history @ self.similarity).todense(), dtype=np.float32)


def _keep_top_per_row(matrix: sp.csr_matrix, keep: int) -> sp.csr_matrix:
    """Zero all but the ``keep`` largest entries of each row."""
    data, indices, indptr = [], [], [0]
    for row in range(matrix.shape[0]):
        start, end = matrix.indptr[row], matrix.indptr[row + 1]
        values = matrix.data[start:end]
        if len(values) > keep:
            best = np.argpartition(-values, keep - 1)[:keep]
            values, cols = values[best], matrix.indices[start:end][best]
        else:
            cols = matrix.indices[start:end]
        data.append(values)
        indices.append(cols)
        indptr.append(indptr[-1] + len(values))
    return sp.csr_matrix(
        (np.concatenate(data).astype(np.float32), np.concatenate(indices), np.array(indptr)),
        shape=matrix.shape,
    )
