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

import json
import logging
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from m6rec import __version__
from m6rec.candidates import create_source
from m6rec.candidates.registry import source_class
from m6rec.candidates.side_inputs import SideInputs
from m6rec.cluster import Cluster, ClusterOpener, cluster_for
from m6rec.config import RunConfig
from m6rec.data.contract import ITEM_ID, USER_ID
from m6rec.data.dataset import Dataset, load_dataset
from m6rec.data.interactions import (
    HISTORY_DIGEST,
    IdIndex,
    InteractionMatrix,
    frame_digest,
    user_history_digests,
)
from m6rec.generations import EVERYTHING, Stage, link_tree
from m6rec.io import write_parquet
from m6rec.locking import folder_lock
from pipelines.lists import write_lists
from pipelines.run_folder import (
    FEATURES_DIR,
    ITEM_FEATURES_DIR,
    LISTS_DIR,
    ModelManifest,
    ModelNotTrainedError,
    RunFolder,
    check_lists,
    config_digest,
    data_fingerprint,
    generations,
)
from pipelines.stages import (
    History,
    ListScorer,
    StageClock,
    compute_stage_embeddings,
    ranker_context,
    write_outputs,
)

log = logging.getLogger("m6rec")

# What a batch may set for itself; everything else comes from the configuration the model was trained with.
SERVING_KEYS = (
    "top_k",
    "candidate_depth",
    "skip_invalid_rows",
    "user_chunk",
    "batch",
    "keep_generations",
    "dask",
)
# What a batch may set that does not shape the lists.
_UNSHAPING_KEYS = ("batch", "keep_generations", "dask")
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
        """The model published in ``directory``; one clear error when it has none, or one this version
        cannot read."""
        folder = RunFolder.published(directory)
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


def serving_digest(config: RunConfig) -> str:
    """The digest of what shapes the lists: the configuration apart from how much a batch redoes
    (``batch``) and how many generations it keeps, so lists built under other such settings are still
    the lists of this configuration."""
    defaults = {
        key: RunConfig.model_fields[key].get_default(call_default_factory=True) for key in _UNSHAPING_KEYS
    }
    return config_digest(config.replace(**defaults))


def _serving_keys_from(source: RunConfig, target: RunConfig) -> RunConfig:
    """``target`` with the serving keys of ``source``."""
    ranker = target.ranker.replace(**{key: getattr(source.ranker, key) for key in SERVING_RANKER_KEYS})
    return target.replace(**{key: getattr(source, key) for key in SERVING_KEYS}, ranker=ranker)


def batch_recommend(
    data_dir: str | Path,
    model_dir: str | Path,
    out_dir: str | Path | None = None,
    config: RunConfig | None = None,
    cluster_opener: ClusterOpener = cluster_for,
) -> BatchResult:
    """Write every user's top-``config.top_k`` list for ``data_dir`` with the model in ``model_dir``.

    ``out_dir`` defaults to ``model_dir/lists``. The configuration is the one the model was trained with
    (``model.json``); ``config`` sets only the serving keys (``SERVING_KEYS``) and ``batch`` (how much is
    redone, :class:`m6rec.config.BatchSettings`).

    Work follows what changed. With the same data as the last lists of this model, nothing is redone
    (and no generation is added). Else the sources the training run saved are loaded and fold in the
    current interactions (a refit on all of them only on the schedule or past the drift threshold, see
    :func:`batch_plan`), and only users whose history changed since those lists, or who are new, are
    scored again; the others keep their lists. The item embeddings are brought up to date incrementally
    from the model's.

    One run at a time writes the folder of the lists (:func:`m6rec.locking.folder_lock`). When the lists
    are built, the item encoders and the lists run on the cluster ``cluster_opener`` opens for
    ``config.dask`` when there is one (:func:`m6rec.cluster.cluster_for`: the one of ``dask.address``).
    """
    with _lists_generation(model_dir, out_dir, config) as (model, folder, stage):
        return _batch_recommend(data_dir, model, folder, model.serving_config(config), stage, cluster_opener)


