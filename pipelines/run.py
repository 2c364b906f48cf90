"""The main job: dataset directory in, recommendation lists, features and metrics out.

``run_pipeline`` reads like the pipeline diagram: load → split → fold → item embeddings → collaborative
embeddings (on the fold and on all training data) → the fold phase (candidate sources tuned on the fold,
the ranker trained on it) → final lists, streamed chunk by chunk of users with the test metrics added per
chunk → the model the batch loads (sources, ranker, indexes) → publish. The histories and their
embeddings are :mod:`pipelines.histories`', list scoring :mod:`pipelines.scoring`', the folder it writes
:mod:`pipelines.run_folder`'s. Everything is staged and published only when complete, so a failed run
leaves the previous outputs untouched."""

from __future__ import annotations

import dataclasses
import logging
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from m6rec import __version__
from m6rec.candidates import CandidateSource, create_source
from m6rec.candidates.registry import source_class
from m6rec.candidates.side_inputs import SideInputs
from m6rec.cluster import Executor, open_executor
from m6rec.config import RunConfig
from m6rec.data.contained import MediaHashes
from m6rec.data.contract import ITEM_ID, USER_ID
from m6rec.data.dataset import Dataset, load_dataset
from m6rec.data.fingerprint import data_fingerprint
from m6rec.data.interactions import frame_digest, user_history_digests
from m6rec.evaluation.streamed import FINAL, StreamedEvaluation
from m6rec.io import write_json
from m6rec.progress import StageClock
from pipelines.checkpoints import Checkpoints, embeddings_digest, stage_digest
from pipelines.histories import History, HistoryEmbeddings, embed_histories, ranker_context
from pipelines.item_embeddings import item_vectors_digest, media_limits
from pipelines.lists import log_short_lists, write_lists
from pipelines.protocol import Protocol, evaluation_protocol, is_cut_in_time, run_indexes
from pipelines.ranking import RankerTraining, train_or_resume_ranker
from pipelines.run_folder import (
    EMBEDDINGS_SUMMARY,
    PROBLEMS,
    RunFolder,
    StagedGeneration,
)
from pipelines.scoring import ListScorer, ListSettings
from pipelines.source_tuning import Fold, TunedSource, make_fold, tune_and_fit
from pipelines.trained_model import ModelManifest, inputs_identity

__all__ = ["RunResult", "is_cut_in_time", "run_pipeline"]

log = logging.getLogger("m6rec")


@dataclass
class RunResult:
    """What a run produced: output folder, per-model and final metrics (empty without a test set)."""

    out_dir: Path
    metrics: dict[str, dict[str, float]]
    selected_model: str
    summary: dict = field(repr=False)

    @property
    def folder(self) -> RunFolder:
        return RunFolder(self.out_dir)

    @property
    def recommendations_path(self) -> Path:
        return self.folder.recommendations

    @property
    def report_path(self) -> Path:
        return self.folder.report_page

    def headline(self) -> dict:
        """What the flows show of the run, JSON-ready: output folder, lists, selected model, metrics,
        protocol, counts, each source's validation NDCG, the ranker's use and validation, timings."""
        ranker = self.summary.get("ranker") or {}
        return {
            "out_dir": str(self.out_dir),
            "recommendations": str(self.recommendations_path),
            "selected_model": self.selected_model,
            "metrics": self.metrics,
            "protocol": self.summary["protocol"],
            "counts": self.summary["counts"],
            "models": {
                name: {"validation_ndcg": model["validation_ndcg"]}
                for name, model in self.summary["models"].items()
            },
            "ranker": {key: ranker[key] for key in ("used", "validation_ndcg@10") if key in ranker},
            "timings_seconds": self.summary["timings_seconds"],
        }


