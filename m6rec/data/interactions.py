"""Raw-ID ↔ index mapping and the sparse user × item interaction matrix models train on."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from m6rec.data.contract import ITEM_ID, TIMESTAMP, USER_ID, WEIGHT


@dataclass(frozen=True)
class IdIndex:
    """A fixed ordering of raw IDs (strings); position in ``ids`` is the index models use."""

    ids: np.ndarray

    @classmethod
    def from_values(cls, *columns: pd.Series | np.ndarray | None) -> IdIndex:
        """Index of the distinct values across ``columns``, in order of first appearance."""
        values = [np.asarray(column, dtype=object) for column in columns if column is not None]
        ids = pd.unique(np.concatenate(values)) if values else np.array([], dtype=object)
        return cls(np.asarray(ids, dtype=object))

    def __len__(self) -> int:
        return len(self.ids)

    def positions(self, values: pd.Series | np.ndarray) -> np.ndarray:
        """Index of each value, -1 where the value is unknown."""
        lookup = pd.Index(self.ids)
        return lookup.get_indexer(np.asarray(values, dtype=object)).astype(np.int64)

    def save(self, path: Path, column: str) -> None:
        """Write the IDs in index order as a one-column Parquet file."""
        from m6rec.io import write_parquet

        write_parquet(pd.DataFrame({column: pd.Series(self.ids, dtype="string")}), path)

    @classmethod
    def load(cls, path: Path, column: str) -> IdIndex:
        return cls(pd.read_parquet(path)[column].astype(object).to_numpy())


@dataclass(frozen=True)
class InteractionMatrix:
    """Binary user × item matrix (CSR, float32) together with the ID indexes of its rows and columns.

    ``timestamps`` (CSR, float64, the same sparsity as ``matrix``) holds the unix time in seconds of each
    pair's latest interaction (NaN where that time is unknown); it is None when there are no times.
    """

    matrix: sp.csr_matrix
    users: IdIndex
    items: IdIndex
    timestamps: sp.csr_matrix | None = None

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, users: IdIndex, items: IdIndex) -> InteractionMatrix:
        """Build the matrix of ``frame``'s (user_id, item_id) pairs; pairs with unknown IDs are dropped.

        A ``timestamp`` column (unix seconds or datetimes) fills ``timestamps``; without one, or when it
        holds no time at all, ``timestamps`` is None.
        """
        rows = users.positions(frame[USER_ID])
        cols = items.positions(frame[ITEM_ID])
        keep = (rows >= 0) & (cols >= 0)
        matrix = sp.csr_matrix(
            (np.ones(int(keep.sum()), dtype=np.float32), (rows[keep], cols[keep])),
            shape=(len(users), len(items)),
        )
        matrix.sum_duplicates()
        matrix.data[:] = 1.0
        timestamps = None
        times = _unix_seconds(frame[TIMESTAMP]) if TIMESTAMP in frame.columns else None
        if times is not None and not np.isnan(times).all():
            timestamps = _latest_times(rows[keep], cols[keep], times[keep], matrix.shape)
        return cls(matrix, users, items, timestamps)

    @property
    def n_users(self) -> int:
        return self.matrix.shape[0]

    @property
    def n_items(self) -> int:
        return self.matrix.shape[1]

    def item_popularity(self) -> np.ndarray:
        """Number of users who interacted with each item."""
        return np.asarray(self.matrix.sum(axis=0)).ravel()

    def user_activity(self) -> np.ndarray:
        """Number of items each user interacted with."""
        return np.diff(self.matrix.indptr)


def _unix_seconds(column: pd.Series) -> np.ndarray:
    """A time column as float64 unix seconds, NaN where missing; naive datetimes are taken as UTC."""
    if pd.api.types.is_datetime64_any_dtype(column):
        moment = column.dt.tz_localize("UTC") if column.dt.tz is None else column
        seconds = (moment - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(seconds=1)
        return seconds.to_numpy(dtype=np.float64, na_value=np.nan)
    return pd.to_numeric(column, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)


def _latest_times(
    rows: np.ndarray, cols: np.ndarray, times: np.ndarray, shape: tuple[int, int]
) -> sp.csr_matrix:
    """CSR of the latest time of each distinct (row, col) pair, in canonical order (NaN if none is known)."""
    pair_keys = rows * shape[1] + cols
    order = np.argsort(pair_keys, kind="stable")
    pair_keys, known_times = pair_keys[order], np.nan_to_num(times[order], nan=-np.inf)
    starts = np.flatnonzero(np.r_[True, pair_keys[1:] != pair_keys[:-1]])
    latest = np.maximum.reduceat(known_times, starts) if len(starts) else np.zeros(0)
    latest[np.isneginf(latest)] = np.nan
    unique_keys = pair_keys[starts]
    indptr = np.r_[0, np.cumsum(np.bincount(unique_keys // shape[1], minlength=shape[0]))]
    return sp.csr_matrix((latest, unique_keys % shape[1], indptr), shape=shape)


HISTORY_DIGEST = "history_digest"


def user_history_digests(frame: pd.DataFrame, users: IdIndex) -> pd.DataFrame:
    """One row per user of ``users``: ``user_id`` and ``history_digest``, a 64-bit digest of the user's
    interactions in ``frame`` (item, and weight and time where present) that does not depend on their
    order; 0 for a user without any. Two nights with the same digest for a user saw the same history, so
    the user's list need not change."""
    columns = [column for column in (ITEM_ID, WEIGHT, TIMESTAMP) if column in frame.columns]
    pairs = frame[columns].copy()
    pairs[ITEM_ID] = pairs[ITEM_ID].astype(str)
    row_hashes = pd.util.hash_pandas_object(pairs, index=False).to_numpy(dtype=np.uint64)
    ids = pd.Index(pd.Series(users.ids).astype(str))
    digests = pd.Series(row_hashes).groupby(frame[USER_ID].astype(str).to_numpy()).sum()  # wraps: order-free
    digests = digests.reindex(ids, fill_value=0).to_numpy(np.uint64)
    return pd.DataFrame({USER_ID: pd.Series(ids, dtype="string"), HISTORY_DIGEST: digests})


def frame_digest(frame: pd.DataFrame | None) -> str:
    """A SHA-256 of a table's columns and rows (in order): equal digests, equal tables."""
    import hashlib

    digest = hashlib.sha256()
    if frame is not None:
        digest.update(",".join(map(str, frame.columns)).encode())
        digest.update(pd.util.hash_pandas_object(frame.astype(str), index=False).to_numpy().tobytes())
    return digest.hexdigest()


def interaction_digest(matrix: InteractionMatrix) -> str:
    """SHA-256 of the (user, item, value[, timestamp]) pairs of ``matrix``: its structure, values,
    timestamps and raw IDs. Equal digests, equal histories (what profiles and checkpoints are keyed on)."""
    import hashlib

    digest = hashlib.sha256()
    timestamps = getattr(matrix, "timestamps", None)
    for part in [matrix.matrix] + ([timestamps] if timestamps is not None else []):
        part = part.tocsr(copy=True)
        part.sort_indices()
        digest.update(part.indptr.astype(np.int64).tobytes())
        digest.update(part.indices.astype(np.int64).tobytes())
        digest.update(part.data.astype(np.float64).tobytes())
    for ids in (matrix.users.ids, matrix.items.ids):
        digest.update("\0".join(map(str, ids)).encode())
    return digest.hexdigest()
