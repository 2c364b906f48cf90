"""The flows' Dask cluster: the partitions of :mod:`m6rec.cluster`, each one a Prefect task run.

The client is ``prefect_dask.DaskTaskRunner``'s: on a scheduler's address it joins that cluster, on
``local:N`` it starts the same local cluster as ``m6rec run --dask local:N``. Every partition (of the
item encoders, of the lists) is submitted as a Prefect task of its own, so the flow run's page lists
them (``lists partition 3 of 8``), and a partition that raised is retried alone
(``dask.partition_retries``) while the others keep their results. Workers on another machine reach the
flow's Prefect API through their own ``PREFECT_API_URL``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from prefect import task

from flows.policies import NO_PERSISTED_RESULT
from m6rec.cluster import Cluster, dask_address, local_cluster_options, local_workers
from m6rec.config import DaskSettings


class PrefectTaskCluster(Cluster):
    """A :class:`m6rec.cluster.Cluster` whose partition tasks are Prefect tasks (the client must be a
    ``prefect_dask.PrefectDaskClient``, which runs a Prefect task through Prefect's task engine)."""

    def submit(self, function, scattered, arguments: tuple, *, key: str, stage: str, name: str):
        partition = task(
            function,
            name=f"{stage} partition",
            task_run_name=name,
            retries=self.retries,
            **NO_PERSISTED_RESULT,
        )
        return self.client.submit(partition, scattered, *arguments, key=key, pure=False)


@contextmanager
def flow_cluster(settings: DaskSettings) -> Iterator[Cluster | None]:
    """The :class:`PrefectTaskCluster` on the address in force (``settings.address``, else
    ``M6REC_DASK_ADDRESS``) for the block, through a ``DaskTaskRunner``; ``None`` without an address."""
    address = dask_address(settings.address)
    if address is None:
        yield None
        return
    from prefect_dask import DaskTaskRunner

    from m6rec.log import quiet_third_party_loggers

    quiet_third_party_loggers()
    workers = local_workers(address)
    if workers is None:
        runner = DaskTaskRunner(address=address)
    else:
        options = {**local_cluster_options(workers), "env": _this_flows_api()}
        runner = DaskTaskRunner(cluster_class="distributed.LocalCluster", cluster_kwargs=options)
    with runner:
        yield PrefectTaskCluster(runner.client, settings.partition_retries)


def _this_flows_api() -> dict[str, str]:
    """The environment that points local workers at the Prefect API of this flow run: its
    ``PREFECT_API_URL``, or without one the temporary server this process started (else every worker
    starts a server of its own on the same database, and one killed leaves its server behind)."""
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL

    if PREFECT_API_URL.value():
        return {"PREFECT_API_URL": PREFECT_API_URL.value()}
    server = SubprocessASGIServer()
    return {"PREFECT_API_URL": server.api_url} if server.running else {}
