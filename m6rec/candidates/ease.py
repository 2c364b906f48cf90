"""EASE (Steck, 2019): a closed-form item-item linear autoencoder, exact on catalogues up to a dense size
limit and dense on the popular items plus sparse on the others beyond it."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp
from scipy.linalg import eigh
from threadpoolctl import threadpool_limits

from m6rec.candidates.base import TARGETS_PER_ITEM, ScoreBlock, SparseScoresSource, strongest_per_row
from m6rec.candidates.itemknn import co_occurrence_blocks

if TYPE_CHECKING:
    from m6rec.candidates.alignment import ItemAlignment
    from m6rec.candidates.side_inputs import SideInputs
    from m6rec.data.interactions import InteractionMatrix

log = logging.getLogger("m6rec")

# Tail items whose small systems are gathered and solved together (256 × 100² float64: 20 MB).
TAIL_BATCH = 256
# From this many l2 values on one matrix, one eigendecomposition and a product per value beat an inverse
# per value: measured with OpenBLAS on 2 cores, a single-threaded eigh costs about 2.6 inverses and the
# product 0.3 of one, so the break-even lies between 3 and 4 values (the default grid has 6).
EIGEN_FROM_GRID_SIZE = 4
DENSE_MODE = "dense"
HEAD_TAIL_MODE = "dense head + sparse tail"


class EASESource(SparseScoresSource):
    """B = argmin ‖X − XB‖² + l2‖B‖² with diag(B) = 0, solved as B = I − P·diag(1/diag P), P = (XᵀX + l2·I)⁻¹.

    Column j of B is the ridge regression (penalty ``l2``) of item j's column on the other items'. The
    inverse is dense in the number of items (8·n² bytes: 75 GiB at 100k), so the source has two modes,
    chosen by the number of items with training interactions and logged by every fit:

    - ``dense`` (at most ``max_items`` such items): the exact closed form over all of them;
    - ``dense head + sparse tail`` (more): the exact closed form over the ``max_items`` most popular
      items (the head), and every other item (the tail) regressed, with the same penalty, on its
      ``tail_neighbours`` most co-occurring head items only: one small solve per item, read from the
      head's Gram matrix. Head and tail scores are both predictions of an item's column from a user's
      head items, so they rank together. A tail item's score is a sparse entry, present for a user
      whose history holds one of the head items it is regressed on: the head is scored densely and
      the tail only where something links it to the history. A popular head item is in the support of
      most tail items, so each head item adds to its ``targets_per_item`` strongest tail weights only
      (:meth:`SparseScoresSource._restricted`): a user costs the head plus its history's length times
      that, not the catalogue.

    Items without training interactions, and tail items nothing in a user's history links to, have no
    score (-inf: never candidates) in both modes. :meth:`fit_grid` fits several ``l2``
    on one matrix from one eigendecomposition of the head's Gram matrix. :meth:`fold_in` keeps B and
    scores each user's current history with it, x_u·B; items added since the fit get no score.
    """

    name = "ease"
    state_arrays = ("weights", "active_items", "tail_weights")
    refits_to_fold_in = False

    def __init__(
        self,
        *,
        l2: float = 500.0,
        max_items: int = 8000,
        tail_neighbours: int = 100,
        targets_per_item: int = TARGETS_PER_ITEM,
    ):
        super().__init__(
            l2=l2, max_items=max_items, tail_neighbours=tail_neighbours, targets_per_item=targets_per_item
        )

    @classmethod
    def fit_grid(
        cls, train: InteractionMatrix, params_list: list[dict], inputs: SideInputs | None = None
    ) -> Iterator[EASESource]:
        """One source per entry of ``params_list``, fitted on ``train``, in order (lazily: one at a time).

        The work that does not depend on ``l2`` is done once per ``(max_items, tail_neighbours)``: the
        head's Gram matrix, the tail's supports, and, for ``EIGEN_FROM_GRID_SIZE`` entries or more, one
        symmetric eigendecomposition G = V·diag(s)·Vᵀ, after which each ``l2`` costs one matrix product,
        P = V·diag(1/(s + l2))·Vᵀ, instead of an inverse. The result equals :meth:`fit` for each entry
        up to float rounding (the tail exactly; the head's weights within float32 resolution).
        """
        matrix = train.matrix.tocsr()
        sources = [cls(**params) for params in params_list]
        shapes = [(source.params["max_items"], source.params["tail_neighbours"]) for source in sources]
        prepared, prepared_shape = None, None
        for position, (source, shape) in enumerate(zip(sources, shapes, strict=True)):
            if shape != prepared_shape:
                prepared = None  # release the previous shape's state before building the next one
                run = itertools.takewhile(lambda other, shape=shape: other == shape, shapes[position:])
                uses = sum(1 for _ in run)
                prepared, prepared_shape = _PreparedFit.build(matrix, *shape, uses=uses), shape
            source._prepared = prepared
            yield source.fit(train, inputs)

    def _fit(self, matrix: sp.csr_matrix) -> None:
        prepared = self.__dict__.pop("_prepared", None)
        if prepared is None:
            prepared = _PreparedFit.build(
                matrix, self.params["max_items"], self.params["tail_neighbours"], uses=1
            )
        self.active_items = prepared.head
        self.tail_weights = self._restricted(prepared.tail_weights(self.params["l2"]), "tail scores")
        self.weights = prepared.head_weights(self.params["l2"])

    def _fold_in(self, train: InteractionMatrix, alignment: ItemAlignment, inputs: SideInputs | None) -> None:
        # A head item gone from the catalogue is in no history and cannot be recommended: drop its row and
        # column rather than keep a place for it.
        head_columns = alignment.current_of_learned[self.active_items]
        listed = head_columns >= 0
        if not listed.all():
            self.weights = self.weights[np.ix_(listed, listed)]
        self.active_items = head_columns[listed]
        self.tail_weights = alignment.item_item(self.tail_weights)

    @property
    def mode(self) -> str:
        """``dense`` or ``dense head + sparse tail`` (see the class docstring)."""
        self._require_fitted()
        with_interactions = np.count_nonzero(self.seen.getnnz(axis=0))
        return HEAD_TAIL_MODE if with_interactions > len(self.active_items) else DENSE_MODE

    def score_block(self, user_rows: np.ndarray) -> ScoreBlock:
        """The head's scores dense, the tail's sparse: a tail item no head item of the history is
        regressed on has no score (rather than an exact zero that would rank it among the rest)."""
        history = self._history(user_rows)
        head = np.asarray(history[:, self.active_items] @ self.weights, dtype=np.float32)
        tail = history @ self.tail_weights if self.tail_weights.nnz else None
        return ScoreBlock(
            self.active_items, head, None if tail is None else sp.csr_matrix(tail, dtype=np.float32)
        )


@dataclass
class _TailSupport:
    """Per tail item (catalogue column ``items[t]``): the head positions it is regressed on
    (``support[t, :]``, padded where ``valid`` is False) and its co-occurrence with each of them."""

    items: np.ndarray
    support: np.ndarray
    valid: np.ndarray
    co_counts: np.ndarray


class _PreparedFit:
    """What a fit on one matrix computes before ``l2`` enters: the head, its Gram matrix (or the Gram's
    eigendecomposition) and the tail's supports. ``head_weights`` and ``tail_weights`` finish the fit
    for one ``l2``; ``uses`` says for how many, so that the last inverse may overwrite the Gram matrix."""

    def __init__(
        self, n_items: int, head: np.ndarray, gram: np.ndarray, tail: _TailSupport | None, uses: int
    ):
        self.n_items, self.head, self.tail = n_items, head, tail
        self._gram: np.ndarray | None = gram
        self._eigen: tuple[np.ndarray, np.ndarray] | None = None
        self._uses_left = uses

    @classmethod
    def build(cls, matrix: sp.csr_matrix, max_items: int, tail_neighbours: int, *, uses: int) -> _PreparedFit:
        popularity = np.asarray(matrix.sum(axis=0)).ravel()
        active = np.flatnonzero(popularity > 0)
        head = active
        if len(active) > max_items:
            head = np.sort(active[np.argsort(-popularity[active], kind="stable")[:max_items]])
        columns = matrix[:, head].astype(np.float64)
        gram = (columns.T @ columns).toarray()
        tail = None
        if len(head) < len(active):
            tail = _tail_support(matrix, head, np.setdiff1d(active, head), tail_neighbours)
            _log_head_tail_mode(matrix.shape[1], len(active), head, tail, tail_neighbours)
        else:
            log.debug("ease: %s mode over %d items", DENSE_MODE, len(head))
        prepared = cls(matrix.shape[1], head, gram, tail, uses)
        if uses >= EIGEN_FROM_GRID_SIZE and len(head):
            prepared._decompose()
        return prepared

    def head_weights(self, l2: float) -> np.ndarray:
        """B over the head, float32, zero diagonal: from the eigendecomposition when there is one, else
        from an inverse of G + l2·I (which overwrites the Gram matrix on the last use)."""
        self._uses_left -= 1
        if self._eigen is not None:
            eigenvalues, eigenvectors = self._eigen
            scaled = eigenvectors * (1.0 / (eigenvalues + l2))
            precision = scaled @ eigenvectors.T
            del scaled
        else:
            system = self._gram if self._uses_left == 0 else self._gram.copy()
            if self._uses_left == 0:
                self._gram = None
            system[np.diag_indices_from(system)] += l2
            precision = np.linalg.inv(system)
            del system
        precision /= -np.diag(precision)
        precision[np.diag_indices_from(precision)] = 0.0
        return precision.astype(np.float32)

    def tail_weights(self, l2: float) -> sp.csr_matrix:
        """[n_items, n_items] CSR: entry (h, t) weighs head item h in the score of tail item t; empty in
        the dense mode. Each tail item's weights solve (G_SS + l2·I)·b = G_St over its support S. Call it
        before ``head_weights`` for the same ``l2``."""
        if self.tail is None:
            return sp.csr_matrix((self.n_items, self.n_items), dtype=np.float32)
        tail = self.tail
        # One BLAS thread: threaded OpenBLAS solves these small systems 20 times slower (2 cores).
        with threadpool_limits(limits=1, user_api="blas"):
            solution = self._solve_tail(l2)
        rows, slots = np.nonzero(tail.valid)
        return sp.csr_matrix(
            (
                solution[rows, slots].astype(np.float32),
                (self.head[tail.support[rows, slots]], tail.items[rows]),
            ),
            shape=(self.n_items, self.n_items),
        )

    def _solve_tail(self, l2: float) -> np.ndarray:
        """[tail items, tail_neighbours] solutions of the tail's systems (0 in the padding)."""
        tail, solutions = self.tail, []
        diagonal = np.arange(tail.support.shape[1])
        for start in range(0, len(tail.items), TAIL_BATCH):
            support = tail.support[start : start + TAIL_BATCH]
            valid = tail.valid[start : start + TAIL_BATCH]
            systems = self._gram[support[:, :, None], support[:, None, :]]
            systems *= valid[:, :, None] & valid[:, None, :]
            # Padding decouples with a unit diagonal and a zero right-hand side, so it solves to 0.
            systems[:, diagonal, diagonal] += np.where(valid, l2, 1.0)
            right = tail.co_counts[start : start + TAIL_BATCH, :, None]
            solutions.append(np.linalg.solve(systems, right)[:, :, 0])
        return np.concatenate(solutions)

    def _decompose(self) -> None:
        # The tail's systems read the Gram matrix itself, so it stays when there is a tail.
        gram = self._gram.copy() if self.tail is not None else self._gram
        if self.tail is None:
            self._gram = None
        # OpenBLAS's threaded tridiagonal reduction (dsytrd) runs several times slower than one thread
        # (OpenBLAS issues 873 and 3801; 6x on 2 cores here), so the eigendecomposition runs on one.
        with threadpool_limits(limits=1, user_api="blas"):
            self._eigen = eigh(gram, overwrite_a=True, check_finite=False, driver="evd")


def _tail_support(matrix: sp.csr_matrix, head: np.ndarray, tail: np.ndarray, neighbours: int) -> _TailSupport:
    """Each tail item's ``neighbours`` most co-occurring head items (ties going to the lower column),
    computed a block of tail items at a time."""
    columns = matrix.tocsc().astype(np.float32)
    support = np.zeros((len(tail), neighbours), dtype=np.int32)
    valid = np.zeros((len(tail), neighbours), dtype=bool)
    co_counts = np.zeros((len(tail), neighbours), dtype=np.float64)
    start = 0
    for block_items, counts in co_occurrence_blocks(columns, tail, head):
        best = strongest_per_row(counts, neighbours)
        row_of = np.repeat(np.arange(len(block_items)), np.diff(best.indptr))
        slot = np.arange(best.nnz) - best.indptr[row_of]
        support[start + row_of, slot] = best.indices
        valid[start + row_of, slot] = True
        co_counts[start + row_of, slot] = best.data
        start += len(block_items)
    return _TailSupport(tail, support, valid, co_counts)


def _log_head_tail_mode(
    n_items: int, n_active: int, head: np.ndarray, tail: _TailSupport, neighbours: int
) -> None:
    unlinked = int(np.count_nonzero(~tail.valid.any(axis=1)))
    log.info(
        "ease: %s mode: %d of %d catalogue items have interactions, over max_items=%d (a dense model "
        "over all of them needs %.1f GiB per n×n float64 matrix); exact on the %d most popular (%.2f GiB), "
        "the other %d regressed on up to %d co-occurring head items each (%d of them share no user with "
        "the head and get no score)",
        HEAD_TAIL_MODE,
        n_active,
        n_items,
        len(head),
        8 * n_active**2 / 2**30,
        len(head),
        8 * len(head) ** 2 / 2**30,
        len(tail.items),
        neighbours,
        unlinked,
    )
