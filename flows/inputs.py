"""I/O tasks the flows share: reading the run configuration and the dataset directory."""

from __future__ import annotations

from prefect import task

from flows.policies import IO_RETRIES, NO_PERSISTED_RESULT
from m6rec.config import RunConfig
from m6rec.data.columns import ColumnRoles
from m6rec.data.dataset import Dataset, load_dataset


@task(**IO_RETRIES, **NO_PERSISTED_RESULT)
def read_run_config(config_path: str | None = None, cpu: bool = False) -> RunConfig:
    """The run configuration from a YAML file (the defaults without one); ``cpu`` makes every encoder and
    the two-tower model ignore any GPU."""
    config = RunConfig.from_yaml(config_path) if config_path else RunConfig()
    config.embeddings.force_cpu = cpu or config.embeddings.force_cpu
    return config


@task(**IO_RETRIES, **NO_PERSISTED_RESULT)
def load_catalogue(
    data_dir: str,
    skip_invalid_rows: bool = False,
    columns: ColumnRoles | None = None,
    allow_outside_paths: list[str] | None = None,
) -> Dataset:
    """Read and validate the dataset directory (interactions, items, users, kg, test); ``columns`` (the
    run configuration's section) overrides the column roles of its ``columns.yaml``; files may lie
    outside it only in ``allow_outside_paths``."""
    return load_dataset(
        data_dir,
        skip_invalid_rows=skip_invalid_rows,
        columns=columns,
        allow_outside_paths=allow_outside_paths or (),
    )
