"""The main job: dataset directory in, recommendation lists, features and metrics out.

``run_pipeline`` reads like the pipeline diagram: load → split → fold → item embeddings → collaborative
embeddings (on the fold and on all training data) → candidate sources (tuned on the fold) → ranker
(trained on the fold) → final lists → evaluate → publish. The stages it shares with serving live in
:mod:`pipelines.stages`; the folder it writes is :mod:`pipelines.run_folder`'s. Lists and metrics are
staged and moved into place only when complete, so a failed run leaves the previous outputs untouched.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from m6rec import __version__
from m6rec.candidates import Candidates, create_source
from m6rec.candidates.merge import ITEM, USER_ROW, merge_candidates
from m6rec.candidates.registry import source_class
from m6rec.config import RunConfig
from m6rec.data import contract
from m6rec.data.contract import ITEM_ID, USER_ID
from m6rec.data.dataset import Dataset, load_dataset
from m6rec.data.interactions import IdIndex, InteractionMatrix
from m6rec.data.splits import SplitSpec
from m6rec.evaluation.metrics import ranking_metrics
from m6rec.io import write_json
from pipelines.run_folder import EMBEDDINGS_SUMMARY, FINAL, PROBLEMS, ModelManifest, RunFolder
from pipelines.source_tuning import make_fold, select_final, tune_and_fit
from pipelines.stages import (
    History,
    Outputs,
    StageClock,
    compute_stage_embeddings,
    list_depth,
    publish,
    ranker_context,
    recommendation_frame,
    with_fallback,
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


def run_pipeline(data_dir: str | Path, out_dir: str | Path, config: RunConfig | None = None) -> RunResult:
    """Run the job on ``data_dir`` and write its outputs into ``out_dir``.

    Writes ``recommendations.parquet`` (user_id, item_id, rank, score, source, sources and each candidate
    source's rank), ``run.json``, ``validation_report.json``, the embeddings under ``features/``, the
    ranker under ``ranker/`` with its feature table; with a test set also ``metrics.json`` and the
    held-out interactions it was computed on, ``test_interactions.parquet``.
    """
    config = config or RunConfig()
    out_dir = Path(out_dir)
    folder = RunFolder(out_dir)
    clock = StageClock()

    dataset = load_dataset(
        data_dir, skip_invalid_rows=config.skip_invalid_rows, columns=getattr(config, "columns", None)
    )
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
    embeddings = compute_stage_embeddings(dataset, folder.features_dir, config, histories)
    if embeddings.items is not None:
        write_json(embeddings.items.problems, folder.features_dir / PROBLEMS)
        write_json(embeddings.summary, folder.features_dir / EMBEDDINGS_SUMMARY)
    history_inputs, full_inputs = embeddings.inputs["fold"], embeddings.inputs["collaborative"]
    clock.lap("embeddings")

    models = list(config.baselines.models)
    if config.ranker.enabled:
        has_times = fold.full.timestamps is not None
        models += [name for name in config.ranker.extra_sources if _available(name, full_inputs, has_times)]
    tuned = tune_and_fit(
        fold, models, config.baselines, history_inputs=history_inputs, full_inputs=full_inputs
    )
    fallback = (
        tuned["popularity"].source if "popularity" in tuned else create_source("popularity").fit(fold.full)
    )
    clock.lap("candidates")

    all_users = np.arange(len(users))
    depth = list_depth(config)
    lists = {name: entry.source.recommend(all_users, depth) for name, entry in tuned.items()}
    contexts = (
        ranker_context(dataset, fold.history, history_inputs),
        ranker_context(dataset, fold.full, full_inputs),
    )
    selected, final, candidates, ranker_summary, new_item_places = _final_lists(
        fold, tuned, lists, contexts, all_users, depth, folder, config, temporal=protocol.temporal
    )
    final, origin = with_fallback(final, fallback, all_users, depth, selected)
    clock.lap("ranking")

    metrics = {}
    if protocol.test is not None:
        metrics = _evaluate(lists, final, candidates, protocol.test, fold.full, config)
        log.info("final list (%s): %s", selected, _headline(metrics[FINAL]))
    clock.lap("evaluate")

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
        **clock.report(),
    }
    places = new_item_places if config.ranker.new_item_slots else None
    recommendations = recommendation_frame(final, origin, candidates, users, items, config.top_k, places)
    manifest = ModelManifest.create(
        config=config,
        data_dir=Path(data_dir),
        source_params={name: entry.params for name, entry in tuned.items()},
        selected_model=selected,
        ranker_used=selected == "ranker",
        ranker_features=(ranker_summary or {}).get("features", []),
        lists_from_all_interactions=protocol.test is None or dataset.test is not None,
    )
    outputs = Outputs(
        recommendations,
        metrics=metrics,
        held_out=protocol.test,
        run_report=summary,
        validation_report=dataset.report.to_dict(),
        manifest=manifest,
    )
    publish(folder, outputs)
    _report(out_dir, full_inputs.item_vectors)
    return RunResult(out_dir, metrics, selected, summary)


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


def _final_lists(fold, tuned, lists, contexts, all_users, depth, folder, config, *, temporal):
    """The ranker's lists when it beats every single source on held-out fold users, else the best source's.
    ``contexts`` are the ranker features' contexts of the fold's history and of all training data.
    Returns (name, lists, merged final candidates or None, ranker summary, mask of the list entries moved
    up into places reserved for new items or None)."""
    best_source = select_final(tuned)
    if not config.ranker.enabled or len(tuned) < 2:
        return best_source, lists[best_source], None, None, None
    from pipelines.ranking import candidate_table, train_ranker
    from ranker.features import build_ranker_features, write_feature_table
    from ranker.lists import rank_final_lists

    training = train_ranker(
        fold,
        {name: entry.history_source for name, entry in tuned.items()},
        contexts[0],
        config.ranker,
        seed=config.seed,
        temporal=temporal,
    )
    width = config.ranker.candidates_per_source
    if width <= depth:  # the evaluation lists already hold every source's candidates: no second pass
        candidates = merge_candidates(
            {
                name: Candidates(found.items[:, :width], found.scores[:, :width])
                for name, found in lists.items()
            },
            all_users,
            seen=fold.full.matrix,
        )
    else:
        candidates, _ = candidate_table(
            {name: entry.source for name, entry in tuned.items()}, all_users, width, fold.full.matrix
        )
    table = build_ranker_features(candidates, contexts[1])
    training.ranker.save(folder.ranker_dir)
    write_feature_table(table, folder.ranker_features)
    fold.full.users.save(folder.users_index, USER_ID)
    fold.full.items.save(folder.items_index, ITEM_ID)
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
        return best_source, lists[best_source], candidates, summary, None
    final, new_item_places = rank_final_lists(
        training.ranker, table, training.columns, all_users, depth, config.ranker
    )
    summary["new_item_places_per_user"] = float(new_item_places.sum() / max(len(all_users), 1))
    return "ranker", final, candidates, summary, new_item_places


def _evaluate(
    lists: dict[str, Candidates],
    final: Candidates,
    candidates: pd.DataFrame | None,
    test: pd.DataFrame,
    train: InteractionMatrix,
    config: RunConfig,
) -> dict[str, dict[str, float]]:
    relevant = InteractionMatrix.from_frame(test, train.users, train.items).matrix
    popularity = train.item_popularity()
    metrics = {}
    for name, lists_of_source in [*lists.items(), (FINAL, final)]:
        metrics[name] = ranking_metrics(
            lists_of_source.items,
            relevant,
            k_values=tuple(config.k_values),
            n_catalogue_items=train.n_items,
            item_popularity=popularity,
        )
    if candidates is not None and relevant.nnz:
        found = (
            np.asarray(relevant[candidates[USER_ROW].to_numpy(), candidates[ITEM].to_numpy()]).ravel().sum()
        )
        metrics[FINAL]["candidate_recall"] = float(found / relevant.nnz)
    return metrics


def _headline(metrics: dict[str, float]) -> str:
    keys = [key for key in metrics if key.startswith(("ndcg@", "recall@", "candidate_recall"))]
    return ", ".join(f"{key}={metrics[key]:.4f}" for key in keys)
