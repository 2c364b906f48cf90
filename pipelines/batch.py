"""Batch recommendations: every user's list from a trained model and the latest interactions.

A trained model is the output folder of :func:`pipelines.run.run_pipeline` (``train_ranker`` in the flows):
``run.json`` holds each candidate source's tuned parameters and whether the ranker beat them, ``ranker/``
the LightGBM text model. ``batch_recommend`` refits every source with those parameters on all current
interactions (cheap, and it picks up new users, items and interactions since training), retrains the
collaborative embeddings on them over the frozen item embeddings the nightly job keeps up to date, and
ranks with the saved ranker. The ranker learned from ranks, per-user standardised scores and shares, so
it transfers from the sources it was trained on to these refitted ones, as it does in ``run_pipeline``.

Outputs (``recommendations.parquet``, ``ranker_features.parquet``, ``batch.json``) are staged and moved
into place only when complete, so a failed batch leaves the previous lists untouched.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from m6rec import __version__
from m6rec.candidates import create_source
from m6rec.candidates.merge import merge_candidates
from m6rec.config import RunConfig
from m6rec.data.contract import ITEM_ID, USER_ID
from m6rec.data.dataset import Dataset, load_dataset
from m6rec.data.interactions import IdIndex, InteractionMatrix
from m6rec.errors import M6RecError
from m6rec.io import publish_staged, write_json, write_parquet
from pipelines.baselines import with_fallback
from pipelines.run import (
    RANKER_DIR,
    RANKER_FEATURES,
    RECOMMENDATIONS,
    RUN_SUMMARY,
    _Clock,
    _ranker_context,
    _recommendation_frame,
    source_file_params,
)

log = logging.getLogger("m6rec")

BATCH_SUMMARY = "batch.json"
EMBEDDING_SOURCES = frozenset({"two_tower", "content", "kg_neighbours"})


class ModelNotTrainedError(M6RecError):
    """The model folder holds no trained model (or an unusable one)."""


@dataclass
class BatchResult:
    """Where the lists went and what the batch did (``summary`` is also written as ``batch.json``)."""

    out_dir: Path
    summary: dict = field(repr=False)

    @property
    def recommendations_path(self) -> Path:
        return self.out_dir / RECOMMENDATIONS


@dataclass(frozen=True)
class TrainedModel:
    """What ``run_pipeline`` left in its output folder that a batch needs."""

    directory: Path
    source_params: dict[str, dict]
    selected_model: str
    ranker_used: bool
    ranker_features: list[str]
    trained_at: str

    @classmethod
    def read(cls, directory: str | Path) -> TrainedModel:
        directory = Path(directory)
        path = directory / RUN_SUMMARY
        if not path.is_file():
            raise ModelNotTrainedError(
                f"{directory}: no trained model ({RUN_SUMMARY} is missing)",
                hint=f"train one first: m6rec run DATA_DIR --out {directory} (or the train-ranker flow)",
            )
        try:
            summary = json.loads(path.read_text())
            params = {name: dict(entry["params"]) for name, entry in summary["models"].items()}
            ranker = summary.get("ranker") or {}
            selected = summary["selected_model"]
        except (ValueError, KeyError, TypeError) as error:
            raise ModelNotTrainedError(f"{path}: not a run summary written by m6rec run ({error})") from None
        ranker_used = bool(ranker.get("used")) and selected == "ranker"
        if ranker_used and not (directory / RANKER_DIR).is_dir():
            raise ModelNotTrainedError(f"{directory / RANKER_DIR}: the ranker model is missing")
        trained_at = datetime.fromtimestamp(path.stat().st_mtime, UTC).isoformat(timespec="seconds")
        return cls(directory, params, selected, ranker_used, list(ranker.get("features", [])), trained_at)


def batch_recommend(
    data_dir: str | Path,
    model_dir: str | Path,
    out_dir: str | Path | None = None,
    config: RunConfig | None = None,
) -> BatchResult:
    """Write every user's top-``config.top_k`` list for ``data_dir`` with the model in ``model_dir``.

    ``out_dir`` defaults to ``model_dir/lists``. Item embeddings are read (and brought up to date,
    incrementally) from ``model_dir/features``; collaborative embeddings are retrained on all
    interactions into ``out_dir/features``.
    """
    config = config or RunConfig()
    model = TrainedModel.read(model_dir)
    out_dir = Path(out_dir) if out_dir is not None else model.directory / "lists"
    clock = _Clock()

    dataset = load_dataset(
        data_dir, skip_invalid_rows=config.skip_invalid_rows, columns=getattr(config, "columns", None)
    )
    matrix = _interactions(dataset)
    clock.lap("load")

    embeddings = _embeddings(dataset, model, out_dir / "features", config)
    clock.lap("embeddings")

    sources = _fit_sources(dataset, matrix, model, embeddings)
    all_users = np.arange(matrix.n_users)
    depth = max(config.candidate_depth, config.top_k)
    clock.lap("candidates")

    candidates, table, new_item_places = None, None, None
    if model.ranker_used:
        final, new_item_places, candidates, table = _ranked(
            model, sources, dataset, matrix, embeddings, all_users, config
        )
        selected = "ranker"
    else:
        final = sources[model.selected_model].recommend(all_users, depth)
        selected = model.selected_model
    fallback = sources.get("popularity") or create_source("popularity").fit(matrix)
    final, origin = with_fallback(final, fallback, all_users, depth, selected)
    clock.lap("ranking")

    recommendations = _recommendation_frame(
        final, origin, candidates, matrix.users, matrix.items, config.top_k, new_item_places
    )
    summary = {
        "m6rec_version": __version__,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "data_dir": str(Path(data_dir).resolve()),
        "model_dir": str(model.directory.resolve()),
        "model_trained_at": model.trained_at,
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
        "embeddings": embeddings["summary"] if embeddings else None,
        "timings_seconds": clock.timings,
    }
    _publish(out_dir, recommendations, table, summary)
    log.info("batch lists for %d users: %s", matrix.n_users, out_dir / RECOMMENDATIONS)
    return BatchResult(out_dir, summary)


def _interactions(dataset: Dataset) -> InteractionMatrix:
    """All interactions (not the evaluation file) over every known user and item, cold ones included."""
    frame = dataset.interactions
    users = IdIndex.from_values(frame[USER_ID], None if dataset.users is None else dataset.users[USER_ID])
    items = IdIndex.from_values(None if dataset.items is None else dataset.items[ITEM_ID], frame[ITEM_ID])
    return InteractionMatrix.from_frame(frame, users, items)


def _embeddings(dataset: Dataset, model: TrainedModel, features_dir: Path, config: RunConfig) -> dict | None:
    if not model.ranker_used or not config.embeddings.modalities:
        return None
    from features.store import read_embeddings
    from pipelines.embeddings import compute_item_embeddings, train_collaborative

    item_result = compute_item_embeddings(dataset, model.directory / "features", config.embeddings)
    collaborative = train_collaborative(
        dataset, dataset.interactions, item_result, features_dir, config.embeddings
    )
    summary = {**item_result.summary(), "collaborative": collaborative.summary()}
    return {
        "items": item_result,
        "train": collaborative,
        "content": item_result.content_tables(read_embeddings),
        "summary": summary,
    }


def _fit_sources(dataset, matrix, model: TrainedModel, embeddings) -> dict:
    """Every source the model was trained with, refitted with its tuned parameters on ``matrix``."""
    items, collaborative = (embeddings["items"], embeddings["train"]) if embeddings else (None, None)
    files = source_file_params(dataset, items, collaborative)
    sources = {}
    for name, params in model.source_params.items():
        if name in EMBEDDING_SOURCES and name not in files:
            log.warning("source %s skipped: its embeddings are not configured for this batch", name)
            continue
        started = time.perf_counter()
        sources[name] = create_source(name, **params, **files.get(name, {})).fit(matrix)
        log.info("refitted %s in %.1f s", name, time.perf_counter() - started)
    return sources


def _ranked(model, sources, dataset, matrix, embeddings, all_users, config):
    from pipelines.ranking import rank_final_lists
    from ranker.features import build_ranker_features
    from ranker.model import LightGBMRanker

    ranker = LightGBMRanker.load(model.directory / RANKER_DIR)
    width = config.ranker.candidates_per_source
    lists = {name: source.recommend(all_users, width) for name, source in sources.items()}
    candidates = merge_candidates(lists, all_users, seen=matrix.matrix)
    table = build_ranker_features(candidates, _ranker_context(dataset, matrix, embeddings, "train"))
    missing = [name for name in ranker.feature_names_ if name not in table.columns]
    if missing:
        raise ModelNotTrainedError(
            f"{model.directory / RANKER_DIR}: the ranker needs features this batch cannot build: "
            f"{', '.join(missing)}",
            hint="the data or the configuration changed since training; retrain (train-ranker flow)",
        )
    depth = max(config.candidate_depth, config.top_k)
    final, new_item_places = rank_final_lists(
        ranker, table, ranker.feature_names_, all_users, depth, config.ranker
    )
    return final, new_item_places, candidates, table


def _publish(out_dir: Path, recommendations, table, summary: dict) -> None:
    def write(staging: Path) -> None:
        write_parquet(recommendations, staging / RECOMMENDATIONS, {"m6rec.version": __version__})
        if table is not None:
            from ranker.features import write_feature_table

            write_feature_table(table, staging / RANKER_FEATURES)
        write_json(summary, staging / BATCH_SUMMARY)

    publish_staged(out_dir, write)