def run_pipeline(
    data_dir: str | Path,
    out_dir: str | Path,
    config: RunConfig | None = None,
    *,
    executor: Executor | None = None,
    stage: StagedGeneration | None = None,
) -> RunResult:
    """Run the job on ``data_dir`` and write its outputs into ``out_dir``.

    Writes ``recommendations.parquet`` (user_id, item_id, rank, score, source, sources and each candidate
    source's rank), ``run.json``, ``validation_report.json``, the embeddings under ``features/``, the
    ranker under ``ranker/`` with its feature table; with a test set also ``metrics.json`` and the
    held-out interactions it was computed on, ``test_interactions.parquet``.

    The run writes a new generation of ``out_dir`` (:meth:`RunFolder.stage`) and publishes it whole once
    every output is written and the lists cover every user; it starts from the published embeddings, and
    after a run that did not finish, from that run's. One run at a time writes ``out_dir``: a second one
    fails at once, naming the first. With ``stage`` (the nightly flow's generation of ``out_dir``) it
    writes into that one instead. The item encoders and the final lists run on ``executor`` (default:
    :func:`m6rec.cluster.open_executor` of ``config.dask``).
    """
    config = config or RunConfig()
    hashes = MediaHashes(RunFolder(out_dir).media_hashes)
    fingerprint = data_fingerprint(Path(data_dir), hashes, media_limits(config.embeddings))
    with ExitStack() as stack:
        if executor is None:
            executor = stack.enter_context(open_executor(config.dask))
        if stage is None:
            identity = inputs_identity(fingerprint, config, kind="training")
            folder = RunFolder(out_dir)
            stage = stack.enter_context(
                folder.stage("training", keep=config.keep_generations, identity=identity)
            )
        else:
            stage.join("training")
        result = _run_pipeline(Path(data_dir), hashes, fingerprint, stage, config, executor)
    return dataclasses.replace(result, out_dir=Path(out_dir))


@dataclass
class _FoldPhase:
    """What the fold phase leaves for the final lists: each source fitted on all training data, the
    fallback, the list that serves (``ranker`` or a source), the ranker's training (None without a
    ranker) and what ``run.json`` says of the sources and the ranker."""

    sources: dict[str, CandidateSource]
    fallback: CandidateSource
    selected: str
    training: RankerTraining | None
    models_summary: dict
    ranker_summary: dict | None


def _run_pipeline(
    data_dir: Path,
    hashes: MediaHashes,
    fingerprint: str,
    stage: StagedGeneration,
    config: RunConfig,
    executor: Executor,
) -> RunResult:
    """The run on the dataset of ``fingerprint`` (its media hashes in ``hashes``), written into ``stage``."""
    folder, clock = stage.folder, StageClock()
    dataset = dataclasses.replace(load_dataset(data_dir, **config.reading()), media_hashes=hashes)
    protocol = evaluation_protocol(dataset, config)
    fold = _fold(dataset, protocol, config)
    clock.lap("load")

    embeddings = _embeddings(dataset, folder, fold, config, executor)
    full_inputs = embeddings.inputs["collaborative"]
    fold = dataclasses.replace(fold, history_frame=None, label_frame=None)  # a gigabyte at 20M interactions
    clock.lap("embeddings")

    phase = _fold_phase(dataset, fold, embeddings, config, protocol, Checkpoints(folder), folder, executor)
    clock.lap("candidates")

    scorer = ListScorer(
        sources=phase.sources,
        matrix=fold.full,
        settings=ListSettings.of(config, fold.full.n_items),
        selected=phase.selected,
        fallback=phase.fallback,
        context=ranker_context(dataset, fold.full, full_inputs) if phase.training is not None else None,
        ranker=None if phase.training is None else phase.training.ranker,
        columns=None if phase.training is None else phase.training.columns,
        keep_source_lists=protocol.test is not None,
        model_name=str(folder.ranker_dir),
    )
    evaluation = (
        None if protocol.test is None else StreamedEvaluation(protocol.test, fold.full, config.k_values)
    )
    users = fold.full.n_users
    written = write_lists(scorer, folder, np.arange(users), evaluation, executor=executor)
    log_short_lists(written, config.top_k)
    if phase.ranker_summary is not None and phase.selected == "ranker":
        phase.ranker_summary["new_item_places_per_user"] = written.new_item_places / max(users, 1)
    clock.lap("ranking")
    metrics = {} if evaluation is None else evaluation.result()
    if metrics:
        log.info("final list (%s): %s", phase.selected, _headline(metrics[FINAL]))
    clock.lap("evaluate")
    _save_model(folder, fold, phase, protocol.train)
    clock.lap("save")

    summary = _run_summary(data_dir, protocol, fold, phase, embeddings, written.rows)
    summary["counts"].update(
        users_topped_up=written.topped_up_users, lists_shorter_than_top_k=written.short_lists
    )
    summary.update(clock.report())
    folder.write_reports(
        metrics=metrics,
        held_out=protocol.test,
        run_report=summary,
        validation_report=dataset.report.to_dict(),
    )
    _manifest(config, dataset, protocol, fold, phase, fingerprint, folder).write(folder.model_manifest)
    stage.expect_lists(
        folder, users=int((np.diff(fold.full.matrix.indptr) < fold.full.n_items).sum()), top_k=config.top_k
    )
    stage.expect(lambda: ModelManifest.read(folder.model_manifest))
    _report(folder.root, full_inputs.item_vectors)
    Checkpoints(folder).clear()
    return RunResult(folder.root, metrics, phase.selected, summary)


