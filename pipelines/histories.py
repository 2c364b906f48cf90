"""The training histories of a run or a batch and what is learned from them: the item embeddings (once),
per history the collaborative embeddings over them, and the side inputs every candidate source and the
ranker's features read (:func:`side_inputs`, :func:`ranker_context`).
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from features.device import resolve_device
from m6rec.candidates.side_inputs import SideInputs
from m6rec.config import RunConfig
from m6rec.data.dataset import Dataset
from m6rec.data.interactions import InteractionMatrix
from m6rec.embeddings.profiles import ProfileCache
from m6rec.modalities import ITEM_SPACES
from pipelines.collaborative import fold_in_collaborative, load_collaborative_model, train_collaborative
from pipelines.item_embeddings import EmbeddingResult, compute_item_embeddings

if TYPE_CHECKING:
    from m6rec.cluster import Executor

log = logging.getLogger("m6rec")


@dataclass
class History:
    """One training history the embeddings are learned from: its interactions (as a frame and as a
    matrix over the run's users and items), where its collaborative files go, and its profiles."""

    frame: pd.DataFrame
    matrix: InteractionMatrix
    features_dir: Path
    profiles: ProfileCache = field(init=False)
    half_life_days: float | None = None

    def __post_init__(self) -> None:
        self.profiles = ProfileCache(self.matrix, half_life_days=self.half_life_days)


@dataclass
class HistoryEmbeddings:
    """The item embeddings (once) and, per history, the collaborative embeddings and the side inputs.
    Without embeddings ``items`` and ``summary`` are None and the side inputs hold the dataset's
    knowledge graph and the profiles' cache only."""

    items: EmbeddingResult | None
    collaborative: dict[str, EmbeddingResult]
    inputs: dict[str, SideInputs]
    summary: dict | None


def embed_histories(
    dataset: Dataset,
    features_dir: Path,
    config: RunConfig,
    histories: dict[str, History],
    *,
    needed: bool = True,
    trained_model_dir: Path | None = None,
    executor: Executor | None = None,
) -> HistoryEmbeddings:
    """Item embeddings into ``features_dir`` (incrementally), then for each history the collaborative
    model over them and its side inputs; no embeddings when they are not ``needed`` or the ranker or
    every modality is off. The ``fold`` history's two-tower model is trained first; with
    ``embeddings.two_tower.warm_start`` every other history's model starts from it.

    With ``trained_model_dir`` (a batch: the features folder of the training run) the two-tower model
    saved there folds in each history instead of being trained again (trained only when none was saved
    or its content modalities no longer match). On a remote ``executor`` the frozen encoders run on
    its workers."""
    if not needed or not config.ranker.enabled or not config.embeddings.modalities:
        bare = {
            name: side_inputs(dataset, None, None, history.profiles) for name, history in histories.items()
        }
        return HistoryEmbeddings(None, {}, bare, None)
    items = compute_item_embeddings(dataset, features_dir, config.embeddings, executor=executor)
    if trained_model_dir is not None:
        collaborative = {
            name: _folded_in_collaborative(dataset, items, history, config, trained_model_dir)
            for name, history in histories.items()
        }
        inputs = {
            name: side_inputs(dataset, items, collaborative[name], histories[name].profiles)
            for name in histories
        }
        summary = {**items.summary(), **{name: result.summary() for name, result in collaborative.items()}}
        return HistoryEmbeddings(items, collaborative, inputs, summary)

    def train(name: str, warm_start=None) -> EmbeddingResult:
        history = histories[name]
        return train_collaborative(
            dataset,
            history.frame,
            items,
            history.features_dir,
            config.embeddings,
            history.profiles,
            warm_start=warm_start,
        )

    if _trains_side_by_side(config, len(histories)):
        with ThreadPoolExecutor(max_workers=len(histories), thread_name_prefix="two-tower") as pool:
            collaborative = dict(zip(histories, pool.map(train, histories), strict=True))
    else:
        # The fold's history is a subset of the full one, and its model never saw the fold's labels, so
        # starting the full model from it leaks nothing into the ranker's fold.
        warm_start = config.embeddings.two_tower.warm_start
        collaborative, fold_model = {}, None
        for name in sorted(histories, key=lambda name: name != "fold"):
            collaborative[name] = train(name, fold_model)
            if name == "fold" and warm_start and "cf_items" in collaborative[name].paths:
                fold_model = load_collaborative_model(
                    histories[name].features_dir, force_cpu=config.embeddings.force_cpu
                )
        collaborative = {name: collaborative[name] for name in histories}
    inputs = {
        name: side_inputs(dataset, items, collaborative[name], histories[name].profiles) for name in histories
    }
    summary = {**items.summary(), **{name: result.summary() for name, result in collaborative.items()}}
    return HistoryEmbeddings(items, collaborative, inputs, summary)


def _trains_side_by_side(config: RunConfig, histories: int) -> bool:
    """Whether the histories' two-tower models train at the same time, one per core: each trains on one
    CPU thread (``two_tower.cpu_threads`` 1, where extra threads of one training only spin-wait), none
    starts from another's (no ``warm_start``) and there are as many cores. Their weights do not depend
    on it: a training draws from its own seeded generators only."""
    settings = config.embeddings.two_tower
    return (
        histories > 1
        and "cf" in config.embeddings.modalities
        and not settings.warm_start
        and settings.cpu_threads == 1
        and resolve_device(config.embeddings.force_cpu).name == "cpu"
        and (os.cpu_count() or 1) >= histories
    )


def _folded_in_collaborative(dataset, items, history: History, config: RunConfig, trained_model_dir: Path):
    """The collaborative files of ``history`` from the two-tower model saved in ``trained_model_dir``;
    trained anew when there is none or it cannot serve today's content modalities. No profile files: a
    batch computes the profiles of the users it scores, chunk by chunk, and the training run's files
    hold every user's (a million users' profiles are gigabytes per space, most of them unchanged)."""
    settings = config.embeddings
    model = load_collaborative_model(trained_model_dir, force_cpu=settings.force_cpu)
    if model is not None:
        try:
            return fold_in_collaborative(
                dataset,
                history.frame,
                items,
                model,
                history.features_dir,
                settings,
                history.profiles,
                profile_files=False,
            )
        except ValueError as error:
            log.warning(
                "two-tower model in %s cannot fold in (%s); training it again", trained_model_dir, error
            )
    elif "cf" in settings.modalities:
        log.warning("no two-tower model saved in %s; training it again", trained_model_dir)
    return train_collaborative(
        dataset, history.frame, items, history.features_dir, settings, history.profiles, profile_files=False
    )


def side_inputs(
    dataset: Dataset,
    items: EmbeddingResult | None,
    collaborative: EmbeddingResult | None,
    profiles: ProfileCache | None,
) -> SideInputs:
    """The loaded side inputs of one history: the item spaces (a learned fusion of ``collaborative``
    replaces the concatenated one), the two-tower vectors, the dataset's knowledge graph, the profiles."""
    item_vectors = dict(items.content_tables()) if items is not None else {}
    user_vectors = {}
    if collaborative is not None:
        item_vectors.update(
            {name: collaborative.table(name) for name in ("fused", "cf_items") if name in collaborative.paths}
        )
        if "cf_users" in collaborative.paths:
            user_vectors["cf_users"] = collaborative.table("cf_users")
    return SideInputs(item_vectors=item_vectors, user_vectors=user_vectors, kg=dataset.kg, profiles=profiles)


def ranker_context(dataset: Dataset, matrix: InteractionMatrix, inputs: SideInputs | None):
    """The ranker features' context over ``matrix`` with the side inputs of the same history."""
    from ranker.features import RankerContext

    inputs = inputs or SideInputs()
    return RankerContext(
        train=matrix,
        item_embeddings={
            space: table for space, table in inputs.item_vectors.items() if space in ITEM_SPACES
        },
        two_tower_user_vectors=inputs.user_vectors.get("cf_users"),
        two_tower_item_vectors=inputs.item_vectors.get("cf_items"),
        profiles=inputs.profiles,
        items=dataset.items,
        users=dataset.users,
        item_columns=dataset.item_columns,
        user_columns=dataset.user_columns,
        kg=dataset.kg,
    )
