"""Deployments of the m6rec flows and when they run.

==================  =================================================================
nightly-embeddings  every day at 02:00 UTC
train-ranker        every Sunday at 03:00 UTC
batch-recommend     after every completed nightly-embeddings run (an event trigger)
nightly             on demand: embeddings, ranker when due, lists and report in one run
==================  =================================================================

Each deployment's name is its flow's name (``prefect deployment run nightly/nightly``). Their parameters
``data_dir``, ``out_dir`` and ``config_path`` default to ``$M6REC_DATA_DIR`` (``/data``), ``$M6REC_OUT_DIR``
(``/outputs``) and ``$M6REC_CONFIG`` (none). ``serve_deployments`` runs them all from one process on a
single machine (``m6rec flows serve``); ``deploy_to_work_pool`` registers them for a process worker of the
``m6rec`` work pool (``m6rec flows deploy``, as the docker-compose worker does). ``prefect.yaml`` declares
the same deployments for ``prefect deploy --all``.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from typing import Any

DATA_DIR_ENV = "M6REC_DATA_DIR"
OUT_DIR_ENV = "M6REC_OUT_DIR"
CONFIG_ENV = "M6REC_CONFIG"
DEFAULT_DATA_DIR = "/data"
DEFAULT_OUT_DIR = "/outputs"
WORK_POOL = "m6rec"
TAGS = ("m6rec",)
# Flow runs forward the pipelines' progress messages (the ``m6rec`` logger) to the Prefect API.
RUN_ENVIRONMENT = {"PREFECT_LOGGING_EXTRA_LOGGERS": "m6rec"}


@dataclass(frozen=True)
class DeploymentSpec:
    """One deployment: its flow (``module:function``), cron schedule (UTC) or upstream deployment whose
    completed runs trigger it, and extra default parameters."""

    name: str
    flow: str
    description: str
    cron: str | None = None
    after: str | None = None
    parameters: tuple[tuple[str, Any], ...] = ()


DEPLOYMENTS: tuple[DeploymentSpec, ...] = (
    DeploymentSpec(
        "nightly-embeddings",
        "flows.nightly_embeddings:nightly_embeddings",
        "Item embeddings of new and changed items, every night.",
        cron="0 2 * * *",
    ),
    DeploymentSpec(
        "train-ranker",
        "flows.train_ranker:train_ranker",
        "Candidate sources and LightGBM ranker retrained every week, with the run's report.",
        cron="0 3 * * 0",
    ),
    DeploymentSpec(
        "batch-recommend",
        "flows.batch_recommend:batch_recommend",
        "Every user's list, after each completed nightly-embeddings run.",
        after="nightly-embeddings",
    ),
    DeploymentSpec(
        "nightly",
        "flows.nightly:nightly",
        "The whole nightly job in one run: embeddings, ranker when due, lists, report.",
        parameters=(("retrain_after_days", 7),),
    ),
)


def deployment_parameters(
    data_dir: str | None = None, out_dir: str | None = None, config_path: str | None = None
) -> dict[str, str | None]:
    """Default flow parameters of every deployment: the arguments, else the environment, else compose's."""
    return {
        "data_dir": data_dir or os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR,
        "out_dir": out_dir or os.environ.get(OUT_DIR_ENV) or DEFAULT_OUT_DIR,
        "config_path": config_path or os.environ.get(CONFIG_ENV) or None,
    }


def load_flow(spec: DeploymentSpec):
    """The Prefect flow object a deployment runs."""
    module, function = spec.flow.split(":")
    return getattr(importlib.import_module(module), function)


def completed_run_trigger(upstream: str):
    """A trigger that starts a deployment whenever a run of the ``upstream`` deployment completes."""
    from prefect.events import DeploymentEventTrigger

    return DeploymentEventTrigger(
        name=f"after {upstream}",
        expect={"prefect.flow-run.Completed"},
        match_related={"prefect.resource.role": "deployment", "prefect.resource.name": upstream},
    )


def runner_deployments(parameters: dict[str, Any], work_pool: str | None = None) -> list:
    """Prefect ``RunnerDeployment`` objects for :data:`DEPLOYMENTS` with these default parameters.

    Entrypoints are module paths (``flows.nightly.nightly``), so a worker or ``serve`` process finds the
    flows wherever m6rec is installed, whatever its working directory.
    """
    from prefect.deployments.runner import EntrypointType

    deployments = []
    for spec in DEPLOYMENTS:
        deployments.append(
            load_flow(spec).to_deployment(
                name=spec.name,
                cron=spec.cron,
                parameters={**parameters, **dict(spec.parameters)},
                triggers=[completed_run_trigger(spec.after)] if spec.after else None,
                description=spec.description,
                tags=list(TAGS),
                work_pool_name=work_pool,
                job_variables={"env": dict(RUN_ENVIRONMENT)} if work_pool else None,
                entrypoint_type=EntrypointType.MODULE_PATH,
            )
        )
    return deployments


def serve_deployments(
    data_dir: str | None = None,
    out_dir: str | None = None,
    config_path: str | None = None,
    *,
    limit: int | None = 1,
) -> None:
    """Register every deployment with the Prefect API and run their scheduled and triggered runs from this
    process until it is stopped (schedules are paused on shutdown). ``limit`` caps concurrent runs."""
    for name, value in RUN_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    from prefect import serve

    serve(*runner_deployments(deployment_parameters(data_dir, out_dir, config_path)), limit=limit)


def deploy_to_work_pool(
    data_dir: str | None = None,
    out_dir: str | None = None,
    config_path: str | None = None,
    *,
    work_pool: str = WORK_POOL,
) -> list[str]:
    """Register every deployment for the process work pool ``work_pool`` (created if missing) and return
    their ``flow/deployment`` names. Run ``prefect worker start --pool m6rec`` to execute them."""
    _ensure_process_work_pool(work_pool)
    names = []
    for deployment in runner_deployments(deployment_parameters(data_dir, out_dir, config_path), work_pool):
        deployment.apply(work_pool_name=work_pool)
        names.append(f"{deployment.flow_name}/{deployment.name}")
    return names


def _ensure_process_work_pool(name: str) -> None:
    from prefect import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists
    from prefect.workers.process import ProcessWorker

    with get_client(sync_client=True) as client:
        try:
            client.create_work_pool(
                work_pool=WorkPoolCreate(
                    name=name,
                    type=ProcessWorker.type,
                    base_job_template=ProcessWorker.get_default_base_job_template(),
                )
            )
        except ObjectAlreadyExists:
            pass
