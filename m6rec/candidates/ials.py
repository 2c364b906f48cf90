"""Implicit-feedback alternating least squares (Hu, Koren & Volinsky, 2008) through the `implicit` library."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from m6rec.candidates.base import CandidateSource


class IALSSource(CandidateSource):
    """Matrix factorisation with confidence ``1 + alpha`` on observed pairs; score = user · item factors."""

    name = "ials"
    state_arrays = ("user_factors", "item_factors")

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

    def _fit(self, matrix: sp.csr_matrix) -> None:
        from implicit.cpu.als import AlternatingLeastSquares
        from threadpoolctl import threadpool_limits

        from m6rec.progress import progress_enabled

        with threadpool_limits(1, "blas"):  # implicit parallelises itself; nested BLAS threads slow it down
            model = AlternatingLeastSquares(
                factors=self.params["factors"],
                regularization=self.params["regularization"],
                alpha=self.params["alpha"],
                iterations=self.params["iterations"],
                random_state=self.params["seed"],
                calculate_training_loss=False,
            )
            model.fit(matrix.astype(np.float32), show_progress=progress_enabled())
        self.user_factors = np.asarray(model.user_factors, dtype=np.float32)
        self.item_factors = np.asarray(model.item_factors, dtype=np.float32)

    def score(self, user_rows: np.ndarray) -> np.ndarray:
        user_rows = np.asarray(user_rows, dtype=np.int64)
        known = (user_rows >= 0) & (user_rows < len(self.user_factors))
        scores = np.zeros((len(user_rows), len(self.item_factors)), dtype=np.float32)
        # float64 products of float32 factors are exact, so rounding back gives the same score whether BLAS
        # runs a one-user gemv or a many-user gemm: a user's candidates do not depend on its batch.
        user_factors = self.user_factors[user_rows[known]].astype(np.float64)
        scores[known] = user_factors @ self.item_factors.T.astype(np.float64)
        return scores
