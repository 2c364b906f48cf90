"""The main job: dataset directory in, recommendation lists, features and metrics out.

``run_pipeline`` reads like the pipeline diagram: load → split → fold → item embeddings → collaborative
embeddings (on the fold and on all training data) → candidate sources (tuned on the fold) → ranker
(trained on the fold) → final lists, streamed chunk by chunk of users with the test metrics added per
chunk → the model the batch loads (sources, ranker, indexes) → publish. The stages it shares with serving
live in :mod:`pipelines.stages`; the folder it writes is :mod:`pipelines.run_folder`'s. Everything is
staged and moved into place only when complete, so a failed run leaves the previous outputs untouched."""

from __future__ import annotations

import copy
import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from m6rec import __version__
from m6rec.candidates import create_source
from m6rec.candidates.merge import ITEM, USER_ROW
from m6rec.candidates.registry import source_class
from m6rec.cluster import ClusterOpener, cluster_for
from m6rec.config import RunConfig
from m6rec.data import contract
from m6rec.data.contract import ITEM_ID, USER_ID
from m6rec.data.dataset import Dataset, load_dataset
from m6rec.data.interactions import IdIndex, InteractionMatrix, frame_digest, user_history_digests
from m6rec.data.splits import SplitSpec
from m6rec.evaluation.metrics import RankingMetrics
from m6rec.io import write_json, write_parquet
from m6rec.locking import folder_lock
from pipelines.checkpoints import Checkpoints, embeddings_digest, stage_digest
from pipelines.lists import write_lists
from pipelines.run_folder import (
    CHECKPOINTS_DIR,
    EMBEDDINGS_SUMMARY,
    FEATURES_DIR,
    FINAL,
    PROBLEMS,
    ModelManifest,
    RunFolder,
    check_lists,
    generations,
)
from pipelines.source_tuning import make_fold, select_final, tune_and_fit
from pipelines.stages import (
    History,
    ListScorer,
    StageClock,
    compute_stage_embeddings,
    ranker_context,
    write_outputs,
)

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


@dataclass
class _Protocol:
    train: pd.DataFrame
    test: pd.DataFrame | None
    description: str
    temporal: bool


def run_pipeline(
    data_dir: str | Path,
    out_dir: str | Path,
    config: RunConfig | None = None,
    cluster_opener: ClusterOpener = cluster_for,
) -> RunResult:
    """Run the job on ``data_dir`` and write its outputs into ``out_dir``.

    Writes ``recommendations.parquet`` (user_id, item_id, rank, score, source, sources and each candidate
    source's rank), ``run.json``, ``validation_report.json``, the embeddings under ``features/``, the
    ranker under ``ranker/`` with its feature table; with a test set also ``metrics.json`` and the
    held-out interactions it was computed on, ``test_interactions.parquet``.

    The run writes a new generation of ``out_dir`` and publishes it whole once every output is written
    and the lists cover every user (:mod:`m6rec.generations`); it starts from the published embeddings,
    and after a run that did not finish, from that run's. One run at a time writes ``out_dir``
    (:func:`m6rec.locking.folder_lock`): a second one fails at once, naming the first. The item encoders
    and the final lists run on the cluster ``cluster_opener`` opens for ``config.dask`` when there is one
    (:func:`m6rec.cluster.cluster_for`: the one of ``dask.address``).
    """
    config = config or RunConfig()
    out_dir = Path(out_dir)
    expected: dict = {}

    def validate(staged: Path) -> None:
        check_lists(RunFolder(staged), expected["users"], config.top_k)
        RunFolder(staged).read_manifest()

    with (
        folder_lock(out_dir),
        cluster_opener(config.dask) as cluster,
        generations(out_dir).staged(
            kind="training",
            carry=(FEATURES_DIR,),
            resume=(FEATURES_DIR, CHECKPOINTS_DIR),
            keep=config.keep_generations,
            validate=validate,
        ) as stage,
    ):
        result = _run_pipeline(data_dir, RunFolder(stage.path), config, expected, cluster)
    return dataclasses.replace(result, out_dir=out_dir)


