"""Ranking stage: learn a LightGBM ranker on the fold without leakage, then score the final candidates.

Training candidates come from sources fitted on the fold's history; their labels are the fold's label
part. The ranker is kept only if it beats the best single source on users held out from its training.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from m6rec.candidates import Candidates, CandidateSource
from m6rec.candidates.merge import ITEM, USER_ROW, merge_candidates
from m6rec.config import RankerConfig
from m6rec.evaluation.metrics import ranking_metrics
from pipelines.baselines import Fold
from ranker.features import RankerContext, build_ranker_features, feature_columns
from ranker.model import LightGBMRanker

log = logging.getLogger("m6rec")


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
) -> RankerTraining:
    """Fit the ranker on candidates of ``sources`` (fitted on ``fold.history``) for the fold's label users."""
    users = fold.label_users
    candidates, lists = candidate_table(sources, users, config.candidates_per_source, fold.history.matrix)
    labels = np.asarray(
        fold.labels.matrix[candidates[USER_ROW].to_numpy(), candidates[ITEM].to_numpy()]
    ).ravel()
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
    in_valid = table[USER_ROW].isin(held_out).to_numpy()
    in_train = table[USER_ROW].isin(useful).to_numpy() & ~in_valid
    columns = [column for column in feature_columns(table) if column != "label"]
    ranker = LightGBMRanker(**{"seed": seed, **config.params})
    train_part, valid_part = table[in_train], table[in_valid]
    ranker.fit(
        train_part[columns],
        train_part["label"],
        group=_group_sizes(train_part),
        eval_set=(valid_part[columns], valid_part["label"]),
        eval_group=_group_sizes(valid_part),
    )
    validation = _validation_ndcg(ranker, valid_part, columns, lists, users, held_out, fold)
    log.info("ranker validation ndcg@10: %s", {name: round(value, 4) for name, value in validation.items()})
    return RankerTraining(ranker, validation, recall, table, columns)


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
    rows = table[USER_ROW].to_numpy()
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
