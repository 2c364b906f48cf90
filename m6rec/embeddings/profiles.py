"""User profiles in an item embedding space: a recency-weighted mean of the user's history item vectors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp

from m6rec.data.contract import ITEM_ID, TIMESTAMP, USER_ID
from m6rec.embeddings.store import EmbeddingTable

SECONDS_PER_DAY = 86_400.0
# How many of a user's latest usable interactions a profile averages, and their recency half-life.
DEFAULT_MAX_HISTORY = 200
DEFAULT_HALF_LIFE_DAYS = 30.0
# Users whose profiles are summed at once (float64 sums of 384-d vectors: about 200 MB).
PROFILE_CHUNK_USERS = 65_536


def user_profiles(
    interactions: pd.DataFrame,
    table: EmbeddingTable,
    *,
    half_life_days: float | None = DEFAULT_HALF_LIFE_DAYS,
    max_history: int | None = DEFAULT_MAX_HISTORY,
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
    user_rows, user_ids = pd.factorize(interactions[USER_ID].astype(str), sort=False)
    item_columns, item_ids = pd.factorize(interactions[ITEM_ID].astype(str), sort=False)
    vectors, present = profiles_of_pairs(
        user_rows,
        len(user_ids),
        item_columns,
        table.lookup(np.asarray(item_ids, dtype=object)),
        interaction_seconds(interactions),
        half_life_days=half_life_days,
        max_history=max_history,
    )
    return np.asarray(user_ids, dtype=object), vectors, present


def profiles_of_pairs(
    user_rows: np.ndarray,
    n_users: int,
    item_columns: np.ndarray,
    items: tuple[np.ndarray, np.ndarray],
    times: np.ndarray | None,
    *,
    half_life_days: float | None,
    max_history: int | None,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`user_profiles` of interactions already coded: pair ``p`` is user row ``user_rows[p]`` (of
    ``n_users``) with item column ``item_columns[p]`` at unix second ``times[p]`` (NaN: unknown; ``times``
    None: none known); ``items`` is ``(vectors, present)`` per item column (``EmbeddingTable.lookup``).
    Returns ``(vectors [n_users, dim], present)``."""
    item_vectors, item_present = items
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
        ages = np.nan_to_num(latest - times, nan=0.0)  # a user without any time: uniform weights
        weights = 0.5 ** (ages / (half_life_days * SECONDS_PER_DAY))

    # Only the items these users have, in float64: a chunk of users must not copy the whole catalogue.
    used, item_columns = np.unique(item_columns, return_inverse=True)
    weighting = sp.csr_matrix((weights, (user_rows, item_columns)), shape=(n_users, len(used)))
    item_vectors = item_vectors[used].astype(np.float64)
    vectors = np.zeros((n_users, item_vectors.shape[1]), dtype=np.float32)
    present = np.zeros(n_users, dtype=bool)
    # In chunks of users: the float64 sums of a million 384-d profiles alone are 3 GB.
    for start in range(0, n_users, PROFILE_CHUNK_USERS):
        chunk = weighting[start : start + PROFILE_CHUNK_USERS]
        totals = np.asarray(chunk.sum(axis=1)).ravel()
        sums = chunk @ item_vectors
        means = np.divide(sums, totals[:, None], out=np.zeros_like(sums), where=totals[:, None] > 0)
        norms = np.linalg.norm(means, axis=1, keepdims=True)
        stop = start + len(means)
        vectors[start:stop] = np.divide(means, norms, out=np.zeros_like(means), where=norms > 0)
        present[start:stop] = norms.ravel() > 0
    return vectors, present


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