def _fold(dataset: Dataset, protocol: Protocol, config: RunConfig) -> Fold:
    """The fold that tunes the sources and trains the ranker, over every user and item of the run."""
    users, items = run_indexes(dataset, protocol)
    fold = make_fold(
        protocol.train,
        users,
        items,
        config.baselines.validation_ratio,
        temporal=protocol.temporal,
        seed=config.seed,
        cold_item_share=config.fold_cold_item_share(),
    )
    log.info(
        "%d users, %d items, %d training interactions (%s)",
        len(users),
        len(items),
        fold.full.matrix.nnz,
        protocol.description,
    )
    return fold


def _embeddings(
    dataset: Dataset, folder: RunFolder, fold: Fold, config: RunConfig, executor: Executor
) -> HistoryEmbeddings:
    """The item embeddings, and the collaborative ones of the fold's history and of all training data."""
    half_life = config.embeddings.profile_half_life_days
    histories = {
        "fold": History(fold.history_frame, fold.history, folder.fold_features_dir, half_life_days=half_life),
        "collaborative": History(fold.full_frame, fold.full, folder.features_dir, half_life_days=half_life),
    }
    embeddings = embed_histories(dataset, folder.features_dir, config, histories, executor=executor)
    if embeddings.items is not None:
        write_json(embeddings.items.problems, folder.features_dir / PROBLEMS)
        write_json(embeddings.summary, folder.features_dir / EMBEDDINGS_SUMMARY)
    if dataset.media_hashes is not None:
        dataset.media_hashes.save()
    return embeddings


def _fold_phase(
    dataset: Dataset,
    fold: Fold,
    embeddings: HistoryEmbeddings,
    config: RunConfig,
    protocol: Protocol,
    checkpoints: Checkpoints,
    folder: RunFolder,
    executor: Executor,
) -> _FoldPhase:
    """Tune every source on the fold and refit it on all training data, then train the ranker on the
    fold; a run that did not finish left what it finished of both in ``checkpoints``. Only what the final
    lists need is returned: the fold's sources, profiles and vectors and the ranker's training table (at
    a million users, gigabytes) go with this function."""
    history_inputs = embeddings.inputs.pop("fold")
    embeddings.collaborative.pop("fold", None)
    full_inputs = embeddings.inputs["collaborative"]
    models = list(config.baselines.models)
    if config.ranker.enabled:
        has_times = fold.full.timestamps is not None
        available = [name for name in config.ranker.extra_sources if _available(name, full_inputs, has_times)]
        for name in sorted(set(config.ranker.extra_sources) - set(available)):
            needs = ", ".join(source_class(name).side_inputs) or "timestamps"
            log.info("%s steps aside: this dataset gives it no %s", name, needs)
        models += available
    tuning_digest = stage_digest(
        "tuning",
        fold.history,
        fold.labels,
        fold.full,
        models,
        config.baselines.model_dump(mode="json"),
        config.seed,
        embeddings_digest(folder.features_dir),
    )
    tuned_before = checkpoints.read("tuning", tuning_digest)
    tuned = tune_and_fit(
        fold,
        models,
        config.baselines,
        history_inputs=history_inputs,
        full_inputs=full_inputs,
        seed=config.seed,
        tuned_before=tuned_before,
    )
    if tuned_before is None:
        checkpoints.write("tuning", tuning_digest, {name: entry.record() for name, entry in tuned.items()})
    fallback = (
        tuned["popularity"].source if "popularity" in tuned else create_source("popularity").fit(fold.full)
    )
    if executor.remote and config.ranker.enabled:
        log.info(
            "dask: the sources and the ranker train in this process (the ranker on at most %d fold users, "
            "ranker.max_training_users); the item encoders and the final lists run on the workers",
            config.ranker.max_training_users,
        )
    ranker_digest = stage_digest(
        "ranker", tuning_digest, config.ranker.model_dump(mode="json"), protocol.temporal
    )
    selected, training = train_or_resume_ranker(
        fold,
        tuned,
        ranker_context(dataset, fold.history, history_inputs),
        config,
        protocol.temporal,
        checkpoints,
        ranker_digest,
    )
    if training is not None:
        training.features = None
    return _FoldPhase(
        sources={name: entry.source for name, entry in tuned.items()},
        fallback=fallback,
        selected=selected,
        training=training,
        models_summary=_models_summary(tuned),
        ranker_summary=None if training is None else training.summary(),
    )


