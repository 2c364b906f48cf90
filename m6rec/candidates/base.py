"""The candidate-source interface, its registry, and the shared top-k selection.

A source is fitted on an :class:`InteractionMatrix`, returns scored candidates for a batch of users in
index space, saves itself as data (``source.json`` plus ``arrays.npz``, never a pickle), and folds in a
newer matrix (new users, items, interactions) without learning its item side again.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import scipy.sparse as sp

from m6rec.candidates.alignment import ItemAlignment, item_id_array
from m6rec.data.interactions import IdIndex, InteractionMatrix
from m6rec.errors import M6RecError
from m6rec.io import atomic_path, write_json
from m6rec.progress import progress

if TYPE_CHECKING:
    from m6rec.candidates.side_inputs import SideInputs

_REGISTRY: dict[str, type[CandidateSource]] = {}

# Cells (users × catalogue items) of one dense score block: about 128 MB of float32 scores.
log = logging.getLogger("m6rec")

# Default cap on the items one history item adds to in an item-item source (its strongest weights).
# At 500 neither EASE's nor ItemKNN's NDCG@10 moved on MovieLens-100K or Last.FM, and at 100k items it
# halves their cost per user against 1,000 (benchmarks/targets_per_item.py, benchmarks/scale.py).
TARGETS_PER_ITEM = 500

BLOCK_CELLS = 32_000_000
# Above this share of a batch's users × catalogue cells, sparse scores are listed as a dense block: sorting
# that many entries costs more than a top-k pass over every column.
DENSE_ENOUGH_SHARE = 0.1
# entries_in builds a table of the matrix's cells once there is a pair to look up per this many cells.
_PAIRS_PER_TABLE_CELL = 64
# Arrays every source saves besides its ``state_arrays``: its training history, the raw IDs of its item
# columns and which of those items it learned (new ones folded in since are not).
COMMON_ARRAYS = ("seen", "item_ids", "learned_items")


class FoldInError(M6RecError):
    """A fitted source cannot fold in new data (it was saved without the raw IDs of its item columns)."""


@dataclass(frozen=True)
class Candidates:
    """Top-k candidates for a batch of users: ``items`` (int, -1 = no item) and ``scores`` (-inf there)."""

    items: np.ndarray
    scores: np.ndarray


@dataclass(frozen=True)
class ScoreBlock:
    """One batch of users' scores in two parts: ``dense`` [users, len(columns)] on the catalogue
    ``columns``, and the non-zero entries of ``sparse`` [users, n_items] (None: none) on other columns.
    An item in neither part has no score (-inf, never a candidate): the model has no evidence for it
    (sparse products drop exact zeros, so a stored zero counts as absent too).

    A source whose scores are mostly absent returns them this way, so that listing a user costs its
    entries (and the dense columns), not the size of the catalogue."""

    columns: np.ndarray
    dense: np.ndarray
    sparse: sp.csr_matrix | None = None

    @classmethod
    def of_sparse(cls, sparse: sp.spmatrix) -> ScoreBlock:
        """Scores that are the entries of ``sparse`` alone."""
        sparse = sp.csr_matrix(sparse, dtype=np.float32)
        return cls(np.empty(0, dtype=np.int64), np.empty((sparse.shape[0], 0), dtype=np.float32), sparse)

    def toarray(self, n_items: int) -> np.ndarray:
        """The dense float32 [users, n_items] scores, -inf where there are none."""
        if self.sparse is None:
            scores = np.full((self.dense.shape[0], n_items), -np.inf, dtype=np.float32)
        else:
            scores = self.sparse.toarray().astype(np.float32, copy=False)
            scores[scores == 0] = -np.inf
        scores[:, self.columns] = self.dense
        return scores


class CandidateSource(ABC):
    """Base class of every candidate source.

    Subclasses set ``name``, take their hyperparameters as keyword arguments, implement ``_fit`` and
    ``score`` (a dense [users, items] block), and list their learned arrays in ``state_arrays``. State
    that is not an array (a FAISS index) goes through ``_save_extra`` / ``_load_extra``, which write and
    read the files named in ``extra_files``.

    Capabilities, which the pipelines ask instead of keeping lists of names:

    - ``needs_history``: users without training interactions get no candidates;
    - ``needs_timestamps``: it learns from the time order of the interactions, so it joins a run only
      when they have timestamps;
    - ``side_inputs``: what it needs besides the interaction matrix (``cf_items``/``cf_users``: the
      two-tower vectors, ``content``: a content embedding space, ``kg``: the knowledge graph);
    - ``refittable``: it learns from the interaction matrix alone, so refitting it on another fold's
      history cannot leak (a source with side inputs reads vectors trained on one particular history);
    - ``refits_to_fold_in``: its fit is counting, about as cheap as bringing it up to date, so
      :meth:`fold_in` simply refits; the others keep what they learned about items (the embedding
      sources: their index, while its vectors are unchanged).
    """

    name: ClassVar[str]
    state_arrays: ClassVar[tuple[str, ...]] = ()
    batch_size: ClassVar[int] = 1024
    needs_history: ClassVar[bool] = True
    needs_timestamps: ClassVar[bool] = False
    side_inputs: ClassVar[tuple[str, ...]] = ()
    extra_files: ClassVar[tuple[str, ...]] = ()
    refits_to_fold_in: ClassVar[bool] = True

    @classmethod
    def refittable(cls) -> bool:
        """Whether it learns from the interaction matrix alone (no side inputs)."""
        return not cls.side_inputs

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if getattr(cls, "name", None):
            _REGISTRY[cls.name] = cls

    def __init__(self, **params):
        self.params = params
        self.n_items: int | None = None
        self.seen: sp.csr_matrix | None = None
        self.item_ids: np.ndarray | None = None
        self.learned_items: np.ndarray | None = None

    def fit(self, train: InteractionMatrix, inputs: SideInputs | None = None) -> CandidateSource:
        """Learn from ``train`` (and, for a source with ``side_inputs``, from ``inputs``: loaded once by the
        pipeline; without them it reads its parameters' files); returns self."""
        self._serve_matrix(train)
        self._fit(self.seen)
        return self

    def fold_in(self, train: InteractionMatrix, inputs: SideInputs | None = None) -> CandidateSource:
        """Bring the fitted (or loaded) source up to date with ``train``, today's interactions; returns self.

        ``train`` may add users and items and order its IDs differently from the matrix the source was
        fitted on: the source aligns them by raw ID and afterwards scores ``train``'s rows and columns.
        Sources that ``refits_to_fold_in`` refit on ``train`` (with ``inputs`` as :meth:`fit` takes them).
        The others keep what they learned about items and score every user from its history in
        ``train``; an item they never saw (new since the fit) gets no score from them (-inf, never a
        candidate: the model does not know it, which is not the same as scoring it zero), which leaves it
        to the sources that read content. Raises :class:`FoldInError` for a source saved without its item
        IDs.
        """
        self._require_fitted()
        if self.refits_to_fold_in:
            return self.fit(train, inputs)
        alignment = self._item_alignment(train.items)
        self._fold_in(train, alignment, inputs)
        learned_items = alignment.learned_items(self.learned_items)
        self._serve_matrix(train)
        self.learned_items = learned_items
        return self

    def _serve_matrix(self, train: InteractionMatrix) -> None:
        """Serve ``train``'s rows and columns from now on: its history is what recommendations exclude."""
        self.n_items = train.n_items
        self.seen = train.matrix.tocsr()
        self.item_ids = item_id_array(train.items.ids)
        self.learned_items = np.ones(train.n_items, dtype=bool)

    def _item_alignment(self, items: IdIndex) -> ItemAlignment:
        """How this source's item columns map onto ``items``; raises FoldInError without its item IDs."""
        if self.item_ids is None:
            raise FoldInError(
                f"{self.name}: this saved source has no item IDs (it was saved by an older version), so "
                "new interactions cannot be aligned with what it learned",
                hint="retrain the model to save sources that fold in new data",
            )
        return ItemAlignment.by_id(self.item_ids, items)

    @abstractmethod
    def _fit(self, matrix: sp.csr_matrix) -> None: ...

    def _fold_in(self, train: InteractionMatrix, alignment: ItemAlignment, inputs: SideInputs | None) -> None:
        """Move the learned item side onto ``train``'s columns (``alignment``) and compute what depends on
        the users' histories; sources that do not ``refits_to_fold_in`` implement it."""
        raise NotImplementedError(
            f"{self.name} keeps its item side on fold_in but does not implement _fold_in"
        )

    @abstractmethod
    def score(self, user_rows: np.ndarray) -> np.ndarray:
        """Dense float32 scores [len(user_rows), n_items] for the given user rows."""

    def _unlearned_items_unscored(self, scores: np.ndarray) -> np.ndarray:
        """``scores`` [users, n_items] with -inf for the items folded in that the source never learned."""
        if self.learned_items is not None and not self.learned_items.all():
            scores[:, ~self.learned_items] = -np.inf
        return scores

    def recommend(self, user_rows: np.ndarray, k: int, *, exclude_seen: bool = True) -> Candidates:
        """Top-``k`` items per user, best first; seen items are removed unless ``exclude_seen`` is False.

        Users without history get no candidates from sources that need one (``needs_history``).
        ``k`` may exceed the catalogue: missing places are padded with item -1 and score -inf.
        """
        self._require_fitted()
        user_rows = np.asarray(user_rows, dtype=np.int64)
        items = np.full((len(user_rows), k), -1, dtype=np.int64)
        scores = np.full((len(user_rows), k), -np.inf, dtype=np.float32)
        # Users per block: ``batch_size``, fewer on a catalogue so wide that the block would pass BLOCK_CELLS.
        per_block = max(1, min(self.batch_size, BLOCK_CELLS // max(self.n_items, 1)))
        batch_starts = range(0, len(user_rows), per_block)
        for start in progress(batch_starts, desc=f"scoring candidates ({self.name})", unit="batch"):
            rows = user_rows[start : start + per_block]
            history = self._history(rows)
            listed = self._top_of_block(self.score_block(rows), history, k, exclude_seen)
            items[start : start + len(rows)], scores[start : start + len(rows)] = listed
        return Candidates(items, scores)

    def score_block(self, user_rows: np.ndarray) -> ScoreBlock:
        """The scores of ``user_rows`` as :meth:`recommend` reads them; the dense :meth:`score` block by
        default (sources with sparse scores override it)."""
        return ScoreBlock(np.arange(self.n_items), np.asarray(self.score(user_rows), dtype=np.float32))

    def _top_of_block(
        self, block: ScoreBlock, history: sp.csr_matrix, k: int, exclude_seen: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        """The best ``k`` items per row of ``block``: without the ``history`` items unless not
        ``exclude_seen``, without items the source never learned, nothing for users without history
        when the source ``needs_history``; ties to the lower item."""
        n_rows, sizes = history.shape[0], np.diff(history.indptr)
        if block.sparse is not None and block.sparse.nnz > DENSE_ENOUGH_SHARE * n_rows * self.n_items:
            block = ScoreBlock(np.arange(self.n_items), block.toarray(self.n_items))
        entry_rows = np.repeat(np.arange(n_rows), sizes)
        unserved = sizes == 0 if self.needs_history else np.zeros(n_rows, dtype=bool)
        learned = self.learned_items if self.learned_items is not None else np.ones(self.n_items, bool)
        dense = np.asarray(block.dense, dtype=np.float32)  # a fresh block: masked in place
        if not learned.all():
            dense[:, ~learned[block.columns]] = -np.inf
        dense[unserved] = -np.inf
        if exclude_seen:
            position = np.full(self.n_items, -1, dtype=np.int64)
            position[block.columns] = np.arange(len(block.columns))
            entry_positions = position[history.indices]
            in_block = entry_positions >= 0
            dense[entry_rows[in_block], entry_positions[in_block]] = -np.inf
        positions, dense_scores = top_k(dense, k)
        padded_columns = np.append(block.columns, -1)  # position -1 (no item) reads the -1 at the end
        if block.sparse is None or block.sparse.nnz == 0:
            return padded_columns[positions], dense_scores
        sparse = _listable_entries(block.sparse, history if exclude_seen else None, ~unserved, learned)
        sparse_items, sparse_scores = _top_of_rows(sparse, k, missing=self.n_items)
        dense_items = np.where(positions >= 0, padded_columns[positions], self.n_items)
        return best_k(np.hstack([dense_items, sparse_items]), np.hstack([dense_scores, sparse_scores]), k)

    def _history(self, user_rows: np.ndarray) -> sp.csr_matrix:
        """Training interactions of ``user_rows`` (CSR); rows outside the training matrix (-1) are empty."""
        user_rows = np.asarray(user_rows, dtype=np.int64)
        known = (user_rows >= 0) & (user_rows < self.seen.shape[0])
        if known.all():
            return self.seen[user_rows]
        selector = sp.csr_matrix(
            (np.ones(int(known.sum()), dtype=self.seen.dtype), (np.flatnonzero(known), user_rows[known])),
            shape=(len(user_rows), self.seen.shape[0]),
        )
        return (selector @ self.seen).tocsr()

    def save(self, directory: Path) -> None:
        """Write ``source.json`` (name, parameters) and ``arrays.npz`` (learned state, training history,
        raw item IDs: what :meth:`fold_in` aligns by) into ``directory``."""
        self._require_fitted()
        directory = Path(directory)
        write_json(
            {"name": self.name, "params": self.params, "n_items": self.n_items}, directory / "source.json"
        )
        arrays = {}
        for name in (*self.state_arrays, *COMMON_ARRAYS):
            arrays.update(_flatten(name, getattr(self, name)))
        with atomic_path(directory / "arrays.npz") as temporary:
            with open(temporary, "wb") as handle:
                np.savez(handle, **arrays)
        self._save_extra(directory)

    def _save_extra(self, directory: Path) -> None:  # noqa: B027 - an optional hook, empty by default
        """Write state kept outside ``arrays.npz`` (the files in ``extra_files``); nothing by default."""

    def _load_extra(self, directory: Path) -> None:  # noqa: B027 - an optional hook, empty by default
        """Read what :meth:`_save_extra` wrote, after the arrays are restored; nothing by default."""

    def _require_fitted(self) -> None:
        if self.seen is None:
            raise RuntimeError(f"{self.name} is not fitted; call fit() first")

    def __repr__(self) -> str:
        params = ", ".join(f"{key}={value!r}" for key, value in self.params.items())
        return f"{type(self).__name__}({params})"


class SparseScoresSource(CandidateSource):
    """A source whose scores are a :class:`ScoreBlock` (:meth:`score_block`): an item-item model reaches
    only the items related to a user's history, so a user costs those, not the catalogue."""

    @abstractmethod
    def score_block(self, user_rows: np.ndarray) -> ScoreBlock: ...

    def score(self, user_rows: np.ndarray) -> np.ndarray:
        return self._unlearned_items_unscored(self.score_block(user_rows).toarray(self.n_items))

    def _restricted(self, weights: sp.csr_matrix, what: str) -> sp.csr_matrix:
        """``weights`` (rows: the history item, columns: the items it adds to) with each row cut to its
        ``targets_per_item`` entries of largest magnitude, so that a user costs its history's length times
        that, whatever the catalogue size. In a large catalogue a popular item is linked to most others and
        a few of them in a history reached half the catalogue; what the cut drops are each row's weakest
        contributions. Logged when it cuts anything."""
        keep = self.params["targets_per_item"]
        counts = np.diff(weights.indptr)
        over = counts > keep
        if not over.any():
            return weights
        restricted = strongest_per_row(weights, keep)
        log.info(
            "%s: restricted form: %d of %d items add to more than targets_per_item=%d items' %s; each keeps "
            "its %d strongest (%d of %d weights dropped, %.1f%% of their total magnitude)",
            self.name,
            int(over.sum()),
            weights.shape[0],
            keep,
            what,
            keep,
            weights.nnz - restricted.nnz,
            weights.nnz,
            100 * (1 - np.abs(restricted.data).sum() / max(float(np.abs(weights.data).sum()), 1e-30)),
        )
        return restricted


class SharedScoresSource(CandidateSource):
    """A source that gives every user the same scores (:meth:`shared_scores`, one per item).

    Its lists are one global order with each user's seen items taken out, so :meth:`recommend` costs a
    user ``k`` plus the length of its history, not the size of the catalogue; the lists are the ones the
    dense ``score`` block would give (ties to the lower index, non-finite scores never listed).
    """

    needs_history = False

    @abstractmethod
    def shared_scores(self) -> np.ndarray:
        """float32 scores [n_items], the same for every user."""

    def score(self, user_rows: np.ndarray) -> np.ndarray:
        scores = np.asarray(self.shared_scores(), dtype=np.float32)
        return np.broadcast_to(scores, (len(user_rows), len(scores))).copy()

    def recommend(self, user_rows: np.ndarray, k: int, *, exclude_seen: bool = True) -> Candidates:
        self._require_fitted()
        user_rows = np.asarray(user_rows, dtype=np.int64)
        shared = np.asarray(self.shared_scores(), dtype=np.float32)
        order = np.argsort(-shared, kind="stable")
        order = order[np.isfinite(shared[order])]
        position = np.full(len(shared), -1, dtype=np.int64)
        items = np.full((len(user_rows), k), -1, dtype=np.int64)
        scores = np.full((len(user_rows), k), -np.inf, dtype=np.float32)
        for start in range(0, len(user_rows), self.batch_size):
            rows = user_rows[start : start + self.batch_size]
            history = self._history(rows) if exclude_seen else sp.csr_matrix((len(rows), len(shared)))
            sizes = np.diff(history.indptr)
            pool = order[: k + int(sizes.max(initial=0))]
            position[pool] = np.arange(len(pool))
            entry_positions = position[history.indices]
            position[pool] = -1
            listed = entry_positions >= 0
            blocked = np.zeros((len(rows), len(pool)), dtype=bool)
            blocked[np.repeat(np.arange(len(rows)), sizes)[listed], entry_positions[listed]] = True
            picked = np.argsort(blocked, axis=1, kind="stable")[:, :k]  # unseen first, in the global order
            free = ~np.take_along_axis(blocked, picked, axis=1)
            chosen = pool[picked]
            items[start : start + len(rows), : picked.shape[1]] = np.where(free, chosen, -1)
            scores[start : start + len(rows), : picked.shape[1]] = np.where(free, shared[chosen], -np.inf)
        return Candidates(items, scores)


def strongest_per_row(matrix: sp.csr_matrix, keep: int) -> sp.csr_matrix:
    """The ``keep`` entries of largest magnitude in each row of ``matrix`` (CSR, same shape), ties going
    to the lower column; entries keep their order within a row."""
    lengths = np.diff(matrix.indptr)
    row_of = np.repeat(np.arange(matrix.shape[0]), lengths)
    kept = lengths[row_of] <= keep
    crowded = np.flatnonzero(~kept)
    magnitude = np.abs(matrix.data[crowded])
    order = crowded[np.lexsort((matrix.indices[crowded], -magnitude, row_of[crowded]))]
    ranked_rows = row_of[order]
    rank = np.arange(len(order)) - np.searchsorted(ranked_rows, ranked_rows)
    kept[order[rank < keep]] = True
    counts = np.bincount(row_of[kept], minlength=matrix.shape[0])
    return sp.csr_matrix(
        (matrix.data[kept], matrix.indices[kept], np.r_[0, np.cumsum(counts)]), shape=matrix.shape
    )


def _listable_entries(
    sparse: sp.csr_matrix, seen: sp.csr_matrix | None, served: np.ndarray, learned: np.ndarray
) -> sp.csr_matrix:
    """``sparse`` (CSR without repeated entries, as a sparse product gives it; columns in any order)
    as float32 without its entries that cannot be listed: zero or non-finite, in ``seen`` (when given),
    in rows not ``served`` or in columns not ``learned``. Entries keep their order within a row.

    Seen entries are looked up (:func:`entries_in`) rather than found by sparse arithmetic, which would
    sort every row's entries (most of a batch's time at a 100k-item catalogue)."""
    sparse = sp.csr_matrix(sparse)
    rows = np.repeat(np.arange(sparse.shape[0], dtype=np.int64), np.diff(sparse.indptr))
    data = sparse.data.astype(np.float32, copy=False)
    keep = (data != 0) & np.isfinite(data) & served[rows] & learned[sparse.indices]
    if seen is not None:
        keep &= ~entries_in(seen, rows, sparse.indices)
    counts = np.bincount(rows[keep], minlength=sparse.shape[0])
    return sp.csr_matrix((data[keep], sparse.indices[keep], np.r_[0, np.cumsum(counts)]), shape=sparse.shape)


def entries_in(matrix: sp.csr_matrix, rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """Whether each ``(rows[p], columns[p])`` holds a non-zero entry of ``matrix`` (columns outside the
    matrix, such as -1 padding, hold none).

    Many pairs against a matrix of at most ``BLOCK_CELLS`` cells (a block of sparse scores against its
    users' histories) are looked up in a table of its cells, one read per pair; otherwise the matrix's
    sorted entry keys are searched."""
    matrix = sp.csr_matrix(matrix)
    width = matrix.shape[1] + 1  # so that column -1 of a row is no column of the row before
    entry_rows = np.repeat(np.arange(matrix.shape[0], dtype=np.int64), np.diff(matrix.indptr))
    nonzero = matrix.data != 0
    rows, columns = np.asarray(rows, dtype=np.int64), np.asarray(columns, dtype=np.int64)
    cells = matrix.shape[0] * width
    if cells <= BLOCK_CELLS and rows.size * _PAIRS_PER_TABLE_CELL >= cells:
        table = np.zeros((matrix.shape[0], width), dtype=bool)  # the last column stands for outside
        table[entry_rows[nonzero], matrix.indices[nonzero]] = True
        return table[rows, np.where((columns >= 0) & (columns < matrix.shape[1]), columns, width - 1)]
    keys = np.sort(entry_rows[nonzero] * width + matrix.indices[nonzero])
    if len(keys) == 0:
        return np.zeros(np.shape(rows), dtype=bool)
    wanted = rows * width + columns
    found = np.minimum(np.searchsorted(keys, wanted), len(keys) - 1)
    return keys[found] == wanted


def _top_of_rows(sparse: sp.csr_matrix, k: int, *, missing: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best entries of each row of ``sparse`` (columns in any order), ties to the lower
    column: ``(columns, scores)`` [rows, k], best first, ``missing`` / -inf padded.

    Rows are grouped by their number of entries rounded up to a power of two and each group's entries
    laid out as a padded block, so the work is about twice the entries, not rows × catalogue.
    """
    n_rows = sparse.shape[0]
    columns = np.full((n_rows, k), missing, dtype=np.int64)
    scores = np.full((n_rows, k), -np.inf, dtype=np.float32)
    sizes = np.diff(sparse.indptr)
    widths = np.where(sizes > 0, 2 ** np.ceil(np.log2(np.maximum(sizes, 1))).astype(np.int64), 0)
    for width in np.unique(widths[widths > 0]):
        group = np.flatnonzero(widths == width)
        offsets = np.arange(width)
        present = offsets[None, :] < sizes[group, None]
        at = np.where(present, sparse.indptr[group, None] + offsets[None, :], 0)
        values = np.where(present, sparse.data[at], -np.inf).astype(np.float32, copy=False)
        entry_columns = np.where(present, sparse.indices[at], missing)
        if k < width:
            chosen = _top_positions(values, k, tie_keys=entry_columns)
            values = np.take_along_axis(values, chosen, axis=1)
            entry_columns = np.take_along_axis(entry_columns, chosen, axis=1)
        best_columns, best = best_k(entry_columns, values, k)
        columns[group] = np.where(np.isfinite(best), best_columns, missing)
        scores[group] = best
    return columns, scores


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and values of the ``k`` largest finite scores per row, best first, -1/-inf padded.

    Ties go to the lower index, so the result depends only on the scores. NaN and +inf count as missing.
    """
    scores = np.asarray(scores)
    n_rows, n_cols = scores.shape
    items = np.full((n_rows, k), -1, dtype=np.int64)
    values = np.full((n_rows, k), -np.inf, dtype=np.float32)
    take = min(k, n_cols)
    if take == 0 or n_rows == 0:
        return items, values
    usable = scores < np.inf  # False for NaN and +inf
    if not usable.all():
        scores = np.where(usable, scores, -np.inf)
    if take < n_cols:
        best = _top_positions(scores, take)
    else:
        best = np.broadcast_to(np.arange(n_cols), (n_rows, n_cols))
    best = np.sort(best, axis=1)
    best_scores = np.take_along_axis(scores, best, axis=1)
    order = np.argsort(-best_scores, axis=1, kind="stable")
    best = np.take_along_axis(best, order, axis=1)
    best_scores = np.take_along_axis(best_scores, order, axis=1)
    finite = np.isfinite(best_scores)
    items[:, :take] = np.where(finite, best, -1)
    values[:, :take] = np.where(finite, best_scores, -np.inf)
    return items, values


def best_k(columns: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best ``(columns, scores)`` of each row: highest score first, ties to the lower column;
    -inf scores are missing places (item -1)."""
    order = np.lexsort((columns, -scores), axis=-1)[:, :k]
    columns = np.take_along_axis(columns, order, axis=1)
    scores = np.take_along_axis(scores, order, axis=1)
    found = np.isfinite(scores)
    items = np.full((len(columns), k), -1, dtype=np.int64)
    best = np.full((len(columns), k), -np.inf, dtype=np.float32)
    items[:, : columns.shape[1]] = np.where(found, columns, -1)
    best[:, : scores.shape[1]] = np.where(found, scores, -np.inf)
    return items, best


def _top_positions(scores: np.ndarray, take: int, *, tie_keys: np.ndarray | None = None) -> np.ndarray:
    """Positions of the ``take`` largest scores of each row, in no order, ties at the cut to the lowest
    position (or, given ``tie_keys`` [same shape], to the lowest key).

    torch's top-k selects them (several times faster than numpy's argpartition on catalogue-wide rows);
    rows where it chose among scores tied at the cut are re-picked.
    """
    import torch

    values, positions = torch.topk(torch.from_numpy(np.ascontiguousarray(scores)), take, dim=1, sorted=False)
    cut = values.numpy().min(axis=1)
    positions = positions.numpy()
    # A row whose cut is -inf has fewer finite scores than ``take``: all of them are chosen, the rest dropped.
    straddling = np.flatnonzero(((scores >= cut[:, None]).sum(axis=1) > take) & np.isfinite(cut))
    if len(straddling) and tie_keys is None:
        positions[straddling] = _lowest_index_on_ties(scores[straddling], positions[straddling])
    elif len(straddling):
        order = np.lexsort((tie_keys[straddling], -scores[straddling]), axis=-1)
        positions[straddling] = order[:, :take]
    return positions


def _lowest_index_on_ties(scores: np.ndarray, chosen: np.ndarray) -> np.ndarray:
    """Re-pick ``chosen`` (a top set per row) so that ties at its lowest score keep the lowest indices.

    ``argpartition`` picks arbitrary members of a tie that straddles the cut; in rows with such a tie the
    slots holding the cut score are refilled with the lowest-index columns that have it.
    """
    chosen_scores = np.take_along_axis(scores, chosen, axis=1)
    cut = chosen_scores.min(axis=1, keepdims=True)
    at_cut = scores == cut
    slots = chosen_scores == cut
    straddling = np.flatnonzero(at_cut.sum(axis=1) > slots.sum(axis=1))
    if len(straddling) == 0:
        return chosen
    slots = slots[straddling]
    tied_rows, tied_columns = np.nonzero(at_cut[straddling])  # row-major: columns ascend within a row
    rank_in_row = (
        np.arange(len(tied_rows)) - np.searchsorted(tied_rows, np.arange(len(straddling)))[tied_rows]
    )
    refilled = chosen[straddling]
    refilled[slots] = tied_columns[rank_in_row < slots.sum(axis=1)[tied_rows]]
    chosen = chosen.copy()
    chosen[straddling] = refilled
    return chosen


def _flatten(name: str, value) -> dict[str, np.ndarray]:
    """Arrays to store for one state attribute; sparse matrices are stored as their CSR parts."""
    if sp.issparse(value):
        value = value.tocsr()
        return {
            f"{name}.data": value.data,
            f"{name}.indices": value.indices,
            f"{name}.indptr": value.indptr,
            f"{name}.shape": np.array(value.shape),
        }
    return {name: np.asarray(value)}


def _unflatten(name: str, stored: dict[str, np.ndarray]):
    if name in stored:
        return stored[name]
    parts = (stored[f"{name}.data"], stored[f"{name}.indices"], stored[f"{name}.indptr"])
    return sp.csr_matrix(parts, shape=tuple(stored[f"{name}.shape"]))
