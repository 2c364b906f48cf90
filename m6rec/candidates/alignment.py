"""Aligning what a fitted source learned about items with the columns of a newer interaction matrix.

A source is fitted on one :class:`~m6rec.data.interactions.InteractionMatrix`; a later one (the nightly
batch's) may add users and items and number its columns in another order. :class:`ItemAlignment` maps the
two column spaces onto each other by raw item ID, so that a source can keep its learned item side and move
it, and the users' histories, between them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from m6rec.data.interactions import IdIndex


def item_id_array(ids: np.ndarray) -> np.ndarray:
    """Raw IDs as a numpy unicode array, which ``np.savez`` stores and ``np.load`` reads without pickle."""
    return np.asarray(ids, dtype=str)


@dataclass(frozen=True)
class ItemAlignment:
    """How a source's item columns (``learned``) map onto today's columns (``current``), by raw ID.

    ``learned_of_current[c]`` is the source's column of today's item ``c``, -1 for an item the source
    never saw; ``current_of_learned[j]`` is today's column of the source's item ``j``, -1 for an item no
    longer in the matrix.
    """

    learned_of_current: np.ndarray
    current_of_learned: np.ndarray

    @classmethod
    def by_id(cls, learned_ids: np.ndarray, current: IdIndex) -> ItemAlignment:
        """The alignment of the source's item IDs ``learned_ids`` (in its column order) with ``current``."""
        learned = IdIndex(np.asarray(learned_ids, dtype=object))
        learned_of_current = learned.positions(item_id_array(current.ids))
        known = learned_of_current >= 0
        current_of_learned = np.full(len(learned), -1, dtype=np.int64)
        current_of_learned[learned_of_current[known]] = np.flatnonzero(known)
        return cls(learned_of_current, current_of_learned)

    @property
    def n_current(self) -> int:
        return len(self.learned_of_current)

    @property
    def is_identity(self) -> bool:
        """Same items in the same order: nothing needs moving."""
        return len(self.current_of_learned) == self.n_current and np.array_equal(
            self.learned_of_current, np.arange(self.n_current)
        )

    def learned_items(self, learned_before: np.ndarray) -> np.ndarray:
        """Which of today's columns hold an item the source learned (``learned_before``: over its own)."""
        known = self.learned_of_current >= 0
        learned = np.zeros(self.n_current, dtype=bool)
        learned[known] = learned_before[self.learned_of_current[known]]
        return learned

    def item_rows(self, array: np.ndarray) -> np.ndarray:
        """``array`` [learned items, ...] re-ordered to today's columns, zero rows for new items."""
        if self.is_identity:
            return array
        moved = np.zeros((self.n_current, *array.shape[1:]), dtype=array.dtype)
        known = self.learned_of_current >= 0
        moved[known] = array[self.learned_of_current[known]]
        return moved

    def item_item(self, matrix: sp.spmatrix) -> sp.csr_matrix:
        """A learned item × item matrix on today's columns along both axes: entries of items no longer in
        the matrix are dropped, new items have none. Every entry keeps its value (no sums)."""
        if self.is_identity:
            return matrix.tocsr()
        entries = matrix.tocoo()
        rows, cols = self.current_of_learned[entries.row], self.current_of_learned[entries.col]
        kept = (rows >= 0) & (cols >= 0)
        return sp.csr_matrix(
            (entries.data[kept], (rows[kept], cols[kept])), shape=(self.n_current, self.n_current)
        )

    def histories_on_learned(self, histories: sp.csr_matrix) -> sp.csr_matrix:
        """Today's user × item rows moved onto the source's columns; interactions with new items, which
        the source cannot place, are dropped."""
        if self.is_identity:
            return histories.tocsr()
        histories = histories.tocsr()
        columns = self.learned_of_current[histories.indices]
        kept = columns >= 0
        row_of = np.repeat(np.arange(histories.shape[0]), np.diff(histories.indptr))
        indptr = np.r_[0, np.cumsum(np.bincount(row_of[kept], minlength=histories.shape[0]))]
        moved = sp.csr_matrix(
            (histories.data[kept], columns[kept], indptr),
            shape=(histories.shape[0], len(self.current_of_learned)),
        )
        moved.sort_indices()
        return moved
