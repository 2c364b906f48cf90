"""The fold protocol and the tuning of candidate sources: cut the training interactions into a history
and labels (the fold), tune each source on it, keep the fold-fitted best for training the ranker, and refit
the best on all training data for the final lists."""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.sparse as sp

from m6rec.candidates import CandidateSource, create_source, source_class
from m6rec.candidates.side_inputs import SideInputs
from m6rec.config import BaselineConfig
from m6rec.data.contract import ITEM_ID, TIMESTAMP
from m6rec.data.interactions import IdIndex, InteractionMatrix
from m6rec.data.splits import random_split, temporal_split
from m6rec.errors import M6RecError
from m6rec.evaluation.metrics import ranking_metrics

log = logging.getLogger("m6rec")


@dataclass(frozen=True)
class Fold:
    """Training data cut in two: ``history`` (what sources learn from) and ``labels`` (what they must find).

    Sources are tuned on it, and the ranker learns from candidates of the history-fitted sources with
    labels from the label part, so no label ever leaks into a feature. ``ratio`` is the per-user label
    share. ``cold_items`` (item columns) are simulated new items, as if added at the fold's cut: their
    interactions in the history part are ``hidden`` (in neither part, so nothing fitted on the history
    knows the items), those in the label part stay labels.
    """

    history_frame: pd.DataFrame | None  # None once what reads the frames (the embeddings) is done
    label_frame: pd.DataFrame | None
    full_frame: pd.DataFrame
    history: InteractionMatrix
    labels: InteractionMatrix
    full: InteractionMatrix
    ratio: float = 0.2
    cold_items: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    hidden: InteractionMatrix | None = None

    @property
    def label_users(self) -> np.ndarray:
        return np.flatnonzero(np.diff(self.labels.matrix.indptr) > 0)

    @property
    def seen(self) -> sp.csr_matrix:
        """The pairs no fold candidate may be: the history and the hidden interactions."""
        if self.hidden is None:
            return self.history.matrix
        seen = (self.history.matrix + self.hidden.matrix).tocsr()
        seen.data[:] = 1.0
        return seen

    @property
    def cold_item_share(self) -> float:
        """Share of the items with training interactions that the fold treats as new."""
        with_history = int(np.count_nonzero(self.full.item_popularity()))
        return len(self.cold_items) / with_history if with_history else 0.0


def make_fold(
    train_frame: pd.DataFrame,
    users: IdIndex,
    items: IdIndex,
    ratio: float,
    *,
    temporal: bool,
    seed: int,
    cold_item_share: float = 0.0,
) -> Fold:
    """Per user, the latest (``temporal``) or a random ``ratio`` share of ``train_frame`` becomes labels.

    With ``cold_item_share`` above 0, that share of the items with training interactions (at least one
    item, drawn at random with ``seed``) become simulated new items: their history-part interactions are
    hidden, their label-part ones stay labels, so the ranker learns how items without history, reached
    through content, fare. Hiding rather than moving those interactions to the labels keeps a new item's
    label rate that of any item: moved, they had several times as many labels as other items, and the
    ranker trained on MovieLens either buried new items or flooded the lists with them, by seed.
    """
    if not 0.0 <= cold_item_share < 1.0:
        raise ValueError(f"cold_item_share must be in [0, 1), got {cold_item_share}")
    if temporal and TIMESTAMP in train_frame.columns and train_frame[TIMESTAMP].notna().all():
        history, labels = temporal_split(train_frame, ratio)
    else:
        history, labels = random_split(train_frame, ratio, seed=seed + 1)
    cold_items, hidden = np.zeros(0, dtype=np.int64), None
    if cold_item_share > 0:
        cold_items = simulated_cold_items(train_frame, items, cold_item_share, seed=seed)
        is_hidden = np.isin(items.positions(history[ITEM_ID]), cold_items)
        history, hidden = history[~is_hidden], InteractionMatrix.from_frame(history[is_hidden], users, items)
    return Fold(
        history,
        labels,
        train_frame,
        InteractionMatrix.from_frame(history, users, items),
        InteractionMatrix.from_frame(labels, users, items),
        InteractionMatrix.from_frame(train_frame, users, items),
        ratio,
        cold_items,
        hidden,
    )


def simulated_cold_items(train_frame: pd.DataFrame, items: IdIndex, share: float, *, seed: int) -> np.ndarray:
    """Sorted columns of ``round(share * n)`` (at least one) of the ``n`` items with interactions in
    ``train_frame``, drawn uniformly at random with ``seed``."""
    with_history = np.unique(items.positions(train_frame[ITEM_ID]))
    with_history = with_history[with_history >= 0]
    count = min(len(with_history), max(1, round(share * len(with_history))))
    rng = np.random.default_rng([seed, 0xC01D])
    return np.sort(rng.choice(with_history, size=count, replace=False)).astype(np.int64)


