"""Trending items: popularity in the last days of the training data, recent interactions weighing more."""

from __future__ import annotations

import logging

import numpy as np
import scipy.sparse as sp

from m6rec.candidates.base import SharedScoresSource
from m6rec.data.interactions import InteractionMatrix
from m6rec.errors import ConfigError

log = logging.getLogger("m6rec")

SECONDS_PER_DAY = 86_400.0


class TrendSource(SharedScoresSource):
    """Scores every item by its time-decayed interaction count within a recent window; the same list for all.

    The window is the ``window_days`` before the latest training timestamp; an interaction ``age`` days
    before that timestamp weighs ``0.5 ** (age / half_life_days)``. Items without an interaction in the
    window are not trending (score -inf). Without timestamps the source falls back to plain popularity
    (a warning is logged).
    """

    name = "trend"
    needs_timestamps = True
    state_arrays = ("item_trend",)

    def __init__(self, *, window_days: float = 14.0, half_life_days: float = 7.0):
        for key, value in (("window_days", window_days), ("half_life_days", half_life_days)):
            if not value > 0:
                raise ConfigError(f"trend: {key} must be positive, got {value!r}")
        super().__init__(window_days=window_days, half_life_days=half_life_days)

    def fit(self, train: InteractionMatrix, inputs=None) -> TrendSource:
        """Learn the item trend from ``train``'s timestamps (plain popularity without them); returns self."""
        super().fit(train)
        times = train.timestamps
        if times is None or not np.isfinite(times.data).any():
            log.warning(
                "trend: the training interactions have no timestamps; falling back to plain popularity"
            )
            return self
        self.item_trend = recent_popularity(
            times.tocsr(),
            window_days=self.params["window_days"],
            half_life_days=self.params["half_life_days"],
        )
        return self

    def _fit(self, matrix: sp.csr_matrix) -> None:
        self.item_trend = np.asarray(matrix.sum(axis=0), dtype=np.float32).ravel()

    def shared_scores(self) -> np.ndarray:
        return self.item_trend


def recent_popularity(timestamps: sp.csr_matrix, *, window_days: float, half_life_days: float) -> np.ndarray:
    """Per item, the sum of ``0.5 ** (age / half_life_days)`` over its interactions at most ``window_days``
    old, ages in days before the latest timestamp; -inf for items with none (float32, [n_items]).

    ``timestamps`` holds unix seconds per (user, item) pair; NaN (unknown) times never count as recent.
    """
    times = np.asarray(timestamps.data, dtype=np.float64)
    known = np.isfinite(times)
    age_days = (times[known].max() - times) / SECONDS_PER_DAY if known.any() else times
    in_window = known & (age_days <= window_days)
    weights = 0.5 ** (age_days[in_window] / half_life_days)
    trend = np.bincount(timestamps.indices[in_window], weights=weights, minlength=timestamps.shape[1])
    counts = np.bincount(timestamps.indices[in_window], minlength=timestamps.shape[1])
    return np.where(counts > 0, trend, -np.inf).astype(np.float32)