@dataclass
class _ListsStage:
    """Where a batch writes: the staged generation, the lists folder in it, where its item embeddings go,
    the lists folder as readers see it, and what the published lists must cover (``users``)."""

    stage: Stage
    lists: RunFolder
    item_features: Path
    public: RunFolder
    expected: dict = field(default_factory=dict)


@contextmanager
def _lists_generation(
    model_dir: str | Path, out_dir: str | Path | None, config: RunConfig | None
) -> Iterator[tuple[TrainedModel, RunFolder, _ListsStage]]:
    """Lock the lists' folder and stage its next generation: the model's folder when the lists are its
    ``lists/`` (the default), else ``out_dir``; yield the model (read under the lock), the staged lists
    folder and the stage. Published when the block returns and the lists cover ``expected["users"]``."""
    model_root = Path(model_dir)
    own_folder = out_dir is not None and not _same_path(Path(out_dir), model_root / LISTS_DIR)
    root = Path(out_dir) if own_folder else model_root
    expected: dict = {}
    with folder_lock(root):
        model = TrainedModel.read(model_root)
        settings = model.serving_config(config)

        def validate(staged: Path) -> None:
            lists = RunFolder(staged) if own_folder else RunFolder(staged).lists
            if "users" in expected:
                check_lists(lists, expected["users"], settings.top_k)

        with generations(root).staged(
            kind="batch",
            carry=EVERYTHING,
            resume=(ITEM_FEATURES_DIR,) if own_folder else (FEATURES_DIR,),
            keep=settings.keep_generations,
            validate=validate,
        ) as stage:
            staged = RunFolder(stage.path)
            if own_folder:
                item_features = staged.item_features_dir
                if not item_features.exists() and model.folder.features_dir.is_dir():
                    link_tree(model.folder.features_dir, item_features)
                lists, public = staged, RunFolder(root)
            else:
                item_features, lists, public = staged.features_dir, staged.lists, RunFolder(root).lists
            yield model, lists, _ListsStage(stage, lists, item_features, public, expected)


def _same_path(a: Path, b: Path) -> bool:
    return a.absolute() == b.absolute() or (a.exists() and b.exists() and a.resolve() == b.resolve())


def _batch_recommend(
    data_dir,
    model: TrainedModel,
    folder: RunFolder,
    config: RunConfig,
    stage: _ListsStage,
    cluster_opener: ClusterOpener,
) -> BatchResult:
    clock = StageClock()
    fingerprint = data_fingerprint(Path(data_dir))
    previous = PreviousLists.find(model, folder, config) if config.batch.incremental else None
    if previous is not None and previous.data_fingerprint == fingerprint:
        log.info(
            "batch lists for %s users kept: the data and the model are those of the lists in %s, so "
            "nothing is redone",
            previous.summary.get("counts", {}).get("users", "all"),
            stage.public.root if previous.folder == folder else previous.folder.root,
        )
        reused = stage.public if previous.folder == folder else previous.folder
        summary = {**previous.summary, "reused_lists": str(reused.root.absolute())}
        if previous.folder == folder:
            stage.stage.discard()
        else:
            _copy_lists(previous.folder, folder, summary)
        return BatchResult(stage.public.root, summary)
    with cluster_opener(config.dask) as cluster:
        return _score_batch(data_dir, model, folder, config, stage, clock, fingerprint, previous, cluster)


