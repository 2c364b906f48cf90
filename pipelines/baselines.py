"""Candidate-source stage: tune each source on a validation fold, keep the fold-fitted best for training
the ranker, and refit the best on all training data for the final lists."""

from __future__ import annotations

import itertools
import logging
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from m6rec.candidates import Candidates, CandidateSource, create_source
from m6rec.config import BaselineConfig
from m6rec.data.contract import TIMESTAMP
from m6rec.data.interactions import IdIndex, InteractionMatrix
from m6rec.data.splits import random_split, temporal_split
from m6rec.evaluation.metrics import ranking_metrics

log = logging.getLogger("m6rec")


@dataclass(frozen=True)
class Fold:
    """Training data cut in two: ``history`` (what sources learn from) and ``labels`` (what they must find).

    Sources are tuned on it, and the ranker learns from candidates of the history-fitted sources with
    labels from the label part, so no label ever leaks into a feature.
    """

    history_frame: pd.DataFrame
    label_frame: pd.DataFrame
    full_frame: pd.DataFrame
    history: InteractionMatrix
    labels: InteractionMatrix
    full: InteractionMatrix

    @property
    def label_users(self) -> np.ndarray:
        return np.flatnonzero(np.diff(self.labels.matrix.indptr) > 0)


def make_fold(
    train_frame: pd.DataFrame, users: IdIndex, items: IdIndex, ratio: float, *, temporal: bool, seed: int
):
    """Per user, the latest (``temporal``) or a random ``ratio`` share of ``train_frame`` becomes labels."""
    if temporal and TIMESTAMP in train_frame.columns and train_frame[TIMESTAMP].notna().all():
        history, labels = temporal_split(train_frame, ratio)
    else:
        history, labels = random_split(train_frame, ratio, seed=seed + 1)
    return Fold(
        history,
        labels,
        train_frame,
        InteractionMatrix.from_frame(history, users, items),
        InteractionMatrix.from_frame(labels, users, items),
        InteractionMatrix.from_frame(train_frame, users, items),
    )


@dataclass
class TunedSource:
    """A source tuned on the fold: fitted on the fold's history and, refitted, on all training data."""

    history_source: CandidateSource
    source: CandidateSource
    params: dict
    validation_ndcg: float
    trials: list[dict]
    seconds: float


def tune_and_fit(
    fold: Fold,
    models: list[str],
    config: BaselineConfig,
    *,
    history_params: dict[str, dict] | None = None,
    full_params: dict[str, dict] | None = None,
) -> dict[str, TunedSource]:
    """Grid-search each model's parameters on ``fold`` (NDCG@``selection_k`` of its label part), then
    refit the best on all training data.

    ``history_params`` / ``full_params`` add fixed parameters that differ between the two fits, such as
    the embedding files of models trained on the fold's history versus on all training data.
    """
    history_params, full_params = history_params or {}, full_params or {}
    label_users = fold.label_users
    key = f"ndcg@{config.selection_k}"
    tuned = {}
    for name in models:
        started = time.perf_counter()
        trials, best_source, best_score = [], None, -np.inf
        for params in _grid(config.search_spaces.get(name, {}), config.params.get(name, {})):
            source = create_source(name, **params, **history_params.get(name, {})).fit(fold.history)
            lists = source.recommend(label_users, config.selection_k)
            score = ranking_metrics(
                lists.items,
                fold.labels.matrix[label_users],
                k_values=(config.selection_k,),
                n_catalogue_items=fold.full.n_items,
            )[key]
            trials.append({"params": params, key: score})
            log.info("tuning %s %s: validation %s = %.4f", name, params, key, score)
            if score > best_score:
                best_source, best_score, best_params = source, score, params
        source = create_source(name, **best_params, **full_params.get(name, {})).fit(fold.full)
        tuned[name] = TunedSource(
            best_source, source, best_params, float(best_score), trials, time.perf_counter() - started
        )
    return tuned


def select_final(tuned: dict[str, TunedSource]) -> str:
    """Name of the source with the best validation NDCG."""
    return max(tuned, key=lambda name: tuned[name].validation_ndcg)


def with_fallback(
    lists: Candidates, fallback: CandidateSource, user_rows: np.ndarray, depth: int, name: str
) -> tuple[Candidates, np.ndarray]:
    """``lists`` with users it cannot serve (empty list) served by ``fallback``; returns the lists and the
    name of the source behind each user's list."""
    items, scores = lists.items.copy(), lists.scores.copy()
    origin = np.full(len(user_rows), name, dtype=object)
    unserved = items[:, 0] < 0
    if unserved.any():
        backup = fallback.recommend(user_rows[unserved], depth)
        width = min(depth, items.shape[1])
        items[unserved], scores[unserved] = -1, -np.inf
        items[unserved, :width], scores[unserved, :width] = backup.items[:, :width], backup.scores[:, :width]
        origin[unserved] = fallback.name
    return Candidates(items, scores), origin


def _grid(space: dict[str, list], fixed: dict) -> list[dict]:
    names = [name for name in space if name not in fixed]
    combos = itertools.product(*(space[name] for name in names))
    return [{**dict(zip(names, values, strict=True)), **fixed} for values in combos] or [dict(fixed)]
