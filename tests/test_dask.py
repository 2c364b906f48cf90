"""On a local Dask cluster of two worker processes: the final lists equal the in-process lists, and a worker
killed in the middle of scoring neither corrupts nor duplicates them (pipelines.lists); the text encoder's
vectors equal the in-process ones (features.base.encode_items)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("distributed")

import dask_faults  # noqa: E402

import pipelines.run  # noqa: E402
from m6rec.cluster import DASK_ADDRESS_VARIABLE, PartitionFailed, dask_address  # noqa: E402
from m6rec.config import BaselineConfig, DaskSettings, EmbeddingConfig, RankerConfig, RunConfig  # noqa: E402
from m6rec.errors import ConfigError  # noqa: E402
from pipelines.run import run_pipeline  # noqa: E402
from ranker.features import read_feature_table  # noqa: E402

# 120 users in partitions of 25 (five tasks), each scored 10 users at a time.
ON_CLUSTER = DaskSettings(address="local:2", partition_users=25)


def _config() -> RunConfig:
    return RunConfig(
        split="random:0.25",
        user_chunk=10,
        baselines=BaselineConfig(models=["popularity", "itemknn", "ease"]),
        embeddings=EmbeddingConfig(modalities=[]),
        ranker=RankerConfig(params={"n_estimators": 20}),
    )


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory) -> Path:
    from m6rec.demo_catalogue import DemoCatalogueSpec, generate_demo_catalogue

    spec = DemoCatalogueSpec(n_users=120, n_items=96, n_cold_items=0, interactions_per_user=(12, 30), seed=5)
    return generate_demo_catalogue(tmp_path_factory.mktemp("dask") / "catalogue", spec)


@pytest.fixture(scope="module")
def in_process(catalogue, tmp_path_factory):
    return run_pipeline(catalogue, tmp_path_factory.mktemp("in-process") / "run", _config())


def _assert_same_outputs(result, expected) -> None:
    lists, wanted = (pd.read_parquet(r.recommendations_path) for r in (result, expected))
    pd.testing.assert_frame_equal(lists.drop(columns="score"), wanted.drop(columns="score"), check_dtype=True)
    np.testing.assert_allclose(lists["score"], wanted["score"], rtol=1e-6, atol=1e-9)
    pd.testing.assert_frame_equal(
        read_feature_table(result.out_dir / "ranker_features.parquet"),
        read_feature_table(expected.out_dir / "ranker_features.parquet"),
        check_exact=False,
        atol=1e-6,
    )
    assert result.metrics.keys() == expected.metrics.keys()
    for name, metrics in expected.metrics.items():
        assert result.metrics[name] == pytest.approx(metrics, rel=1e-9), name


def test_the_lists_scored_on_a_two_worker_cluster_equal_the_in_process_lists(catalogue, in_process, tmp_path):
    assert in_process.selected_model == "ranker"
    on_cluster = run_pipeline(catalogue, tmp_path / "run", _config().replace(dask=ON_CLUSTER))
    _assert_same_outputs(on_cluster, in_process)
    assert not (tmp_path / "run" / ".parts").exists()
    assert not list((tmp_path / "run").glob("generations/*/.parts"))


def test_a_worker_killed_in_the_middle_of_a_partition_leaves_the_lists_as_they_would_be(
    catalogue, in_process, tmp_path, monkeypatch
):
    """User row 37 is in the second chunk of the second partition: the attempt that dies has already
    written a chunk into its part file; the scheduler runs the partition again on a live worker."""
    kills = tmp_path / "kills.log"
    monkeypatch.setenv(dask_faults.KILL_USER_ROW, "37")
    monkeypatch.setenv(dask_faults.KILLS, "1")
    monkeypatch.setenv(dask_faults.KILL_LOG, str(kills))
    monkeypatch.setattr(pipelines.run, "ListScorer", dask_faults.KillingListScorer)
    on_cluster = run_pipeline(catalogue, tmp_path / "run", _config().replace(dask=ON_CLUSTER))
    assert len(kills.read_text().splitlines()) == 1
    _assert_same_outputs(on_cluster, in_process)
    lists = pd.read_parquet(on_cluster.recommendations_path)
    assert not lists.duplicated(["user_id", "rank"]).any()


def test_when_the_workers_of_a_partition_keep_dying_the_run_fails_in_one_line_and_keeps_the_last_lists(
    catalogue, tmp_path, monkeypatch
):
    import dask

    out = tmp_path / "run"
    last_good = run_pipeline(catalogue, out, _config())
    published = Path(last_good.recommendations_path).resolve()
    before = published.read_bytes()
    monkeypatch.setenv(dask_faults.KILL_USER_ROW, "37")
    monkeypatch.setenv(dask_faults.KILLS, "1000")
    monkeypatch.setenv(dask_faults.KILL_LOG, str(tmp_path / "kills.log"))
    monkeypatch.setattr(pipelines.run, "ListScorer", dask_faults.KillingListScorer)
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        with pytest.raises(PartitionFailed) as failure:
            run_pipeline(catalogue, out, _config().replace(dask=ON_CLUSTER))
    message = str(failure.value)
    assert "\n" not in message
    # Row 37's partition, or another one that was on the dying worker: each counts as a death.
    assert re.fullmatch(
        r"lists: partition [1-5] of 5 failed: 1 worker died computing it .*the last good outputs are kept",
        message,
    ), message
    assert Path(out / "recommendations.parquet").resolve() == published
    assert published.read_bytes() == before
    assert not (published.parent / ".parts").exists()


def test_from_a_flow_each_partition_is_a_prefect_task_and_one_that_raised_is_retried_alone(
    prefect_test_api, catalogue, in_process, tmp_path, monkeypatch
):
    """The train-ranker flow on ``local:2``: the lists' five partitions are Prefect task runs of the flow
    run; the second raises once (row 37, in its second chunk) and only it runs a second time."""
    import yaml
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from flows.train_ranker import train_ranker
    from pipelines.run import RunResult

    faults = tmp_path / "faults.log"
    monkeypatch.setenv(dask_faults.KILL_USER_ROW, "37")
    monkeypatch.setenv(dask_faults.KILLS, "1")
    monkeypatch.setenv(dask_faults.KILL_LOG, str(faults))
    monkeypatch.setattr(pipelines.run, "ListScorer", dask_faults.RaisingListScorer)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(_config().replace(dask=ON_CLUSTER).model_dump(mode="json")))
    out = tmp_path / "run"

    state = train_ranker(str(catalogue), str(out), str(config), report=False, return_state=True)

    assert state.is_completed()
    assert len(faults.read_text().splitlines()) == 1
    trained = state.result()
    _assert_same_outputs(RunResult(out, trained["metrics"], trained["selected_model"], {}), in_process)
    runs = FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
    with get_client(sync_client=True) as client:
        task_runs = client.read_task_runs(flow_run_filter=runs)
    partitions = {run.name: run for run in task_runs if run.name.startswith("lists partition")}
    assert sorted(partitions) == [f"lists partition {index} of 5" for index in range(1, 6)]
    assert {name: run.state_name for name, run in partitions.items()} == dict.fromkeys(
        partitions, "Completed"
    )
    assert {name: run.run_count for name, run in partitions.items()} == {
        name: 2 if name == "lists partition 2 of 5" else 1 for name in partitions
    }


def test_the_embeddings_flow_encodes_the_item_texts_in_prefect_tasks_on_the_workers(
    prefect_test_api, catalogue, tmp_path
):
    import yaml
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from flows.nightly_embeddings import nightly_embeddings
    from m6rec.embeddings.store import read_embeddings

    config = tmp_path / "config.yaml"
    settings = RunConfig(embeddings=EmbeddingConfig(modalities=["text"]), dask=ON_CLUSTER)
    config.write_text(yaml.safe_dump(settings.model_dump(mode="json")))

    state = nightly_embeddings(str(catalogue), str(tmp_path / "out"), str(config), return_state=True)

    assert state.is_completed()
    embeddings = state.result()
    assert {key: embeddings["counts"]["text"][key] for key in ("total", "computed", "failed")} == {
        "total": 96,
        "computed": 96,
        "failed": 0,
    }
    assert read_embeddings(embeddings["files"]["text"]).valid.all()
    runs = FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
    with get_client(sync_client=True) as client:
        names = {run.name: run.state_name for run in client.read_task_runs(flow_run_filter=runs)}
    assert names["text embeddings partition 1 of 1"] == "Completed"


def test_a_flow_without_a_prefect_server_gives_its_local_workers_its_own_temporary_api(catalogue, tmp_path):
    """Run as a script with no Prefect API configured, the flow starts one temporary server; the local
    workers report their partitions' task runs to it instead of each starting one of its own."""
    import subprocess
    import sys

    import yaml

    config = tmp_path / "config.yaml"
    settings = RunConfig(embeddings=EmbeddingConfig(modalities=["text"]), dask=ON_CLUSTER)
    config.write_text(yaml.safe_dump(settings.model_dump(mode="json")))
    environment = {key: value for key, value in os.environ.items() if not key.startswith("PREFECT_API")}
    environment |= {"PREFECT_HOME": str(tmp_path / "prefect"), "HF_HUB_OFFLINE": "1"}
    command = [
        sys.executable,
        "-m",
        "flows.nightly_embeddings",
        str(catalogue),
        str(tmp_path / "out"),
        str(config),
    ]
    completed = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=600)
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output[-3000:]
    assert "text embeddings partition 1 of 1" in output
    assert len(re.findall(r"Starting temporary server on", output)) == 1, output[-3000:]