def _score_batch(
    data_dir,
    model: TrainedModel,
    folder: RunFolder,
    config: RunConfig,
    stage: _ListsStage,
    clock: StageClock,
    fingerprint: str,
    previous: PreviousLists | None,
    cluster: Cluster | None,
) -> BatchResult:
    """The batch when the lists must be built: the current data loaded, the sources folded in (or
    refitted), the changed users scored (on the workers of a Dask ``cluster`` when there is one)."""
    dataset = load_dataset(data_dir, **config.reading())
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
    embeddings = compute_stage_embeddings(
        dataset,
        stage.item_features,
        config,
        {"collaborative": history},
        needed=model.needs_embeddings,
        trained_model_dir=None if plan.refit else model.folder.features_dir,
        cluster=cluster,
    )
    inputs = embeddings.inputs["collaborative"]
    # From here on the matrix is the history: the frame (a gigabyte at 20M interactions) goes.
    dataset = replace(dataset, interactions=dataset.interactions.iloc[:0])
    del history
    clock.lap("embeddings")

    sources = _current_sources(matrix, model, inputs, refit=plan.refit)
    clock.lap("candidates")

    scorer = _scorer(model, sources, dataset, matrix, inputs, config)
    summary = {
        "m6rec_version": __version__,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "data_dir": str(Path(data_dir).resolve()),
        "data_fingerprint": fingerprint,
        "catalogue_digest": plan.catalogue_digest,
        "serving_digest": serving_digest(config),
        "model_dir": str(model.directory.resolve()),
        "model_trained_at": model.trained_at,
        "model_config_digest": model.manifest.config_digest,
        "selected_model": scorer.selected,
        "sources": sorted(sources),
        "sources_mode": "refit" if plan.refit else "fold-in",
        "plan": plan.reason,
        "user_chunk": config.user_chunk,
        "embeddings": embeddings.summary,
    }

    rescored = plan.rescored_rows(matrix)
    carried = previous.lists_except(matrix.users.ids[rescored]) if previous and plan.keeps_lists else None
    written = write_lists(scorer, folder, rescored, carried=carried, cluster=cluster)
    if not scorer.context or config.ranker.feature_table == "none":
        folder.ranker_features.unlink(missing_ok=True)
    write_parquet(plan.digests, folder.user_histories)
    matrix.users.save(folder.users_index, USER_ID)
    matrix.items.save(folder.items_index, ITEM_ID)
    clock.lap("ranking")
    summary["counts"] = {
        "users": matrix.n_users,
        "items": matrix.n_items,
        "interactions": int(matrix.matrix.nnz),
        "users_without_history": int((np.diff(matrix.matrix.indptr) == 0).sum()),
        "users_scored": len(rescored),
        "users_kept": written.carried_users,
        "list_rows": written.rows,
        "feature_rows": written.feature_rows,
        "users_served_by_fallback": written.served_by_fallback,
    }
    summary.update(clock.report())
    write_outputs(folder, batch_report=summary)
    stage.expected["users"] = int((np.diff(matrix.matrix.indptr) < matrix.n_items).sum())
    log.info(
        "batch lists for %d users (%d scored, the others kept): %s",
        matrix.n_users,
        summary["counts"]["users_scored"],
        stage.public.recommendations,
    )
    return BatchResult(stage.public.root, summary)


@dataclass(frozen=True)
class PreviousLists:
    """The last lists of the same model served the same way: a batch's lists folder (or the training
    run's own lists when they came from every interaction), the data they were built from and each
    user's history digest then."""

    folder: RunFolder
    summary: dict
    data_fingerprint: str
    catalogue_digest: str
    digests: pd.DataFrame

    @classmethod
    def find(cls, model: TrainedModel, folder: RunFolder, config: RunConfig) -> PreviousLists | None:
        report = folder.batch_report
        if report.is_file() and folder.recommendations.is_file() and folder.user_histories.is_file():
            summary = json.loads(report.read_text())
            same_model = summary.get("model_trained_at") == model.trained_at and (
                summary.get("model_config_digest") == model.manifest.config_digest
            )
            if same_model and summary.get("serving_digest") == serving_digest(config):
                return cls(
                    folder,
                    summary,
                    summary.get("data_fingerprint", ""),
                    summary.get("catalogue_digest", ""),
                    pd.read_parquet(folder.user_histories),
                )
        if model.manifest.lists_from_all_interactions and model.folder.user_histories.is_file():
            if serving_digest(model.manifest.run_config()) == serving_digest(config):
                return cls.of_training_run(model)
        return None

    @classmethod
    def of_training_run(cls, model: TrainedModel) -> PreviousLists:
        """The training run's own lists (built from every interaction: ``lists_from_all_interactions``)."""
        manifest = model.manifest
        summary = {
            "m6rec_version": __version__,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "model_dir": str(model.directory.resolve()),
            "model_trained_at": model.trained_at,
            "model_config_digest": manifest.config_digest,
            "data_fingerprint": manifest.data_fingerprint,
            "catalogue_digest": manifest.catalogue_digest,
            "serving_digest": serving_digest(manifest.run_config()),
            "selected_model": manifest.selected_model,
            "sources": sorted(manifest.source_params),
            "from_training_run": True,
            "counts": _list_counts(model.folder),
        }
        digests = (
            pd.read_parquet(model.folder.user_histories) if model.folder.user_histories.is_file() else None
        )
        return cls(model.folder, summary, manifest.data_fingerprint, manifest.catalogue_digest, digests)

    def lists_except(self, user_ids: np.ndarray):
        """The previous list rows of every user not in ``user_ids``, one row group at a time."""
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        rescored = pa.array(pd.Series(user_ids).astype(str).to_numpy(dtype=object), type=pa.string())
        parquet = pq.ParquetFile(self.folder.recommendations)
        for group in range(parquet.num_row_groups):
            rows = parquet.read_row_group(group)
            users = rows.column(USER_ID).cast(pa.string())
            yield rows.filter(pc.invert(pc.is_in(users, value_set=rescored))).to_pandas()


