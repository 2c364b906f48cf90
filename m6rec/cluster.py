"""Where the partitioned stages run: in this process, or on a Dask cluster.

The address comes from ``--dask``, else the configuration's ``dask.address``, else the environment
variable ``M6REC_DASK_ADDRESS``: ``tcp://HOST:PORT`` (or any address a ``distributed.Client`` takes)
joins an existing scheduler; ``local:N`` starts a ``distributed.LocalCluster`` of N single-threaded
worker processes on this machine for the run and stops it afterwards. Without an address everything
runs in-process.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager

from m6rec.errors import ConfigError, M6RecError

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


@contextmanager
def dask_client(address: str | None) -> Iterator[object | None]:
    """A ``distributed.Client`` on ``address`` for the length of the block (``None`` without one).

    ``local:N`` starts N worker processes of one thread each (the stages' own libraries use one thread
    per worker, as on a cluster) without a dashboard, and shuts them down after the block."""
    if address is None:
        yield None
        return
    from distributed import Client, LocalCluster

    from m6rec.log import quiet_third_party_loggers

    quiet_third_party_loggers()  # distributed sets its logger to INFO when imported

    local = _LOCAL.fullmatch(check_dask_address(address))
    if local is None:
        with Client(address, set_as_default=False) as client:
            logger.info("dask: scheduler %s, %d workers", address, len(client.scheduler_info()["workers"]))
            yield client
        return
    workers = int(local.group(1))
    with (
        LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            scheduler_kwargs={"dashboard": False},
        ) as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        logger.info("dask: local cluster of %d worker processes (%s)", workers, cluster.scheduler_address)
        yield client


def map_partitions(client, function, shared, partitions: list, stage: str, *, key: str) -> list:
    """``function(shared_copy, *arguments)`` for each tuple of ``partitions`` on ``client``'s workers, the
    results in partition order. ``shared`` goes to every worker once (``scatter(broadcast=True)``) and
    is released afterwards; each task's key is ``key-NNNNN``. Fails as :func:`gather_partitions` does."""
    scattered = client.scatter(shared, broadcast=True, hash=False)
    try:
        futures = [
            client.submit(function, scattered, *arguments, key=f"{key}-{index:05d}", pure=False)
            for index, arguments in enumerate(partitions)
        ]
        return gather_partitions(client, futures, stage)
    finally:
        client.cancel(scattered, force=True)


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
