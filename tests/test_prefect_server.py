"""The flows on a real Prefect server, the way users run them: ``prefect server start`` in its own process
(SQLite in a temporary PREFECT_HOME, loopback port), deployments registered by ``prefect deploy --all``
(prefect.yaml) and by ``m6rec flows deploy``, batch-recommend run by a ``prefect worker`` of the m6rec
pool, and nightly-embeddings run by ``m6rec flows serve``, whose completion triggers batch-recommend.

The model the batch needs is trained by calling the training pipeline directly. Every process started here
runs in its own session and is stopped, with its children, in teardown. Waits are generous polls: a busy
two-core machine takes its time to start a server and Python processes.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import httpx
import pandas as pd
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from m6rec.config import RunConfig  # noqa: E402
from pipelines.run import run_pipeline  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SERVER_START_SECONDS = 300
COMMAND_SECONDS = 300
RUN_SECONDS = 600
TERMINAL_STATES = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
POOL = "m6rec"


@dataclass
class _Process:
    """A command running in its own session, its output in a log file."""

    popen: subprocess.Popen
    log: Path

    def tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        """SIGTERM to the whole process group (flow runs included), SIGKILL if it lingers."""
        for sent, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
            try:
                os.killpg(self.popen.pid, sent)
            except ProcessLookupError:
                break
            try:
                self.popen.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue


_BUSY_RETRIES = 8


@dataclass
class _Server:
    api_url: str
    environment: dict[str, str]
    workdir: Path
    process: _Process

    def get(self, path: str) -> httpx.Response:
        return self._request("GET", path)

    def post(self, path: str, payload: dict) -> httpx.Response:
        return self._request("POST", path, payload)

    def _request(self, method: str, path: str, payload: dict | None = None) -> httpx.Response:
        """Like Prefect's own client, retry what a busy server answers with 503 (its SQLite database was
        locked) or a dropped connection; any other error fails at once."""
        for attempt in range(_BUSY_RETRIES):
            try:
                response = httpx.request(method, f"{self.api_url}{path}", json=payload, timeout=30)
            except httpx.TransportError:
                if attempt == _BUSY_RETRIES - 1:
                    raise
            else:
                if response.status_code not in (502, 503, 504) or attempt == _BUSY_RETRIES - 1:
                    response.raise_for_status()
                    return response
            time.sleep(min(2**attempt, 10))
        raise AssertionError("unreachable")


def _start(command: list[str], server_or_env, log: Path) -> _Process:
    environment = server_or_env.environment if isinstance(server_or_env, _Server) else server_or_env
    workdir = server_or_env.workdir if isinstance(server_or_env, _Server) else log.parent
    handle = log.open("ab")
    popen = subprocess.Popen(
        command,
        env=environment,
        cwd=workdir,
        stdin=subprocess.DEVNULL,
        stdout=handle,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    handle.close()
    return _Process(popen, log)


def _wait_for(condition: Callable[[], object], seconds: float, what: str, *watched: _Process):
    """Poll ``condition`` until it returns something truthy; fail early if a watched process exits."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        for process in watched:
            if process.popen.poll() is not None:
                pytest.fail(f"{what}: {process.popen.args[:5]} exited early\n{process.tail()}")
        time.sleep(1)
    logs = "\n\n".join(process.tail() for process in watched)
    pytest.fail(f"timed out after {seconds} s waiting for {what}\n{logs}")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _environment(home: Path, api_url: str) -> dict[str, str]:
    """This interpreter's environment without any Prefect profile or server of the developer's."""
    environment = {key: value for key, value in os.environ.items() if not key.startswith("PREFECT_")}
    return environment | {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": api_url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",
        "PYTHONUNBUFFERED": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }


def _run(command: list[str], server: _Server, cwd: Path | None = None, **extra_env: str):
    completed = subprocess.run(
        command,
        env=server.environment | extra_env,
        cwd=cwd or server.workdir,
        capture_output=True,
        text=True,
        timeout=COMMAND_SECONDS,
        stdin=subprocess.DEVNULL,
    )
    assert completed.returncode == 0, f"{command}\n{completed.stdout[-3000:]}\n{completed.stderr[-3000:]}"
    return completed


