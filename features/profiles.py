"""User profiles in an item embedding space: a recency-weighted mean of the user's history item vectors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp

from features.store import EmbeddingTable
from m6rec.data.contract import ITEM_ID, TIMESTAMP, USER_ID

SECONDS_PER_DAY = 86_400.0


def user_profiles(
    interactions: pd.DataFrame,
    table: EmbeddingTable,
    *,
    half_life_days: float | None = 30.0,
    max_history: int | None = 200,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per user, the L2-normalised recency-weighted mean of the vectors of the items they interacted with.

    An interaction ``age`` days older than the user's latest one weighs ``0.5 ** (age / half_life_days)``.
    Without a ``timestamp`` column, or with ``half_life_days=None``, every interaction weighs the same.
    Items without a valid vector in ``table`` are skipped; of the rest, only the user's latest
    ``max_history`` interactions count (by time, else by row order). Repeated interactions count each time.
    Rows with a null timestamp count as happening at the user's latest time.

    Args:
        interactions: ``user_id``, ``item_id`` and optionally ``timestamp`` (unix seconds or datetimes).
        table: item embeddings (key ``item_id``).
        half_life_days: recency half-life in days; ``None`` for a uniform mean.
        max_history: how many of the latest usable interactions to keep per user; ``None`` keeps all.

    Returns:
        ``(user_ids, vectors, present)``: users in order of first appearance in ``interactions``, float32
        ``[n_users, table.dimension]`` profiles, and a mask of the users with at least one usable item
        (the others get a zero vector).
    """
    if half_life_days is not None and half_life_days <= 0:
        raise ValueError(f"half_life_days must be positive or None, got {half_life_days}")
    if max_history is not None and max_history < 1:
        raise ValueError(f"max_history must be at least 1 or None, got {max_history}")
    users = interactions[USER_ID].astype(str).to_numpy(dtype=object)
    items = interactions[ITEM_ID].astype(str).to_numpy(dtype=object)
    user_ids = pd.unique(users)
    user_rows = pd.Index(user_ids).get_indexer(users)
    item_ids, item_columns = np.unique(items, return_inverse=True)
    item_vectors, item_present = table.lookup(item_ids)

    times = interaction_seconds(interactions)
    if times is not None:
        latest = pd.Series(times).groupby(user_rows).transform("max").to_numpy()
        times = np.where(np.isnan(times), latest, times)

    usable = item_present[item_columns]
    user_rows, item_columns = user_rows[usable], item_columns[usable]
    times = times[usable] if times is not None else None
    if max_history is not None:
        keep = _latest_per_user(user_rows, times, max_history)
        user_rows, item_columns = user_rows[keep], item_columns[keep]
        times = times[keep] if times is not None else None

    if times is None or half_life_days is None:
        weights = np.ones(len(user_rows))
    else:
        latest = pd.Series(times).groupby(user_rows).transform("max").to_numpy()
        weights = 0.5 ** ((latest - times) / (half_life_days * SECONDS_PER_DAY))

    weighting = sp.csr_matrix((weights, (user_rows, item_columns)), shape=(len(user_ids), len(item_ids)))
    totals = np.asarray(weighting.sum(axis=1)).ravel()
    sums = weighting @ item_vectors.astype(np.float64)
    means = np.divide(sums, totals[:, None], out=np.zeros_like(sums), where=totals[:, None] > 0)
    norms = np.linalg.norm(means, axis=1, keepdims=True)
    vectors = np.divide(means, norms, out=np.zeros_like(means), where=norms > 0).astype(np.float32)
    present = norms.ravel() > 0
    return np.asarray(user_ids, dtype=object), vectors, present


def interaction_seconds(interactions: pd.DataFrame) -> np.ndarray | None:
    """The ``timestamp`` column as float unix seconds (NaN where null); None without usable timestamps.

    Integer seconds and datetimes (naive or zoned) are both accepted.
    """
    if TIMESTAMP not in interactions.columns or interactions[TIMESTAMP].isna().all():
        return None
    column = interactions[TIMESTAMP]
    if pd.api.types.is_datetime64_any_dtype(column):
        seconds = (column - pd.Timestamp(0, tz=column.dt.tz)) / pd.Timedelta(seconds=1)
        return seconds.to_numpy(dtype=np.float64, na_value=np.nan)
    return pd.to_numeric(column, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)


def _latest_per_user(user_rows: np.ndarray, times: np.ndarray | None, limit: int) -> np.ndarray:
    """Mask of each user's latest ``limit`` rows, by time (ties and no times: later rows are later)."""
    order = np.arange(len(user_rows)) if times is None else np.argsort(times, kind="stable")
    ordered_users = pd.Series(user_rows[order])
    from_end = (
        ordered_users.groupby(ordered_users.to_numpy(), sort=False).cumcount(ascending=False).to_numpy()
    )
    keep = np.zeros(len(user_rows), dtype=bool)
    keep[order[from_end < limit]] = True
    return keep
