"""The candidate-source interface, its registry, and the shared top-k selection.

A source is fitted on an :class:`InteractionMatrix`, returns scored candidates for a batch of users in
index space, saves itself as data (``source.json`` plus ``arrays.npz``, never a pickle), and folds in a
newer matrix (new users, items, interactions) without learning its item side again.
"""

from __future__ import annotations

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
        batch_starts = range(0, len(user_rows), self.batch_size)
        for start in progress(batch_starts, desc=f"scoring candidates ({self.name})", unit="batch"):
            rows = user_rows[start : start + self.batch_size]
            block = np.asarray(self.score(rows), dtype=np.float32)
            history = self._history(rows)
            history_sizes = np.diff(history.indptr)
            if exclude_seen:
                block[np.repeat(np.arange(len(rows)), history_sizes), history.indices] = -np.inf
            if self.needs_history:
                block[history_sizes == 0] = -np.inf
            top_items, top_scores = top_k(block, k)
            items[start : start + len(rows)] = top_items
            scores[start : start + len(rows)] = top_scores
        return Candidates(items, scores)

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
        best = _lowest_index_on_ties(scores, np.argpartition(-scores, take - 1, axis=1)[:, :take])
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
