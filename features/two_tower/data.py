"""The two-tower model's inputs as arrays: the item and user catalogues (raw IDs and ID-embedding rows), the
content blocks, user attribute codes, training histories, and the tensors a training step reads."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from features.fusion import FusionConfig, concat_fusion, l2_normalise
from features.two_tower.network import _to_tensors
from m6rec.data.columns import ResolvedColumns, resolve_columns
from m6rec.data.contract import ITEM_ID, USER_ID
from m6rec.data.interactions import InteractionMatrix
from m6rec.embeddings.profiles import interaction_seconds
from m6rec.embeddings.store import EmbeddingTable

logger = logging.getLogger("m6rec")

# An attribute with more distinct values than this share of the users identifies users rather than
# grouping them (a zip code), so it is left out of the user tower.
MAX_ATTRIBUTE_VALUE_SHARE = 0.5
MAX_NUMERIC_ATTRIBUTE_VALUES = 64
# Held-out interactions for the validation loss: ten thousand measure it to about ±0.02; more would only
# cost scoring time each epoch.
MAX_HELD_OUT_PAIRS = 10_000


@dataclass(frozen=True)
class _Catalogue:
    """Rows the model knows: raw IDs and the 1-based row of each in its ID embedding (0 = no ID vector)."""

    ids: np.ndarray
    id_rows: np.ndarray

    def positions(self, ids: Sequence[str]) -> np.ndarray:
        return pd.Index(self.ids).get_indexer(np.asarray(ids, dtype=object).astype(str)).astype(np.int64)


@dataclass(frozen=True)
class _History:
    """Per known user, catalogue positions of the latest history items, oldest first (CSR layout)."""

    indptr: np.ndarray
    indices: np.ndarray

    def rows(self, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Flattened (batch row, catalogue position) pairs of the histories of ``users``."""
        starts, stops = self.indptr[users], self.indptr[users + 1]
        lengths = stops - starts
        batch_rows = np.repeat(np.arange(len(users)), lengths)
        offsets = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        return batch_rows, self.indices[np.repeat(starts, lengths) + offsets]


@dataclass(frozen=True)
class _TrainingData:
    """Everything a training step reads, as arrays and tensors on the training device."""

    pair_users: np.ndarray
    pair_items: np.ndarray
    warm_items: np.ndarray
    log_q: torch.Tensor
    item_id_rows: torch.Tensor
    content: list[tuple[torch.Tensor, torch.Tensor]]
    user_id_rows: torch.Tensor
    attributes: torch.Tensor
    history: _History
    device: str

    @classmethod
    def build(
        cls,
        train: InteractionMatrix,
        items: _Catalogue,
        content: list[tuple[np.ndarray, np.ndarray]],
        user_attributes: np.ndarray,
        history: _History,
        device: str,
    ) -> _TrainingData:
        coo = train.matrix.tocoo()
        popularity = train.item_popularity().astype(np.float64)
        log_q = np.log(np.maximum(popularity, 1.0) / popularity.sum())
        user_id_rows = np.where(train.user_activity() > 0, np.arange(1, train.n_users + 1), 0)
        return cls(
            pair_users=coo.row.astype(np.int64),
            pair_items=coo.col.astype(np.int64),
            warm_items=np.flatnonzero(popularity > 0),
            log_q=torch.as_tensor(log_q, dtype=torch.float32, device=device),
            item_id_rows=torch.as_tensor(items.id_rows, device=device),
            content=_to_tensors(content, device),
            user_id_rows=torch.as_tensor(user_id_rows, device=device),
            attributes=torch.as_tensor(user_attributes, dtype=torch.int64, device=device),
            history=history,
            device=device,
        )


def _item_catalogue(train: InteractionMatrix, content: dict[str, EmbeddingTable]) -> _Catalogue:
    """Training items first (ID rows 1..n for those with interactions), then content-only items, sorted."""
    train_ids = np.asarray(train.items.ids, dtype=object).astype(str)
    content_ids = set()
    for table in content.values():
        content_ids.update(str(key) for key, valid in zip(table.keys, table.valid, strict=True) if valid)
    extra = np.asarray(sorted(content_ids - set(train_ids)), dtype=object)
    id_rows = np.where(train.item_popularity() > 0, np.arange(1, train.n_items + 1), 0)
    return _Catalogue(
        np.concatenate([train_ids, extra]).astype(object),
        np.concatenate([id_rows, np.zeros(len(extra), dtype=np.int64)]).astype(np.int64),
    )