def test_the_dask_address_comes_from_the_option_or_configuration_then_the_environment(monkeypatch):
    monkeypatch.delenv(DASK_ADDRESS_VARIABLE, raising=False)
    assert dask_address(None) is None
    monkeypatch.setenv(DASK_ADDRESS_VARIABLE, "tcp://scheduler:8786")
    assert dask_address(None) == "tcp://scheduler:8786"
    assert dask_address("local:2") == "local:2"
    monkeypatch.setenv(DASK_ADDRESS_VARIABLE, "scheduler:8786")
    with pytest.raises(ConfigError, match="expected local:N"):
        dask_address(None)


@pytest.mark.parametrize("address", ["local:0", "local", "scheduler:8786"])
def test_a_bad_dask_address_in_the_configuration_is_one_error_naming_it(address):
    from m6rec.config import load_config

    with pytest.raises(ConfigError, match="dask"):
        load_config({"dask": {"address": address}}, "run.yaml")


def test_m6rec_run_refuses_a_bad_dask_address_in_one_line(m6rec_main, catalogue, tmp_path):
    code, _, err = m6rec_main(
        "run", str(catalogue), "--out", str(tmp_path / "run"), "--dask", "scheduler:8786"
    )
    assert code == 2
    assert err.strip().splitlines() == [
        "error: dask address 'scheduler:8786': expected local:N (N workers on this machine) or a scheduler "
        "address such as tcp://HOST:8786"
    ]
    assert not (tmp_path / "run").exists()


