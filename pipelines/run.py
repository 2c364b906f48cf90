"""The main job: dataset directory in, recommendation lists and metrics out.

``run_pipeline`` reads like the pipeline diagram: load → split → index → tune and fit the candidate
sources → lists → evaluate → write. Outputs are staged in a temporary folder and moved into place only
when every file is complete, so a failed run leaves the previous outputs untouched.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from m6rec import __version__
from m6rec.candidates import Candidates, create_source
from m6rec.config import RunConfig
from m6rec.data.contract import ITEM_ID, USER_ID
from m6rec.data.dataset import Dataset, load_dataset
from m6rec.data.interactions import IdIndex, InteractionMatrix
from m6rec.data.splits import SplitSpec
from m6rec.evaluation.metrics import ranking_metrics
from m6rec.io import write_json, write_parquet
from pipelines.baselines import final_lists, select_final, tune_and_fit

log = logging.getLogger("m6rec")

RECOMMENDATIONS = "recommendations.parquet"
METRICS = "metrics.json"
RUN_SUMMARY = "run.json"
VALIDATION_REPORT = "validation_report.json"
HELD_OUT = "test_interactions.parquet"


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


@dataclass
class _Protocol:
    train: pd.DataFrame
    test: pd.DataFrame | None
    description: str
    temporal: bool


def run_pipeline(data_dir: str | Path, out_dir: str | Path, config: RunConfig | None = None) -> RunResult:
    """Run the job on ``data_dir`` and write its outputs into ``out_dir``.

    Writes ``recommendations.parquet`` (user_id, item_id, rank, score, source), ``run.json`` and
    ``validation_report.json``; when a test set exists also ``metrics.json`` and the held-out
    interactions it was computed on, ``test_interactions.parquet``.
    """
    config = config or RunConfig()
    out_dir = Path(out_dir)
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[stage] = round(now - clock, 3)
        clock = now

    dataset = load_dataset(data_dir, skip_invalid_rows=config.skip_invalid_rows)
    protocol = _protocol(dataset, config)
    users, items = _indexes(dataset, protocol)
    train = InteractionMatrix.from_frame(protocol.train, users, items)
    log.info(
        "%d users, %d items, %d training interactions (%s)",
        len(users),
        len(items),
        train.matrix.nnz,
        protocol.description,
    )
    lap("load")

    tuned = tune_and_fit(
        protocol.train, users, items, config.baselines, temporal=protocol.temporal, seed=config.seed
    )
    selected = select_final(tuned)
    fallback = tuned["popularity"].source if "popularity" in tuned else create_source("popularity").fit(train)
    lap("fit")

    all_users = np.arange(len(users))
    depth = max(config.candidate_depth, config.top_k, *config.k_values)
    lists, final, origin = final_lists(tuned, selected, fallback, all_users, depth)
    lap("recommend")

    metrics = {}
    if protocol.test is not None:
        metrics = _evaluate(lists, final, protocol.test, train, config)
        log.info("final list (%s): %s", selected, _headline(metrics["final"]))
    lap("evaluate")

    summary = {
        "m6rec_version": __version__,
        "data_dir": str(Path(data_dir).resolve()),
        "protocol": protocol.description,
        "counts": {
            "users": len(users),
            "items": len(items),
            "train_interactions": int(train.matrix.nnz),
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
        "timings_seconds": timings,
    }
    recommendations = _recommendation_frame(final, origin, users, items, config.top_k)
    _publish(out_dir, recommendations, metrics, protocol.test, summary, dataset.report.to_dict())
    return RunResult(out_dir, metrics, selected, summary)


def _protocol(dataset: Dataset, config: RunConfig) -> _Protocol:
    if dataset.test is not None:
        return _Protocol(
            dataset.interactions, dataset.test, "explicit test file", temporal=dataset.has_timestamps
        )
    if config.split == "none":
        return _Protocol(
            dataset.interactions, None, "no test set: trained on all interactions", temporal=False
        )
    spec = SplitSpec.parse(config.split, seed=config.seed)
    train, test = spec.apply(dataset.interactions)
    return _Protocol(train, test, f"split {spec} (seed {config.seed})", temporal=spec.kind != "random")


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


def _evaluate(
    lists: dict[str, Candidates],
    final: Candidates,
    test: pd.DataFrame,
    train: InteractionMatrix,
    config: RunConfig,
) -> dict[str, dict[str, float]]:
    relevant = InteractionMatrix.from_frame(test, train.users, train.items).matrix
    popularity = train.item_popularity()
    metrics = {}
    for name, candidates in [*lists.items(), ("final", final)]:
        metrics[name] = ranking_metrics(
            candidates.items,
            relevant,
            k_values=tuple(config.k_values),
            n_catalogue_items=train.n_items,
            item_popularity=popularity,
        )
    return metrics


def _recommendation_frame(final: Candidates, origin: np.ndarray, users: IdIndex, items: IdIndex, top_k: int):
    top_items = final.items[:, :top_k]
    user_rows, ranks = np.nonzero(top_items >= 0)
    item_rows = top_items[user_rows, ranks]
    return pd.DataFrame(
        {
            USER_ID: pd.Series(users.ids[user_rows], dtype="string"),
            ITEM_ID: pd.Series(items.ids[item_rows], dtype="string"),
            "rank": (ranks + 1).astype(np.int32),
            "score": final.scores[:, :top_k][user_rows, ranks].astype(np.float32),
            "source": pd.Series(origin[user_rows], dtype="string"),
        }
    )


def _publish(
    out_dir: Path,
    recommendations: pd.DataFrame,
    metrics: dict,
    test: pd.DataFrame | None,
    summary: dict,
    report: dict,
) -> None:
    """Write every output into a staging folder, then move each file into ``out_dir`` (atomic per file)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=out_dir))
    try:
        write_parquet(recommendations, staging / RECOMMENDATIONS, {"m6rec.version": __version__})
        if metrics:
            write_json(metrics, staging / METRICS)
            held_out = test[[USER_ID, ITEM_ID]].astype("string").reset_index(drop=True)
            write_parquet(held_out, staging / HELD_OUT)
        write_json(summary, staging / RUN_SUMMARY)
        write_json(report, staging / VALIDATION_REPORT)
        for path in staging.iterdir():
            path.replace(out_dir / path.name)
        if not metrics:
            (out_dir / METRICS).unlink(missing_ok=True)
            (out_dir / HELD_OUT).unlink(missing_ok=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _headline(metrics: dict[str, float]) -> str:
    keys = [key for key in metrics if key.startswith(("ndcg@", "recall@"))]
    return ", ".join(f"{key}={metrics[key]:.4f}" for key in keys)


__all__ = ["RunResult", "run_pipeline"]