def _run_pipeline(
    data_dir: str | Path, folder: RunFolder, config: RunConfig, expected: dict, cluster=None
) -> RunResult:
    """The run, written into ``folder`` (the staged generation); ``expected["users"]`` is set to the
    number of users whose lists the folder must hold."""
    clock = StageClock()

    dataset = load_dataset(data_dir, **config.reading())
    protocol = _protocol(dataset, config)
    users, items = _indexes(dataset, protocol)
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
    clock.lap("load")

    half_life = config.embeddings.profile_half_life_days
    histories = {
        "fold": History(fold.history_frame, fold.history, folder.fold_features_dir, half_life_days=half_life),
        "collaborative": History(fold.full_frame, fold.full, folder.features_dir, half_life_days=half_life),
    }
    embeddings = compute_stage_embeddings(dataset, folder.features_dir, config, histories, cluster=cluster)
    if embeddings.items is not None:
        write_json(embeddings.items.problems, folder.features_dir / PROBLEMS)
        write_json(embeddings.summary, folder.features_dir / EMBEDDINGS_SUMMARY)
    history_inputs, full_inputs = embeddings.inputs["fold"], embeddings.inputs["collaborative"]
    # The fold's interaction frames served the embeddings only (the sources learn from its matrices);
    # at 20M interactions they are a gigabyte.
    histories = None
    fold = dataclasses.replace(fold, history_frame=None, label_frame=None)
    clock.lap("embeddings")

    models = list(config.baselines.models)
    if config.ranker.enabled:
        has_times = fold.full.timestamps is not None
        models += [name for name in config.ranker.extra_sources if _available(name, full_inputs, has_times)]
    checkpoints = Checkpoints(folder)
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
    clock.lap("candidates")

    if cluster is not None and config.ranker.enabled:
        log.info(
            "dask: the sources and the ranker train in this process (the ranker on at most %d fold users, "
            "ranker.max_training_users); the item encoders and the final lists run on the workers",
            config.ranker.max_training_users,
        )
    selected, training, ranker_summary = _train_ranker(
        fold,
        tuned,
        ranker_context(dataset, fold.history, history_inputs),
        config,
        temporal=protocol.temporal,
        checkpoints=checkpoints,
        digest=stage_digest(
            "ranker", tuning_digest, config.ranker.model_dump(mode="json"), protocol.temporal
        ),
    )
    # What only the fold needed (its sources, profiles and vectors, the ranker's training table) goes
    # before the final lists: at a million users they are gigabytes.
    history_inputs = None
    embeddings.inputs.pop("fold", None)
    embeddings.collaborative.pop("fold", None)
    for entry in tuned.values():
        entry.history_source = None
    if training is not None:
        training.features = None
    scorer = ListScorer(
        sources={name: entry.source for name, entry in tuned.items()},
        matrix=fold.full,
        config=config,
        selected=selected,
        fallback=fallback,
        context=ranker_context(dataset, fold.full, full_inputs) if training is not None else None,
        ranker=None if training is None else training.ranker,
        columns=None if training is None else training.columns,
        keep_source_lists=protocol.test is not None,
        model_name=str(folder.ranker_dir),
    )
    evaluation = None if protocol.test is None else _Evaluation(protocol.test, fold.full, config)
    summary = {
        "m6rec_version": __version__,
        "data_dir": str(Path(data_dir).resolve()),
        "protocol": protocol.description,
        "fold_split": "temporal" if protocol.temporal else "random",
        "counts": {
            "users": len(users),
            "items": len(items),
            "train_interactions": int(fold.full.matrix.nnz),
            "test_interactions": 0 if protocol.test is None else len(protocol.test),
        },
        "selected_model": selected,
        "models": {
            name: {
                "params": entry.params,
                "validation_ndcg": entry.validation_ndcg,
                "trials": entry.trials,
                "seconds": round(entry.seconds, 3),
            }
            for name, entry in tuned.items()
        },
        "ranker": ranker_summary,
        "embeddings": embeddings.summary,
    }
    manifest = ModelManifest.create(
        config=config,
        data_dir=Path(data_dir),
        source_params={name: entry.params for name, entry in tuned.items()},
        selected_model=selected,
        ranker_used=selected == "ranker",
        ranker_features=(ranker_summary or {}).get("features", []),
        lists_from_all_interactions=protocol.test is None or dataset.test is not None,
        saved_sources=sorted(tuned),
        interactions=len(fold.full_frame),
        catalogue_digest=frame_digest(dataset.items),
    )
    metrics: dict = {}

    def write(staging: Path) -> None:
        staged = RunFolder(staging)
        written = write_lists(scorer, staged, np.arange(len(users)), evaluation, cluster=cluster)
        if ranker_summary is not None and selected == "ranker":
            ranker_summary["new_item_places_per_user"] = written.new_item_places / max(len(users), 1)
        clock.lap("ranking")
        if evaluation is not None:
            metrics.update(evaluation.result())
            log.info("final list (%s): %s", selected, _headline(metrics[FINAL]))
        clock.lap("evaluate")
        _save_model(staged, fold, tuned, training, protocol.train)
        clock.lap("save")
        summary["counts"]["list_rows"] = written.rows
        summary.update(clock.report())
        write_outputs(
            staged,
            metrics=metrics,
            held_out=protocol.test,
            run_report=summary,
            validation_report=dataset.report.to_dict(),
            manifest=manifest,
        )

    write(folder.root)
    expected["users"] = int((np.diff(fold.full.matrix.indptr) < len(items)).sum())
    _report(folder.root, full_inputs.item_vectors)
    checkpoints.clear()
    return RunResult(folder.root, metrics, selected, summary)