@dataclass(frozen=True)
class BatchPlan:
    """What tonight's batch redoes: refit the sources or fold in, and which users are scored again."""

    refit: bool
    keeps_lists: bool
    changed_users: np.ndarray
    digests: pd.DataFrame
    catalogue_digest: str
    reason: str

    def rescored_rows(self, matrix: InteractionMatrix) -> np.ndarray:
        if not self.keeps_lists:
            return np.arange(matrix.n_users, dtype=np.int64)
        return np.sort(matrix.users.positions(self.changed_users)).astype(np.int64)


def batch_plan(
    model: TrainedModel,
    config: RunConfig,
    dataset: Dataset,
    matrix: InteractionMatrix,
    previous: PreviousLists | None,
) -> BatchPlan:
    """Refit or fold in, and whom to score: see :class:`m6rec.config.BatchSettings`."""
    settings = config.batch
    digests = user_history_digests(dataset.interactions, matrix.users)
    catalogue = frame_digest(dataset.items)
    trained = model.manifest
    age_days = (datetime.now(UTC) - datetime.fromisoformat(trained.trained_at)).total_seconds() / 86_400
    growth = (len(dataset.interactions) - trained.interactions) / max(trained.interactions, 1)
    refit_reasons = []
    if not settings.incremental:
        refit_reasons.append("incremental batches are off")
    if not trained.saved_sources:
        refit_reasons.append("the model has no saved sources (trained by an older m6rec)")
    if settings.refit_after_days is not None and age_days > settings.refit_after_days:
        refit_reasons.append(
            f"the model is {age_days:.1f} days old (refit_after_days {settings.refit_after_days:g})"
        )
    if growth > settings.refit_drift_share:
        refit_reasons.append(
            f"the interactions grew by {growth:.1%} since training (refit_drift_share {settings.refit_drift_share:g})"
        )
    if refit_reasons:
        log.warning(
            "batch: refitting every source on all interactions: %s; retrain to stop this",
            "; ".join(refit_reasons),
        )
    refit = bool(refit_reasons)
    changed, why_all = _changed_or_why_all(settings, previous, refit, catalogue, digests)
    if why_all is not None:
        reason = f"{_mode(refit)}; {why_all}: all {matrix.n_users} users scored"
    else:
        reason = (
            f"{_mode(refit)}; {len(changed)} of {matrix.n_users} users new or with a changed history are "
            "scored, the others keep their lists"
        )
    return BatchPlan(refit, why_all is None, changed, digests, catalogue, reason)


def _changed_or_why_all(settings, previous, refit, catalogue, digests) -> tuple[np.ndarray, str | None]:
    """The users to score again, or why every user is scored (then the users are not listed)."""
    nobody = np.array([], dtype=object)
    if previous is None:
        return nobody, "no earlier lists of this model"
    if refit:
        return nobody, "the sources were refitted"
    if previous.catalogue_digest != catalogue:
        return nobody, "the catalogue changed, so new items can reach every list"
    changed = _changed_users(previous.digests, digests)
    share = len(changed) / max(len(digests), 1)
    if share > settings.rescore_all_share:
        return changed, f"{share:.0%} of the users changed (rescore_all_share {settings.rescore_all_share:g})"
    return changed, None


