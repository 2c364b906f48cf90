"""I/O tasks the flows share: reading the run configuration and the dataset directory."""

from __future__ import annotations

from prefect import task

from flows.policies import IO_RETRIES, NO_PERSISTED_RESULT
from m6rec.config import RunConfig
from m6rec.data.dataset import Dataset, load_dataset


@task(**IO_RETRIES, **NO_PERSISTED_RESULT)
def read_run_config(config_path: str | None = None, cpu: bool = False) -> RunConfig:
    """The run configuration from a YAML file (the defaults without one); ``cpu`` makes every encoder and
    the two-tower model ignore any GPU."""
    config = RunConfig.from_yaml(config_path) if config_path else RunConfig()
    config.embeddings.force_cpu = cpu or config.embeddings.force_cpu
    return config


@task(**IO_RETRIES, **NO_PERSISTED_RESULT)
def load_catalogue(data_dir: str, config: RunConfig) -> Dataset:
    """Read and validate the dataset directory (interactions, items, users, kg, test) the way ``config``
    says (:meth:`RunConfig.reading`: bad rows, column roles, folders outside it, minimum rating)."""
    return load_dataset(data_dir, **config.reading())
