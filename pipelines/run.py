"""The main job: dataset directory in, recommendation lists, features and metrics out.

``run_pipeline`` reads like the pipeline diagram: load → split → fold → item embeddings → collaborative
embeddings (on the fold and on all training data) → candidate sources (tuned on the fold) → ranker
(trained on the fold) → final lists → evaluate → publish. Lists and metrics are staged and moved into
place only when complete, so a failed run leaves the previous outputs untouched.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from m6rec import __version__
from m6rec.candidates import Candidates, create_source
from m6rec.candidates.merge import ITEM, SOURCES, USER_ROW, merge_candidates
from m6rec.config import RunConfig
from m6rec.data import contract
from m6rec.data.contract import ITEM_ID, USER_ID
from m6rec.data.dataset import Dataset, load_dataset
from m6rec.data.interactions import IdIndex, InteractionMatrix
from m6rec.data.splits import SplitSpec
from m6rec.data.tables import find_table
from m6rec.evaluation.metrics import ranking_metrics
from m6rec.io import publish_staged, write_json, write_parquet
from pipelines.baselines import Fold, make_fold, select_final, tune_and_fit, with_fallback

log = logging.getLogger("m6rec")

RECOMMENDATIONS = "recommendations.parquet"
METRICS = "metrics.json"
RUN_SUMMARY = "run.json"
VALIDATION_REPORT = "validation_report.json"
HELD_OUT = "test_interactions.parquet"
RANKER_FEATURES = "ranker_features.parquet"
RANKER_DIR = "ranker"
REPORT = "report.html"
FINAL = "final"
# Extra candidate sources that learn from the interactions' time order alone.
TIME_ORDER_SOURCES = frozenset({"trend", "sequential"})


@dataclass
class RunResult:
    """What a run produced: output folder, per-model and final metrics (empty without a test set)."""

    out_dir: Path
    metrics: dict[str, dict[str, float]]
    selected_model: str
    summary: dict = field(repr=False)

    @property
    def recommendations_path(self) -> Path:
        return self.out_dir / RECOMMENDATIONS

    @property
    def report_path(self) -> Path:
        return self.out_dir / REPORT


@dataclass
class _Protocol:
    train: pd.DataFrame
    test: pd.DataFrame | None
    description: str
    temporal: bool


class _Clock:
    def __init__(self):
        self.timings: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.timings[stage] = round(now - self._last, 3)
        self._last = now


def run_pipeline(data_dir: str | Path, out_dir: str | Path, config: RunConfig | None = None) -> RunResult:
    """Run the job on ``data_dir`` and write its outputs into ``out_dir``.

    Writes ``recommendations.parquet`` (user_id, item_id, rank, score, source, sources and each candidate
    source's rank), ``run.json``, ``validation_report.json``, the embeddings under ``features/``, the
    ranker under ``ranker/`` with its feature table; with a test set also ``metrics.json`` and the
    held-out interactions it was computed on, ``test_interactions.parquet``.
    """
    config = config or RunConfig()
    out_dir = Path(out_dir)
    clock = _Clock()

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

    embeddings = _embeddings(dataset, fold, out_dir / "features", config)
    clock.lap("embeddings")

    history_params, full_params = _source_files(dataset, embeddings)
    models = list(config.baselines.models)
    if config.ranker.enabled:
        available = set(full_params) | (TIME_ORDER_SOURCES if fold.full.timestamps is not None else set())
        models += [name for name in config.ranker.extra_sources if name in available]
    tuned = tune_and_fit(
        fold, models, config.baselines, history_params=history_params, full_params=full_params
    )
    fallback = (
        tuned["popularity"].source if "popularity" in tuned else create_source("popularity").fit(fold.full)
    )
    clock.lap("candidates")

    all_users = np.arange(len(users))
    depth = max(config.candidate_depth, config.top_k, *config.k_values)
    lists = {name: entry.source.recommend(all_users, depth) for name, entry in tuned.items()}
    selected, final, candidates, ranker_summary, new_item_places = _final_lists(
        dataset, fold, tuned, lists, embeddings, all_users, depth, out_dir, config, temporal=protocol.temporal
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
        "embeddings": embeddings["summary"] if embeddings else None,
        "timings_seconds": clock.timings,
    }
    recommendations = _recommendation_frame(
        final, origin, candidates, users, items, config.top_k, new_item_places
    )
    _publish(out_dir, recommendations, metrics, protocol.test, summary, dataset.report.to_dict())
    _report(out_dir)
    return RunResult(out_dir, metrics, selected, summary)


def _report(out_dir: Path) -> None:
    """The run's report.html; the lists and metrics are already published, so a failure here only warns."""
    from pipelines.report import write_report

    try:
        write_report(out_dir)
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


def _embeddings(dataset: Dataset, fold: Fold, features_dir: Path, config: RunConfig) -> dict | None:
    """Item embeddings once, then the collaborative model twice: on the fold's history (for training the
    ranker) into ``features/fold/`` and on all training data into ``features/``."""
    if not config.ranker.enabled or not config.embeddings.modalities:
        return None
    from features.store import read_embeddings
    from pipelines.embeddings import compute_item_embeddings, train_collaborative

    item_result = compute_item_embeddings(dataset, features_dir, config.embeddings)
    on_history = train_collaborative(
        dataset, fold.history_frame, item_result, features_dir / "fold", config.embeddings
    )
    on_train = train_collaborative(dataset, fold.full_frame, item_result, features_dir, config.embeddings)
    content = item_result.content_tables(read_embeddings)
    summary = {**item_result.summary(), "collaborative": on_train.summary(), "fold": on_history.summary()}
    write_json(item_result.problems, features_dir / "problems.json")
    write_json(summary, features_dir / "embeddings.json")
    return {
        "items": item_result,
        "history": on_history,
        "train": on_train,
        "content": content,
        "summary": summary,
    }


def _source_files(dataset: Dataset, embeddings: dict | None) -> tuple[dict, dict]:
    """Fixed file parameters of the embedding-backed sources, for the fold fit and the full fit."""
    if not embeddings:
        return source_file_params(dataset, None, None), source_file_params(dataset, None, None)
    items = embeddings["items"]
    return (
        source_file_params(dataset, items, embeddings["history"]),
        source_file_params(dataset, items, embeddings["train"]),
    )


def source_file_params(dataset: Dataset, items, collaborative) -> dict[str, dict]:
    """File parameters of the sources that read embeddings or the KG: two-tower vectors from
    ``collaborative``, content vectors (fused, else text) from either result, the dataset's KG file."""
    params = {}
    paths = {**(items.paths if items else {}), **(collaborative.paths if collaborative else {})}
    if "cf_items" in paths and "cf_users" in paths:
        params["two_tower"] = {
            "embeddings": str(paths["cf_items"]),
            "user_embeddings": str(paths["cf_users"]),
        }
    content = paths.get("fused") or paths.get("text")
    if content:
        params["content"] = {"embeddings": str(content)}
    kg_path = find_table(dataset.directory, contract.KG)
    if kg_path is not None:
        params["kg_neighbours"] = {"kg": str(kg_path)}
    return params


def _final_lists(dataset, fold, tuned, lists, embeddings, all_users, depth, out_dir, config, *, temporal):
    """The ranker's lists when it beats every single source on held-out fold users, else the best source's.
    Returns (name, lists, merged final candidates or None, ranker summary, mask of the list entries moved
    up into places reserved for new items or None)."""
    best_source = select_final(tuned)
    if not config.ranker.enabled or len(tuned) < 2:
        return best_source, lists[best_source], None, None, None
    from pipelines.ranking import candidate_table, rank_final_lists, train_ranker
    from ranker.features import write_feature_table

    training = train_ranker(
        fold,
        {name: entry.history_source for name, entry in tuned.items()},
        _ranker_context(dataset, fold.history, embeddings, "history"),
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
    table = _ranker_features(candidates, dataset, fold.full, embeddings)
    training.ranker.save(out_dir / RANKER_DIR)
    write_feature_table(table, out_dir / RANKER_FEATURES)
    fold.full.users.save(out_dir / "index" / "users.parquet", USER_ID)
    fold.full.items.save(out_dir / "index" / "items.parquet", ITEM_ID)
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


def _ranker_context(dataset, matrix, embeddings, which):
    from features.store import read_embeddings
    from ranker.features import RankerContext

    content, cf_users, cf_items = {}, None, None
    if embeddings:
        content = embeddings["content"]
        paths = embeddings[which].paths
        if "cf_users" in paths:
            cf_users, cf_items = read_embeddings(paths["cf_users"]), read_embeddings(paths["cf_items"])
        if "fused" in paths:
            content = {**content, "fused": read_embeddings(paths["fused"])}
    return RankerContext(
        train=matrix,
        item_embeddings=content,
        two_tower_user_vectors=cf_users,
        two_tower_item_vectors=cf_items,
        items=dataset.items,
        users=dataset.users,
        item_columns=dataset.item_columns,
        user_columns=dataset.user_columns,
        kg=dataset.kg,
    )


def _ranker_features(candidates, dataset, matrix, embeddings):
    from ranker.features import build_ranker_features

    return build_ranker_features(candidates, _ranker_context(dataset, matrix, embeddings, "train"))


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


def _recommendation_frame(
    final: Candidates,
    origin: np.ndarray,
    candidates: pd.DataFrame | None,
    users: IdIndex,
    items: IdIndex,
    top_k: int,
    new_item_places: np.ndarray | None = None,
) -> pd.DataFrame:
    top_items = final.items[:, :top_k]
    user_rows, ranks = np.nonzero(top_items >= 0)
    item_rows = top_items[user_rows, ranks]
    frame = pd.DataFrame(
        {
            USER_ROW: user_rows,
            ITEM: item_rows,
            USER_ID: pd.Series(users.ids[user_rows], dtype="string"),
            ITEM_ID: pd.Series(items.ids[item_rows], dtype="string"),
            "rank": (ranks + 1).astype(np.int32),
            "score": final.scores[:, :top_k][user_rows, ranks].astype(np.float32),
            "source": pd.Series(origin[user_rows], dtype="string"),
        }
    )
    if new_item_places is not None and new_item_places.any():
        frame["new_item_place"] = new_item_places[:, :top_k][user_rows, ranks]
    if candidates is not None:
        provenance = [SOURCES] + [column for column in candidates.columns if column.endswith("_rank")]
        frame = frame.merge(candidates[[USER_ROW, ITEM, *provenance]], on=[USER_ROW, ITEM], how="left")
        frame[SOURCES] = frame[SOURCES].astype("string")
    return frame.drop(columns=[USER_ROW, ITEM])


def _publish(
    out_dir: Path,
    recommendations: pd.DataFrame,
    metrics: dict,
    test: pd.DataFrame | None,
    summary: dict,
    report: dict,
) -> None:
    """Write every output into a staging folder, then move each file into ``out_dir`` (atomic per file)."""

    def write(staging: Path) -> None:
        write_parquet(recommendations, staging / RECOMMENDATIONS, {"m6rec.version": __version__})
        if metrics:
            write_json(metrics, staging / METRICS)
            held_out = test[[USER_ID, ITEM_ID]].astype("string").reset_index(drop=True)
            write_parquet(held_out, staging / HELD_OUT)
        write_json(summary, staging / RUN_SUMMARY)
        write_json(report, staging / VALIDATION_REPORT)

    publish_staged(out_dir, write)
    if not metrics:
        (out_dir / METRICS).unlink(missing_ok=True)
        (out_dir / HELD_OUT).unlink(missing_ok=True)


def _headline(metrics: dict[str, float]) -> str:
    keys = [key for key in metrics if key.startswith(("ndcg@", "recall@", "candidate_recall"))]
    return ", ".join(f"{key}={metrics[key]:.4f}" for key in keys)
