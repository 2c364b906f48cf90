"""Item-based k-nearest-neighbours with shrunk cosine similarity, and the blocked item co-occurrence it
is computed from (which EASE's sparse part reads too)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp

from m6rec.candidates.base import TARGETS_PER_ITEM, ScoreBlock, SparseScoresSource, strongest_per_row

if TYPE_CHECKING:
    from m6rec.candidates.alignment import ItemAlignment
    from m6rec.candidates.side_inputs import SideInputs
    from m6rec.data.interactions import InteractionMatrix

# Upper bound on the entries of one block of the co-occurrence product (the count scipy allocates for
# it): 2**24 entries, about 200 MB with their indices, whatever the catalogue size.
BLOCK_ENTRIES = 1 << 24


class ItemKNNSource(SparseScoresSource):
    """Score = sum of the similarities between an item and the user's history items.

    Similarity is cosine between item columns, shrunk by ``shrink`` (``dot / (norm_i * norm_j + shrink)``),
    keeping each item's ``neighbours`` most similar items. An item is then among the neighbours of up to the
    whole catalogue; scoring uses its ``targets_per_item`` strongest links only (see
    :meth:`SparseScoresSource._restricted`). The co-occurrence is computed for blocks of
    items at a time and cut to the neighbours before the next block, so memory stays
    O(interactions + items × neighbours): no items × items array, dense or sparse, is ever built.
    :meth:`fold_in` keeps the similarities and sums them over each user's current history; items added
    since the fit get no score.
    """

    name = "itemknn"
    state_arrays = ("similarity",)
    refits_to_fold_in = False

    def __init__(
        self, *, neighbours: int = 100, shrink: float = 10.0, targets_per_item: int = TARGETS_PER_ITEM
    ):
        super().__init__(neighbours=neighbours, shrink=shrink, targets_per_item=targets_per_item)

    def _fit(self, matrix: sp.csr_matrix) -> None:
        columns = matrix.tocsc().astype(np.float32)
        norms = np.sqrt(np.asarray(columns.multiply(columns).sum(axis=0)).ravel())
        every_item = np.arange(columns.shape[1])
        kept = []
        for block_items, co_counts in co_occurrence_blocks(columns, every_item):
            rows = np.repeat(block_items, np.diff(co_counts.indptr))
            co_counts.data[co_counts.indices == rows] = 0.0
            co_counts.eliminate_zeros()
            rows = np.repeat(block_items, np.diff(co_counts.indptr))
            co_counts.data = co_counts.data / (norms[rows] * norms[co_counts.indices] + self.params["shrink"])
            kept.append(strongest_per_row(co_counts, self.params["neighbours"]))
        n_items = columns.shape[1]
        nearest = (
            sp.vstack(kept, format="csr") if kept else sp.csr_matrix((n_items, n_items), dtype=np.float32)
        )
        self.similarity = self._restricted(nearest.T.tocsr(), "similarity sums")

    def _fold_in(self, train: InteractionMatrix, alignment: ItemAlignment, inputs: SideInputs | None) -> None:
        self.similarity = alignment.item_item(self.similarity)

    def score_block(self, user_rows: np.ndarray) -> ScoreBlock:
        """The similarities summed over the history's items: an item near none of them has no score."""
        return ScoreBlock.of_sparse(self._history(user_rows) @ self.similarity)


def co_occurrence_blocks(
    columns: sp.csc_matrix,
    items: np.ndarray,
    against: np.ndarray | None = None,
    *,
    max_entries: int | None = None,
) -> Iterator[tuple[np.ndarray, sp.csr_matrix]]:
    """The co-occurrence rows ``Xᵀ X`` of ``items`` (columns of the users × items matrix ``columns``),
    a block of consecutive items at a time.

    Yields ``(block_items, counts)``: ``counts[r, c]`` = Σ_u X[u, block_items[r]] · X[u, against[c]]
    (``against`` defaults to every column, so ``c`` is then the item itself). Blocks are cut so that the
    product holds at most ``max_entries`` (default ``BLOCK_ENTRIES``) entries before summing (an item
    whose own row exceeds it comes alone), which bounds the memory of one block whatever the catalogue
    size.
    """
    item_rows = columns[:, items].T.tocsr()
    target = columns if against is None else columns[:, against]
    user_rows = target.tocsr()
    # An item's product row has at most Σ over its users of their interaction counts entries.
    item_users = sp.csr_matrix(
        (np.ones(item_rows.nnz), item_rows.indices, item_rows.indptr), shape=item_rows.shape
    )
    row_bound = item_users @ np.diff(user_rows.indptr).astype(np.float64)
    ends = _block_ends(row_bound, BLOCK_ENTRIES if max_entries is None else max_entries)
    start = 0
    for end in ends:
        yield items[start:end], (item_rows[start:end] @ user_rows).tocsr()
        start = end


def _block_ends(sizes: np.ndarray, budget: int) -> list[int]:
    """Ends of consecutive blocks whose ``sizes`` sum to at most ``budget`` (a larger one alone)."""
    ends, total = [], 0.0
    for position, size in enumerate(sizes):
        if total and total + size > budget:
            ends.append(position)
            total = 0.0
        total += size
    if len(sizes):
        ends.append(len(sizes))
    return ends