def _save_model(staged: RunFolder, fold, tuned: dict, training, train_frame: pd.DataFrame) -> None:
    """What a batch loads instead of refitting: every source fitted on all training interactions, the
    ranker, the user and item indexes and each user's history digest."""
    for name, entry in tuned.items():
        entry.source.save(staged.source_dir(name))
    if training is not None:
        training.ranker.save(staged.ranker_dir)
    fold.full.users.save(staged.users_index, USER_ID)
    fold.full.items.save(staged.items_index, ITEM_ID)
    write_parquet(user_history_digests(train_frame, fold.full.users), staged.user_histories)


def _available(source: str, inputs, has_timestamps: bool) -> bool:
    """Whether an extra candidate source can run: its side inputs exist, and timestamps if it needs them."""
    cls = source_class(source)
    return inputs.provides(cls.side_inputs) and (has_timestamps or not cls.needs_timestamps)


def _report(out_dir: Path, item_vectors) -> None:
    """The run's report.html (drawn with the item vectors already loaded); the lists and metrics are
    already published, so a failure here only warns."""
    from pipelines.report import write_report

    try:
        write_report(out_dir, item_vectors=item_vectors)
    except Exception as error:  # the report is a view of outputs that are already safe
        log.warning("report.html not written: %s", error)


def _protocol(dataset: Dataset, config: RunConfig) -> _Protocol:
    """The training and test interactions, and whether the ranker's fold is cut in time
    (``config.fold_split``; ``auto`` cuts it the way the test set was cut)."""
    if dataset.test is not None:
        if config.split != "none":
            log.warning(
                "split %s ignored: the dataset has a test file, which the run evaluates on instead",
                config.split,
            )
        temporal = dataset.has_timestamps and is_cut_in_time(dataset.interactions, dataset.test)
        description = f"explicit test file ({'later than' if temporal else 'interleaved with'} training)"
        train, test = dataset.interactions, dataset.test
    elif config.split == "none":
        train, test, temporal = dataset.interactions, None, False
        description = "no test set: trained on all interactions"
    else:
        spec = SplitSpec.parse(config.split, seed=config.seed)
        train, test = spec.apply(dataset.interactions)
        temporal, description = spec.kind != "random", f"split {spec} (seed {config.seed})"
    if config.fold_split != "auto":
        temporal = config.fold_split == "temporal"
    return _Protocol(train, test, description, temporal=temporal)


def is_cut_in_time(train: pd.DataFrame, test: pd.DataFrame, share: float = 0.9) -> bool:
    """Whether at least ``share`` of the ``test`` interactions of users with training history are no
    earlier than that user's latest training interaction: a test set cut in time, not at random."""
    latest = train.groupby(USER_ID)[contract.TIMESTAMP].max()
    test_times = test[[USER_ID, contract.TIMESTAMP]].dropna()
    user_latest = test_times[USER_ID].map(latest)
    known = user_latest.notna()
    if not known.any():
        return False
    return bool((test_times[contract.TIMESTAMP][known] >= user_latest[known]).mean() >= share)


def _indexes(dataset: Dataset, protocol: _Protocol) -> tuple[IdIndex, IdIndex]:
    test = protocol.test
    users = IdIndex.from_values(
        protocol.train[USER_ID],
        None if test is None else test[USER_ID],
        None if dataset.users is None else dataset.users[USER_ID],
    )
    items = IdIndex.from_values(
        None if dataset.items is None else dataset.items[ITEM_ID],
        protocol.train[ITEM_ID],
        None if test is None else test[ITEM_ID],
    )
    return users, items