def _mode(refit: bool) -> str:
    return "sources refitted" if refit else "saved sources fold in the new interactions"


def _changed_users(before: pd.DataFrame, now: pd.DataFrame) -> np.ndarray:
    """Users of ``now`` whose history digest differs from ``before``, or whom ``before`` did not know."""
    then = pd.Series(before[HISTORY_DIGEST].to_numpy(np.uint64), index=before[USER_ID].astype(str))
    then = then.reindex(now[USER_ID].astype(str))
    differs = then.isna().to_numpy() | (
        then.fillna(0).to_numpy(np.uint64) != now[HISTORY_DIGEST].to_numpy(np.uint64)
    )
    return now[USER_ID].astype(str).to_numpy(dtype=object)[differs]


def _list_counts(folder: RunFolder) -> dict:
    """Users and list rows of a training run's lists, from its report and the Parquet footer (every
    batch looks at the training lists, so their rows are not read for this)."""
    import pyarrow.parquet as pq

    return {
        "users": folder.read_run_report()["counts"]["users"],
        "list_rows": pq.ParquetFile(folder.recommendations).metadata.num_rows,
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
    write_outputs(target, batch_report=summary)


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
        config=config,
        selected=selected,
        fallback=fallback,
        context=context,
        ranker=ranker,
        model_name=str(model.folder.ranker_dir),
    )


def _interactions(dataset: Dataset) -> InteractionMatrix:
    """All interactions (not the evaluation file) over every known user and item, cold ones included."""
    frame = dataset.interactions
    users = IdIndex.from_values(frame[USER_ID], None if dataset.users is None else dataset.users[USER_ID])
    items = IdIndex.from_values(None if dataset.items is None else dataset.items[ITEM_ID], frame[ITEM_ID])
    return InteractionMatrix.from_frame(frame, users, items)


def _current_sources(
    matrix: InteractionMatrix, model: TrainedModel, inputs: SideInputs, *, refit: bool
) -> dict:
    """Every source the model was trained with, brought up to ``matrix``: loaded as the training run
    saved it and folded into ``matrix`` (the item side as trained), or, with ``refit`` or for a source
    not saved (or saved without what fold-in needs), refitted with its tuned parameters."""
    from m6rec.candidates.base import FoldInError
    from m6rec.candidates.registry import load_source

    sources = {}
    for name, params in model.manifest.source_params.items():
        if not inputs.provides(source_class(name).side_inputs):
            log.warning("source %s skipped: its side inputs are not configured for this batch", name)
            continue
        started, how = time.perf_counter(), "refitted"
        if not refit and name in model.manifest.saved_sources:
            try:
                sources[name], how = (
                    load_source(model.folder.source_dir(name)).fold_in(matrix, inputs),
                    "folded in",
                )
            except FoldInError as error:
                log.warning("%s; refitting it", error)
        if name not in sources:
            sources[name] = create_source(name, **params).fit(matrix, inputs)
        log.info("%s %s in %.1f s", name, how, time.perf_counter() - started)
    return sources


def lists_from_training(model_dir: str | Path, out_dir: str | Path | None = None) -> BatchResult:
    """Publish the training run's own lists as the batch lists, without building them again.

    Only for a model whose lists came from every interaction (``ModelManifest.lists_from_all_interactions``):
    right after training on today's data, a batch would rebuild exactly those lists.
    """
    with _lists_generation(model_dir, out_dir, None) as (model, folder, stage):
        if not model.manifest.lists_from_all_interactions:
            raise ModelNotTrainedError(
                f"{model.directory}: the training run held a test share out of its lists; build the batch "
                "lists"
            )
        summary = PreviousLists.of_training_run(model).summary
        _copy_lists(model.folder, folder, summary)
    log.info("batch lists from the training run (same data): %s", stage.public.recommendations)
    return BatchResult(stage.public.root, summary)