def test_item_texts_encoded_on_a_two_worker_cluster_are_the_in_process_vectors(catalogue, tmp_path):
    """Three partitions of 40 texts; the driver never loads the model, each worker loads it once."""
    from features.base import encode_items
    from features.encoders import create_encoder
    from m6rec.cluster import open_executor
    from m6rec.config import DaskSettings
    from m6rec.data.dataset import load_dataset
    from m6rec.embeddings.store import read_embeddings

    dataset = load_dataset(catalogue)
    items = dataset.items
    here = encode_items(
        create_encoder("text", item_columns=dataset.item_columns), items, catalogue, tmp_path / "here.parquet"
    )
    encoder = create_encoder("text", item_columns=dataset.item_columns)
    with open_executor(DaskSettings(address="local:2", partition_items=40)) as executor:
        there = encode_items(encoder, items, catalogue, tmp_path / "there.parquet", executor=executor)
    assert encoder._model is None
    assert (
        (there.total, there.computed, there.failed) == (here.total, here.computed, here.failed) == (96, 96, 0)
    )
    there_table, here_table = (
        read_embeddings(tmp_path / "there.parquet"),
        read_embeddings(tmp_path / "here.parquet"),
    )
    assert list(there_table.keys) == list(here_table.keys)
    assert there_table.valid.all()
    np.testing.assert_allclose(there_table.vectors, here_table.vectors, atol=1e-5)


@pytest.fixture
def command_line_cluster(tmp_path):
    """A scheduler and one single-threaded worker started as separate processes from the ``dask``
    command line, as an operator starts them; yields the scheduler's address."""
    import json
    import subprocess
    import sys
    import time

    dask = Path(sys.executable).with_name("dask")
    file = tmp_path / "scheduler.json"
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), *sys.path])}
    scheduler = subprocess.Popen(
        [dask, "scheduler", "--scheduler-file", file, "--port", "0", "--no-dashboard"], **quiet
    )
    worker = subprocess.Popen(
        [dask, "worker", "--scheduler-file", file, "--nthreads", "1", "--no-dashboard"],
        env=environment,
        **quiet,
    )
    try:
        from distributed import Client

        deadline = time.monotonic() + 120
        while not file.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        address = json.loads(file.read_text())["address"]
        with Client(address, timeout=60) as client:
            client.wait_for_workers(1, timeout=120)
        yield address
    finally:
        for process in (worker, scheduler):
            process.terminate()
            process.wait(timeout=30)


def test_a_cluster_started_from_the_dask_command_line_gives_the_in_process_lists_byte_for_byte(
    command_line_cluster, tmp_path
):
    """Text, image (a seeded two-layer CLIP saved here) and audio encoded on the worker, the two-tower
    trained on their vectors, the ranker over them: the lists file is the in-process one, byte for byte."""
    from conftest import save_tiny_clip, tiny_catalogue_spec

    from m6rec.demo_catalogue import generate_demo_catalogue

    catalogue = generate_demo_catalogue(tmp_path / "catalogue", tiny_catalogue_spec())
    architecture, checkpoint = save_tiny_clip(tmp_path, "m6rec-dask-tiny-vit", seed=7)
    config = RunConfig(
        user_chunk=16,
        baselines=BaselineConfig(
            models=["popularity", "ease"], search_spaces={"popularity": {}, "ease": {"l2": [100.0]}}
        ),
        embeddings=EmbeddingConfig(
            modalities=["text", "image", "audio", "cf"],
            image={"model": str(architecture), "checkpoint": str(checkpoint), "num_workers": 0},
            audio={"max_seconds": 0.25, "num_workers": 0},
            two_tower={"epochs": 3},
            force_cpu=True,
        ),
        ranker=RankerConfig(training_folds=1, params={"n_estimators": 30, "min_child_samples": 20}),
    )
    here = run_pipeline(catalogue, tmp_path / "here", config)
    there = run_pipeline(
        catalogue,
        tmp_path / "there",
        config.replace(dask=DaskSettings(address=command_line_cluster, partition_users=20)),
    )
    for name in ("text", "image", "audio"):
        assert (here.out_dir / "features" / f"{name}.parquet").is_file()
    assert there.recommendations_path.read_bytes() == here.recommendations_path.read_bytes()
