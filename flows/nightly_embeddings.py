"""Nightly embeddings: bring the frozen item embeddings of a dataset (text, image, audio, KG and their
fusion) up to date in ``OUT_DIR/features``.

Only new or changed items are encoded. When neither the dataset's files nor the configuration changed
since the last run, the cache (``flows.policies``: a plain JSON file, no Prefect result storage) answers
without loading a single model. Deployed, every completed run
triggers the ``batch-recommend`` deployment (``flows/deployments.py``).

Local run: python -m flows.nightly_embeddings DATA_DIR OUT_DIR [CONFIG_YAML]
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger, task

from flows.artifacts import embedding_artifacts, publish_artifacts
from flows.cluster import flow_cluster
from flows.inputs import load_catalogue, read_run_config
from flows.policies import (
    NO_PERSISTED_RESULT,
    item_embeddings_key,
    read_cached_embeddings,
    write_cached_embeddings,
)
from m6rec.config import DaskSettings, EmbeddingConfig
from m6rec.data.dataset import Dataset
from pipelines.embeddings import compute_embeddings

PROBLEM_EXAMPLES = 20


@task(**NO_PERSISTED_RESULT)
def encode_item_embeddings(
    dataset: Dataset, out_dir: str, config: EmbeddingConfig, keep: int, dask: DaskSettings | None = None
) -> dict:
    """Compute (incrementally) the item embedding files of ``dataset`` into ``out_dir/features``, in a
    new generation of ``out_dir`` (``keep`` kept) when anything changed; the encoders run on the Dask
    workers of ``dask.address`` (or ``M6REC_DASK_ADDRESS``) when there are any, a Prefect task per
    partition of items (:func:`flows.cluster.flow_cluster`).

    Returns a small summary: ``features_dir``, ``files`` (modality → path), ``counts``
    (modality → total, computed, reused, failed), ``problems`` (number of items without an embedding),
    ``problem_examples`` (the first few) and ``timings_seconds``.
    """
    with flow_cluster(dask or DaskSettings()) as cluster:
        result = compute_embeddings(
            dataset, Path(out_dir), config, items_only=True, keep=keep, cluster=cluster
        )
    return {
        "features_dir": str(result.features_dir),
        **result.summary(),
        "problem_examples": result.problems[:PROBLEM_EXAMPLES],
    }


@flow(name="nightly-embeddings", **NO_PERSISTED_RESULT)
def nightly_embeddings(
    data_dir: str, out_dir: str, config_path: str | None = None, cpu: bool = False
) -> dict:
    """Item embeddings of the dataset in ``data_dir`` into ``out_dir/features``; ``cpu`` ignores any GPU.

    Returns the summary of :func:`encode_item_embeddings` with ``cached`` (whether the cache answered:
    the dataset's files and the configuration are those of the last run, and its files are all there)
    and publishes it as the ``embeddings-summary`` and ``embedding-counts`` artifacts.
    """
    logger = get_run_logger()
    config = read_run_config(config_path, cpu)
    dataset = load_catalogue(data_dir, config)
    key = item_embeddings_key(dataset, out_dir, config.embeddings)
    cached = read_cached_embeddings(out_dir, key)
    if cached is not None:
        logger.info("dataset and configuration unchanged since the last run: embeddings taken from the cache")
        embeddings = {**cached, "cached": True}
    else:
        embeddings = encode_item_embeddings(
            dataset, out_dir, config.embeddings, config.keep_generations, config.dask
        )
        write_cached_embeddings(out_dir, key, embeddings)
        embeddings = {**embeddings, "cached": False}
    logger.info(
        "embeddings: %s",
        "; ".join(
            f"{modality} {counts['computed']} computed, {counts['reused']} reused, {counts['failed']} failed"
            for modality, counts in embeddings["counts"].items()
        ),
    )
    publish_artifacts(embedding_artifacts(embeddings))
    return embeddings


if __name__ == "__main__":
    import sys

    if len(sys.argv) not in (3, 4):
        sys.exit("usage: python -m flows.nightly_embeddings DATA_DIR OUT_DIR [CONFIG_YAML]")
    nightly_embeddings(*sys.argv[1:])