def _user_catalogue(train: InteractionMatrix, users: pd.DataFrame | None) -> _Catalogue:
    """Training users first (ID rows 1..n for those with interactions), then attribute-only users."""
    train_ids = np.asarray(train.users.ids, dtype=object).astype(str)
    extra = np.zeros(0, dtype=object)
    if users is not None:
        listed = pd.unique(users[USER_ID].astype(str).to_numpy(dtype=object))
        extra = listed[~pd.Index(listed).isin(train_ids)]
    id_rows = np.where(train.user_activity() > 0, np.arange(1, train.n_users + 1), 0)
    return _Catalogue(
        np.concatenate([train_ids, extra]).astype(object),
        np.concatenate([id_rows, np.zeros(len(extra), dtype=np.int64)]).astype(np.int64),
    )


def _catalogue_by_id(current: _Catalogue, known: _Catalogue) -> _Catalogue:
    """``current``'s IDs with the ID-embedding rows ``known`` has for them (0 for IDs it has none for)."""
    positions = known.positions(current.ids)
    return _Catalogue(current.ids, np.where(positions >= 0, known.id_rows[np.maximum(positions, 0)], 0))


def _content_arrays(
    content: dict[str, EmbeddingTable], item_ids: Sequence[str], fusion: FusionConfig
) -> list[tuple[np.ndarray, np.ndarray]]:
    """The item tower's content input: ``(vectors, present)`` per normalised block, or the concatenation.

    Attention fusion gets one L2-normalised block per modality (sorted names); concat fusion gets the single
    weighted concatenation of :func:`concat_fusion`; no content gives an empty list.
    """
    if not content:
        return []
    if fusion.mode == "concat":
        return [concat_fusion(content, item_ids, fusion.weights)]
    pairs = []
    for modality in sorted(content):
        vectors, present = content[modality].lookup(item_ids)
        pairs.append((l2_normalise(vectors), present))
    return pairs


def _attribute_vocabularies(
    users: pd.DataFrame | None, columns: ResolvedColumns | None = None
) -> dict[str, list[str]]:
    """Attribute columns of ``users`` and their sorted values (code = position + 1; 0 unknown).

    The attributes are the ``categorical`` columns (roles from ``columns``, inferred when ``None``) and the
    ``numeric`` columns of whole numbers with at most ``MAX_NUMERIC_ATTRIBUTE_VALUES`` values, each taking
    2 to ``MAX_ATTRIBUTE_VALUE_SHARE`` × users distinct values.
    """
    if users is None or USER_ID not in users.columns:
        return {}
    roles = columns if columns is not None else resolve_columns(users, USER_ID)
    vocabularies = {}
    n_users = max(users[USER_ID].nunique(), 1)
    for column, role in roles.roles.items():
        if role not in ("categorical", "numeric") or column not in users.columns:
            continue
        values = users[column].dropna()
        n_values = values.nunique()
        if role == "numeric" and not (
            pd.api.types.is_integer_dtype(pd.to_numeric(values, errors="coerce"))
            and n_values <= MAX_NUMERIC_ATTRIBUTE_VALUES
        ):
            logger.info("two-tower: user attribute %r is not categorical; skipped", column)
            continue
        if n_values < 2 or n_values > MAX_ATTRIBUTE_VALUE_SHARE * n_users:
            logger.info("two-tower: user attribute %r has %d values; skipped", column, n_values)
            continue
        vocabularies[str(column)] = sorted(set(_attribute_values(values)))
    return vocabularies


def _attribute_codes(
    users: pd.DataFrame, user_ids: Sequence[str], vocabularies: dict[str, list[str]]
) -> np.ndarray:
    """``[len(user_ids), n_attributes]`` codes (0 where the user or the value is unknown)."""
    table = users.assign(**{USER_ID: users[USER_ID].astype(str)}).drop_duplicates(USER_ID, keep="last")
    table = table.set_index(USER_ID).reindex(pd.Index(np.asarray(user_ids, dtype=object)))
    codes = np.zeros((len(user_ids), len(vocabularies)), dtype=np.int64)
    for k, (column, vocabulary) in enumerate(vocabularies.items()):
        if column in table.columns:
            codes[:, k] = pd.Index(vocabulary).get_indexer(_attribute_values(table[column])) + 1
    return codes


def _attribute_values(column: pd.Series) -> np.ndarray:
    """Attribute values as strings (None where missing), the form vocabularies are keyed by."""
    return np.asarray([None if pd.isna(value) else str(value) for value in column], dtype=object)


