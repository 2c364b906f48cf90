"""Where the partitioned stages run: in this process, or on a Dask cluster.

The address comes from ``--dask``, else the configuration's ``dask.address``, else the environment
variable ``M6REC_DASK_ADDRESS``: ``tcp://HOST:PORT`` (or any address a ``distributed.Client`` takes)
joins an existing scheduler; ``local:N`` starts a ``distributed.LocalCluster`` of N single-threaded
worker processes on this machine for the run and stops it afterwards. Without an address everything
runs in-process.

A stage's partitions are tasks of a :class:`Cluster`; the flows' cluster (``flows/cluster.py``) makes each
one a Prefect task run.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING

from m6rec.errors import ConfigError, M6RecError

if TYPE_CHECKING:
    from m6rec.config import DaskSettings

logger = logging.getLogger("m6rec")

DASK_ADDRESS_VARIABLE = "M6REC_DASK_ADDRESS"


class PartitionFailed(M6RecError):
    """A partition of a stage could not be computed on the cluster; nothing of the run was published."""


_LOCAL = re.compile(r"local:(\d+)")


def dask_address(configured: str | None) -> str | None:
    """The Dask address in force: ``configured`` (the option or the configuration), else the
    environment's ``M6REC_DASK_ADDRESS``; ``None`` (or an empty value) runs in-process."""
    address = configured or os.environ.get(DASK_ADDRESS_VARIABLE) or None
    if address is not None:
        check_dask_address(address)
    return address


def check_dask_address(address: str) -> str:
    """``address`` when it names a local cluster (``local:N``, N ≥ 1) or a scheduler (``tcp://HOST:PORT``
    and the other protocols ``distributed`` knows); a :class:`ConfigError` otherwise."""
    local = _LOCAL.fullmatch(address)
    if local is not None:
        if int(local.group(1)) < 1:
            raise ConfigError(f"dask address {address!r}: a local cluster needs at least one worker")
        return address
    if "://" not in address or address.startswith("local"):
        raise ConfigError(
            f"dask address {address!r}: expected local:N (N workers on this machine) or a scheduler "
            "address such as tcp://HOST:8786"
        )
    return address


def local_workers(address: str) -> int | None:
    """N of a ``local:N`` address; ``None`` for a scheduler's address."""
    local = _LOCAL.fullmatch(check_dask_address(address))
    return None if local is None else int(local.group(1))


def local_cluster_options(workers: int) -> dict:
    """``distributed.LocalCluster`` arguments for ``local:N``: N worker processes of one thread each
    (the stages' own libraries use one thread per worker, as on a cluster), no dashboard."""
    return {
        "n_workers": workers,
        "threads_per_worker": 1,
        "processes": True,
        "dashboard_address": ":0",  # its HTTP server (health, metrics) on a free port, not 8787
        "scheduler_kwargs": {"dashboard": False},
    }


class Cluster:
    """The Dask workers a run's partitioned stages go to, through ``client``: one task per partition,
    run again alone up to ``retries`` times when it raises (a task whose worker died is rerun by the
    scheduler, up to ``distributed.scheduler.allowed-failures`` deaths)."""

    def __init__(self, client, retries: int = 0):
        self.client = client
        self.retries = retries

    @property
    def workers(self) -> int:
        return max(len(self.client.scheduler_info()["workers"]), 1)

    def map(self, function, shared, partitions: list, stage: str, *, key: str) -> list:
        """``function(shared_copy, *arguments)`` for each tuple of ``partitions`` on the workers, the
        results in partition order. ``shared`` goes to every worker once (``scatter(broadcast=True)``)
        and is released afterwards; each task's key is ``key-NNNNN``. Fails as
        :func:`gather_partitions` does."""
        scattered = self.client.scatter(shared, broadcast=True, hash=False)
        try:
            futures = [
                self.submit(
                    function,
                    scattered,
                    arguments,
                    key=f"{key}-{index:05d}",
                    stage=stage,
                    name=f"{stage} partition {index + 1} of {len(partitions)}",
                )
                for index, arguments in enumerate(partitions)
            ]
            return gather_partitions(self.client, futures, stage)
        finally:
            self.client.cancel(scattered, force=True)

    def submit(self, function, scattered, arguments: tuple, *, key: str, stage: str, name: str):
        """The future of one partition's task of ``stage``, ``function(scattered, *arguments)`` (``name``
        says which partition: ``lists partition 3 of 8``)."""
        return self.client.submit(function, scattered, *arguments, key=key, pure=False, retries=self.retries)


@contextmanager
def cluster_at(address: str | None, retries: int = 0) -> Iterator[Cluster | None]:
    """The :class:`Cluster` on ``address`` for the length of the block (``None`` without an address):
    ``local:N`` starts N worker processes (:func:`local_cluster_options`) and shuts them down after it."""
    if address is None:
        yield None
        return
    from distributed import Client, LocalCluster

    from m6rec.log import quiet_third_party_loggers

    quiet_third_party_loggers()  # distributed sets its logger to INFO when imported
    workers = local_workers(address)
    if workers is None:
        with Client(address, set_as_default=False) as client:
            logger.info("dask: scheduler %s, %d workers", address, len(client.scheduler_info()["workers"]))
            yield Cluster(client, retries)
        return
    with (
        LocalCluster(**local_cluster_options(workers)) as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        logger.info("dask: local cluster of %d worker processes (%s)", workers, cluster.scheduler_address)
        yield Cluster(client, retries)


@contextmanager
def cluster_for(settings: DaskSettings) -> Iterator[Cluster | None]:
    """The cluster a run's partitions go to for the block: on the address in force (:func:`dask_address`
    of ``settings.address``), else ``None``. The pipelines take any function like this one as their
    ``cluster_opener`` (the flows' opens a cluster whose partitions are Prefect tasks)."""
    with cluster_at(dask_address(settings.address), settings.partition_retries) as cluster:
        yield cluster


ClusterOpener = Callable[["DaskSettings"], AbstractContextManager[Cluster | None]]


def gather_partitions(client, futures: list, stage: str) -> list:
    """The results of ``futures`` (one per partition of ``stage``, in order); a
    :class:`PartitionFailed` line naming the partition when its workers kept dying
    (``distributed.scheduler.allowed-failures``). On any failure the other partitions are cancelled."""
    from distributed import KilledWorker

    try:
        return client.gather(futures)
    except KilledWorker as error:
        client.cancel(futures, force=True)
        index = next(i for i, future in enumerate(futures) if future.key == error.task)
        deaths = error.allowed_failures + 1
        raise PartitionFailed(
            f"{stage}: partition {index + 1} of {len(futures)} failed: {deaths} worker"
            f"{'s' if deaths > 1 else ''} died computing it (the last: {error.last_worker.address}; "
            "killed, or out of memory?); nothing was published, the last good outputs are kept"
        ) from None
    except BaseException:
        client.cancel(futures, force=True)
        raise
