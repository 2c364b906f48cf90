"""Ranking stage: learn a LightGBM ranker on the fold without leakage, then score the final candidates.

Training candidates come from sources fitted on the fold's history; their labels are the fold's label
part. When every source can be refitted from interactions alone, more random label folds are cut from the
same training data and stacked, so the ranker sees each user several times. The ranker is kept only if it
beats the best single source on users held out from its training (in every fold).

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
REFITTABLE_SOURCES = frozenset({"popularity", "itemknn", "ease", "ials", "trend"})
# Offset between the query ids of stacked folds (user rows stay below it).
_FOLD_QUERY_STRIDE = 1 << 40


@dataclass
class RankerTraining:
    """The trained ranker, its validation NDCG against each single source, and the training table."""

    ranker: LightGBMRanker
    validation: dict[str, float]
    candidate_recall: float
    features: pd.DataFrame = field(repr=False)
    columns: list[str] = field(default_factory=list)

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
    candidates, lists = candidate_table(sources, users, config.candidates_per_source, fold.history.matrix)
    labels = _labels(candidates, fold)
    found = pd.Series(labels).groupby(candidates[USER_ROW].to_numpy()).sum()
    recall = float(found.sum() / fold.labels.matrix[users].nnz)
    log.info(
        "ranker training: %d candidates for %d users, candidate recall %.3f",
        len(candidates),
        len(users),
        recall,
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
            extra_sources, extra.label_users, config.candidates_per_source, extra.history.matrix
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

    ranker = LightGBMRanker(**{"seed": seed, **config.params})
    ranker.fit(
        train_part[columns],
        train_part["label"],
        group=_group_sizes_of(train_queries),
        eval_set=(valid_part[columns], valid_part["label"]),
        eval_group=_group_sizes(valid_part),
    )
    validation = _validation_ndcg(ranker, valid_part, columns, lists, users, held_out, fold)
    log.info("ranker validation ndcg@10: %s", {name: round(value, 4) for name, value in validation.items()})
    return RankerTraining(ranker, validation, recall, table, columns)


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
    """``count`` more random label folds of ``fold.full_frame`` (the same label share as ``fold``), each
    with every source re-created with its parameters and fitted on that fold's history."""
    ratio = fold.labels.matrix.nnz / max(fold.full.matrix.nnz, 1)
    folds = []
    for number in range(1, count + 1):
        extra = make_fold(
            fold.full_frame,
            fold.full.users,
            fold.full.items,
            ratio,
            temporal=False,
            seed=seed + 7919 * number,
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


def _labels(candidates: pd.DataFrame, fold: Fold) -> np.ndarray:
    rows, items = candidates[USER_ROW].to_numpy(), candidates[ITEM].to_numpy()
    return np.asarray(fold.labels.matrix[rows, items]).ravel()


def rank_candidates(
    ranker: LightGBMRanker, table: pd.DataFrame, columns: list[str], user_rows: np.ndarray, depth: int
) -> Candidates:
    """Order each user's candidates by the ranker's score; rows follow ``user_rows``, padded with -1."""
    scores = ranker.predict(table[columns]) if len(table) else np.zeros(0)
    return _to_lists(table[USER_ROW].to_numpy(), table[ITEM].to_numpy(), scores, user_rows, depth)


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


def _to_lists(rows: np.ndarray, items: np.ndarray, scores: np.ndarray, user_rows: np.ndarray, depth: int):
    position = pd.Index(user_rows).get_indexer(rows)
    order = np.lexsort((-scores, position))
    position, items, scores = position[order], items[order], scores[order]
    starts = (
        np.flatnonzero(np.r_[True, position[1:] != position[:-1]]) if len(position) else np.array([], int)
    )
    rank = np.arange(len(position)) - np.repeat(starts, np.diff(np.r_[starts, len(position)]))
    keep = rank < depth
    out_items = np.full((len(user_rows), depth), -1, dtype=np.int64)
    out_scores = np.full((len(user_rows), depth), -np.inf, dtype=np.float32)
    out_items[position[keep], rank[keep]] = items[keep]
    out_scores[position[keep], rank[keep]] = scores[keep]
    return Candidates(out_items, out_scores)
