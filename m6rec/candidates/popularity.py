"""Most-popular items: the baseline every model must beat, and the fallback for users with no history."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from m6rec.candidates.base import SharedScoresSource


class PopularitySource(SharedScoresSource):
    """Scores every item by its number of training users, the same list for everyone."""

    name = "popularity"
    state_arrays = ("item_counts",)

    def __init__(self):
        super().__init__()

    def _fit(self, matrix: sp.csr_matrix) -> None:
        self.item_counts = np.asarray(matrix.sum(axis=0), dtype=np.float32).ravel()

    def shared_scores(self) -> np.ndarray:
        return self.item_counts