class ProfileCache:
    """The user profiles of one training history, shared by every stage that needs them: the content
    candidate source (its queries), the ranker's similarity features and the ``profile_<space>.parquet``
    files.

    ``train`` is the interaction matrix of the history (``InteractionMatrix``: raw IDs in ``users`` and
    ``items``, optional ``timestamps``); ``half_life_days`` is the one configured recency half-life
    (``embeddings.profile_half_life_days``). :meth:`aligned` computes a space's profiles of every matrix
    row once and keeps them; :meth:`rows` gives those of some rows only (from the kept ones when there
    are, else computed for those rows alone), which is how a batch scores a chunk of users without
    holding a million profiles per space.
    """

    def __init__(self, train, *, half_life_days: float | None, max_history: int | None = DEFAULT_MAX_HISTORY):
        self.train = train
        self.half_life_days = half_life_days
        self.max_history = max_history
        self._computed: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._item_vectors: dict[str, tuple[EmbeddingTable, tuple[np.ndarray, np.ndarray]]] = {}

    def aligned(self, space: str, table: EmbeddingTable) -> tuple[np.ndarray, np.ndarray]:
        """``(vectors [n_users, dim] float32, present)`` of the users in the matrix rows, in the item space
        ``space`` (whose item vectors are ``table``); zero vectors where a user has no usable item."""
        if space not in self._computed:
            self._computed[space] = self._of_rows(space, table, None)
        return self._computed[space]

    def every_row(self, space: str, table: EmbeddingTable) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`aligned` without keeping the profiles (unless they are kept already): for writing every
        user's profiles once, while the stages after it compute each chunk's (a million users' profiles
        are 1.5 GB per space and history)."""
        if space in self._computed:
            return self._computed[space]
        return self._of_rows(space, table, None)

    def rows(self, space: str, table: EmbeddingTable, user_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`aligned` of the matrix rows ``user_rows`` only; the same vectors, without computing
        (or keeping) anyone else's."""
        user_rows = np.asarray(user_rows, dtype=np.int64)
        if space in self._computed:
            vectors, present = self._computed[space]
            return vectors[user_rows], present[user_rows]
        return self._of_rows(space, table, user_rows)

    def _of_rows(self, space: str, table: EmbeddingTable, user_rows: np.ndarray | None):
        # Straight from the matrix's rows and columns: no raw IDs to encode again.
        rows, cols, times = history_pairs(self.train, user_rows)
        return profiles_of_pairs(
            rows,
            self.train.n_users if user_rows is None else len(user_rows),
            cols,
            self._items(space, table),
            times,
            half_life_days=self.half_life_days,
            max_history=self.max_history,
        )

    def _items(self, space: str, table: EmbeddingTable) -> tuple[np.ndarray, np.ndarray]:
        """The space's item vectors on the matrix columns, looked up once per table."""
        known = self._item_vectors.get(space)
        if known is None or known[0] is not table:
            item_ids = np.asarray(self.train.items.ids, dtype=str).astype(object)
            known = (table, table.lookup(item_ids))
            self._item_vectors[space] = known
        return known[1]

    @property
    def computed(self) -> list[str]:
        """The spaces whose profiles of every row have been computed so far."""
        return list(self._computed)


def history_pairs(
    train, user_rows: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The interactions of ``train`` (an ``InteractionMatrix``) as ``(rows, item columns, unix seconds or
    None)``, row-major; with ``user_rows``, those users' only, ``rows`` then counting positions in it."""
    matrix = train.matrix.tocsr()
    timestamps = getattr(train, "timestamps", None)
    if user_rows is not None:
        matrix = matrix[np.asarray(user_rows, dtype=np.int64)]
        timestamps = None if timestamps is None else sp.csr_matrix(timestamps)[user_rows]
    rows = np.repeat(np.arange(matrix.shape[0], dtype=np.int64), np.diff(matrix.indptr))
    cols = matrix.indices.astype(np.int64)
    return rows, cols, pair_times(timestamps, rows, cols, matrix.shape[1])


def pair_times(timestamps, rows: np.ndarray, cols: np.ndarray, n_items: int) -> np.ndarray | None:
    """The unix seconds of each (row, col) pair from a sparse timestamp matrix; None when none is known."""
    if timestamps is None:
        return None
    stamped = sp.coo_matrix(timestamps)
    keys = stamped.row.astype(np.int64) * n_items + stamped.col
    order = np.argsort(keys, kind="stable")
    keys, values = keys[order], stamped.data.astype(np.float64)[order]
    times = np.full(len(rows), np.nan)
    if len(keys):
        wanted = rows * n_items + cols
        found = np.minimum(np.searchsorted(keys, wanted), len(keys) - 1)
        hit = keys[found] == wanted
        times[hit] = values[found[hit]]
    return times if np.isfinite(times).any() else None