def _train_ranker(fold, tuned, context, config, *, temporal, checkpoints: Checkpoints, digest: str):
    """The ranker trained on the fold with ``context`` (the fold history's), and whether it makes the
    final lists: only when it beats every single source on held-out fold users. Returns (name of the
    final list, the ranker's training or None, its summary or None). A ranker a run that did not finish
    trained on the same inputs (``digest``) is taken from ``checkpoints`` instead of trained again."""
    best_source = select_final(tuned)
    if not config.ranker.enabled or len(tuned) < 2:
        return best_source, None, None
    from pipelines.ranking import RankerTraining, train_ranker
    from ranker.model import LightGBMRanker

    saved, training = checkpoints.read("ranker", digest), None
    if saved is not None:
        try:
            training = RankerTraining(
                ranker=LightGBMRanker.load(checkpoints.directory("ranker")),
                validation=saved["validation"],
                candidate_recall=saved["candidate_recall"],
                features=None,
                columns=saved["columns"],
                cold_candidate_recall=saved["cold_candidate_recall"],
            )
        except Exception as error:  # a damaged checkpoint is only not reused
            log.warning("the ranker checkpoint is unreadable (%s); training the ranker again", error)
    if training is None:
        training = train_ranker(
            fold,
            {name: entry.history_source for name, entry in tuned.items()},
            context,
            config.ranker,
            seed=config.seed,
            temporal=temporal,
        )
        training.ranker.save(checkpoints.directory("ranker"))
        checkpoints.write(
            "ranker",
            digest,
            {
                "validation": training.validation,
                "candidate_recall": training.candidate_recall,
                "columns": training.columns,
                "cold_candidate_recall": training.cold_candidate_recall,
            },
        )
    summary = {
        "validation_ndcg@10": training.validation,
        "fold_candidate_recall": training.candidate_recall,
        "used": training.beats_sources,
        "features": training.columns,
        "best_iteration": training.ranker.best_iteration_,
    }
    if not training.beats_sources:
        log.warning(
            "the ranker did not beat the best single source (%s) on held-out fold users; using %s",
            best_source,
            best_source,
        )
        return best_source, training, summary
    return "ranker", training, summary


@dataclass(frozen=True)
class _Counted:
    """The accumulators of an :class:`_Evaluation`, without its test set."""

    lists: dict[str, RankingMetrics]
    candidates_found: int
    with_candidates: bool


class _Evaluation:
    """The test metrics of each source's lists and of the final lists, added chunk by chunk of users,
    and the share of the test items among the final candidates (``candidate_recall``)."""

    def __init__(self, test: pd.DataFrame, train: InteractionMatrix, config: RunConfig):
        self.relevant = InteractionMatrix.from_frame(test, train.users, train.items).matrix.tocsr()
        popularity = train.item_popularity()
        self.settings = {
            "k_values": tuple(config.k_values),
            "n_catalogue_items": train.n_items,
            "item_popularity": popularity,
        }
        self.lists: dict[str, RankingMetrics] = {}
        self.candidates_found = 0
        self.with_candidates = False

    def add(self, chunk) -> None:
        relevant = self.relevant[chunk.user_rows]
        for name, lists in [*chunk.source_lists.items(), (FINAL, chunk.final)]:
            self.lists.setdefault(name, RankingMetrics(**self.settings)).add(lists.items, relevant)
        if chunk.candidates is not None:
            self.with_candidates = True
            rows, items = chunk.candidates[USER_ROW].to_numpy(), chunk.candidates[ITEM].to_numpy()
            self.candidates_found += int(np.asarray(self.relevant[rows, items]).ravel().sum())

    def empty(self) -> _Evaluation:
        """The same test set and settings with nothing counted yet (a partition's, on a Dask worker)."""
        other = copy.copy(self)
        other.lists, other.candidates_found, other.with_candidates = {}, 0, False
        return other

    def counted(self) -> _Counted:
        """What was counted, without the test set (what a partition sends back to :meth:`merge`)."""
        return _Counted(self.lists, self.candidates_found, self.with_candidates)

    def merge(self, counted: _Counted) -> None:
        """Count what another copy counted (:meth:`counted`), of other users."""
        for name, accumulator in counted.lists.items():
            self.lists.setdefault(name, RankingMetrics(**self.settings)).merge(accumulator)
        self.candidates_found += counted.candidates_found
        self.with_candidates |= counted.with_candidates

    def result(self) -> dict[str, dict[str, float]]:
        metrics = {name: accumulator.result() for name, accumulator in self.lists.items()}
        if self.with_candidates and self.relevant.nnz:
            metrics[FINAL]["candidate_recall"] = float(self.candidates_found / self.relevant.nnz)
        return metrics


def _headline(metrics: dict[str, float]) -> str:
    keys = [key for key in metrics if key.startswith(("ndcg@", "recall@", "candidate_recall"))]
    return ", ".join(f"{key}={metrics[key]:.4f}" for key in keys)
