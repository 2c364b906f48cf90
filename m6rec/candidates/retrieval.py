"""Exact top-k lists from a vector search: the machinery every source that scores a user by the inner
product of a query vector with item vectors shares (the FAISS embedding sources, iALS).

A search finds each user's nearest item vectors a little deeper than the list; the seen items are dropped
and the rest re-scored exactly, so no users × catalogue block is ever built and a user costs what the
search costs, not the size of the catalogue.
"""

from __future__ import annotations

import math
from abc import abstractmethod

import numpy as np
import scipy.sparse as sp

from m6rec.candidates.base import Candidates, CandidateSource, best_k, entries_in, top_k
from m6rec.progress import progress

# Cap on the float64 values gathered at once to re-score retrieved items: bounds memory to about 128 MB.
RESCORE_CHUNK_VALUES = 16_000_000
# The index is searched this share of k (at least MIN_SEEN_MARGIN) deeper than the list, for the seen
# items that are dropped; users whose list still comes up short are searched again, deeper.
SEEN_MARGIN_SHARE = 0.5
MIN_SEEN_MARGIN = 10


def search_depth(k: int) -> int:
    """How deep the index is searched for lists of ``k``: ``k`` plus a margin for the seen items."""
    return k + max(MIN_SEEN_MARGIN, math.ceil(k * SEEN_MARGIN_SHARE))


