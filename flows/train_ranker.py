"""Ranker training: the main job on a dataset (candidate sources tuned on a validation fold, the LightGBM
ranker trained on their candidates, evaluation on the test set) and the run's HTML report.

It writes the trained model that ``batch-recommend`` serves: ``run.json``, ``ranker/``, ``features/``,
``metrics.json`` and the evaluation lists ``recommendations.parquet`` into ``OUT_DIR``.

Local run: python -m flows.train_ranker DATA_DIR OUT_DIR [CONFIG_YAML]
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger, task

from flows.artifacts import publish_artifacts, ranker_artifacts
from flows.cluster import flow_executor
from flows.inputs import read_run_config
from flows.policies import NO_PERSISTED_RESULT, NOT_CACHED
from m6rec.cluster import Executor
from m6rec.config import RunConfig
from pipelines.report import publish_report
from pipelines.run import run_pipeline
from pipelines.run_folder import RunFolder, StagedGeneration


@task(**NO_PERSISTED_RESULT, **NOT_CACHED)
def fit_two_stage_model(
    data_dir: str,
    out_dir: str,
    config: RunConfig,
    *,
    executor: Executor | None = None,
    stage: StagedGeneration | None = None,
) -> dict:
    """Run the main job (into ``stage``, the night's generation, when given); returns its output folder,
    the evaluation lists' path, the selected model, the metrics per candidate source and of the final
    list, counts, each source's validation NDCG, whether the ranker was used, and stage timings."""
    with flow_executor(config.dask) as own:
        result = run_pipeline(data_dir, out_dir, config, executor=executor or own, stage=stage)
    return result.headline()


@task(**NO_PERSISTED_RESULT, **NOT_CACHED)
def write_run_report(out_dir: str, keep: int, *, stage: StagedGeneration | None = None) -> str:
    """Write ``out_dir/report.html`` (metrics, ranker, embeddings and timing charts) in a new generation
    of ``out_dir`` (``keep`` kept), or in ``stage`` (the night's); returns its path."""
    return str(publish_report(Path(out_dir), keep=keep, stage=stage))


@flow(name="train-ranker", **NO_PERSISTED_RESULT)
def train_ranker(data_dir: str, out_dir: str, config_path: str | None = None, report: bool = True) -> dict:
    """Train the two-stage model on ``data_dir`` into ``out_dir`` and, with ``report``, write its report.

    Returns the summary of :func:`fit_two_stage_model` (plus ``report``, the page's path) and publishes it
    as the ``ranker-summary`` and ``ranker-metrics`` artifacts.
    """
    logger = get_run_logger()
    config = read_run_config(config_path)
    trained = fit_two_stage_model(data_dir, out_dir, config)
    final = trained["metrics"].get("final", {})
    logger.info(
        "final list by %s; ndcg@10 %s", trained["selected_model"], final.get("ndcg@10", "n/a (no test set)")
    )
    publish_artifacts(ranker_artifacts(trained))
    page = RunFolder(out_dir).report_page  # the training run writes it
    trained["report"] = (
        (str(page) if page.exists() else write_run_report(out_dir, config.keep_generations))
        if report
        else None
    )
    return trained


if __name__ == "__main__":
    import sys

    if len(sys.argv) not in (3, 4):
        sys.exit("usage: python -m flows.train_ranker DATA_DIR OUT_DIR [CONFIG_YAML]")
    train_ranker(*sys.argv[1:])
