"""Ranking stage: learn a LightGBM ranker on the fold without leakage, then score the final candidates.

Training candidates come from sources fitted on the fold's history; their labels are the fold's label
part. When every source can be refitted from interactions alone, more random label folds are cut from the
same training data and stacked, so the ranker sees each user several times. The ranker is kept only if it
beats the best single source on users held out from its training (in every fold).

A share of the fold's items is simulated as new (``Fold.cold_items``) so that the ranker learns how items
without history fare; :func:`rank_with_new_item_slots` can reserve places of the final lists for new items.

Raw scores and raw counts shift between the fold (sources fitted on less data) and the final lists
(sources fitted on all training data); the ranker learns from ranks, per-user standardised scores and
shares instead (``RankerConfig.excluded_features``).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from m6rec.candidates import Candidates, CandidateSource, create_source
from m6rec.candidates.merge import ITEM, USER_ROW, merge_candidates
from m6rec.config import RankerConfig
from m6rec.evaluation.metrics import ranking_metrics
from pipelines.baselines import Fold, make_fold
from ranker.features import RankerContext, build_ranker_features, feature_columns
from ranker.model import LightGBMRanker

log = logging.getLogger("m6rec")

# Sources that learn only from the interaction matrix, so refitting them on another fold's history is
# leak-free; embedding sources read files trained on one particular history.
REFITTABLE_SOURCES = frozenset({"popularity", "itemknn", "ease", "ials", "trend", "sequential"})
# Offset between the query ids of stacked folds (user rows stay below it).
_FOLD_QUERY_STRIDE = 1 << 40


@dataclass
class RankerTraining:
    """The trained ranker, its validation NDCG against each single source, and the training table.

    ``candidate_recall`` is the share of the fold's labels among the training candidates;
    ``cold_candidate_recall`` the same for the labels on the fold's simulated new items (None without).
    """

    ranker: LightGBMRanker
    validation: dict[str, float]
    candidate_recall: float
    features: pd.DataFrame = field(repr=False)
    columns: list[str] = field(default_factory=list)
    cold_candidate_recall: float | None = None

    @property
    def beats_sources(self) -> bool:
        sources = [value for name, value in self.validation.items() if name != "ranker"]
        return self.validation["ranker"] > max(sources, default=-np.inf)


def candidate_table(
    sources: dict[str, CandidateSource], user_rows: np.ndarray, depth: int, seen
) -> tuple[pd.DataFrame, dict[str, Candidates]]:
    """Merged candidates of every source for ``user_rows`` with per-source provenance, and the raw lists."""
    lists = {name: source.recommend(user_rows, depth) for name, source in sources.items()}
    return merge_candidates(lists, user_rows, seen=seen), lists


def train_ranker(
    fold: Fold,
    sources: dict[str, CandidateSource],
    context: RankerContext,
    config: RankerConfig,
    *,
    seed: int,
    temporal: bool = False,
) -> RankerTraining:
    """Fit the ranker on candidates of ``sources`` (fitted on ``fold.history``) for the fold's label users.

    With ``config.training_folds`` above 1, a random (not ``temporal``) fold, sources that are all in
    :data:`REFITTABLE_SOURCES` and a context without embeddings (which may be trained on the fold's
    history), further folds are cut from ``fold.full_frame`` and stacked. A share
    (``config.early_stopping_share``) of the users is held out of every fold for early stopping and the
    validation NDCG@10, which is measured on ``fold`` alone.
    """
    users = fold.label_users
    candidates, lists = candidate_table(sources, users, config.candidates_per_source, fold.seen)
    labels = _labels(candidates, fold)
    found = pd.Series(labels).groupby(candidates[USER_ROW].to_numpy()).sum()
    recall = float(found.sum() / fold.labels.matrix[users].nnz)
    log.info(
        "ranker training: %d candidates for %d users, candidate recall %.3f",
        len(candidates),
        len(users),
        recall,
    )
    cold_recall = _cold_candidate_recall(candidates, labels, fold)
    if cold_recall is not None:
        log.info(
            "ranker training: %d simulated new items, candidate recall of their labels %.3f",
            len(fold.cold_items),
            cold_recall,
        )
    table = build_ranker_features(candidates, context)
    table["label"] = labels.astype(np.int32)
    useful = found[found > 0].index.to_numpy()
    rng = np.random.default_rng(seed)
    held_out = rng.choice(useful, size=max(1, int(len(useful) * config.early_stopping_share)), replace=False)
    columns = model_columns(table, config.excluded_features)

    tables = [table]
    for number, (extra, extra_sources) in enumerate(
        _stacked_folds(fold, sources, context, config, seed=seed, temporal=temporal), start=1
    ):
        extra_candidates, _ = candidate_table(
            extra_sources, extra.label_users, config.candidates_per_source, extra.seen
        )
        extra_table = build_ranker_features(
            extra_candidates, dataclasses.replace(context, train=extra.history)
        )
        extra_table["label"] = _labels(extra_candidates, extra).astype(np.int32)
        tables.append(extra_table)
        log.info("ranker training fold %d: %d candidates", number, len(extra_table))
    train_parts, valid_part = [], None
    for number, part in enumerate(tables):
        queries = part[USER_ROW].to_numpy() + number * _FOLD_QUERY_STRIDE
        positives = pd.Series(part["label"].to_numpy()).groupby(queries).transform("sum").to_numpy()
        in_valid = part[USER_ROW].isin(held_out).to_numpy()
        train_parts.append((part[(positives > 0) & ~in_valid], queries[(positives > 0) & ~in_valid]))
        if number == 0:
            valid_part = part[in_valid]
    train_part = pd.concat([frame for frame, _ in train_parts], ignore_index=True)
    train_queries = np.concatenate([queries for _, queries in train_parts])

    ranker = LightGBMRanker(**config.params.ranker_kwargs(), seed=seed, monotone=config.monotone_features)
    ranker.fit(
        train_part[columns],
        train_part["label"],
        group=_group_sizes_of(train_queries),
        eval_set=(valid_part[columns], valid_part["label"]),
        eval_group=_group_sizes(valid_part),
    )
    validation = _validation_ndcg(ranker, valid_part, columns, lists, users, held_out, fold)
    log.info("ranker validation ndcg@10: %s", {name: round(value, 4) for name, value in validation.items()})
    return RankerTraining(ranker, validation, recall, table, columns, cold_recall)


def model_columns(table: pd.DataFrame, excluded: list[str]) -> list[str]:
    """The feature columns of ``table`` the ranker learns from: all but ``label`` and those matching one
    of the ``excluded`` shell-style patterns (``*_score``)."""
    return [
        column
        for column in feature_columns(table)
        if column != "label" and not any(fnmatch.fnmatchcase(column, pattern) for pattern in excluded)
    ]


def resampled_folds(
    fold: Fold, sources: dict[str, CandidateSource], count: int, *, seed: int
) -> list[tuple[Fold, dict[str, CandidateSource]]]:
    """``count`` more random label folds of ``fold.full_frame`` (the same label share and share of
    simulated new items as ``fold``, other items drawn), each with every source re-created with its
    parameters and fitted on that fold's history."""
    folds = []
    for number in range(1, count + 1):
        extra = make_fold(
            fold.full_frame,
            fold.full.users,
            fold.full.items,
            fold.ratio,
            temporal=False,
            seed=seed + 7919 * number,
            cold_item_share=fold.cold_item_share,
        )
        refitted = {
            name: create_source(name, **source.params).fit(extra.history) for name, source in sources.items()
        }
        folds.append((extra, refitted))
    return folds


