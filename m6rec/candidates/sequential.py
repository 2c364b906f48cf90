"""Sequential co-occurrence: items interacted with shortly before or after each other, in time order."""

from __future__ import annotations

import logging

import numpy as np
import scipy.sparse as sp

from m6rec.candidates.base import ScoreBlock, SparseScoresSource
from m6rec.data.interactions import InteractionMatrix
from m6rec.errors import ConfigError

log = logging.getLogger("m6rec")


class SequentialSource(SparseScoresSource):
    """Scores items by how often other users interacted with them next to the user's history items.

    Each user's interactions are put in time order; two items at most ``window`` positions apart count
    as one co-occurrence (in both directions). Counts are divided by ``sqrt(pop_i * pop_j)`` (pop + 1, so
    the cosine of the pairing); a user's score for an item is the sum over their history items. Unlike
    ItemKNN, which counts every pair of a history, this picks up what was watched or bought in the same
    session. Without timestamps the source falls back to each user's whole history as one window (a
    warning is logged).
    """

    name = "sequential"
    needs_timestamps = True
    state_arrays = ("weights",)

    def __init__(self, *, window: int = 3):
        if not (isinstance(window, int | np.integer) and window >= 1):
            raise ConfigError(f"sequential: window must be a positive integer, got {window!r}")
        super().__init__(window=int(window))

    def fit(self, train: InteractionMatrix, inputs=None) -> SequentialSource:
        """Count the time-adjacent pairs of ``train``; returns self."""
        times = train.timestamps
        self._timestamps = times.tocsr() if times is not None and np.isfinite(times.data).any() else None
        if self._timestamps is None:
            log.warning("sequential: the training interactions have no timestamps; every pair counts")
        try:
            return super().fit(train)
        finally:
            del self._timestamps

    def _fit(self, matrix: sp.csr_matrix) -> None:
        binary = (matrix > 0).astype(np.float32)
        if self._timestamps is not None:
            pairs = adjacent_pairs(self._timestamps, self.params["window"])
        else:
            pairs = (binary.T @ binary).tocsr()
            pairs.setdiag(0)
            pairs.eliminate_zeros()
        popularity = np.asarray(binary.sum(axis=0), dtype=np.float64).ravel()
        scale = sp.diags(1.0 / np.sqrt(popularity + 1.0))
        self.weights = (scale @ pairs @ scale).astype(np.float32).tocsr()

    def score_block(self, user_rows: np.ndarray) -> ScoreBlock:
        """The transition weights summed over the history's items: an item never next to one of them has
        no score."""
        return ScoreBlock.of_sparse(self._history(user_rows) @ self.weights)


def adjacent_pairs(timestamps: sp.csr_matrix, window: int) -> sp.csr_matrix:
    """Symmetric item × item counts of interactions at most ``window`` positions apart in a user's
    time-ordered row of ``timestamps`` (unix seconds; NaN times sort last, ties by item column)."""
    n_items = timestamps.shape[1]
    users = np.repeat(np.arange(timestamps.shape[0]), np.diff(timestamps.indptr))
    times = np.where(np.isfinite(timestamps.data), timestamps.data, np.inf)
    order = np.lexsort((timestamps.indices, times, users))
    users, items = users[order], timestamps.indices[order]
    rows, cols = [], []
    for distance in range(1, window + 1):
        same_user = users[distance:] == users[:-distance]
        rows.append(items[:-distance][same_user])
        cols.append(items[distance:][same_user])
    rows, cols = np.concatenate(rows), np.concatenate(cols)
    counts = sp.coo_matrix(
        (np.ones(2 * len(rows), dtype=np.float32), (np.r_[rows, cols], np.r_[cols, rows])),
        shape=(n_items, n_items),
    ).tocsr()
    counts.setdiag(0)
    counts.eliminate_zeros()
    return counts
