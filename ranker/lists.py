"""Ordering each user's candidates into a list by the ranker's score, and reserving places of the lists
for new items (items without any training interaction, which reach users only through content).

Pure list operations over a fitted :class:`ranker.model.LightGBMRanker` and a candidate feature table;
the pipelines decide when to call them.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from m6rec.candidates import Candidates
from m6rec.candidates.merge import ITEM, USER_ROW
from m6rec.config import RankerConfig
from ranker.model import LightGBMRanker


def rank_candidates(
    ranker: LightGBMRanker,
    table: pd.DataFrame,
    columns: list[str],
    user_rows: np.ndarray,
    depth: int,
    *,
    new_item_slots: int = 0,
    new_item_slot_spacing: int = RankerConfig().new_item_slot_spacing,
) -> Candidates:
    """Order each user's candidates by the ranker's score; rows follow ``user_rows``, padded with -1.

    With ``new_item_slots``, places are reserved for new items as in :func:`rank_with_new_item_slots`.
    """
    return rank_with_new_item_slots(
        ranker, table, columns, user_rows, depth, slots=new_item_slots, spacing=new_item_slot_spacing
    )[0]


def rank_with_new_item_slots(
    ranker: LightGBMRanker,
    table: pd.DataFrame,
    columns: list[str],
    user_rows: np.ndarray,
    depth: int,
    *,
    slots: int,
    spacing: int = RankerConfig().new_item_slot_spacing,
) -> tuple[Candidates, np.ndarray]:
    """Each user's candidates ordered by the ranker's score, with ``slots`` places reserved for new items.

    New items are those with ``item_pop`` 0 in ``table``: no training interaction. The user's best-scored
    new items among all its candidates (not only the top ``depth``) are moved up as
    :func:`reserve_new_item_slots` describes. Returns the lists (rows follow ``user_rows``, padded with -1)
    and a boolean ``[n_users, depth]`` mask of the entries moved up into a reserved place (provenance).
    """
    scores = ranker.predict(table[columns]) if len(table) else np.zeros(0)
    rows, items = table[USER_ROW].to_numpy(), table[ITEM].to_numpy()
    if slots == 0:
        lists = _to_lists(rows, items, scores, user_rows, depth)
        return lists, np.zeros(lists.items.shape, dtype=bool)
    is_new = table["item_pop"].to_numpy() == 0
    order, _, rank = _ranked_order(rows, scores, user_rows)
    new_in_order = is_new[order]
    new_so_far = pd.Series(new_in_order.astype(np.int64)).groupby(rows[order]).cumsum().to_numpy()
    pooled = np.zeros(len(rows), dtype=bool)
    pooled[order] = (rank < depth) | (new_in_order & (new_so_far <= slots))
    pool = _to_lists(rows[pooled], items[pooled], scores[pooled], user_rows, depth + slots)
    is_new_item = np.zeros(int(items.max(initial=-1)) + 1, dtype=bool)
    is_new_item[items[is_new]] = True
    lists, moved = reserve_new_item_slots(pool, is_new_item, slots, spacing)
    return Candidates(lists.items[:, :depth], lists.scores[:, :depth]), moved[:, :depth]


def reserve_new_item_slots(
    ranked: Candidates, is_new_item: np.ndarray, slots: int, spacing: int
) -> tuple[Candidates, np.ndarray]:
    """Reserve places for new items in ranked lists: a user's ``j``-th new item, for ``j`` up to
    ``slots``, is moved up to 1-based position ``j * spacing`` unless the ranker already put it higher.

    Args:
        ranked: lists best first (``items`` ``[n_users, depth]``, -1 padding at the end).
        is_new_item: boolean per item column, True for items without training interactions.
        slots: how many places per list are reserved (0: lists unchanged).
        spacing: distance between reserved places; ``spacing=5, slots=2`` reserves positions 5 and 10.

    Returns:
        The reordered lists and a boolean ``[n_users, depth]`` mask of the entries moved up into a reserved
        place. A list only changes order: the moved new items are the user's best-ranked ones, the other
        items keep their relative order, every item keeps its score, and nothing is added or dropped (so no
        duplicate and no seen item can appear). A user with fewer new candidates than ``slots`` gets those.
    """
    if slots < 0:
        raise ValueError(f"new item slots must be at least 0, got {slots}")
    if spacing < 1:
        raise ValueError(f"new item slot spacing must be at least 1, got {spacing}")
    items, scores = np.asarray(ranked.items), np.asarray(ranked.scores)
    is_new_item = np.asarray(is_new_item, dtype=bool)
    new = (items >= 0) & is_new_item[np.maximum(items, 0)]
    if slots == 0 or not new.any():
        return Candidates(items.copy(), scores.copy()), np.zeros(items.shape, dtype=bool)
    order_among_new = np.cumsum(new, axis=1)
    natural = np.broadcast_to(np.arange(items.shape[1]), items.shape)
    reserved = np.minimum(natural, order_among_new * spacing - 1)
    target = np.where(new & (order_among_new <= slots), reserved, natural)
    rows, columns = np.nonzero(new)
    placed = np.zeros(items.shape, dtype=bool)
    placed[rows, target[rows, columns]] = True
    out_items, out_scores = np.empty_like(items), np.empty_like(scores)
    out_items[rows, target[rows, columns]] = items[rows, columns]
    out_scores[rows, target[rows, columns]] = scores[rows, columns]
    # Other entries, padding included, fill the free places row by row in their original order; both
    # masks hold the same count per row, and boolean indexing walks them row-major.
    out_items[~placed] = items[~new]
    out_scores[~placed] = scores[~new]
    moved = np.zeros(items.shape, dtype=bool)
    moved[rows, target[rows, columns]] = target[rows, columns] < columns
    return Candidates(out_items, out_scores), moved


def _ranked_order(rows: np.ndarray, scores: np.ndarray, user_rows: np.ndarray) -> tuple[np.ndarray, ...]:
    """The order that sorts candidates by user (as in ``user_rows``) then score, best first, and for each
    sorted candidate its user's position in ``user_rows`` and its 0-based rank within the user."""
    position = pd.Index(user_rows).get_indexer(rows)
    order = np.lexsort((-scores, position))
    position = position[order]
    starts = (
        np.flatnonzero(np.r_[True, position[1:] != position[:-1]]) if len(position) else np.array([], int)
    )
    rank = np.arange(len(position)) - np.repeat(starts, np.diff(np.r_[starts, len(position)]))
    return order, position, rank


def _to_lists(rows: np.ndarray, items: np.ndarray, scores: np.ndarray, user_rows: np.ndarray, depth: int):
    order, position, rank = _ranked_order(rows, scores, user_rows)
    items, scores = items[order], scores[order]
    keep = rank < depth
    out_items = np.full((len(user_rows), depth), -1, dtype=np.int64)
    out_scores = np.full((len(user_rows), depth), -np.inf, dtype=np.float32)
    out_items[position[keep], rank[keep]] = items[keep]
    out_scores[position[keep], rank[keep]] = scores[keep]
    return Candidates(out_items, out_scores)