def _stacked_folds(fold, sources, context, config, *, seed, temporal):
    if config.training_folds <= 1:
        return []
    reasons = []
    if temporal:
        reasons.append("the fold is temporal")
    if not REFITTABLE_SOURCES.issuperset(sources):
        reasons.append(f"sources {sorted(set(sources) - REFITTABLE_SOURCES)} read fold-trained files")
    if context.item_embeddings or context.user_profiles or context.two_tower_user_vectors is not None:
        reasons.append("the context holds embeddings")
    if reasons:
        log.info("ranker trained on one fold: %s", "; ".join(reasons))
        return []
    return resampled_folds(fold, sources, config.training_folds - 1, seed=seed)


def _cold_candidate_recall(candidates: pd.DataFrame, labels: np.ndarray, fold: Fold) -> float | None:
    cold_labels = fold.labels.matrix[fold.label_users][:, fold.cold_items].nnz if len(fold.cold_items) else 0
    if cold_labels == 0:
        return None
    found = labels.astype(bool) & np.isin(candidates[ITEM].to_numpy(), fold.cold_items)
    return float(found.sum() / cold_labels)


def _labels(candidates: pd.DataFrame, fold: Fold) -> np.ndarray:
    rows, items = candidates[USER_ROW].to_numpy(), candidates[ITEM].to_numpy()
    return np.asarray(fold.labels.matrix[rows, items]).ravel()


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


def rank_final_lists(
    ranker: LightGBMRanker,
    table: pd.DataFrame,
    columns: list[str],
    user_rows: np.ndarray,
    depth: int,
    config: RankerConfig,
) -> tuple[Candidates, np.ndarray]:
    """The published lists: :func:`rank_with_new_item_slots` with the places ``config`` reserves."""
    return rank_with_new_item_slots(
        ranker,
        table,
        columns,
        user_rows,
        depth,
        slots=config.new_item_slots,
        spacing=config.new_item_slot_spacing,
    )


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


def _validation_ndcg(ranker, valid_part, columns, lists, users, held_out, fold) -> dict[str, float]:
    positions = np.flatnonzero(np.isin(users, held_out))
    rows = users[positions]
    relevant = fold.labels.matrix[rows]
    ranked = rank_candidates(ranker, valid_part, columns, rows, 10)
    result = {"ranker": _ndcg(ranked.items, relevant, fold)}
    for name, candidates in lists.items():
        result[name] = _ndcg(candidates.items[positions, :10], relevant, fold)
    return result


def _ndcg(items: np.ndarray, relevant, fold: Fold) -> float:
    return ranking_metrics(items, relevant, k_values=(10,), n_catalogue_items=fold.full.n_items)["ndcg@10"]


def _group_sizes(table: pd.DataFrame) -> np.ndarray:
    return _group_sizes_of(table[USER_ROW].to_numpy())


def _group_sizes_of(rows: np.ndarray) -> np.ndarray:
    boundaries = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
    return np.diff(np.r_[boundaries, len(rows)])


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
