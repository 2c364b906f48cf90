"""Where the partitioned stages run: the one executor of a run, in this process or on a Dask cluster.

Every pipeline entry (the run, the batch, the embeddings) takes an :class:`Executor` and defaults to
:func:`open_executor` of its configuration's ``dask`` section, the only place that chooses between local
and a scheduler. The address comes from ``--dask``, else the configuration's ``dask.address``, else the
environment variable ``M6REC_DASK_ADDRESS``: ``tcp://HOST:PORT`` (or any address a ``distributed.Client``
takes) joins an existing scheduler; ``local:N`` starts a ``distributed.LocalCluster`` of N single-threaded
worker processes on this machine and stops it afterwards. Without an address it is a
:class:`LocalExecutor`: everything runs in-process.

Both executors have the same :meth:`~Executor.map`. A Dask executor connects on its first use, so a
batch that finds nothing to do starts no cluster. The flows pass the client of Prefect's
``DaskTaskRunner`` in (``flows/cluster.py``), which makes every partition a Prefect task run.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from typing import Protocol

from m6rec.config import DaskSettings, check_dask_address, local_workers
from m6rec.errors import M6RecError

logger = logging.getLogger("m6rec")

DASK_ADDRESS_VARIABLE = "M6REC_DASK_ADDRESS"


class PartitionFailed(M6RecError):
    """A partition of a stage could not be computed on the cluster; nothing of the run was published."""


def dask_address(configured: str | None) -> str | None:
    """The Dask address in force: ``configured`` (the option or the configuration), else the
    environment's ``M6REC_DASK_ADDRESS``; ``None`` (or an empty value) runs in-process."""
    address = configured or os.environ.get(DASK_ADDRESS_VARIABLE) or None
    if address is not None:
        check_dask_address(address)
    return address


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


class Executor(Protocol):
    """Where a stage's partitions run. ``remote``: on other processes, so results come back through
    files or the network (an in-process stage streams instead); ``workers``: how many run at once;
    ``partition_users`` / ``partition_items``: the most users or items one partition holds."""

    remote: bool
    partition_users: int
    partition_items: int

    @property
    def workers(self) -> int: ...

    def map(self, function: Callable, shared, partitions: list[tuple], stage: str, *, key: str) -> list:
        """``function(shared, *arguments)`` for each tuple of ``partitions``, the results in order."""
        ...


class LocalExecutor:
    """Every partition in this process, one after the other."""

    remote = False
    workers = 1

    def __init__(self, settings: DaskSettings | None = None):
        settings = settings or DaskSettings()
        self.partition_users, self.partition_items = settings.partition_users, settings.partition_items

    def map(self, function: Callable, shared, partitions: list[tuple], stage: str, *, key: str) -> list:
        return [function(shared, *arguments) for arguments in partitions]


# Opens a ``distributed.Client`` (or one like it) for an address and the workers of ``local:N`` (None
# for a scheduler's address), for the length of a block.
ClientOpener = Callable[[str, int | None], AbstractContextManager]
# Turns a partition's function into what the client submits (the flows: a Prefect task of that name).
PartitionTask = Callable[..., Callable]


class DaskExecutor:
    """The workers of a Dask client: one task per partition, run again alone up to ``retries`` times when
    it raises (a task whose worker died is rerun by the scheduler, up to
    ``distributed.scheduler.allowed-failures`` deaths). ``connect`` opens the client on first use."""

    remote = True

    def __init__(
        self,
        connect: Callable[[], object],
        settings: DaskSettings,
        partition_task: PartitionTask | None = None,
    ):
        self._connect, self._client = connect, None
        self.retries = settings.partition_retries
        self.partition_users, self.partition_items = settings.partition_users, settings.partition_items
        self.partition_task = partition_task

    @property
    def client(self):
        if self._client is None:
            self._client = self._connect()
        return self._client

    @property
    def workers(self) -> int:
        return max(len(self.client.scheduler_info()["workers"]), 1)

    def map(self, function: Callable, shared, partitions: list[tuple], stage: str, *, key: str) -> list:
        """``shared`` goes to every worker once (``scatter(broadcast=True)``) and is released afterwards;
        each task's key is ``key-NNNNN``. Fails as :func:`gather_partitions` does."""
        client = self.client
        scattered = client.scatter(shared, broadcast=True, hash=False)
        try:
            futures = []
            for index, arguments in enumerate(partitions):
                task, options = function, {"retries": self.retries}
                if self.partition_task is not None:  # the task retries itself
                    name = f"{stage} partition {index + 1} of {len(partitions)}"
                    task, options = self.partition_task(function, stage, name, self.retries), {}
                futures.append(
                    client.submit(
                        task, scattered, *arguments, key=f"{key}-{index:05d}", pure=False, **options
                    )
                )
            return gather_partitions(client, futures, stage)
        finally:
            client.cancel(scattered, force=True)


@contextmanager
def distributed_client(address: str, workers: int | None) -> Iterator[object]:
    """A ``distributed.Client`` of the scheduler at ``address``, or of a ``LocalCluster`` of ``workers``
    processes started for the block (:func:`local_cluster_options`)."""
    from distributed import Client, LocalCluster

    if workers is None:
        with Client(address, set_as_default=False) as client:
            yield client
        return
    with (
        LocalCluster(**local_cluster_options(workers)) as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        yield client


@contextmanager
def open_executor(
    settings: DaskSettings,
    *,
    client_opener: ClientOpener = distributed_client,
    partition_task: PartitionTask | None = None,
) -> Iterator[Executor]:
    """The executor of ``settings`` for the block: a :class:`LocalExecutor` without an address in force
    (:func:`dask_address`), else a :class:`DaskExecutor` whose client ``client_opener`` opens on first
    use and which is closed when the block ends."""
    address = dask_address(settings.address)
    if address is None:
        yield LocalExecutor(settings)
        return
    with ExitStack() as stack:

        def connect():
            from m6rec.log import quiet_third_party_loggers

            quiet_third_party_loggers()  # distributed sets its logger to INFO when imported
            workers = local_workers(address)
            client = stack.enter_context(client_opener(address, workers))
            info = client.scheduler_info()
            if workers is None:
                logger.info("dask: scheduler %s, %d workers", address, len(info["workers"]))
            else:
                logger.info("dask: local cluster of %d worker processes (%s)", workers, info["address"])
            return client

        yield DaskExecutor(connect, settings, partition_task)


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
