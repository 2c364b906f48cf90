"""The nightly job: item embeddings, then the ranker retrained only when ``OUT_DIR`` holds no trained
model or one older than ``retrain_after_days``, then every user's list, then the run's report.

Local run: python -m flows.nightly DATA_DIR OUT_DIR [CONFIG_YAML]
"""

from __future__ import annotations

from datetime import UTC, datetime

from prefect import flow, get_run_logger, task

from flows.artifacts import nightly_artifacts, publish_artifacts
from flows.batch_recommend import batch_recommend
from flows.nightly_embeddings import nightly_embeddings
from flows.train_ranker import train_ranker, write_run_report
from pipelines.run_folder import ModelNotTrainedError, RunFolder

SECONDS_PER_DAY = 86400.0


@task
def trained_model_age_days(out_dir: str) -> float | None:
    """Days since the model in ``out_dir`` was trained, or ``None`` when it holds no usable model."""
    try:
        manifest = RunFolder(out_dir).read_manifest()
    except ModelNotTrainedError:
        return None
    trained_at = datetime.fromisoformat(manifest.trained_at)
    return (datetime.now(UTC) - trained_at).total_seconds() / SECONDS_PER_DAY


@flow(name="nightly")
def nightly(data_dir: str, out_dir: str, config_path: str | None = None, retrain_after_days: int = 7) -> dict:
    """Embeddings → ranker (when due) → batch lists → report, all in ``out_dir``.

    Returns ``lists`` (the batch lists' path), ``report`` (the HTML report's path), ``retrained``,
    ``model_age_days`` (before this run; ``None`` without a model), ``selected_model`` and ``metrics``
    (those of the training, ``None`` when training was skipped).
    """
    logger = get_run_logger()
    embeddings = nightly_embeddings(data_dir, out_dir, config_path)
    steps = [
        {
            "step": "nightly-embeddings",
            "status": "cached" if embeddings["cached"] else "ran",
            "detail": f"{len(embeddings['files'])} embedding files, {embeddings['problems']} items with problems",
        }
    ]

    age = trained_model_age_days(out_dir)
    trained = None
    if age is None or age >= retrain_after_days:
        reason = "no trained model" if age is None else f"model {age:.1f} days old"
        logger.info("training the ranker: %s", reason)
        trained = train_ranker(data_dir, out_dir, config_path, report=False)
        steps.append({"step": "train-ranker", "status": "ran", "detail": reason})
    else:
        reason = f"model {age:.1f} days old, retrained after {retrain_after_days}"
        logger.info("ranker training skipped: %s", reason)
        steps.append({"step": "train-ranker", "status": "skipped", "detail": reason})

    lists = batch_recommend(data_dir, out_dir, config_path)
    steps.append(
        {"step": "batch-recommend", "status": "ran", "detail": f"{lists['counts']['list_rows']} list rows"}
    )
    report = write_run_report(out_dir)
    steps.append({"step": "report", "status": "ran", "detail": report})
    publish_artifacts(nightly_artifacts(steps, {"lists": lists["recommendations"], "report": report}))
    return {
        "lists": lists["recommendations"],
        "report": report,
        "retrained": trained is not None,
        "model_age_days": age,
        "selected_model": lists["selected_model"],
        "metrics": trained["metrics"] if trained else None,
    }


if __name__ == "__main__":
    import sys

    if len(sys.argv) not in (3, 4):
        sys.exit("usage: python -m flows.nightly DATA_DIR OUT_DIR [CONFIG_YAML]")
    nightly(*sys.argv[1:])
