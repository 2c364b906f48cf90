"""EASE (Steck, 2019): a closed-form item-item linear autoencoder."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from m6rec.candidates.base import CandidateSource


class EASESource(CandidateSource):
    """B = argmin ‖X − XB‖² + l2‖B‖² with diag(B) = 0, solved as B = I − P·diag(1/diag P), P = (XᵀX + l2·I)⁻¹.

    The inverse is dense in the number of items, so only the ``max_items`` most popular training items
    take part (all of them in catalogues up to that size); the others score zero.
    """

    name = "ease"
    state_arrays = ("weights", "active_items")

    def __init__(self, *, l2: float = 500.0, max_items: int = 8000):
        super().__init__(l2=l2, max_items=max_items)

    def _fit(self, matrix: sp.csr_matrix) -> None:
        popularity = np.asarray(matrix.sum(axis=0)).ravel()
        active = np.flatnonzero(popularity > 0)
        if len(active) > self.params["max_items"]:
            active = np.sort(
                active[np.argsort(-popularity[active], kind="stable")[: self.params["max_items"]]]
            )
        columns = matrix[:, active].astype(np.float64)
        gram = (columns.T @ columns).toarray()
        gram[np.diag_indices_from(gram)] += self.params["l2"]
        precision = np.linalg.inv(gram)
        weights = -precision / np.diag(precision)
        weights[np.diag_indices_from(weights)] = 0.0
        self.weights = weights.astype(np.float32)
        self.active_items = active

    def score(self, user_rows: np.ndarray) -> np.ndarray:
        history = self._history(user_rows)[:, self.active_items]
        scores = np.zeros((len(user_rows), self.n_items), dtype=np.float32)
        scores[:, self.active_items] = history @ self.weights
        return scores