class VectorRetrieval(CandidateSource):
    """A source whose score of an item for a user is ``query_vectors[user] · item_vectors[item]`` over the
    ``indexed_items``, found through :meth:`_search` (which may be approximate: what it finds is re-scored
    exactly, in float64 rounded to float32, so a user's list never depends on its batch).

    Subclasses keep ``query_vectors`` [n_users, d], ``item_vectors`` [n_items, d] and ``indexed_items``
    (the catalogue columns that can be listed), and implement :meth:`_search` and :meth:`_served`.
    """

    batch_size = 256

    @abstractmethod
    def _search(self, rows: np.ndarray, depth: int) -> np.ndarray:
        """Positions in ``indexed_items`` of about the ``depth`` best items of each of ``rows``, best
        first, -1 where there are fewer."""

    @abstractmethod
    def _served(self, user_rows: np.ndarray) -> np.ndarray:
        """Which of ``user_rows`` have a query vector (rows outside the training matrix have none)."""

    def score(self, user_rows: np.ndarray) -> np.ndarray:
        user_rows = np.asarray(user_rows, dtype=np.int64)
        served = self._served(user_rows)
        scores = np.full((len(user_rows), self.n_items), -np.inf, dtype=np.float32)
        queries = self.query_vectors[user_rows[served]].astype(np.float64)
        block = queries @ self.item_vectors[self.indexed_items].T.astype(np.float64)
        scores[np.ix_(np.flatnonzero(served), self.indexed_items)] = block.astype(np.float32)
        return scores

    def recommend(self, user_rows: np.ndarray, k: int, *, exclude_seen: bool = True) -> Candidates:
        """Top-``k`` items per user from the search, best first; seen items removed unless asked not to.

        The search goes :func:`search_depth` (``k`` plus a fixed margin) deep, seen items are
        dropped and the rest are re-scored exactly (as :meth:`score` does). The few users whose list then
        comes up short (many of their nearest items seen) are searched again, as deep as their own history
        needs, and exactly if that still falls short. How deep a user is searched thus depends on that user
        alone, so its list does not depend on its batch, and where the index is exact the lists are those
        of exact search without the seen items. Users without a query vector get nothing; missing places
        are -1 with score -inf.
        """
        self._require_fitted()
        user_rows = np.asarray(user_rows, dtype=np.int64)
        items = np.full((len(user_rows), k), -1, dtype=np.int64)
        scores = np.full((len(user_rows), k), -np.inf, dtype=np.float32)
        batch_starts = range(0, len(user_rows), self.batch_size)
        for start in progress(batch_starts, desc=f"retrieving candidates ({self.name})", unit="batch"):
            rows = user_rows[start : start + self.batch_size]
            served = np.flatnonzero(self._served(rows))
            if len(served) == 0 or k == 0:
                continue
            batch_items, batch_scores = self._retrieve(rows[served], k, exclude_seen)
            items[start + served] = batch_items
            scores[start + served] = batch_scores
        return Candidates(items, scores)

    def _retrieve(self, rows: np.ndarray, k: int, exclude_seen: bool) -> tuple[np.ndarray, np.ndarray]:
        """The best ``k`` unseen items for users with a query: search :func:`search_depth` deep; users
        left short after dropping their seen items are searched again as deep as their history needs,
        and exactly where even that falls short."""
        history = self._history(rows) if exclude_seen else sp.csr_matrix((len(rows), self.n_items))
        depth = search_depth(k)
        items, best, short = self._search_unseen(rows, depth, k, history)
        if short.any():
            # Depths double from the first one until they cover k plus the user's history, so how deep a
            # user is searched depends on that user alone, never on the others in its batch.
            again = np.flatnonzero(short)
            needed = k + np.diff(history.indptr)[again]
            doublings = np.maximum(1, np.ceil(np.log2(needed / depth))).astype(np.int64)
            for doubling in np.unique(doublings):
                group = again[doublings == doubling]
                deeper = min(depth * 2 ** int(doubling), len(self.indexed_items))
                items[group], best[group], short[group] = self._search_unseen(
                    rows[group], deeper, k, history[group]
                )
        if short.any():
            items[short], best[short] = self._exact_top(rows[short], k, history[np.flatnonzero(short)])
        return items, best

    def _search_unseen(
        self, rows: np.ndarray, depth: int, k: int, history: sp.csr_matrix
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Search ``depth`` deep, drop the items in ``history``, re-score exactly and keep the best ``k``.

        Returns ``(items, scores, short)``: ``short`` marks the rows left with fewer than ``k`` items
        while the search did not reach every indexed item.
        """
        positions = self._search(rows, depth)
        columns = np.where(positions >= 0, self.indexed_items[np.maximum(positions, 0)], -1)
        keep = (columns >= 0) & ~_is_seen(history, columns)
        scores = np.where(keep, self._pair_scores(rows, np.maximum(columns, 0)), -np.inf).astype(np.float32)
        items, best = best_k(np.where(keep, columns, self.n_items), scores, k)
        short = (np.isfinite(best).sum(axis=1) < k) & ((positions >= 0).sum(axis=1) < len(self.indexed_items))
        return items, best, short

    def _exact_top(self, rows: np.ndarray, k: int, history: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
        """The best ``k`` indexed items not in ``history`` for each of ``rows``, by exact scores (float64
        dot products rounded to float32, as :meth:`score`), scanned in chunks of items."""
        queries = self.query_vectors[rows].astype(np.float64)
        items = np.full((len(rows), k), -1, dtype=np.int64)
        best = np.full((len(rows), k), -np.inf, dtype=np.float32)
        per_chunk = max(1, RESCORE_CHUNK_VALUES // max(len(rows), self.item_vectors.shape[1]))
        for start in range(0, len(self.indexed_items), per_chunk):
            columns = self.indexed_items[start : start + per_chunk]
            block = (queries @ self.item_vectors[columns].T.astype(np.float64)).astype(np.float32)
            block[history[:, columns].toarray() > 0] = -np.inf
            chunk_positions, chunk_scores = top_k(block, k)
            chunk_columns = np.where(
                chunk_positions >= 0, columns[np.maximum(chunk_positions, 0)], self.n_items
            )
            items, best = best_k(
                np.hstack([np.where(items >= 0, items, self.n_items), chunk_columns]),
                np.hstack([best, chunk_scores]),
                k,
            )
        return items, best

    def _pair_scores(self, rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
        """Float32-rounded float64 dot products of each row's query with the items in its ``columns``."""
        scores = np.empty(columns.shape, dtype=np.float32)
        per_chunk = max(1, RESCORE_CHUNK_VALUES // max(1, columns.shape[1] * self.item_vectors.shape[1]))
        for start in range(0, len(rows), per_chunk):
            chunk = slice(start, start + per_chunk)
            queries = self.query_vectors[rows[chunk]].astype(np.float64)
            gathered = self.item_vectors[columns[chunk]].astype(np.float64)
            scores[chunk] = np.einsum("ud,ukd->uk", queries, gathered).astype(np.float32)
        return scores


def _is_seen(history: sp.csr_matrix, columns: np.ndarray) -> np.ndarray:
    """Mask of the entries of ``columns`` [rows, depth] that are in the matching row of ``history``."""
    rows = np.broadcast_to(np.arange(columns.shape[0])[:, None], columns.shape)
    return entries_in(history, rows, columns)
