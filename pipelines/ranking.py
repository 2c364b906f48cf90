"""Ranking stage: learn a LightGBM ranker on the fold without leakage, then score the final candidates.

Training candidates come from sources fitted on the fold's history; their labels are the fold's label
part. When every source can be refitted from interactions alone, more random label folds are cut from the
same training data and stacked, so the ranker sees each user several times. The ranker is kept only if it
beats the best single source on users held out from its training (in every fold).

A share of the fold's items is simulated as new (``Fold.cold_items``) so that the ranker learns how items
without history fare; :func:`ranker.lists.rank_with_new_item_slots` can reserve places of the final lists
for new items.

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
from m6rec.candidates.registry import source_class
from m6rec.config import RankerConfig, RunConfig
from m6rec.evaluation.metrics import ranking_metrics
from pipelines.checkpoints import Checkpoints
from pipelines.source_tuning import Fold, TunedSource, make_fold, sample_users, select_final
from ranker.features import RankerContext, build_ranker_features, feature_columns
from ranker.lists import rank_candidates
from ranker.model import LightGBMRanker

log = logging.getLogger("m6rec")

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

    def record(self) -> dict:
        """What the training found, JSON-ready (:meth:`from_record` reads it back with the model)."""
        return {
            "validation": self.validation,
            "candidate_recall": self.candidate_recall,
            "columns": self.columns,
            "cold_candidate_recall": self.cold_candidate_recall,
        }

    @classmethod
    def from_record(cls, record: dict, ranker: LightGBMRanker) -> RankerTraining:
        """The training :meth:`record` described, with its saved ``ranker`` (no training table)."""
        return cls(
            ranker=ranker,
            validation=record["validation"],
            candidate_recall=record["candidate_recall"],
            features=None,
            columns=record["columns"],
            cold_candidate_recall=record["cold_candidate_recall"],
        )

    def summary(self) -> dict:
        """What ``run.json`` says of the ranker."""
        return {
            "validation_ndcg@10": self.validation,
            "fold_candidate_recall": self.candidate_recall,
            "used": self.beats_sources,
            "features": self.columns,
            "best_iteration": self.ranker.best_iteration_,
        }


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
    refittable (``CandidateSource.refittable``) and a context without embeddings (which may be trained on the fold's
    history), further folds are cut from ``fold.full_frame`` and stacked. A share
    (``config.early_stopping_share``) of the users is held out of every fold for early stopping and the
    validation NDCG@10, which is measured on ``fold`` alone.
    """
    users = sample_users(fold.label_users, config.max_training_users, seed=seed, purpose="ranker training")
    width = min(config.candidates_per_source, fold.full.n_items)  # no wider than the catalogue
    candidates, lists = candidate_table(sources, users, width, fold.seen)
    labels = _labels(candidates, fold)
    found = pd.Series(labels).groupby(candidates[USER_ROW].to_numpy()).sum()
    recall = float(found.sum() / fold.labels.matrix[users].nnz)
    log.info(
        "ranker training: %d candidates for %d users, candidate recall %.3f",
        len(candidates),
        len(users),
        recall,
    )
    cold_recall = _cold_candidate_recall(candidates, labels, fold, users)
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
        extra_users = sample_users(
            extra.label_users, config.max_training_users, seed=seed + number, purpose="ranker training"
        )
        extra_candidates, _ = candidate_table(extra_sources, extra_users, width, extra.seen)
        extra_table = build_ranker_features(
            extra_candidates, dataclasses.replace(context, train=extra.history, profiles=None)
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
    fixed = sorted(name for name in sources if not source_class(name).refittable())
    if fixed:
        reasons.append(f"sources {fixed} read fold-trained files")
    if context.item_embeddings or context.user_profiles or context.two_tower_user_vectors is not None:
        reasons.append("the context holds embeddings")
    if reasons:
        log.info("ranker trained on one fold: %s", "; ".join(reasons))
        return []
    return resampled_folds(fold, sources, config.training_folds - 1, seed=seed)


def _cold_candidate_recall(
    candidates: pd.DataFrame, labels: np.ndarray, fold: Fold, users: np.ndarray
) -> float | None:
    cold_labels = fold.labels.matrix[users][:, fold.cold_items].nnz if len(fold.cold_items) else 0
    if cold_labels == 0:
        return None
    found = labels.astype(bool) & np.isin(candidates[ITEM].to_numpy(), fold.cold_items)
    return float(found.sum() / cold_labels)


def _labels(candidates: pd.DataFrame, fold: Fold) -> np.ndarray:
    rows, items = candidates[USER_ROW].to_numpy(), candidates[ITEM].to_numpy()
    return np.asarray(fold.labels.matrix[rows, items]).ravel()


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


def train_or_resume_ranker(
    fold: Fold,
    tuned: dict[str, TunedSource],
    context,
    config: RunConfig,
    temporal: bool,
    checkpoints: Checkpoints,
    digest: str,
) -> tuple[str, RankerTraining | None]:
    """The ranker trained on the fold with ``context`` (the fold history's), and the name of the final
    list: ``ranker`` only when it beats every single source on held-out fold users. A ranker a run that
    did not finish trained on the same inputs (``digest``) is taken from ``checkpoints`` instead."""
    best_source = select_final(tuned)
    if not config.ranker.enabled or len(tuned) < 2:
        return best_source, None
    saved, training = checkpoints.read("ranker", digest), None
    if saved is not None:
        try:
            training = RankerTraining.from_record(saved, LightGBMRanker.load(checkpoints.directory("ranker")))
        except Exception as error:  # a damaged checkpoint is only not reused
            log.warning("the ranker checkpoint is unreadable (%s); training the ranker again", error)
    if training is None:
        training = train_ranker(
            fold,
            {name: entry.history_source for name, entry in tuned.items()},
            context,
            config.ranker,
            seed=config.seed,
            temporal=temporal,
        )
        training.ranker.save(checkpoints.directory("ranker"))
        checkpoints.write("ranker", digest, training.record())
    if not training.beats_sources:
        log.warning(
            "the ranker did not beat the best single source (%s) on held-out fold users; using %s",
            best_source,
            best_source,
        )
        return best_source, training
    return "ranker", training