@dataclass
class TunedSource:
    """A source tuned on the fold: fitted on the fold's history and, refitted, on all training data."""

    history_source: CandidateSource
    source: CandidateSource
    params: dict
    validation_ndcg: float
    trials: list[dict]
    seconds: float

    def record(self) -> dict:
        """What the tuning found, JSON-ready (``tune_and_fit(tuned_before=...)`` reads it back)."""
        return {
            "params": self.params,
            "validation_ndcg": self.validation_ndcg,
            "trials": self.trials,
            "seconds": self.seconds,
        }


def tune_and_fit(
    fold: Fold,
    models: list[str],
    config: BaselineConfig,
    *,
    history_inputs: SideInputs | None = None,
    full_inputs: SideInputs | None = None,
    seed: int = 0,
    tuned_before: dict[str, dict] | None = None,
) -> dict[str, TunedSource]:
    """Grid-search each model's parameters on ``fold`` (NDCG@``selection_k`` of its label part), then
    refit the best on all training data.

    ``history_inputs`` / ``full_inputs`` are the side inputs of the two fits (the vectors of models
    trained on the fold's history versus on all training data), loaded once and shared by every trial.
    A source class with a ``fit_grid`` capability fits its whole grid at once (see ``_fitted_trials``).

    ``tuned_before`` (:meth:`TunedSource.record` of each source, from a run on the same inputs that did
    not finish): no grid is searched again; each source is fitted once on the fold's history with its
    tuned parameters (the way its trial was) and once on all training data.
    """
    if len(fold.label_users) == 0:
        raise M6RecError(
            f"too few training interactions to tune the sources: no user keeps a validation share "
            f"(validation_ratio {config.validation_ratio}) after the split",
            hint="add interactions, hold out less of them (--split), or raise baselines.validation_ratio",
        )
    label_users = sample_users(fold.label_users, config.max_tuning_users, seed=seed, purpose="tuning")
    key = f"ndcg@{config.selection_k}"
    tuned = {}
    for name in models:
        if tuned_before and name in tuned_before:
            record = tuned_before[name]
            params = record["params"]
            (_, history_source), *_ = _fitted_trials(name, [params], fold.history, history_inputs)
            source = create_source(name, **params).fit(fold.full, full_inputs)
            tuned[name] = TunedSource(
                history_source, source, params, record["validation_ndcg"], record["trials"], record["seconds"]
            )
            continue
        started = time.perf_counter()
        trials, best_source, best_score = [], None, -np.inf
        grid = _grid(config.search_spaces.get(name, {}), config.params.get(name, {}))
        for params, source in _fitted_trials(name, grid, fold.history, history_inputs):
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
        source = create_source(name, **best_params).fit(fold.full, full_inputs)
        tuned[name] = TunedSource(
            best_source, source, best_params, float(best_score), trials, time.perf_counter() - started
        )
    return tuned


def sample_users(users: np.ndarray, limit: int, *, seed: int, purpose: str) -> np.ndarray:
    """``users`` when there are at most ``limit``, else a seeded sample of ``limit`` of them (sorted), said
    in the log: tuning and ranker training cost what their sample costs, whatever the number of users."""
    if len(users) <= limit:
        return users
    log.info("%s on a sample of %d of the %d fold label users", purpose, limit, len(users))
    return np.sort(np.random.default_rng(seed).choice(users, size=limit, replace=False))


def select_final(tuned: dict[str, TunedSource]) -> str:
    """Name of the source with the best validation NDCG."""
    return max(tuned, key=lambda name: tuned[name].validation_ndcg)


def _fitted_trials(
    name: str, grid: list[dict], train: InteractionMatrix, inputs: SideInputs | None
) -> Iterator[tuple[dict, CandidateSource]]:
    """``(params, source fitted on train)`` for each point of ``grid``, in order, one at a time.

    A source class with a ``fit_grid(train, params_list, inputs)`` capability fits the whole grid itself,
    sharing the work its parameters do not change (EASE: one eigendecomposition for every l2); the others
    are fitted point by point.
    """
    fit_grid = getattr(source_class(name), "fit_grid", None)
    if fit_grid is None:
        for params in grid:
            yield params, create_source(name, **params).fit(train, inputs)
    else:
        yield from zip(grid, fit_grid(train, grid, inputs), strict=True)


def _grid(space: dict[str, list], fixed: dict) -> list[dict]:
    names = [name for name in space if name not in fixed]
    combos = itertools.product(*(space[name] for name in names))
    return [{**dict(zip(names, values, strict=True)), **fixed} for values in combos] or [dict(fixed)]