def _healthy(api_url: str) -> bool:
    try:
        return httpx.get(f"{api_url}/health", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def _deployment(server: _Server, name: str) -> dict | None:
    response = httpx.get(f"{server.api_url}/deployments/name/{name}/{name}", timeout=30)
    return response.json() if response.status_code == 200 else None


def _start_run(server: _Server, deployment: dict) -> str:
    return server.post(f"/deployments/{deployment['id']}/create_flow_run", {}).json()["id"]


def _finished_run(server: _Server, run_id: str, *watched: _Process) -> dict:
    def finished():
        run = server.get(f"/flow_runs/{run_id}").json()
        return run if run["state"]["type"] in TERMINAL_STATES else None

    return _wait_for(finished, RUN_SECONDS, f"flow run {run_id} to finish", *watched)


def _logs(server: _Server, run_id: str) -> list[dict]:
    return server.post("/logs/filter", {"logs": {"flow_run_id": {"any_": [run_id]}}, "limit": 200}).json()


def _failure(server: _Server, run: dict, *processes: _Process) -> str:
    messages = "\n".join(log["message"] for log in _logs(server, run["id"]))
    return f"{run['name']}: {run['state']}\n{messages}\n" + "\n\n".join(
        process.tail() for process in processes
    )


@pytest.fixture(scope="module")
def trained_workspace(tiny_flow_inputs, tmp_path_factory) -> tuple[Path, Path, Path]:
    """(catalogue, run configuration, output folder holding a model trained by the pipeline itself)."""
    catalogue, config_path = tiny_flow_inputs
    out_dir = tmp_path_factory.mktemp("served") / "outputs"
    run_pipeline(catalogue, out_dir, RunConfig.from_yaml(config_path))
    return catalogue, config_path, out_dir


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("prefect-server")
    port = _free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    environment = _environment(root / "home", api_url)
    command = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    process = _start([*command, "--no-ui"], environment, root / "server.log")
    server = _Server(api_url, environment, root, process)
    try:
        _wait_for(lambda: _healthy(api_url), SERVER_START_SECONDS, "the Prefect server to start", process)
        yield server
    finally:
        process.stop()


def test_prefect_yaml_registers_the_deployments_with_their_schedules_and_trigger(
    prefect_server, trained_workspace
):
    catalogue, _, out_dir = trained_workspace
    prefect = [sys.executable, "-m", "prefect", "--no-prompt"]
    _run([*prefect, "work-pool", "create", POOL, "--type", "process", "--overwrite"], prefect_server)
    _run(
        [*prefect, "deploy", "--all", "--prefect-file", str(REPO / "prefect.yaml")],
        prefect_server,
        cwd=REPO,
        M6REC_DATA_DIR=str(catalogue),
        M6REC_OUT_DIR=str(out_dir),
    )
    embeddings = _deployment(prefect_server, "nightly-embeddings")
    assert [entry["schedule"]["cron"] for entry in embeddings["schedules"]] == ["0 2 * * *"]
    assert embeddings["parameters"] == {"data_dir": str(catalogue), "out_dir": str(out_dir)}
    assert embeddings["work_pool_name"] == POOL
    training = _deployment(prefect_server, "train-ranker")
    assert [entry["schedule"]["cron"] for entry in training["schedules"]] == ["0 3 * * 0"]
    batch = _deployment(prefect_server, "batch-recommend")
    automations = prefect_server.post("/automations/filter", {}).json()
    (chain,) = [
        automation
        for automation in automations
        if any(action.get("deployment_id") == batch["id"] for action in automation["actions"])
    ]
    assert chain["trigger"]["expect"] == ["prefect.flow-run.Completed"]
    assert chain["trigger"]["match_related"]["prefect.resource.name"] == "nightly-embeddings"
    assert _deployment(prefect_server, "nightly")["parameters"]["retrain_after_days"] == 7


def test_worker_runs_batch_recommend_deployed_by_m6rec_flows_deploy(prefect_server, trained_workspace):
    catalogue, config_path, out_dir = trained_workspace
    deployed = _run(
        [sys.executable, "-m", "m6rec", "flows", "deploy", "--config", str(config_path)],
        prefect_server,
        M6REC_DATA_DIR=str(catalogue),
        M6REC_OUT_DIR=str(out_dir),
    )
    for name in ("nightly-embeddings", "train-ranker", "batch-recommend", "nightly"):
        assert f"deployed {name}/{name} (work pool {POOL})" in deployed.stdout
    batch = _deployment(prefect_server, "batch-recommend")
    assert batch["parameters"] == {
        "data_dir": str(catalogue),
        "out_dir": str(out_dir),
        "config_path": str(config_path),
    }
    assert batch["work_pool_name"] == POOL

    worker = _start(
        [sys.executable, "-m", "prefect", "worker", "start", "--pool", POOL, "--type", "process"],
        prefect_server,
        prefect_server.workdir / "worker.log",
    )
    try:
        run_id = _start_run(prefect_server, batch)
        run = _finished_run(prefect_server, run_id, worker, prefect_server.process)
        assert run["state"]["type"] == "COMPLETED", _failure(prefect_server, run, worker)
        lists = pd.read_parquet(out_dir / "lists" / "recommendations.parquet")
        users = pd.read_parquet(catalogue / "users.parquet")["user_id"]
        assert set(lists["user_id"]) == set(users)
        counts = prefect_server.post(
            "/artifacts/filter",
            {"artifacts": {"key": {"any_": ["batch-counts"]}, "flow_run_id": {"any_": [run_id]}}},
        ).json()
        assert len(counts) == 1
        pipeline_messages = _wait_for(
            lambda: [log for log in _logs(prefect_server, run_id) if log["name"] == "m6rec"],
            60,
            "the pipeline's log messages to reach the API",
        )
        assert any("batch lists for" in log["message"] for log in pipeline_messages)
    finally:
        worker.stop()


def test_serve_runs_batch_recommend_after_each_embedding_run(prefect_server, trained_workspace):
    catalogue, config_path, out_dir = trained_workspace
    served = _start(
        [
            *(sys.executable, "-m", "m6rec", "flows", "serve"),
            *("--data", str(catalogue), "--out", str(out_dir), "--config", str(config_path)),
        ],
        prefect_server,
        prefect_server.workdir / "serve.log",
    )
    try:
        _wait_for(
            lambda: "being served" in served.log.read_text(errors="replace"),
            COMMAND_SECONDS,
            "m6rec flows serve to register its deployments",
            served,
        )
        embeddings_run = _start_run(prefect_server, _deployment(prefect_server, "nightly-embeddings"))
        run = _finished_run(prefect_server, embeddings_run, served)
        assert run["state"]["type"] == "COMPLETED", _failure(prefect_server, run, served)
        embedded_at = datetime.fromisoformat(run["end_time"])

        batch = _deployment(prefect_server, "batch-recommend")

        def triggered_batch_run():
            runs = prefect_server.post(
                "/flow_runs/filter", {"flow_runs": {"deployment_id": {"any_": [batch["id"]]}}}
            ).json()
            return [entry for entry in runs if datetime.fromisoformat(entry["created"]) >= embedded_at]

        (triggered,) = _wait_for(
            triggered_batch_run, RUN_SECONDS, "the triggered batch-recommend run", served
        )
        run = _finished_run(prefect_server, triggered["id"], served)
        assert run["state"]["type"] == "COMPLETED", _failure(prefect_server, run, served)
        assert (out_dir / "lists" / "recommendations.parquet").is_file()
        # The data did not change since the last lists, so the batch keeps them and says so.
        messages = _wait_for(
            lambda: [
                log["message"] for log in _logs(prefect_server, triggered["id"]) if log["name"] == "m6rec"
            ],
            60,
            "the triggered batch's log messages to reach the API",
        )
        assert any(message.startswith("batch lists for") for message in messages)
    finally:
        served.stop()