def _models_summary(tuned: dict[str, TunedSource]) -> dict:
    return {
        name: {
            "params": entry.params,
            "validation_ndcg": entry.validation_ndcg,
            "trials": entry.trials,
            "seconds": round(entry.seconds, 3),
        }
        for name, entry in tuned.items()
    }


def _run_summary(
    data_dir: Path,
    protocol: Protocol,
    fold: Fold,
    phase: _FoldPhase,
    embeddings: HistoryEmbeddings,
    rows: int,
) -> dict:
    """``run.json`` without its timings."""
    return {
        "m6rec_version": __version__,
        "data_dir": str(data_dir.resolve()),
        "protocol": protocol.description,
        "fold_split": "temporal" if protocol.temporal else "random",
        "counts": {
            "users": fold.full.n_users,
            "items": fold.full.n_items,
            "train_interactions": int(fold.full.matrix.nnz),
            "test_interactions": 0 if protocol.test is None else len(protocol.test),
            "list_rows": rows,
        },
        "selected_model": phase.selected,
        "models": phase.models_summary,
        "ranker": phase.ranker_summary,
        "embeddings": embeddings.summary,
    }


def _manifest(
    config: RunConfig,
    dataset: Dataset,
    protocol: Protocol,
    fold: Fold,
    phase: _FoldPhase,
    fingerprint: str,
    folder: RunFolder,
) -> ModelManifest:
    return ModelManifest.create(
        config=config,
        data_fingerprint=fingerprint,
        source_params={name: summary["params"] for name, summary in phase.models_summary.items()},
        selected_model=phase.selected,
        ranker_used=phase.selected == "ranker",
        ranker_features=(phase.ranker_summary or {}).get("features", []),
        lists_from_all_interactions=protocol.test is None or dataset.test is not None,
        saved_sources=sorted(phase.sources),
        interactions=len(fold.full_frame),
        dataset_interactions=len(dataset.interactions),
        catalogue_digest=frame_digest(dataset.items),
        item_vectors_digest=item_vectors_digest(folder.features_dir),
    )


def _save_model(staged: RunFolder, fold: Fold, phase: _FoldPhase, train_frame: pd.DataFrame) -> None:
    """What a batch loads instead of refitting: every source fitted on all training interactions, the
    ranker, the user and item indexes and each user's history digest."""
    for name, source in phase.sources.items():
        source.save(staged.source_dir(name))
    if phase.training is not None:
        phase.training.ranker.save(staged.ranker_dir)
    fold.full.users.save(staged.users_index, USER_ID)
    fold.full.items.save(staged.items_index, ITEM_ID)
    from m6rec.io import write_parquet

    write_parquet(user_history_digests(train_frame, fold.full.users), staged.user_histories)


def _available(source: str, inputs: SideInputs, has_timestamps: bool) -> bool:
    """Whether an extra candidate source can run: its side inputs exist, and timestamps if it needs them."""
    cls = source_class(source)
    return inputs.provides(cls.side_inputs) and (has_timestamps or not cls.needs_timestamps)


def _report(out_dir: Path, item_vectors) -> None:
    """The run's report.html (drawn with the item vectors already loaded); the lists and metrics are
    already written, so a failure here only warns."""
    from pipelines.report import write_report

    try:
        write_report(out_dir, item_vectors=item_vectors)
    except Exception as error:  # the report is a view of outputs that are already safe
        log.warning("report.html not written: %s", error)


def _headline(metrics: dict[str, float]) -> str:
    keys = [key for key in metrics if key.startswith(("ndcg@", "recall@", "candidate_recall"))]
    return ", ".join(f"{key}={metrics[key]:.4f}" for key in keys)
