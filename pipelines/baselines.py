"""Baseline stage: tune each candidate source on a validation fold, refit it, and produce its lists."""

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


@dataclass
class TunedSource:
    """A fitted source with the parameters chosen for it and every validation result of its search."""

    source: CandidateSource
    params: dict
    validation_ndcg: float
    trials: list[dict]
    seconds: float


def tune_and_fit(
    train_frame: pd.DataFrame,
    users: IdIndex,
    items: IdIndex,
    config: BaselineConfig,
    *,
    temporal: bool,
    seed: int,
) -> dict[str, TunedSource]:
    """For each configured model, grid-search its parameters on a validation fold cut from ``train_frame``
    (per user, the last or a random ``validation_ratio`` share), then refit the best on all of it."""
    fit_frame, validation_frame = _validation_fold(train_frame, config.validation_ratio, temporal, seed)
    fit_matrix = InteractionMatrix.from_frame(fit_frame, users, items)
    validation = InteractionMatrix.from_frame(validation_frame, users, items).matrix
    full_matrix = InteractionMatrix.from_frame(train_frame, users, items)
    validation_users = np.flatnonzero(np.diff(validation.indptr) > 0)
    tuned = {}
    for name in config.models:
        started = time.perf_counter()
        trials = []
        for params in _grid(config.search_spaces.get(name, {}), config.params.get(name, {})):
            source = create_source(name, **params).fit(fit_matrix)
            lists = source.recommend(validation_users, config.selection_k)
            score = ranking_metrics(
                lists.items,
                validation[validation_users],
                k_values=(config.selection_k,),
                n_catalogue_items=len(items),
            )[f"ndcg@{config.selection_k}"]
            trials.append({"params": params, f"ndcg@{config.selection_k}": score})
            log.info("tuning %s %s: validation ndcg@%d = %.4f", name, params, config.selection_k, score)
        best = max(trials, key=lambda trial: trial[f"ndcg@{config.selection_k}"])
        source = create_source(name, **best["params"]).fit(full_matrix)
        tuned[name] = TunedSource(
            source, best["params"], best[f"ndcg@{config.selection_k}"], trials, time.perf_counter() - started
        )
    return tuned


def select_final(tuned: dict[str, TunedSource]) -> str:
    """Name of the source with the best validation NDCG."""
    return max(tuned, key=lambda name: tuned[name].validation_ndcg)


def final_lists(
    tuned: dict[str, TunedSource], selected: str, fallback: CandidateSource, user_rows: np.ndarray, depth: int
) -> tuple[dict[str, Candidates], Candidates, np.ndarray]:
    """Every source's lists, and the final list: the selected source's, with users it cannot serve
    (no history) served by ``fallback``. Returns (per-source lists, final list, source name per user)."""
    lists = {name: entry.source.recommend(user_rows, depth) for name, entry in tuned.items()}
    items = lists[selected].items.copy()
    scores = lists[selected].scores.copy()
    origin = np.full(len(user_rows), selected, dtype=object)
    unserved = items[:, 0] < 0
    if unserved.any():
        backup = fallback.recommend(user_rows[unserved], depth)
        items[unserved], scores[unserved] = backup.items, backup.scores
        origin[unserved] = fallback.name
    return lists, Candidates(items, scores), origin


def _validation_fold(frame: pd.DataFrame, ratio: float, temporal: bool, seed: int):
    if temporal and TIMESTAMP in frame.columns and frame[TIMESTAMP].notna().all():
        return temporal_split(frame, ratio)
    return random_split(frame, ratio, seed=seed + 1)


def _grid(space: dict[str, list], fixed: dict) -> list[dict]:
    names = [name for name in space if name not in fixed]
    combos = itertools.product(*(space[name] for name in names))
    return [{**dict(zip(names, values, strict=True)), **fixed} for values in combos] or [dict(fixed)]
