"""The nightly job: item embeddings, then the ranker retrained only when ``OUT_DIR`` holds no trained
model or one older than ``retrain_after_days``, then every user's list, then the run's report.

Nothing is built twice: right after a training on today's data the training run's lists are published as
the batch lists (a batch would rebuild the same ones), and the report, which the training run writes,
is written again only when it is missing.

Local run: python -m flows.nightly DATA_DIR OUT_DIR [CONFIG_YAML]
"""

from __future__ import annotations

from datetime import UTC, datetime

from prefect import flow, get_run_logger, task

from flows.artifacts import nightly_artifacts, publish_artifacts
from flows.batch_recommend import batch_recommend, publish_training_lists
from flows.nightly_embeddings import nightly_embeddings
from flows.policies import NO_PERSISTED_RESULT
from flows.train_ranker import train_ranker, write_run_report
from pipelines.run_folder import ModelNotTrainedError, RunFolder

SECONDS_PER_DAY = 86400.0


@task(**NO_PERSISTED_RESULT)
def trained_model_age_days(out_dir: str) -> float | None:
    """Days since the model in ``out_dir`` was trained, or ``None`` when it holds no usable model."""
    try:
        manifest = RunFolder(out_dir).read_manifest()
    except ModelNotTrainedError:
        return None
    trained_at = datetime.fromisoformat(manifest.trained_at)
    return (datetime.now(UTC) - trained_at).total_seconds() / SECONDS_PER_DAY


@flow(name="nightly", **NO_PERSISTED_RESULT)
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

    folder = RunFolder(out_dir)
    if trained is not None and folder.read_manifest().lists_from_all_interactions:
        # Just trained on today's data: the batch would rebuild exactly the training run's lists.
        lists = publish_training_lists(out_dir)
        status = "from training"
    else:
        lists = batch_recommend(data_dir, out_dir, config_path)
        status = "ran"
    steps.append(
        {"step": "batch-recommend", "status": status, "detail": f"{lists['counts']['list_rows']} list rows"}
    )
    if folder.report_page.exists():  # written by the training run; nothing it shows has changed since
        report = str(folder.report_page)
        steps.append({"step": "report", "status": "unchanged", "detail": report})
    else:
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
