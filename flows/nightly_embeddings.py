"""Nightly embeddings: bring the frozen item embeddings of a dataset (text, image, audio, KG and their
fusion) up to date in ``OUT_DIR/features``.

Only new or changed items are encoded. When neither the dataset's files nor the configuration changed
since the last run, the embedding stage's cache (:mod:`pipelines.embeddings`) answers without loading a
single model. Deployed, every completed run triggers the ``batch-recommend`` deployment
(``flows/deployments.py``).

Local run: python -m flows.nightly_embeddings DATA_DIR OUT_DIR [CONFIG_YAML]
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger, task

from flows.artifacts import embedding_artifacts, publish_artifacts
from flows.cluster import flow_executor
from flows.inputs import load_catalogue, read_run_config
from flows.policies import NO_PERSISTED_RESULT, NOT_CACHED
from m6rec.cluster import Executor
from m6rec.config import DaskSettings, EmbeddingConfig
from m6rec.data.dataset import Dataset
from pipelines.embeddings import compute_embeddings
from pipelines.run_folder import StagedGeneration


@task(**NO_PERSISTED_RESULT, **NOT_CACHED)
def encode_item_embeddings(
    dataset: Dataset,
    out_dir: str,
    config: EmbeddingConfig,
    keep: int,
    dask: DaskSettings | None = None,
    *,
    executor: Executor | None = None,
    stage: StagedGeneration | None = None,
) -> dict:
    """Compute (incrementally) the item embedding files of ``dataset`` into ``out_dir/features``, in a
    new generation of ``out_dir`` (``keep`` kept) when anything changed, or in ``stage`` (the night's);
    the encoders run on ``executor``, by default the Dask workers of ``dask.address`` (or
    ``M6REC_DASK_ADDRESS``) when there are any, a Prefect task per partition of items.

    Returns a small summary: ``features_dir``, ``files`` (modality → path), ``counts``
    (modality → total, computed, reused, failed), ``problems`` (number of items without an embedding),
    ``problem_examples`` (the first few), ``timings_seconds`` and ``cached`` (whether the cache answered).
    """
    with flow_executor(dask or DaskSettings()) as own:
        result = compute_embeddings(
            dataset, Path(out_dir), config, items_only=True, keep=keep, executor=executor or own, stage=stage
        )
    return result.headline()


def log_embedding_counts(logger, embeddings: dict) -> None:
    logger.info(
        "embeddings: %s",
        "; ".join(
            f"{modality} {counts['computed']} computed, {counts['reused']} reused, {counts['failed']} failed"
            for modality, counts in embeddings["counts"].items()
        ),
    )


@flow(name="nightly-embeddings", **NO_PERSISTED_RESULT)
def nightly_embeddings(
    data_dir: str, out_dir: str, config_path: str | None = None, cpu: bool = False
) -> dict:
    """Item embeddings of the dataset in ``data_dir`` into ``out_dir/features``; ``cpu`` ignores any GPU.

    Returns the summary of :func:`encode_item_embeddings` and publishes it as the ``embeddings-summary``
    and ``embedding-counts`` artifacts.
    """
    logger = get_run_logger()
    config = read_run_config(config_path, cpu)
    dataset = load_catalogue(data_dir, config)
    embeddings = encode_item_embeddings(
        dataset, out_dir, config.embeddings, config.keep_generations, config.dask
    )
    log_embedding_counts(logger, embeddings)
    publish_artifacts(embedding_artifacts(embeddings))
    return embeddings


if __name__ == "__main__":
    import sys

    if len(sys.argv) not in (3, 4):
        sys.exit("usage: python -m flows.nightly_embeddings DATA_DIR OUT_DIR [CONFIG_YAML]")
    nightly_embeddings(*sys.argv[1:])
