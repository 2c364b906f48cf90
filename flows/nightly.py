"""The nightly job: item embeddings, then the ranker retrained only when ``OUT_DIR`` holds no trained
model or one older than ``retrain_after_days``, then every user's list, then the run's report.

One night publishes one generation of ``OUT_DIR``: the flow stages it once (``RunFolder.stage("night")``)
and every step writes into it, so ``m6rec rollback`` goes back to yesterday, and a night that changed
nothing adds none. Nothing is built twice: right after a training on today's data the training run's
lists are published as the batch lists (a batch would rebuild the same ones), and the report, which the
training run writes, is written again only when it is missing.

Local run: python -m flows.nightly DATA_DIR OUT_DIR [CONFIG_YAML]
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from prefect import flow, get_run_logger, task

from flows.artifacts import (
    batch_artifacts,
    embedding_artifacts,
    nightly_artifacts,
    publish_artifacts,
    ranker_artifacts,
)
from flows.batch_recommend import publish_training_lists, recommend_for_every_user
from flows.cluster import flow_executor
from flows.inputs import load_catalogue, read_run_config
from flows.nightly_embeddings import encode_item_embeddings, log_embedding_counts
from flows.policies import NO_PERSISTED_RESULT, NOT_CACHED
from flows.train_ranker import fit_two_stage_model, write_run_report
from pipelines.run_folder import ModelNotTrainedError, RunFolder, StagedGeneration
from pipelines.trained_model import ModelManifest, dataset_identity

SECONDS_PER_DAY = 86400.0


@task(**NO_PERSISTED_RESULT, **NOT_CACHED)
def trained_model_age_days(out_dir: str | Path) -> float | None:
    """Days since the model in the run folder ``out_dir`` was trained, or ``None`` when it holds no
    usable model."""
    try:
        manifest = ModelManifest.read(RunFolder(out_dir).model_manifest)
    except ModelNotTrainedError:
        return None
    trained_at = datetime.fromisoformat(manifest.trained_at)
    return (datetime.now(UTC) - trained_at).total_seconds() / SECONDS_PER_DAY


@flow(name="nightly", **NO_PERSISTED_RESULT)
def nightly(data_dir: str, out_dir: str, config_path: str | None = None, retrain_after_days: int = 7) -> dict:
    """Embeddings → ranker (when due) → batch lists → report, all in one generation of ``out_dir``.

    Returns ``lists`` (the batch lists' path), ``report`` (the HTML report's path), ``retrained``,
    ``model_age_days`` (before this run; ``None`` without a model), ``selected_model`` and ``metrics``
    (those of the training, ``None`` when training was skipped).
    """
    logger = get_run_logger()
    config = read_run_config(config_path)
    dataset = load_catalogue(data_dir, config)
    with (
        RunFolder(out_dir).stage(
            "night",
            keep=config.keep_generations,
            identity=dataset_identity(data_dir, out_dir, config, "night"),
        ) as night,
        flow_executor(config.dask) as executor,
    ):
        embeddings = encode_item_embeddings(
            dataset, out_dir, config.embeddings, config.keep_generations, executor=executor, stage=night
        )
        log_embedding_counts(logger, embeddings)
        steps = [
            {
                "step": "nightly-embeddings",
                "status": "cached" if embeddings["cached"] else "ran",
                "detail": f"{len(embeddings['files'])} embedding files, {embeddings['problems']} items with problems",
            }
        ]
        age = trained_model_age_days(night.folder.root)
        trained = _train_when_due(
            logger, data_dir, out_dir, config, night, executor, age, retrain_after_days, steps
        )
        lists = _lists(data_dir, out_dir, config, night, executor, trained, steps)
        report = _report(out_dir, config, night, steps)
    publish_artifacts(embedding_artifacts(embeddings))
    if trained is not None:
        publish_artifacts(ranker_artifacts(trained))
    publish_artifacts(batch_artifacts(lists))
    publish_artifacts(nightly_artifacts(steps, {"lists": lists["recommendations"], "report": report}))
    return {
        "lists": lists["recommendations"],
        "report": report,
        "retrained": trained is not None,
        "model_age_days": age,
        "selected_model": lists["selected_model"],
        "metrics": trained["metrics"] if trained else None,
    }


def _train_when_due(logger, data_dir, out_dir, config, night, executor, age, retrain_after_days, steps):
    if age is not None and age < retrain_after_days:
        reason = f"model {age:.1f} days old, retrained after {retrain_after_days}"
        logger.info("ranker training skipped: %s", reason)
        steps.append({"step": "train-ranker", "status": "skipped", "detail": reason})
        return None
    reason = "no trained model" if age is None else f"model {age:.1f} days old"
    logger.info("training the ranker: %s", reason)
    trained = fit_two_stage_model(data_dir, out_dir, config, executor=executor, stage=night)
    steps.append({"step": "train-ranker", "status": "ran", "detail": reason})
    return trained


def _lists(data_dir, out_dir, config, night: StagedGeneration, executor, trained, steps) -> dict:
    if trained is not None and ModelManifest.read(night.folder.model_manifest).lists_from_all_interactions:
        # Just trained on today's data: the batch would rebuild exactly the training run's lists.
        lists, status = publish_training_lists(out_dir, stage=night), "from training"
    else:
        lists_dir = str(RunFolder(out_dir).lists.root)
        lists = recommend_for_every_user(data_dir, out_dir, lists_dir, config, executor=executor, stage=night)
        status = "ran"
    steps.append(
        {"step": "batch-recommend", "status": status, "detail": f"{lists['counts']['list_rows']} list rows"}
    )
    return lists


def _report(out_dir, config, night: StagedGeneration, steps) -> str:
    report = str(RunFolder(out_dir).report_page)
    if night.folder.report_page.exists():  # written by the training run; nothing it shows has changed since
        steps.append({"step": "report", "status": "unchanged", "detail": report})
    else:
        write_run_report(out_dir, config.keep_generations, stage=night)
        steps.append({"step": "report", "status": "ran", "detail": report})
    return report


if __name__ == "__main__":
    import sys

    if len(sys.argv) not in (3, 4):
        sys.exit("usage: python -m flows.nightly DATA_DIR OUT_DIR [CONFIG_YAML]")
    nightly(*sys.argv[1:])