def _training_history(
    train: InteractionMatrix, interactions: pd.DataFrame | None, n_users: int, history_size: int
) -> _History:
    """The latest ``history_size`` training items per user (by time when ``interactions`` has timestamps)."""
    if interactions is not None:
        rows = train.users.positions(interactions[USER_ID].astype(str))
        cols = train.items.positions(interactions[ITEM_ID].astype(str))
        in_train = (rows >= 0) & (cols >= 0)
        in_train[in_train] = np.asarray(train.matrix[rows[in_train], cols[in_train]]).ravel() > 0
        rows, cols = rows[in_train], cols[in_train]
        times = interaction_seconds(interactions)
        if times is not None:
            # Rows without a time count as the latest, as in the user profiles.
            order = np.argsort(np.where(np.isnan(times[in_train]), np.inf, times[in_train]), kind="stable")
            rows, cols = rows[order], cols[order]
    else:
        coo = train.matrix.tocoo()
        order = np.lexsort((coo.col, coo.row))
        rows, cols = coo.row[order].astype(np.int64), coo.col[order].astype(np.int64)
    latest = _latest_unique(rows, cols, history_size)
    rows, cols = rows[latest], cols[latest]
    order = np.argsort(rows, kind="stable")
    indptr = np.zeros(n_users + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=n_users), out=indptr[1:])
    return _History(indptr, cols[order].astype(np.int64))


def _latest_unique(rows: np.ndarray, items: np.ndarray, limit: int) -> np.ndarray:
    """Mask of the pairs to keep: per row the last occurrence of each item, then the last ``limit``."""
    pairs = pd.DataFrame({"row": rows, "item": items})
    last = ~pairs.duplicated(keep="last").to_numpy()
    from_end = np.zeros(len(rows), dtype=np.int64)
    from_end[last] = pairs[last].groupby("row", sort=False).cumcount(ascending=False).to_numpy()
    return last & (from_end < limit)


def _held_out_pairs(train: InteractionMatrix, share: float, rng: np.random.Generator) -> np.ndarray:
    """``[n, 2]`` (user row, item column) interactions of ``train`` held out to measure the validation loss.

    One random interaction each of a random ``share`` of the users with two or more (``MAX_HELD_OUT_PAIRS``
    at most), never the last one left of an item, so every user and item keeps training pairs (and its ID
    vector is trained).
    """
    matrix = train.matrix.tocsr()
    eligible = np.flatnonzero(train.user_activity() >= 2)
    count = min(len(eligible), int(round(share * len(eligible))), MAX_HELD_OUT_PAIRS)
    if share > 0 and len(eligible):
        count = max(count, 1)
    remaining = train.item_popularity().astype(np.int64)
    pairs = []
    for user in np.sort(rng.choice(eligible, size=count, replace=False)):
        items = matrix.indices[matrix.indptr[user] : matrix.indptr[user + 1]]
        items = items[remaining[items] >= 2]
        if len(items):
            item = items[rng.integers(len(items))]
            remaining[item] -= 1
            pairs.append((user, item))
    return np.asarray(pairs, dtype=np.int64).reshape(-1, 2)


def _pairs_by_id(
    pairs: np.ndarray, user_ids: np.ndarray, item_ids: np.ndarray, train: InteractionMatrix
) -> np.ndarray:
    """The ``pairs`` (positions in ``user_ids`` and ``item_ids``) that are interactions of ``train``, as its
    (row, column) positions; pairs whose removal would leave a user or an item of ``train`` without
    interactions are dropped."""
    users = train.users.positions(np.asarray(user_ids, dtype=object)[pairs[:, 0]].astype(str))
    items = train.items.positions(np.asarray(item_ids, dtype=object)[pairs[:, 1]].astype(str))
    found = (users >= 0) & (items >= 0)
    users, items = users[found], items[found]
    present = np.asarray(train.matrix[users, items]).ravel() > 0 if len(users) else np.zeros(0, bool)
    users, items = users[present], items[present]
    keeps_users = train.user_activity()[users] > np.bincount(users, minlength=train.n_users)[users]
    keeps_items = train.item_popularity()[items] > np.bincount(items, minlength=train.n_items)[items]
    keep = keeps_users & keeps_items
    return np.stack([users[keep], items[keep]], axis=1).astype(np.int64).reshape(-1, 2)


def _without_pairs(train: InteractionMatrix, pairs: np.ndarray) -> InteractionMatrix:
    """``train`` with the interactions ``pairs`` removed (same users and items; no timestamps)."""
    removed = sp.csr_matrix(
        (np.ones(len(pairs), dtype=np.float32), (pairs[:, 0], pairs[:, 1])), shape=train.matrix.shape
    )
    matrix = (train.matrix - train.matrix.multiply(removed)).tocsr()
    matrix.eliminate_zeros()
    return InteractionMatrix(matrix.astype(np.float32), train.users, train.items)
