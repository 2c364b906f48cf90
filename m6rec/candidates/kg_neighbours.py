"""Knowledge-graph neighbours: items that share entities (artist, genre, director...) with recent items."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from m6rec.candidates.base import ScoreBlock, SparseScoresSource
from m6rec.data import contract
from m6rec.data.interactions import IdIndex, InteractionMatrix
from m6rec.errors import ConfigError

log = logging.getLogger("m6rec")


class KGNeighbourSource(SparseScoresSource):
    """Score of item j for a user = Σ over the user's ``recent`` latest items i, over entities e linked to
    both i and j (i ≠ j), of ``idf(e) = log(n_items / items linked to e)``.

    ``kg`` is a knowledge-graph table (CSV or Parquet with ``head``, ``relation``, ``tail``), or, given to
    :meth:`fit` as the ``kg`` side input, the loaded triples; an item takes part wherever its ``item_id``
    is a head or a tail, the other end being its entity. Latest means by
    timestamp; without timestamps the whole training history counts. Items sharing no informative entity
    with those items score -inf (never candidates).
    """

    name = "kg_neighbours"
    side_inputs = ("kg",)
    state_arrays = ("item_entities", "entity_weights", "recent_history")

    def __init__(self, *, kg: str | None = None, recent: int = 10):
        if recent < 1:
            raise ConfigError(f"kg_neighbours: recent must be at least 1, got {recent!r}")
        super().__init__(kg=None if kg is None else str(kg), recent=recent)

    def fit(self, train: InteractionMatrix, inputs=None) -> KGNeighbourSource:
        """Link ``train``'s items to their KG entities and pick each user's recent items; returns self."""
        if inputs is not None and inputs.kg is not None:
            triples = inputs.kg.dropna(subset=[contract.KG_HEAD, contract.KG_TAIL])
        elif self.params["kg"] is not None:
            triples = read_kg(self.params["kg"])
        else:
            raise ConfigError("kg_neighbours needs a knowledge graph: the kg side input or a kg file path")
        self.item_entities = item_entity_incidence(triples, train.items)
        self.recent_history = latest_items(train, self.params["recent"])
        if train.timestamps is None:
            log.info("kg_neighbours: no timestamps, so each user's whole training history counts as recent")
        return super().fit(train)

    def _fit(self, matrix: sp.csr_matrix) -> None:
        linked_items = np.asarray(self.item_entities.sum(axis=0), dtype=np.float64).ravel()
        self.entity_weights = np.log(matrix.shape[1] / np.maximum(linked_items, 1.0))
        if self.item_entities.nnz == 0:
            log.warning("kg_neighbours: no item of the training matrix appears in the knowledge graph")

    def score_block(self, user_rows: np.ndarray) -> ScoreBlock:
        recent = _rows_of(self.recent_history, user_rows).astype(np.float64)
        weighted_entities = self.item_entities.multiply(self.entity_weights[None, :]).tocsr()
        through_entities = (recent @ weighted_entities) @ self.item_entities.T.astype(np.float64)
        own_links = np.asarray(weighted_entities.sum(axis=1)).ravel()
        shared = (through_entities - recent.multiply(own_links[None, :])).tocsr()
        positive = self.entity_weights[self.entity_weights > 0]
        # An item's own links are subtracted again above; half the smallest entity weight separates
        # what is left of a real shared entity from rounding residue.
        shared.data[shared.data < (positive.min() / 2 if len(positive) else np.inf)] = 0.0
        shared.eliminate_zeros()
        return ScoreBlock.of_sparse(shared)


def read_kg(path: str):
    """The ``head``, ``relation``, ``tail`` table at ``path`` (CSV or Parquet), IDs as strings."""
    from m6rec.data.tables import read_table

    if not Path(path).exists():
        raise ConfigError(f"knowledge-graph file {path} not found")
    frame = read_table(Path(path), contract.KG)
    return frame.dropna(subset=[contract.KG_HEAD, contract.KG_TAIL])


def item_entity_incidence(kg, items: IdIndex) -> sp.csr_matrix:
    """Binary [n_items, n_entities] CSR: item i is linked to entity e when a triple joins them.

    Entities are numbered in order of first appearance (heads' partners before tails' partners).
    """
    heads = kg[contract.KG_HEAD].to_numpy(dtype=object)
    tails = kg[contract.KG_TAIL].to_numpy(dtype=object)
    head_items, tail_items = items.positions(heads), items.positions(tails)
    item_rows = np.concatenate([head_items[head_items >= 0], tail_items[tail_items >= 0]])
    partners = np.concatenate([tails[head_items >= 0], heads[tail_items >= 0]])
    entities = IdIndex.from_values(partners)
    incidence = sp.csr_matrix(
        (np.ones(len(item_rows), dtype=np.float32), (item_rows, entities.positions(partners))),
        shape=(len(items), len(entities)),
    )
    incidence.sum_duplicates()
    incidence.data[:] = 1.0
    return incidence


def latest_items(train: InteractionMatrix, recent: int) -> sp.csr_matrix:
    """Binary CSR of each user's ``recent`` latest training items by timestamp (ties: higher column first;
    unknown times count as oldest); the whole training matrix when there are no timestamps."""
    if train.timestamps is None:
        return train.matrix.tocsr().astype(np.float32)
    times = train.timestamps.tocsr()
    rows = np.repeat(np.arange(times.shape[0]), np.diff(times.indptr))
    newest_first = np.lexsort((-times.indices, -np.nan_to_num(times.data, nan=-np.inf), rows))
    rank_in_row = np.arange(len(rows)) - times.indptr[rows[newest_first]]
    keep = newest_first[rank_in_row < recent]
    return sp.csr_matrix(
        (np.ones(len(keep), dtype=np.float32), (rows[keep], times.indices[keep])), shape=times.shape
    )


def _rows_of(matrix: sp.csr_matrix, user_rows: np.ndarray) -> sp.csr_matrix:
    """Rows ``user_rows`` of ``matrix``; rows outside it (-1, too large) are empty."""
    user_rows = np.asarray(user_rows, dtype=np.int64)
    known = (user_rows >= 0) & (user_rows < matrix.shape[0])
    selector = sp.csr_matrix(
        (np.ones(int(known.sum()), dtype=matrix.dtype), (np.flatnonzero(known), user_rows[known])),
        shape=(len(user_rows), matrix.shape[0]),
    )
    return (selector @ matrix).tocsr()
