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
    Outputs,
    StageClock,
    compute_stage_embeddings,
    list_depth,
    publish,
    ranker_context,
    recommendation_frame,
    side_inputs,
    with_fallback,
)

log = logging.getLogger("m6rec")

# What a batch may set for itself; everything else comes from the configuration the model was trained with.
SERVING_KEYS = ("top_k", "candidate_depth", "skip_invalid_rows")
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
    embeddings = None
    if model.needs_embeddings:
        embeddings = compute_stage_embeddings(
            dataset, model.folder.features_dir, config, {"collaborative": history}
        )
    inputs = (
        embeddings.inputs["collaborative"]
        if embeddings
        else side_inputs(dataset, None, None, history.profiles)
    )
    clock.lap("embeddings")

    sources = _fit_sources(matrix, model, inputs)
    all_users = np.arange(matrix.n_users)
    depth = list_depth(config)
    clock.lap("candidates")

    candidates, table, new_item_places = None, None, None
    if model.manifest.ranker_used:
        context = ranker_context(dataset, matrix, inputs)
        final, new_item_places, candidates, table = _ranked(model, sources, context, all_users, depth, config)
        selected = "ranker"
    else:
        final = sources[model.manifest.selected_model].recommend(all_users, depth)
        selected = model.manifest.selected_model
    fallback = sources.get("popularity") or create_source("popularity").fit(matrix)
    final, origin = with_fallback(final, fallback, all_users, depth, selected)
    clock.lap("ranking")

    recommendations = recommendation_frame(
        final, origin, candidates, matrix.users, matrix.items, config.top_k, new_item_places
    )
    summary = {
        "m6rec_version": __version__,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "data_dir": str(Path(data_dir).resolve()),
        "model_dir": str(model.directory.resolve()),
        "model_trained_at": model.trained_at,
        "model_config_digest": model.manifest.config_digest,
        "selected_model": selected,
        "sources": sorted(sources),
        "counts": {
            "users": matrix.n_users,
            "items": matrix.n_items,
            "interactions": int(matrix.matrix.nnz),
            "users_without_history": int((np.diff(matrix.matrix.indptr) == 0).sum()),
            "list_rows": len(recommendations),
            "users_served_by_fallback": int((origin != selected).sum()),
        },
        "embeddings": embeddings.summary if embeddings else None,
        **clock.report(),
    }
    publish(RunFolder(out_dir), Outputs(recommendations, ranker_features=table, batch_report=summary))
    log.info("batch lists for %d users: %s", matrix.n_users, RunFolder(out_dir).recommendations)
    return BatchResult(out_dir, summary)


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


def _ranked(model, sources, context, all_users, depth, config):
    from ranker.features import build_ranker_features
    from ranker.lists import rank_final_lists
    from ranker.model import LightGBMRanker

    ranker = LightGBMRanker.load(model.folder.ranker_dir)
    width = config.ranker.candidates_per_source
    lists = {name: source.recommend(all_users, width) for name, source in sources.items()}
    candidates = merge_candidates(lists, all_users, seen=context.train.matrix)
    table = build_ranker_features(candidates, context)
    missing = [name for name in ranker.feature_names_ if name not in table.columns]
    if missing:
        raise ModelNotTrainedError(
            f"{model.folder.ranker_dir}: the ranker needs features this batch cannot build: "
            f"{', '.join(missing)}",
            hint="the data or the configuration changed since training; retrain (train-ranker flow)",
        )
    final, new_item_places = rank_final_lists(
        ranker, table, ranker.feature_names_, all_users, depth, config.ranker
    )
    return final, new_item_places, candidates, table


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
