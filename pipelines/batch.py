"""Batch recommendations: every user's list from a trained model and the latest interactions.

A trained model is the output folder of :func:`pipelines.run.run_pipeline` (``train_ranker`` in the flows):
its manifest ``model.json`` holds the configuration it was trained with, each candidate source's tuned
parameters and whether the ranker beat them, ``ranker/`` the LightGBM text model (see
:mod:`pipelines.run_folder`). ``batch_recommend`` refits every source with those parameters on all current
interactions (cheap, and it picks up new users, items and interactions since training), retrains the
collaborative embeddings on them over the frozen item embeddings the nightly job keeps up to date, and
ranks with the saved ranker. The ranker learned from ranks, per-user standardised scores and shares, so
it transfers from the sources it was trained on to these refitted ones, as it does in ``run_pipeline``.

Outputs (``recommendations.parquet``, ``ranker_features.parquet``, ``batch.json``) are staged and moved
into place only when complete, so a failed batch leaves the previous lists untouched.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from m6rec import __version__
from m6rec.candidates import create_source
from m6rec.candidates.merge import merge_candidates
from m6rec.candidates.registry import source_class
from m6rec.candidates.side_inputs import SideInputs
from m6rec.config import RunConfig
from m6rec.data.contract import ITEM_ID, USER_ID
from m6rec.data.dataset import Dataset, load_dataset
from m6rec.data.interactions import IdIndex, InteractionMatrix
from m6rec.io import publish_staged, write_json
from pipelines.run_folder import ModelManifest, ModelNotTrainedError, RunFolder, config_digest
from pipelines.stages import (
    History,
    ListWriter,
    StageClock,
    compute_stage_embeddings,
    list_depth,
    ranker_context,
    recommendation_frame,
    user_chunks,
    with_fallback,
)
from ranker.features import FeatureTableWriter

log = logging.getLogger("m6rec")

# What a batch may set for itself; everything else comes from the configuration the model was trained with.
SERVING_KEYS = ("top_k", "candidate_depth", "skip_invalid_rows", "user_chunk")
SERVING_RANKER_KEYS = ("new_item_slots", "new_item_slot_spacing")


@dataclass
class BatchResult:
    """Where the lists went and what the batch did (``summary`` is also written as ``batch.json``)."""

    out_dir: Path
    summary: dict = field(repr=False)

    @property
    def recommendations_path(self) -> Path:
        return RunFolder(self.out_dir).recommendations


@dataclass(frozen=True)
class TrainedModel:
    """A trained run folder and its manifest, as a batch serves it."""

    folder: RunFolder
    manifest: ModelManifest

    @classmethod
    def read(cls, directory: str | Path) -> TrainedModel:
        """The model in ``directory``; one clear error when it has none, or one this version cannot read."""
        folder = RunFolder(directory)
        manifest = folder.read_manifest()
        if manifest.ranker_used and not folder.ranker_dir.is_dir():
            raise ModelNotTrainedError(f"{folder.ranker_dir}: the ranker model is missing")
        return cls(folder, manifest)

    @property
    def directory(self) -> Path:
        return self.folder.root

    @property
    def trained_at(self) -> str:
        return self.manifest.trained_at

    @property
    def needs_embeddings(self) -> bool:
        """Whether serving needs the embeddings: the ranker ranks, or the published source reads vectors."""
        side = source_class(self.manifest.selected_model).side_inputs if not self.manifest.ranker_used else ()
        return self.manifest.ranker_used or bool(set(side) - {"kg"})

    def serving_config(self, config: RunConfig | None) -> RunConfig:
        """The configuration the model was trained with; ``config`` (today's) sets only what a batch may
        (:data:`SERVING_KEYS`, :data:`SERVING_RANKER_KEYS`: list length and depth, new-item places). A
        ``config`` that differs elsewhere is reported, not applied."""
        trained = self.manifest.run_config()
        if config is None:
            return trained
        if config_digest(_serving_keys_from(trained, config)) != self.manifest.config_digest:
            log.warning(
                "the configuration differs from the one the model in %s was trained with (%s); the lists "
                "use the trained one, retrain to apply the change",
                self.directory,
                self.trained_at,
            )
        return _serving_keys_from(config, trained)


def _serving_keys_from(source: RunConfig, target: RunConfig) -> RunConfig:
    """``target`` with the serving keys of ``source``."""
    ranker = target.ranker.replace(**{key: getattr(source.ranker, key) for key in SERVING_RANKER_KEYS})
    return target.replace(**{key: getattr(source, key) for key in SERVING_KEYS}, ranker=ranker)


def batch_recommend(
    data_dir: str | Path,
    model_dir: str | Path,
    out_dir: str | Path | None = None,
    config: RunConfig | None = None,
) -> BatchResult:
    """Write every user's top-``config.top_k`` list for ``data_dir`` with the model in ``model_dir``.

    ``out_dir`` defaults to ``model_dir/lists``. The configuration is the one the model was trained with
    (``model.json``); ``config`` sets only the serving keys (``SERVING_KEYS``). Item embeddings are read
    (and brought up to date, incrementally) from ``model_dir/features``; collaborative embeddings are
    retrained on all interactions into ``out_dir/features``.
    """
    model = TrainedModel.read(model_dir)
    config = model.serving_config(config)
    out_dir = Path(out_dir) if out_dir is not None else model.folder.lists.root
    clock = StageClock()

    dataset = load_dataset(
        data_dir, skip_invalid_rows=config.skip_invalid_rows, columns=getattr(config, "columns", None)
    )
    matrix = _interactions(dataset)
    clock.lap("load")

    history = History(
        dataset.interactions,
        matrix,
        RunFolder(out_dir).features_dir,
        half_life_days=config.embeddings.profile_half_life_days,
    )
    embeddings = compute_stage_embeddings(
        dataset, model.folder.features_dir, config, {"collaborative": history}, needed=model.needs_embeddings
    )
    inputs = embeddings.inputs["collaborative"]
    clock.lap("embeddings")

    sources = _fit_sources(matrix, model, inputs)
    clock.lap("candidates")

    scoring = _Scoring.prepare(model, sources, dataset, matrix, inputs, config)
    folder = RunFolder(out_dir)
    summary = {
        "m6rec_version": __version__,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "data_dir": str(Path(data_dir).resolve()),
        "model_dir": str(model.directory.resolve()),
        "model_trained_at": model.trained_at,
        "model_config_digest": model.manifest.config_digest,
        "selected_model": scoring.selected,
        "sources": sorted(sources),
        "user_chunk": config.user_chunk,
        "embeddings": embeddings.summary,
    }

    def write(staging: Path) -> None:
        staged = RunFolder(staging)
        served_by_fallback = 0
        with ListWriter(staged.recommendations) as lists, FeatureTableWriter(staged.ranker_features) as table:
            for user_rows in user_chunks(matrix.n_users, config.user_chunk):
                chunk = scoring.score(user_rows)
                lists.write(chunk.recommendations)
                if chunk.features is not None:
                    table.write(chunk.features)
                served_by_fallback += chunk.served_by_fallback
        if table.rows == 0:
            staged.ranker_features.unlink(missing_ok=True)
        clock.lap("ranking")
        summary["counts"] = {
            "users": matrix.n_users,
            "items": matrix.n_items,
            "interactions": int(matrix.matrix.nnz),
            "users_without_history": int((np.diff(matrix.matrix.indptr) == 0).sum()),
            "list_rows": lists.rows,
            "users_served_by_fallback": served_by_fallback,
        }
        summary.update(clock.report())
        write_json(summary, staged.batch_report)

    publish_staged(folder.root, write)
    if not scoring.ranks:
        folder.ranker_features.unlink(missing_ok=True)
    log.info("batch lists for %d users: %s", matrix.n_users, folder.recommendations)
    return BatchResult(out_dir, summary)


@dataclass
class ScoredChunk:
    """One chunk of users' published lists, their ranker features (None without the ranker), and how
    many of them the fallback source served."""

    recommendations: pd.DataFrame
    features: pd.DataFrame | None
    served_by_fallback: int


@dataclass
class _Scoring:
    """Everything fixed across user chunks: the refitted sources, the ranker and its features' context,
    the fallback; :meth:`score` turns one chunk of user rows into its lists."""

    sources: dict
    ranker: object | None
    context: object | None
    fallback: object
    selected: str
    matrix: InteractionMatrix
    config: RunConfig
    ranker_dir: Path

    @classmethod
    def prepare(cls, model, sources, dataset, matrix, inputs, config) -> _Scoring:
        ranker, context = None, None
        selected = model.manifest.selected_model
        if model.manifest.ranker_used:
            from ranker.model import LightGBMRanker

            ranker, selected = LightGBMRanker.load(model.folder.ranker_dir), "ranker"
            context = ranker_context(dataset, matrix, inputs)
        fallback = sources.get("popularity") or create_source("popularity").fit(matrix)
        return cls(sources, ranker, context, fallback, selected, matrix, config, model.folder.ranker_dir)

    @property
    def ranks(self) -> bool:
        return self.ranker is not None

    def score(self, user_rows: np.ndarray) -> ScoredChunk:
        config, depth = self.config, list_depth(self.config)
        candidates, table, places = None, None, None
        if self.ranker is not None:
            from ranker.features import build_ranker_features
            from ranker.lists import rank_final_lists

            width = config.ranker.candidates_per_source
            lists = {name: source.recommend(user_rows, width) for name, source in self.sources.items()}
            candidates = merge_candidates(lists, user_rows, seen=self.matrix.matrix)
            table = build_ranker_features(candidates, self.context)
            missing = [name for name in self.ranker.feature_names_ if name not in table.columns]
            if missing:
                raise ModelNotTrainedError(
                    f"{self.ranker_dir}: the ranker needs features this batch cannot build: {', '.join(missing)}",
                    hint="the data or the configuration changed since training; retrain (train-ranker flow)",
                )
            final, places = rank_final_lists(
                self.ranker, table, self.ranker.feature_names_, user_rows, depth, config.ranker
            )
            if not config.ranker.new_item_slots:
                places = None
        else:
            final = self.sources[self.selected].recommend(user_rows, depth)
        final, origin = with_fallback(final, self.fallback, user_rows, depth, self.selected)
        frame = recommendation_frame(
            final, origin, candidates, self.matrix.users, self.matrix.items, config.top_k, places, user_rows
        )
        return ScoredChunk(frame, table, int((origin != self.selected).sum()))


def _interactions(dataset: Dataset) -> InteractionMatrix:
    """All interactions (not the evaluation file) over every known user and item, cold ones included."""
    frame = dataset.interactions
    users = IdIndex.from_values(frame[USER_ID], None if dataset.users is None else dataset.users[USER_ID])
    items = IdIndex.from_values(None if dataset.items is None else dataset.items[ITEM_ID], frame[ITEM_ID])
    return InteractionMatrix.from_frame(frame, users, items)


def _fit_sources(matrix: InteractionMatrix, model: TrainedModel, inputs: SideInputs) -> dict:
    """Every source the model was trained with, refitted with its tuned parameters on ``matrix``."""
    sources = {}
    for name, params in model.manifest.source_params.items():
        if not inputs.provides(source_class(name).side_inputs):
            log.warning("source %s skipped: its side inputs are not configured for this batch", name)
            continue
        started = time.perf_counter()
        sources[name] = create_source(name, **params).fit(matrix, inputs)
        log.info("refitted %s in %.1f s", name, time.perf_counter() - started)
    return sources


def lists_from_training(model_dir: str | Path, out_dir: str | Path | None = None) -> BatchResult:
    """Publish the training run's own lists as the batch lists, without building them again.

    Only for a model whose lists came from every interaction (``ModelManifest.lists_from_all_interactions``):
    right after training on today's data, a batch would rebuild exactly those lists.
    """
    model = TrainedModel.read(model_dir)
    if not model.manifest.lists_from_all_interactions:
        raise ModelNotTrainedError(
            f"{model.directory}: the training run held a test share out of its lists; build the batch lists"
        )
    source = model.folder
    target = RunFolder(out_dir) if out_dir is not None else source.lists
    recommendations = source.read_recommendations(columns=["user_id"])
    summary = {
        "m6rec_version": __version__,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "model_dir": str(model.directory.resolve()),
        "model_trained_at": model.trained_at,
        "model_config_digest": model.manifest.config_digest,
        "selected_model": model.manifest.selected_model,
        "sources": sorted(model.manifest.source_params),
        "from_training_run": True,
        "counts": {"users": int(recommendations["user_id"].nunique()), "list_rows": len(recommendations)},
    }

    def write(staging: Path) -> None:
        staged = RunFolder(staging)
        shutil.copyfile(source.recommendations, staged.recommendations)
        if source.ranker_features.exists():
            shutil.copyfile(source.ranker_features, staged.ranker_features)
        write_json(summary, staged.batch_report)

    publish_staged(target.root, write)
    log.info("batch lists from the training run (same data): %s", target.recommendations)
    return BatchResult(target.root, summary)
