"""Batch recommendations: every user's list from the trained model in ``OUT_DIR`` and the dataset's
current interactions, written to ``OUT_DIR/lists/recommendations.parquet``.

Needs a model trained by ``train-ranker`` into the same ``OUT_DIR``; without one it fails, saying so.
Deployed, it runs after every completed ``nightly-embeddings`` run.

Local run: python -m flows.batch_recommend DATA_DIR OUT_DIR [CONFIG_YAML]
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger, task

from flows.artifacts import batch_artifacts, publish_artifacts
from flows.cluster import flow_executor
from flows.inputs import read_run_config
from flows.policies import NO_PERSISTED_RESULT, NOT_CACHED
from m6rec.cluster import Executor
from m6rec.config import RunConfig
from pipelines.batch import batch_recommend as recommend_all_users
from pipelines.batch import lists_from_training
from pipelines.run_folder import RunFolder, StagedGeneration


@task(**NO_PERSISTED_RESULT, **NOT_CACHED)
def recommend_for_every_user(
    data_dir: str,
    model_dir: str,
    lists_dir: str,
    config: RunConfig,
    *,
    executor: Executor | None = None,
    stage: StagedGeneration | None = None,
) -> dict:
    """Write every user's list with the model in ``model_dir`` into ``lists_dir`` (into ``stage``, the
    night's generation of ``model_dir``, when given); returns the lists' path, the model that ranked
    them, the candidate sources, the counts (users, items, interactions, list rows) and stage timings."""
    with flow_executor(config.dask) as own:
        result = recommend_all_users(
            data_dir,
            model_dir=Path(model_dir),
            out_dir=Path(lists_dir),
            config=config,
            executor=executor or own,
            stage=stage,
        )
    return result.headline()


@task(**NO_PERSISTED_RESULT, **NOT_CACHED)
def publish_training_lists(model_dir: str, *, stage: StagedGeneration | None = None) -> dict:
    """The training run's lists as the batch lists (same data, so a batch would build the same ones);
    returns what :func:`recommend_for_every_user` returns."""
    return lists_from_training(model_dir, stage=stage).headline()


@flow(name="batch-recommend", **NO_PERSISTED_RESULT)
def batch_recommend(data_dir: str, out_dir: str, config_path: str | None = None) -> dict:
    """Lists for every user of ``data_dir`` with the model trained into ``out_dir``.

    Returns the summary of :func:`recommend_for_every_user` and publishes it as the ``batch-summary`` and
    ``batch-counts`` artifacts.
    """
    logger = get_run_logger()
    config = read_run_config(config_path)
    lists = recommend_for_every_user(data_dir, out_dir, str(RunFolder(out_dir).lists.root), config)
    logger.info(
        "%d list rows for %d users: %s",
        lists["counts"]["list_rows"],
        lists["counts"]["users"],
        lists["recommendations"],
    )
    publish_artifacts(batch_artifacts(lists))
    return lists


if __name__ == "__main__":
    import sys

    if len(sys.argv) not in (3, 4):
        sys.exit("usage: python -m flows.batch_recommend DATA_DIR OUT_DIR [CONFIG_YAML]")
    batch_recommend(*sys.argv[1:])
