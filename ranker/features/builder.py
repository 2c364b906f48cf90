"""Building the ranker's feature table: :func:`build_ranker_features` and the helpers that compute each group
of features for merged candidates from a :class:`~ranker.features.context.RankerContext`."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from m6rec.data.interactions import InteractionMatrix
from ranker.features.context import RankerContext
from ranker.features.schema import ITEM, ITEM_SPACES, N_SOURCES, SECONDS_PER_DAY, SOURCES, USER_ROW

# Pairs of (user, item) vectors are scored through a dense block product when at least 1/16 of the block
# is wanted, otherwise row by row; blocks hold at most this many scores.
_DENSE_WASTE_LIMIT = 16
_BLOCK_SCORES = 1 << 22
_GATHER_ROWS = 16_384

_SOURCE_COLUMN = re.compile(r"(.+)_(score|rank)")


def build_ranker_features(candidates: pd.DataFrame, context: RankerContext) -> pd.DataFrame:
    """The declared feature table of ``candidates`` (same rows, same order, fresh index).

    Args:
        candidates: merged candidates with integer ``user_row`` and ``item`` (training-matrix index space),
            any ``<source>_score`` / ``<source>_rank`` columns, and ``n_sources`` (counted from the rank
            columns when absent); ``sources`` and other columns are dropped. A ``user_row`` outside the
            matrix is a user without history.
        context: the run's :class:`RankerContext`.

    Returns:
        Keys, per-source columns (float32, sorted by source), each ``<source>_score_z``, :data:`FEATURES`,
        then ``user_*`` and ``item_*`` category columns; it passes :func:`check_feature_table`.
    """
    user_rows, items = _keys(candidates, context.train)
    known_user = (user_rows >= 0) & (user_rows < context.train.n_users)
    users = np.where(known_user, user_rows, 0)
    columns: dict[str, np.ndarray | pd.Categorical] = {USER_ROW: user_rows, ITEM: items}
    source_columns = _source_columns(candidates)
    for name in source_columns:
        columns[name] = _as_float32(candidates[name], name)
    for name in source_columns:
        if name.endswith("_score"):
            columns[f"{name}_z"] = _within_user_z(columns[name], user_rows)
    columns[N_SOURCES] = _n_sources(candidates, source_columns)

    for modality in ITEM_SPACES:
        columns[f"cos_{modality}"] = _cosine(context, modality, users, known_user, items)
    columns["two_tower_dot"] = _two_tower_dot(context, users, known_user, items)

    columns["item_pop"] = context.train.item_popularity().astype(np.int32)[items]
    activity = context.train.user_activity()
    active_users = max(int((activity > 0).sum()), 1)
    columns["item_pop_share"] = (columns["item_pop"] / active_users).astype(np.float32)
    times = context.time_features
    reference = context.reference_seconds
    nan_rows = np.full(len(items), np.nan, dtype=np.float32)
    if times is None:
        columns["item_pop_recent"] = nan_rows
        columns["item_age_days"] = nan_rows.copy()
    else:
        columns["item_pop_recent"] = times["recent_pop"][items]
        columns["item_age_days"] = ((reference - times["first_seen"][items]) / SECONDS_PER_DAY).astype(
            np.float32
        )
    columns["user_activity"] = np.where(known_user, activity[users], 0).astype(np.int32)
    mean_activity = float(activity[activity > 0].mean()) if (activity > 0).any() else 1.0
    columns["user_activity_share"] = (columns["user_activity"] / mean_activity).astype(np.float32)
    if times is None:
        columns["user_days_since_last"] = nan_rows.copy()
    else:
        last_seen = np.where(known_user, times["last_seen"][users], np.nan)
        columns["user_days_since_last"] = ((reference - last_seen) / SECONDS_PER_DAY).astype(np.float32)

    columns["sim_last_max"], columns["sim_last_mean"] = _similarity_to_latest(
        context, users, known_user, items
    )
    columns["kg_overlap"], columns["kg_overlap_norm"] = _kg_overlap(context, users, known_user, items)

    for name, codes, levels, side in context.categorical_attributes:
        row_codes = np.where(known_user, codes[users], -1) if side == "user" else codes[items]
        columns[name] = pd.Categorical.from_codes(row_codes, categories=levels)
    return pd.DataFrame(columns)


def _keys(candidates: pd.DataFrame, train: InteractionMatrix) -> tuple[np.ndarray, np.ndarray]:
    for name in (USER_ROW, ITEM):
        if name not in candidates.columns:
            raise ValueError(f"candidates lack column {name!r}")
        if not pd.api.types.is_integer_dtype(candidates[name].dtype):
            raise ValueError(f"candidates column {name!r} must be integer, got {candidates[name].dtype}")
    user_rows = candidates[USER_ROW].to_numpy(dtype=np.int64)
    items = candidates[ITEM].to_numpy(dtype=np.int64)
    outside = (items < 0) | (items >= train.n_items)
    if outside.any():
        raise ValueError(
            f"candidates column {ITEM!r} holds {int(items[np.argmax(outside)])}, outside the "
            f"{train.n_items} items of the training matrix"
        )
    return user_rows, items


def _source_columns(candidates: pd.DataFrame) -> list[str]:
    names = [
        str(column)
        for column in candidates.columns
        if column not in (USER_ROW, ITEM, N_SOURCES, SOURCES) and _SOURCE_COLUMN.fullmatch(str(column))
    ]
    return sorted(names, key=lambda name: (_SOURCE_COLUMN.fullmatch(name).group(1), name.endswith("_rank")))


def _as_float32(column: pd.Series, name: str) -> np.ndarray:
    if not (pd.api.types.is_numeric_dtype(column.dtype) or pd.api.types.is_bool_dtype(column.dtype)):
        raise ValueError(f"candidates column {name!r} must be numeric, got {column.dtype}")
    return column.to_numpy(dtype=np.float32, na_value=np.nan)


def _within_user_z(scores: np.ndarray, user_rows: np.ndarray) -> np.ndarray:
    """Each score minus the mean of its user's scores, over their (population) standard deviation.

    Missing scores stay NaN and do not count; a user whose scores are all equal gets 0.
    """
    result = np.full(len(scores), np.nan, dtype=np.float32)
    present = ~np.isnan(scores)
    if not present.any():
        return result
    _, group = np.unique(user_rows[present], return_inverse=True)
    values = scores[present].astype(np.float64)
    count = np.bincount(group)
    mean = np.bincount(group, weights=values) / count
    centred = values - mean[group]
    spread = np.sqrt(np.bincount(group, weights=centred**2) / count)[group]
    result[present] = np.divide(centred, spread, out=np.zeros_like(centred), where=spread > 0)
    return result


def _n_sources(candidates: pd.DataFrame, source_columns: list[str]) -> np.ndarray:
    if N_SOURCES in candidates.columns:
        counts = candidates[N_SOURCES]
        if counts.isna().any():
            raise ValueError(f"candidates column {N_SOURCES!r} has missing values")
        return counts.to_numpy(dtype=np.int32)
    ranks = [name for name in source_columns if name.endswith("_rank")] or source_columns
    return candidates[ranks].notna().sum(axis=1).to_numpy(dtype=np.int32)


def _cosine(
    context: RankerContext, modality: str, users: np.ndarray, known_user: np.ndarray, items: np.ndarray
) -> np.ndarray:
    result = np.full(len(items), np.nan, dtype=np.float32)
    if modality not in context.item_vectors:
        return result
    item_vectors, item_present = context.item_vectors[modality]
    candidates = np.flatnonzero(known_user & item_present[items])
    distinct, inverse = np.unique(users[candidates], return_inverse=True)
    user_vectors, user_present = context.user_profile_rows(modality, distinct)
    if user_vectors.shape[1] != item_vectors.shape[1]:
        raise ValueError(
            f"{modality} user profiles have {user_vectors.shape[1]} dimensions, "
            f"item vectors {item_vectors.shape[1]}"
        )
    scored = user_present[inverse]
    result[candidates[scored]] = _pair_dots(
        user_vectors, item_vectors, inverse[scored], items[candidates[scored]]
    )
    return result


def _two_tower_dot(
    context: RankerContext, users: np.ndarray, known_user: np.ndarray, items: np.ndarray
) -> np.ndarray:
    result = np.full(len(items), np.nan, dtype=np.float32)
    if context.two_tower is None:
        return result
    user_vectors, user_present, item_vectors, item_present = context.two_tower
    scored = np.flatnonzero(known_user & user_present[users] & item_present[items])
    result[scored] = _pair_dots(user_vectors, item_vectors, users[scored], items[scored])
    return result


def _similarity_to_latest(
    context: RankerContext, users: np.ndarray, known_user: np.ndarray, items: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    nan_rows = np.full(len(items), np.nan, dtype=np.float32)
    if context.latest_space is None:
        return nan_rows, nan_rows.copy()
    vectors, present = context.item_vectors[context.latest_space]
    distinct, inverse = np.unique(users[known_user], return_inverse=True)
    history = np.full((len(items), context.last_items), -1, dtype=np.int64)
    history[known_user] = context.latest_items(distinct)[inverse]
    history[~present[items]] = -1
    rows, slots = np.nonzero(history >= 0)
    similarities = np.full(history.shape, np.nan, dtype=np.float32)
    similarities[rows, slots] = _pair_dots(vectors, vectors, history[rows, slots], items[rows])
    counted = np.isfinite(similarities)
    count = counted.sum(axis=1)
    highest = np.where(counted, similarities, -np.inf).max(axis=1)
    total = np.where(counted, similarities, 0.0).sum(axis=1)
    highest = np.where(count > 0, highest, np.nan).astype(np.float32)
    mean = np.divide(total, count, out=np.full(len(items), np.nan, dtype=np.float32), where=count > 0)
    return highest, mean.astype(np.float32)


def _kg_overlap(
    context: RankerContext, users: np.ndarray, known_user: np.ndarray, items: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    if context.kg_neighbours is None:
        nan_rows = np.full(len(items), np.nan, dtype=np.float32)
        return nan_rows, nan_rows.copy()
    neighbours, user_keys, n_nodes = context.kg_neighbours
    sizes = np.diff(neighbours.indptr)[items]
    row_of_pair = np.repeat(np.arange(len(items)), sizes)
    offsets = np.arange(int(sizes.sum())) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    nodes = neighbours.indices[np.repeat(neighbours.indptr[items], sizes) + offsets].astype(np.int64)
    keys = users[row_of_pair] * n_nodes + nodes
    found = np.searchsorted(user_keys, keys)
    hit = found < len(user_keys)
    hit[hit] = user_keys[found[hit]] == keys[hit]
    hit &= known_user[row_of_pair]
    overlap = np.bincount(row_of_pair, weights=hit, minlength=len(items)).astype(np.float32)
    norm = np.divide(overlap, sizes, out=np.full(len(items), np.nan, dtype=np.float32), where=sizes > 0)
    return overlap, norm.astype(np.float32)


def _pair_dots(
    left: np.ndarray, right: np.ndarray, left_rows: np.ndarray, right_rows: np.ndarray
) -> np.ndarray:
    """``left[left_rows[p]] · right[right_rows[p]]`` for every pair ``p``, as float32.

    When the distinct left rows times all right rows are not much more than the pairs wanted (the usual
    case: a few hundred candidates per user over a catalogue of thousands), blocks of the dense product
    are computed and the pairs picked out; otherwise the pairs are gathered row by row.
    """
    out = np.empty(len(left_rows), dtype=np.float32)
    if len(left_rows) == 0:
        return out
    distinct = np.flatnonzero(np.bincount(left_rows, minlength=len(left)))
    if len(distinct) * len(right) <= _DENSE_WASTE_LIMIT * len(left_rows):
        slot = np.zeros(len(left), dtype=np.int64)
        slot[distinct] = np.arange(len(distinct))
        inverse = slot[left_rows]
        block = max(1, _BLOCK_SCORES // max(len(right), 1))
        right_t = np.ascontiguousarray(right.T)
        if len(distinct) <= block:
            out[:] = (left[distinct] @ right_t)[inverse, right_rows]
            return out
        order = np.argsort(inverse // block, kind="stable")
        block_starts = np.searchsorted(inverse[order] // block, np.arange(0, len(distinct) // block + 2))
        for number, start in enumerate(range(0, len(distinct), block)):
            chosen = order[block_starts[number] : block_starts[number + 1]]
            scores = left[distinct[start : start + block]] @ right_t
            out[chosen] = scores[inverse[chosen] - start, right_rows[chosen]]
        return out
    for start in range(0, len(left_rows), _GATHER_ROWS):
        stop = start + _GATHER_ROWS
        out[start:stop] = np.einsum("ij,ij->i", left[left_rows[start:stop]], right[right_rows[start:stop]])
    return out
