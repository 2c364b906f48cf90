"""Implicit-feedback alternating least squares (Hu, Koren & Volinsky, 2008) through the `implicit` library."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import scipy.sparse as sp

from m6rec.candidates.alignment import item_id_array
from m6rec.candidates.base import Candidates, CandidateSource
from m6rec.candidates.faiss_index import RECALL_SAMPLE, VectorIndex, build_index
from m6rec.candidates.retrieval import VectorRetrieval
from m6rec.io import atomic_path

if TYPE_CHECKING:
    from m6rec.candidates.alignment import ItemAlignment
    from m6rec.candidates.side_inputs import SideInputs
    from m6rec.data.interactions import InteractionMatrix

USER_IDS_FILE = "user_ids.npy"
# Up to this many catalogue items a dense block of scores and one top-k list a user faster than the FAISS
# search (benchmarks/candidate_scoring.py: 82 against 151 ms per 1000 users at 10k items, 1002 against 592
# at 100k); both give the same lists.
DENSE_UP_TO_ITEMS = 30_000
# From this many learned items the factors are searched approximately (an inverted file tuned for recall).
APPROXIMATE_FROM_ITEMS = 50_000
# Users solved per call of the exact user solve: bounds the copies of their rows and factors it makes.
USER_SOLVE_BATCH = 65_536


class IALSSource(VectorRetrieval):
    """Matrix factorisation of the binary matrix; score = user · item factors.

    As in `implicit`, an observed pair weighs ``alpha`` and an unobserved one 1 (the paper's confidence
    ``1 + alpha·r`` with ``alpha - 1`` in place of ``alpha``), with an L2 ``regularization`` on the factors.
    The fit runs ``iterations`` of `implicit`'s alternating (conjugate-gradient) solves. :meth:`fold_in`
    keeps the fitted factors of users whose history did not change and solves every new or changed user
    exactly from its current history against the fixed item factors. Items added since the fit get no
    score.

    Past ``DENSE_UP_TO_ITEMS`` items, lists come from a FAISS search of the item factors by inner product
    (:meth:`_index`), so scoring a batch holds no users × catalogue block; on smaller catalogues one dense
    block per batch is faster. Up to ``APPROXIMATE_FROM_ITEMS`` the search is exact and both give the
    same lists; past it an inverted file tuned for recall ≥ 0.95 at the searched depth (measured on the
    users' own factors, and logged) keeps a user's cost from growing with the catalogue.
    """

    name = "ials"
    state_arrays = ("user_factors", "item_factors")
    extra_files = (USER_IDS_FILE,)
    refits_to_fold_in = False

    def __init__(
        self,
        *,
        factors: int = 64,
        regularization: float = 0.05,
        alpha: float = 10.0,
        iterations: int = 20,
        seed: int = 0,
    ):
        super().__init__(
            factors=factors, regularization=regularization, alpha=alpha, iterations=iterations, seed=seed
        )

    def fit(self, train: InteractionMatrix, inputs: SideInputs | None = None) -> IALSSource:
        super().fit(train, inputs)
        self.user_ids = item_id_array(train.users.ids)
        return self

    def _save_extra(self, directory: Path) -> None:
        with atomic_path(Path(directory) / USER_IDS_FILE) as temporary:
            with open(temporary, "wb") as handle:
                np.save(handle, self.user_ids, allow_pickle=False)

    def _load_extra(self, directory: Path) -> None:
        path = Path(directory) / USER_IDS_FILE
        self.user_ids = np.load(path, allow_pickle=False) if path.exists() else None

    def _fit(self, matrix: sp.csr_matrix) -> None:
        from threadpoolctl import threadpool_limits

        from m6rec.progress import progress_enabled

        with threadpool_limits(1, "blas"):  # implicit parallelises itself; nested BLAS threads slow it down
            model = self._model()
            model.fit(matrix.astype(np.float32), show_progress=progress_enabled())
        # The factors of implicit's last alternating step, not an exact re-solve: on MovieLens-100K exact
        # user factors gave the ranker's final NDCG@10 0.4754 against 0.4863 (seed 43).
        self.item_factors = np.asarray(model.item_factors, dtype=np.float32)
        self.user_factors = np.asarray(model.user_factors, dtype=np.float32)

    def _fold_in(self, train: InteractionMatrix, alignment: ItemAlignment, inputs: SideInputs | None) -> None:
        # Users are solved against every item the model learned (its Gram matrix included), before the
        # item factors move onto today's columns; a user whose history is the one it was fitted on keeps
        # its fitted factors, so folding in unchanged data changes nothing.
        histories = alignment.histories_on_learned(train.matrix)
        kept, fitted_rows = self._unchanged_users(train.users.ids, histories)
        user_factors = self._solve_users(histories)
        user_factors[kept] = self.user_factors[fitted_rows]
        self.user_factors = user_factors
        self.user_ids = item_id_array(train.users.ids)
        self.item_factors = alignment.item_rows(self.item_factors)

    def _unchanged_users(
        self, user_ids: np.ndarray, histories: sp.csr_matrix
    ) -> tuple[np.ndarray, np.ndarray]:
        """Rows of today's users whose history (on the learned columns) is their fitted one, and their
        rows in the fitted factors."""
        if getattr(self, "user_ids", None) is None:
            return np.array([], dtype=np.int64), np.array([], dtype=np.int64)
        fitted = pd.Index(self.user_ids)
        fitted_rows = fitted.get_indexer(np.asarray(user_ids, dtype=str))
        rows = np.flatnonzero(fitted_rows >= 0)
        fitted_rows = fitted_rows[rows]
        before, now = self.seen[fitted_rows].astype(bool), histories[rows].astype(bool)
        same = (np.diff(before.indptr) == np.diff(now.indptr)) & (
            np.diff((before != now).tocsr().indptr) == 0
        )
        return rows[same], fitted_rows[same]

    def _solve_users(self, histories: sp.csr_matrix) -> np.ndarray:
        """Each user's least-squares factors for its row of ``histories`` (over the item factors'
        columns) against the fixed item factors: `implicit`'s exact (Cholesky) user solve, in batches of
        ``USER_SOLVE_BATCH`` users. A user without history gets zeros."""
        from threadpoolctl import threadpool_limits

        model = self._model()
        model.item_factors = self.item_factors
        histories = histories.tocsr().astype(np.float32)
        user_factors = np.zeros((histories.shape[0], self.params["factors"]), dtype=np.float32)
        with threadpool_limits(1, "blas"):
            for start in range(0, histories.shape[0], USER_SOLVE_BATCH):
                stop = min(start + USER_SOLVE_BATCH, histories.shape[0])
                user_factors[start:stop] = model.recalculate_user(
                    np.arange(start, stop), histories[start:stop]
                )
        return user_factors

    def _model(self):
        from implicit.cpu.als import AlternatingLeastSquares

        return AlternatingLeastSquares(
            factors=self.params["factors"],
            regularization=self.params["regularization"],
            alpha=self.params["alpha"],
            iterations=self.params["iterations"],
            random_state=self.params["seed"],
            calculate_training_loss=False,
        )

    def recommend(self, user_rows: np.ndarray, k: int, *, exclude_seen: bool = True) -> Candidates:
        self._require_fitted()
        if self.n_items <= DENSE_UP_TO_ITEMS:
            return CandidateSource.recommend(self, user_rows, k, exclude_seen=exclude_seen)
        return super().recommend(user_rows, k, exclude_seen=exclude_seen)

    @property
    def query_vectors(self) -> np.ndarray:
        return self.user_factors

    @property
    def item_vectors(self) -> np.ndarray:
        return self.item_factors

    @property
    def indexed_items(self) -> np.ndarray:
        return np.flatnonzero(self.learned_items)

    def _served(self, user_rows: np.ndarray) -> np.ndarray:
        """Users with factors and a training history (a user without one has zero factors)."""
        user_rows = np.asarray(user_rows, dtype=np.int64)
        served = (user_rows >= 0) & (user_rows < min(len(self.user_factors), self.seen.shape[0]))
        served[served] = np.diff(self.seen.indptr)[user_rows[served]] > 0
        return served

    def _search(self, rows: np.ndarray, depth: int) -> np.ndarray:
        queries = _as_nearest_neighbour_queries(self.user_factors[rows])
        return self._index(depth).search(queries, depth)[0]

    def _index(self, depth: int) -> VectorIndex:
        """The FAISS index of the learned items' factors, built on first use (and for new factors), tuned
        for recall at the first ``depth`` asked for on a sample of the users' factors: exact below
        ``exact_below`` items (:func:`~m6rec.candidates.faiss_index.default_factory`), an inverted file
        above, so a user's search does not cost the whole catalogue."""
        indexed = self.indexed_items
        cached = getattr(self, "_searched", None)
        if cached is None or cached[0] is not self.item_factors or not np.array_equal(cached[1], indexed):
            users = np.flatnonzero(self._served(np.arange(len(self.user_factors))))
            rng = np.random.default_rng(self.params["seed"])
            sample = np.sort(rng.choice(users, size=min(RECALL_SAMPLE, len(users)), replace=False))
            index = build_index(
                _as_nearest_neighbour_items(self.item_factors[indexed]),
                exact_below=APPROXIMATE_FROM_ITEMS,
                seed=self.params["seed"],
                k=min(depth, len(indexed)),
                queries=_as_nearest_neighbour_queries(self.user_factors[sample]) if len(sample) else None,
            )
            # Kept with the factors array itself, so a refit or fold-in (a new array) is never served stale.
            cached = self._searched = (self.item_factors, indexed, index)
        return cached[2]


def _as_nearest_neighbour_items(factors: np.ndarray) -> np.ndarray:
    """Item factors with one more coordinate that brings every row to the largest norm (Bachrach et al.,
    2014): a cosine search over them, with queries from :func:`_as_nearest_neighbour_queries`, ranks items
    by the inner product itself."""
    factors = np.asarray(factors, dtype=np.float64)
    squared = np.einsum("ij,ij->i", factors, factors)
    padding = np.sqrt(np.maximum(squared.max(initial=0.0) - squared, 0.0))
    return np.hstack([factors, padding[:, None]]).astype(np.float32)


def _as_nearest_neighbour_queries(factors: np.ndarray) -> np.ndarray:
    return np.hstack([factors, np.zeros((len(factors), 1), dtype=factors.dtype)]).astype(np.float32)
