"""The flows' executor: :func:`m6rec.cluster.open_executor` with the client of Prefect's
``DaskTaskRunner``, so every partition is a Prefect task run.

On a scheduler's address the runner joins that cluster, on ``local:N`` it starts the same local cluster
as ``m6rec run --dask local:N``. Every partition (of the item encoders, of the lists) is submitted as a
Prefect task of its own, so the flow run's page lists them (``lists partition 3 of 8``), and a partition
that raised is retried alone (``dask.partition_retries``) while the others keep their results. Workers on
another machine reach the flow's Prefect API through their own ``PREFECT_API_URL``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager

from prefect import task

from flows.policies import NO_PERSISTED_RESULT
from m6rec.cluster import Executor, local_cluster_options, open_executor
from m6rec.config import DaskSettings


def flow_executor(settings: DaskSettings) -> AbstractContextManager[Executor]:
    """The executor of ``settings`` for a flow: in-process without an address, else on the client of a
    ``DaskTaskRunner`` (a ``prefect_dask.PrefectDaskClient``) with a Prefect task per partition."""
    return open_executor(settings, client_opener=prefect_dask_client, partition_task=prefect_partition_task)


@contextmanager
def prefect_dask_client(address: str, workers: int | None) -> Iterator[object]:
    """The client of a ``DaskTaskRunner`` on the scheduler at ``address``, or on a ``LocalCluster`` of
    ``workers`` processes that report to this flow's Prefect API."""
    from prefect_dask import DaskTaskRunner

    if workers is None:
        runner = DaskTaskRunner(address=address)
    else:
        options = {**local_cluster_options(workers), "env": _this_flows_api()}
        runner = DaskTaskRunner(cluster_class="distributed.LocalCluster", cluster_kwargs=options)
    with runner:
        yield runner.client


def prefect_partition_task(function: Callable, stage: str, name: str, retries: int) -> Callable:
    """``function`` as the Prefect task of one partition of ``stage`` (its run named ``name``)."""
    return task(
        function, name=f"{stage} partition", task_run_name=name, retries=retries, **NO_PERSISTED_RESULT
    )


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
