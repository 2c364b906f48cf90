"""Batch recommendations: every user's list from a trained model and the latest interactions.

A trained model is the output folder of :func:`pipelines.run.run_pipeline` (``train_ranker`` in the flows):
its manifest ``model.json`` holds the configuration it was trained with, each candidate source's tuned
parameters and whether the ranker beat them, ``sources/`` every source fitted on all training
interactions, ``ranker/`` the LightGBM text model (see :mod:`pipelines.run_folder`).

``batch_recommend`` does what changed since the last lists of the same model, no more
(:func:`batch_plan`, :class:`m6rec.config.BatchSettings`): the saved sources fold in the current
interactions (new and changed users scored from their current history over the item side as trained);
only users new or with a changed history are scored again, the others keep their lists; on the refit
schedule, or when the interactions drifted, every source is refitted on all current interactions
instead. The ranker learned from ranks, per-user standardised scores and shares, so it transfers from
the sources it was trained on to these folded-in or refitted ones, as it does in ``run_pipeline``.

The lists (``recommendations.parquet``, ``ranker_features.parquet``, ``batch.json``) go into a new
generation of their folder (:mod:`m6rec.generations`), published whole once they cover every user, so a
failed or killed batch leaves the previous lists untouched. By default they live in the model's own
folder (``MODEL_DIR/lists``, in a generation of the model folder beside the item embeddings they
brought up to date); with a folder of their own, that folder has the generations and the item
embeddings go to its ``item_features/``. A batch never writes into another folder's generations.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from m6rec import __version__
from m6rec.candidates import create_source
from m6rec.cluster import Executor, open_executor
from m6rec.config import RunConfig
from m6rec.data.contained import MediaHashes
from m6rec.data.contract import ITEM_ID, USER_ID
from m6rec.data.dataset import Dataset, load_dataset
from m6rec.data.fingerprint import data_fingerprint
from m6rec.data.interactions import IdIndex, InteractionMatrix
from m6rec.generations import link_tree
from m6rec.io import write_parquet
from m6rec.progress import StageClock
from pipelines.batch_plan import BatchPlan, PreviousLists, batch_plan
from pipelines.current_sources import current_sources
from pipelines.histories import History, embed_histories, ranker_context
from pipelines.item_embeddings import item_vectors_digest, media_limits
from pipelines.lists import log_short_lists, write_lists
from pipelines.run_folder import (
    LISTS_DIR,
    ModelNotTrainedError,
    RunFolder,
    StagedGeneration,
)
from pipelines.scoring import ListScorer, ListSettings
from pipelines.trained_model import TrainedModel, config_digest, inputs_identity

log = logging.getLogger("m6rec")


@dataclass
class BatchResult:
    """Where the lists went and what the batch did (``summary`` is also written as ``batch.json``)."""

    out_dir: Path
    summary: dict = field(repr=False)

    @property
    def recommendations_path(self) -> Path:
        return RunFolder(self.out_dir).recommendations

    def headline(self) -> dict:
        """What the flows show of the batch, JSON-ready: where the lists are, the model that ranked them,
        the candidate sources, when the model was trained, the counts and the timings."""
        return {
            "lists_dir": str(self.out_dir),
            "recommendations": str(self.recommendations_path),
            "selected_model": self.summary["selected_model"],
            "sources": self.summary["sources"],
            "model_trained_at": self.summary.get("model_trained_at"),
            "counts": self.summary["counts"],
            "timings_seconds": self.summary.get("timings_seconds", {}),
        }


def batch_recommend(
    data_dir: str | Path,
    model_dir: str | Path,
    out_dir: str | Path | None = None,
    config: RunConfig | None = None,
    *,
    executor: Executor | None = None,
    stage: StagedGeneration | None = None,
) -> BatchResult:
    """Write every user's top-``config.top_k`` list for ``data_dir`` with the model in ``model_dir``.

    ``out_dir`` defaults to ``model_dir/lists``. The configuration is the one the model was trained with
    (``model.json``); ``config`` brings only its serving settings (:meth:`TrainedModel.serving_config`).

    Work follows what changed. With the same data (:func:`m6rec.data.fingerprint.data_fingerprint`:
    tables and media files) as the last lists of this model, nothing is redone (and no generation is
    added). Else the sources the training run saved are loaded and fold in the current interactions (a
    refit on all of them only on the schedule or past the drift threshold, see
    :func:`pipelines.batch_plan.batch_plan`), and only users whose history changed since those lists, or
    who are new, are scored again; the others keep their lists. The item embeddings are brought up to
    date incrementally from the model's.

    The lists go into a new generation of their folder (:meth:`RunFolder.stage`), or with ``stage`` (the
    nightly flow's generation of ``model_dir``) into that one. The item encoders and the lists run on
    ``executor`` (default: :func:`m6rec.cluster.open_executor` of the serving ``dask`` settings; a Dask
    cluster is started only when the lists are built).
    """
    with ExitStack() as stack:
        place = stack.enter_context(_lists_place(model_dir, out_dir, config, stage, Path(data_dir)))
        settings = place.model.serving_config(config)
        if executor is None:
            executor = stack.enter_context(open_executor(settings.dask))
        return _batch_recommend(Path(data_dir), place, settings, executor)


@dataclass
class _ListsPlace:
    """Where a batch writes: the model it serves (read from the generation being written when the lists
    live in the model's folder), the staged generation, the lists folder in it, where its item
    embeddings go, the lists folder as readers see it, the output folder's store of media hashes, and
    whether the generation is shared with other writers (the nightly flow's)."""

    model: TrainedModel
    stage: StagedGeneration
    lists: RunFolder
    item_features: Path
    public: RunFolder
    media_hashes: Path
    shared: bool
    fingerprint: str | None = None


@contextmanager
def _lists_place(
    model_dir: str | Path,
    out_dir: str | Path | None,
    config: RunConfig | None,
    shared: StagedGeneration | None,
    data_dir: Path | None = None,
) -> Iterator[_ListsPlace]:
    """Stage the lists' next generation: the model's folder when the lists are its ``lists/`` (the
    default), else ``out_dir``'s; or join the ``shared`` one. Published when the block returns and the
    lists cover every user. With ``data_dir``, only a batch of the same data, model and settings resumes
    what a killed one left (the dataset's fingerprint is kept in the place for the batch)."""
    model_root = Path(model_dir)
    own_folder = out_dir is not None and not _same_path(Path(out_dir), model_root / LISTS_DIR)
    if shared is not None:
        if own_folder:
            raise ValueError("a batch inside another writer's generation writes the model's own lists/")
        shared.join("batch")
        model = TrainedModel.at(shared.folder)
        yield _ListsPlace(
            model,
            shared,
            shared.folder.lists,
            shared.folder.features_dir,
            shared.public.lists,
            shared.public.media_hashes,
            True,
        )
        return
    root = Path(out_dir) if own_folder else model_root
    model = TrainedModel.read(model_root)
    today = config or model.manifest.run_config()
    fingerprint, identity = None, None
    if data_dir is not None:
        hashes = MediaHashes(RunFolder(root).media_hashes)
        fingerprint = data_fingerprint(data_dir, hashes, media_limits(today.embeddings))
        identity = inputs_identity(fingerprint, today, model=str(model.directory.resolve()))
    kind = "lists" if own_folder else "batch"
    with RunFolder(root).stage(kind, keep=today.keep_generations, identity=identity) as stage:
        staged = stage.folder
        if own_folder:
            item_features = staged.item_features_dir
            if not item_features.exists() and model.folder.features_dir.is_dir():
                link_tree(model.folder.features_dir, item_features)
            yield _ListsPlace(
                model,
                stage,
                staged,
                item_features,
                stage.public,
                stage.public.media_hashes,
                False,
                fingerprint,
            )
        else:
            model = TrainedModel.at(staged)  # the model this generation carries, read under the lock
            yield _ListsPlace(
                model,
                stage,
                staged.lists,
                staged.features_dir,
                stage.public.lists,
                stage.public.media_hashes,
                False,
                fingerprint,
            )


def _same_path(a: Path, b: Path) -> bool:
    return a.absolute() == b.absolute() or (a.exists() and b.exists() and a.resolve() == b.resolve())


def _batch_recommend(
    data_dir: Path, place: _ListsPlace, config: RunConfig, executor: Executor
) -> BatchResult:
    hashes = MediaHashes(place.media_hashes)
    fingerprint = place.fingerprint or data_fingerprint(data_dir, hashes, media_limits(config.embeddings))
    folder = place.lists
    previous = PreviousLists.find(place.model, folder, config) if config.batch.incremental else None
    if previous is None or previous.data_fingerprint != fingerprint:
        return _score_batch(data_dir, place, config, fingerprint, previous, hashes, executor)
    log.info(
        "batch lists for %s users kept: the data and the model are those of the lists in %s, so "
        "nothing is redone",
        previous.summary.get("counts", {}).get("users", "all"),
        place.public.root if previous.folder == folder else previous.folder.root,
    )
    reused = place.public if previous.folder == folder else previous.folder
    summary = {**previous.summary, "reused_lists": str(reused.root.absolute())}
    if previous.folder != folder:
        _copy_lists(previous.folder, folder, summary)
    elif not place.shared:
        place.stage.discard()
    return BatchResult(place.public.root, summary)


def _score_batch(
    data_dir: Path,
    place: _ListsPlace,
    config: RunConfig,
    fingerprint: str,
    previous: PreviousLists | None,
    hashes: MediaHashes,
    executor: Executor,
) -> BatchResult:
    """The batch when the lists must be built: the current data loaded, the sources folded in (or
    refitted), the changed users scored (on the workers of a remote ``executor``)."""
    clock, model, folder = StageClock(), place.model, place.lists
    dataset = replace(load_dataset(data_dir, **config.reading()), media_hashes=hashes)
    matrix = _interactions(dataset)
    plan = batch_plan(model, config, dataset, matrix, previous)
    log.info("batch: %s", plan.reason)
    clock.lap("load")

    history = History(
        dataset.interactions,
        matrix,
        folder.features_dir,
        half_life_days=config.embeddings.profile_half_life_days,
    )
    embeddings = embed_histories(
        dataset,
        place.item_features,
        config,
        {"collaborative": history},
        needed=model.needs_embeddings,
        trained_model_dir=None if plan.refit else model.folder.features_dir,
        executor=executor,
    )
    hashes.save()
    inputs = embeddings.inputs["collaborative"]
    # From here on the matrix is the history: the frame (a gigabyte at 20M interactions) goes.
    dataset = replace(dataset, interactions=dataset.interactions.iloc[:0])
    del history
    clock.lap("embeddings")

    vectors = item_vectors_digest(place.item_features)
    if previous is not None and previous.item_vectors_digest != vectors:
        plan = plan.rescoring_everyone("the item embeddings changed since those lists", matrix.n_users)
        log.info("batch: %s", plan.reason)
    sources = current_sources(matrix, model, inputs, refit=plan.refit)
    clock.lap("candidates")

    scorer = _scorer(model, sources, dataset, matrix, inputs, config)
    rescored = plan.rescored_rows(matrix)
    carried = previous.lists_except(matrix.users.ids[rescored]) if previous and plan.keeps_lists else None
    written = write_lists(scorer, folder, rescored, carried=carried, executor=executor)
    log_short_lists(written, config.top_k)
    if not scorer.context or config.ranker.feature_table == "none":
        folder.ranker_features.unlink(missing_ok=True)
    write_parquet(plan.digests, folder.user_histories)
    matrix.users.save(folder.users_index, USER_ID)
    matrix.items.save(folder.items_index, ITEM_ID)
    clock.lap("ranking")
    summary = _batch_summary(data_dir, model, plan, config, fingerprint, scorer, sources, embeddings.summary)
    summary["item_vectors_digest"] = vectors
    summary["counts"] = _batch_counts(matrix, rescored, written)
    summary.update(clock.report())
    folder.write_reports(batch_report=summary)
    place.stage.expect_lists(
        folder, users=int((np.diff(matrix.matrix.indptr) < matrix.n_items).sum()), top_k=config.top_k
    )
    log.info(
        "batch lists for %d users (%d scored, the others kept): %s",
        matrix.n_users,
        summary["counts"]["users_scored"],
        place.public.recommendations,
    )
    return BatchResult(place.public.root, summary)


def _batch_summary(
    data_dir: Path,
    model: TrainedModel,
    plan: BatchPlan,
    config: RunConfig,
    fingerprint: str,
    scorer: ListScorer,
    sources: dict,
    embeddings: dict | None,
) -> dict:
    """``batch.json`` without its counts and timings."""
    return {
        "m6rec_version": __version__,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "data_dir": str(data_dir.resolve()),
        "data_fingerprint": fingerprint,
        "catalogue_digest": plan.catalogue_digest,
        "serving_digest": config_digest(config),
        "model_dir": str(model.directory.resolve()),
        "model_trained_at": model.trained_at,
        "model_config_digest": model.manifest.config_digest,
        "selected_model": scorer.selected,
        "sources": sorted(sources),
        "sources_mode": "refit" if plan.refit else "fold-in",
        "plan": plan.reason,
        "user_chunk": config.user_chunk,
        "embeddings": embeddings,
    }


def _batch_counts(matrix: InteractionMatrix, rescored: np.ndarray, written) -> dict:
    return {
        "users": matrix.n_users,
        "items": matrix.n_items,
        "interactions": int(matrix.matrix.nnz),
        "users_without_history": int((np.diff(matrix.matrix.indptr) == 0).sum()),
        "users_scored": len(rescored),
        "users_kept": written.carried_users,
        "list_rows": written.rows,
        "feature_rows": written.feature_rows,
        "users_served_by_fallback": written.served_by_fallback,
        "users_topped_up": written.topped_up_users,
        "lists_shorter_than_top_k": written.short_lists,
    }


def _copy_lists(source: RunFolder, target: RunFolder, summary: dict) -> None:
    """Put the lists of ``source`` (with their feature table, indexes and history digests) into the
    staged folder ``target`` as links to the same files, with ``summary`` as its batch report."""
    for path in (source.recommendations, source.ranker_features, source.user_histories):
        target_path = target.root / path.relative_to(source.root)
        target_path.unlink(missing_ok=True)
        if path.exists():
            target_path.parent.mkdir(parents=True, exist_ok=True)
            link_tree(path, target_path)
    if source.index_dir.is_dir():
        shutil.rmtree(target.index_dir, ignore_errors=True)
        link_tree(source.index_dir, target.index_dir)
    target.write_reports(batch_report=summary)


def _scorer(model, sources, dataset, matrix, inputs, config) -> ListScorer:
    ranker, context, selected = None, None, model.manifest.selected_model
    if model.manifest.ranker_used:
        from ranker.model import LightGBMRanker

        ranker, selected = LightGBMRanker.load(model.folder.ranker_dir), "ranker"
        context = ranker_context(dataset, matrix, inputs)
    fallback = sources.get("popularity") or create_source("popularity").fit(matrix)
    return ListScorer(
        sources=sources,
        matrix=matrix,
        settings=ListSettings.of(config, matrix.n_items),
        selected=selected,
        fallback=fallback,
        context=context,
        ranker=ranker,
        model_name=str(model.folder.ranker_dir),
        absent_sources=tuple(sorted(set(model.manifest.source_params) - set(sources))) if ranker else (),
    )


def _interactions(dataset: Dataset) -> InteractionMatrix:
    """All interactions (not the evaluation file) over every known user and item, cold ones included."""
    frame = dataset.interactions
    users = IdIndex.from_values(frame[USER_ID], None if dataset.users is None else dataset.users[USER_ID])
    items = IdIndex.from_values(None if dataset.items is None else dataset.items[ITEM_ID], frame[ITEM_ID])
    return InteractionMatrix.from_frame(frame, users, items)


def lists_from_training(
    model_dir: str | Path, out_dir: str | Path | None = None, *, stage: StagedGeneration | None = None
) -> BatchResult:
    """Publish the training run's own lists as the batch lists, without building them again (into
    ``stage``, the nightly flow's generation of ``model_dir``, when given).

    Only for a model whose lists came from every interaction (``ModelManifest.lists_from_all_interactions``):
    right after training on today's data, a batch would rebuild exactly those lists.
    """
    with _lists_place(model_dir, out_dir, None, stage) as place:
        model = place.model
        if not model.manifest.lists_from_all_interactions:
            raise ModelNotTrainedError(
                f"{model.directory}: the training run held a test share out of its lists; build the batch "
                "lists"
            )
        summary = PreviousLists.of_training_run(model).summary
        _copy_lists(model.folder, place.lists, summary)
    log.info("batch lists from the training run (same data): %s", place.public.recommendations)
    return BatchResult(place.public.root, summary)
