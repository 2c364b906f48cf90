"""The Prefect flows: task bodies on their own (``task.fn``), retry and cache policies, the deployments and
``prefect.yaml``, and the flows end to end under a temporary local Prefect API on a tiny demo catalogue."""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np
import pandas as pd
import pytest
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from prefect import Task  # noqa: E402
from prefect.states import Failed  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from flows.artifacts import (  # noqa: E402
    batch_artifacts,
    embedding_artifacts,
    nightly_artifacts,
    ranker_artifacts,
)
from flows.batch_recommend import batch_recommend, recommend_for_every_user  # noqa: E402
from flows.deployments import (  # noqa: E402
    DEPLOYMENTS,
    RUN_ENVIRONMENT,
    WORK_POOL,
    deployment_parameters,
    runner_deployments,
)
from flows.inputs import load_catalogue, read_run_config  # noqa: E402
from flows.nightly import nightly, trained_model_age_days  # noqa: E402
from flows.nightly_embeddings import encode_item_embeddings, nightly_embeddings  # noqa: E402
from flows.policies import is_transient_io_error  # noqa: E402
from flows.train_ranker import fit_two_stage_model  # noqa: E402
from m6rec.config import EmbeddingConfig, RunConfig  # noqa: E402
from m6rec.data.fingerprint import data_fingerprint  # noqa: E402
from m6rec.errors import ConfigError, DataError  # noqa: E402
from pipelines.embeddings import (  # noqa: E402
    embeddings_key,
    read_cached_embeddings,
    write_cached_embeddings,
)
from pipelines.run_folder import (
    EMBEDDINGS_CACHE,  # noqa: E402
    ModelNotTrainedError,  # noqa: E402
)

REPO = Path(__file__).resolve().parents[1]
FLOW_MODULES = (
    "flows.inputs",
    "flows.artifacts",
    "flows.nightly_embeddings",
    "flows.train_ranker",
    "flows.batch_recommend",
    "flows.nightly",
)
IO_TASKS = {"read_run_config", "load_catalogue", "publish_artifacts"}
ARTIFACT_KEY = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")
DAY = 86400


def _flow_tasks() -> dict[str, Task]:
    tasks = {}
    for name in FLOW_MODULES:
        for value in vars(importlib.import_module(name)).values():
            if isinstance(value, Task):
                tasks[value.name] = value
    return tasks


def _artifact_rows(key: str) -> list[dict]:
    from prefect.artifacts import Artifact

    artifact = Artifact.get(key)
    assert artifact is not None, f"no artifact {key!r}"
    return json.loads(artifact.data) if isinstance(artifact.data, str) else artifact.data


@pytest.fixture(scope="module")
def trained(tiny_flow_inputs, tmp_path_factory):
    """A model trained by the training task's body, and its summary."""
    catalogue, config_path = tiny_flow_inputs
    out_dir = tmp_path_factory.mktemp("trained")
    summary = fit_two_stage_model.fn(str(catalogue), str(out_dir), read_run_config.fn(str(config_path)))
    return out_dir, summary


def test_only_io_tasks_retry_and_only_on_transient_errors():
    tasks = _flow_tasks()
    assert {"encode_item_embeddings", "fit_two_stage_model", "recommend_for_every_user"} <= set(tasks)
    assert {name for name, task in tasks.items() if task.retries} == IO_TASKS
    for name in IO_TASKS:
        assert tasks[name].retry_condition_fn is is_transient_io_error


@pytest.mark.parametrize(
    ("error", "retried"),
    [
        (OSError(5, "Input/output error"), True),
        (TimeoutError("read timed out"), True),
        (httpx.ConnectError("connection refused"), True),
        (
            httpx.HTTPStatusError(
                "unavailable", request=httpx.Request("POST", "http://api"), response=httpx.Response(503)
            ),
            True,
        ),
        (
            httpx.HTTPStatusError(
                "bad request", request=httpx.Request("POST", "http://api"), response=httpx.Response(422)
            ),
            False,
        ),
        (FileNotFoundError(2, "No such file or directory"), False),
        (DataError("interactions.csv", "user_id is empty", location="row 3"), False),
        (ConfigError("run.yaml: unknown key 'seeed'"), False),
        (ValueError("a bug"), False),
    ],
)
def test_transient_io_errors_are_retried_and_input_errors_are_not(error, retried):
    assert is_transient_io_error(None, None, Failed(data=error)) is retried


def test_no_task_or_flow_result_goes_through_prefect_result_storage():
    """A stored Prefect result names its own serializer (pickle included): nothing is stored there, and
    no task has a Prefect cache."""
    from prefect import Flow

    tasks = _flow_tasks()
    assert tasks and all(
        task.persist_result is False and task.cache_key_fn is None for task in tasks.values()
    )
    flows = [
        value
        for name in FLOW_MODULES
        for value in vars(importlib.import_module(name)).values()
        if isinstance(value, Flow)
    ]
    assert flows and all(flow.persist_result is False for flow in flows)


def test_the_data_fingerprint_follows_tables_and_media_content_but_not_hidden_files(tmp_path):
    (tmp_path / "media").mkdir()
    (tmp_path / "interactions.csv").write_text("user_id,item_id\nu1,i1\n")
    (tmp_path / "media" / "i1.wav").write_bytes(b"RIFF")
    first = data_fingerprint(tmp_path)
    assert data_fingerprint(tmp_path) == first
    (tmp_path / ".interactions.csv.swp").write_text("editor state")
    (tmp_path / ".staging").mkdir()
    (tmp_path / ".staging" / "part.parquet").write_bytes(b"PAR1")
    assert data_fingerprint(tmp_path) == first
    later = (tmp_path / "media" / "i1.wav").stat().st_mtime + 60
    os.utime(tmp_path / "media" / "i1.wav", (later, later))
    assert data_fingerprint(tmp_path) == first, "a touched media file with the same bytes is the same data"
    (tmp_path / "media" / "i1.wav").write_bytes(b"RIFX")
    media_changed = data_fingerprint(tmp_path)
    assert media_changed != first
    (tmp_path / "interactions.csv").write_text("user_id,item_id\nu1,i1\nu2,i1\n")
    changed = data_fingerprint(tmp_path)
    assert changed != media_changed
    (tmp_path / "media" / "i1.wav").rename(tmp_path / "media" / "i2.wav")
    assert data_fingerprint(tmp_path) != changed


def test_embedding_cache_key_follows_dataset_configuration_and_output_folder(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "interactions.csv").write_text("user_id,item_id\nu1,i1\n")
    (data_dir / "items.csv").write_text("item_id,title\ni1,a\n")
    dataset = SimpleNamespace(directory=data_dir, media_hashes=None, item_columns=None, user_columns=None)

    def key(out, config, items_only=True):
        return embeddings_key(dataset, out, config, items_only)

    first = key(tmp_path / "out", EmbeddingConfig(modalities=["kg"]))
    assert key(tmp_path / "out", EmbeddingConfig(modalities=["kg"])) == first
    variants = [
        key(tmp_path / "out", EmbeddingConfig(modalities=["text"])),
        key(tmp_path / "out", EmbeddingConfig(modalities=["kg"], kg={"epochs": 3})),
        key(tmp_path / "other", EmbeddingConfig(modalities=["kg"])),
        key(tmp_path / "out", EmbeddingConfig(modalities=["kg"]), items_only=False),
    ]
    assert len({first, *variants}) == 5
    (data_dir / "items.csv").write_text("item_id,title\ni1,a\ni2,b\n")
    assert key(tmp_path / "out", EmbeddingConfig(modalities=["kg"])) != first


@pytest.mark.parametrize(
    "entry",
    [
        b"\x80\x04\x95 a pickle",
        b'{"metadata": {"serializer": {"type": "pickle"}}, "result": "gASVAAAA"}',
        b'{"format": "m6rec-embeddings-cache", "version": 2, "key": "K", "summary": {"files": [], "counts": {}}}',
        b'{"format": "m6rec-embeddings-cache", "version": 9, "key": "K", "summary": {}}',
    ],
)
def test_a_bad_cache_entry_is_never_trusted(tmp_path, entry, caplog):
    (tmp_path / EMBEDDINGS_CACHE).write_bytes(entry)
    assert read_cached_embeddings(tmp_path / EMBEDDINGS_CACHE, "K") is None
    assert "computing the embeddings again" in caplog.text


def test_a_cache_entry_answers_only_its_key_and_only_while_its_files_exist(tmp_path):
    kept = tmp_path / "kg.parquet"
    kept.write_bytes(b"PAR1")
    cache = tmp_path / EMBEDDINGS_CACHE
    summary = {"files": {"kg": str(kept)}, "counts": {"kg": {"total": 1, "computed": 1}}, "problems": 0}
    write_cached_embeddings(cache, "K", summary)
    assert read_cached_embeddings(cache, "K") == summary
    assert read_cached_embeddings(cache, "other") is None
    kept.unlink()
    assert read_cached_embeddings(cache, "K") is None


def test_run_config_task_reads_the_yaml_and_the_cpu_switch(tiny_flow_inputs):
    _, config_path = tiny_flow_inputs
    config = read_run_config.fn(str(config_path), cpu=True)
    assert config.embeddings.modalities == ["kg"]
    assert config.baselines.models == ["popularity", "ease"]
    assert config.embeddings.force_cpu
    assert read_run_config.fn(None) == RunConfig()


def test_item_embedding_task_returns_a_small_summary_and_reuses_unchanged_items(tiny_flow_inputs, tmp_path):
    catalogue, config_path = tiny_flow_inputs
    dataset = load_catalogue.fn(str(catalogue), RunConfig())
    config = read_run_config.fn(str(config_path))
    n_items = len(dataset.items)
    first = encode_item_embeddings.fn(dataset, str(tmp_path / "out"), config.embeddings, 3)
    assert json.loads(json.dumps(first)) == first
    assert first["counts"]["kg"] == {"total": n_items, "computed": n_items, "reused": 0, "failed": 0}
    assert all(Path(path).is_file() for path in first["files"].values())
    assert set(first["files"]) == {"kg", "fused"}
    second = encode_item_embeddings.fn(dataset, str(tmp_path / "out"), config.embeddings, 3)
    assert second["counts"]["kg"] == {"total": n_items, "computed": 0, "reused": n_items, "failed": 0}


def test_training_task_summarises_the_run_it_wrote(trained):
    out_dir, summary = trained
    assert summary["out_dir"] == str(out_dir)
    assert (out_dir / "run.json").is_file() and (out_dir / "metrics.json").is_file()
    assert summary["metrics"] == json.loads((out_dir / "metrics.json").read_text())
    assert summary["selected_model"] == json.loads((out_dir / "run.json").read_text())["selected_model"]
    assert {"popularity", "ease"} <= set(summary["models"])
    assert all(0.0 <= model["validation_ndcg"] <= 1.0 for model in summary["models"].values())
    assert summary["counts"]["users"] == 60


def test_batch_task_writes_a_list_for_every_user(trained, tiny_flow_inputs, tmp_path):
    out_dir, _ = trained
    catalogue, config_path = tiny_flow_inputs
    config = read_run_config.fn(str(config_path))
    lists = recommend_for_every_user.fn(str(catalogue), str(out_dir), str(tmp_path / "lists"), config)
    frame = pd.read_parquet(lists["recommendations"])
    users = pd.read_parquet(catalogue / "users.parquet")["user_id"]
    assert set(frame["user_id"]) == set(users)
    assert lists["counts"]["list_rows"] == len(frame) == len(users) * config.top_k
    assert frame.groupby("user_id")["rank"].max().eq(config.top_k).all()


def test_batch_without_a_trained_model_says_to_train_one(tiny_flow_inputs, tmp_path):
    catalogue, config_path = tiny_flow_inputs
    config = read_run_config.fn(str(config_path))
    with pytest.raises(ModelNotTrainedError, match="no trained model") as raised:
        recommend_for_every_user.fn(str(catalogue), str(tmp_path), str(tmp_path / "lists"), config)
    assert "train-ranker" in raised.value.hint


def test_model_age_is_read_from_the_trained_run(trained, tmp_path):
    out_dir, _ = trained
    assert trained_model_age_days.fn(str(tmp_path)) is None
    copy = shutil.copytree(out_dir, tmp_path / "model", symlinks=True)
    manifest = json.loads((copy / "model.json").read_text())
    manifest["trained_at"] = datetime.fromtimestamp(time.time() - 10 * DAY, UTC).isoformat(timespec="seconds")
    (copy / "model.json").write_text(json.dumps(manifest))
    assert trained_model_age_days.fn(str(copy)) == pytest.approx(10.0, abs=0.01)


def test_embedding_artifacts_count_every_modality_and_cut_long_problem_lists():
    summary = {
        "features_dir": "/out/features",
        "files": {"text": "/out/features/text.parquet", "fused": "/out/features/fused.parquet"},
        "counts": {
            "text": {"total": 10, "computed": 4, "reused": 6, "failed": 1},
            "fused": {"total": 10, "computed": 10, "reused": 0, "failed": 1},
        },
        "problems": 3,
        "problem_examples": [{"item_id": "i7", "modality": "text", "problem": "empty text"}],
        "timings_seconds": {"text": 1.5},
        "cached": False,
    }
    artifacts = embedding_artifacts(summary)
    assert artifacts.table == [
        {"modality": "text", "total": 10, "computed": 4, "reused": 6, "failed": 1, "seconds": 1.5},
        {"modality": "fused", "total": 10, "computed": 10, "reused": 0, "failed": 1, "seconds": None},
    ]
    assert "item_id: i7, modality: text, problem: empty text" in artifacts.markdown
    assert "and 2 more" in artifacts.markdown
    assert "| text | 10 | 4 | 6 | 1 | 1.5000 |" in artifacts.markdown


def test_ranker_artifacts_hold_every_source_and_the_final_list(trained):
    _, summary = trained
    artifacts = ranker_artifacts(summary)
    rows = {row["source"]: row for row in artifacts.table}
    assert set(summary["metrics"]) <= set(rows)
    assert rows["final"]["ndcg@10"] == round(summary["metrics"]["final"]["ndcg@10"], 4)
    assert rows["ease"]["validation_ndcg"] == round(summary["models"]["ease"]["validation_ndcg"], 4)
    assert f"Selected model: **{summary['selected_model']}**" in artifacts.markdown


def test_artifact_keys_are_stable_lowercase_dashes(trained):
    _, summary = trained
    embeddings = {"features_dir": "f", "files": {}, "counts": {}, "problems": 0}
    batch = {"recommendations": "r", "selected_model": "ease", "sources": ["ease"], "counts": {"users": 1}}
    built = [
        embedding_artifacts(embeddings),
        ranker_artifacts(summary),
        batch_artifacts(batch),
        nightly_artifacts([{"step": "report", "status": "ran"}], {"report": "r"}),
    ]
    keys = [key for artifacts in built for key in (artifacts.markdown_key, artifacts.table_key)]
    assert len(set(keys)) == len(keys) == 8
    assert all(ARTIFACT_KEY.match(key) for key in keys), keys


def test_embeddings_flow_answers_from_the_cache_until_its_inputs_change(
    prefect_test_api, tiny_flow_inputs, tmp_path
):
    source, config_path = tiny_flow_inputs
    catalogue = shutil.copytree(source, tmp_path / "catalogue")
    arguments = (str(catalogue), str(tmp_path / "out"), str(config_path))

    first = nightly_embeddings(*arguments)
    second = nightly_embeddings(*arguments)
    assert (first["cached"], second["cached"]) == (False, True)
    assert {name: counts["total"] for name, counts in second["counts"].items()} == {
        name: counts["total"] for name, counts in first["counts"].items()
    }
    assert all(counts["computed"] == 0 for counts in second["counts"].values())
    rows = _artifact_rows("embedding-counts")
    assert {row["modality"] for row in rows} == {"kg", "fused"}

    kg_file = Path(first["files"]["kg"])
    kg_file.unlink()
    recomputed = nightly_embeddings(*arguments)
    assert not recomputed["cached"] and kg_file.is_file()

    items = catalogue / "items.parquet"
    later = items.stat().st_mtime + 60
    os.utime(items, (later, later))
    assert nightly_embeddings(*arguments)["cached"], "the same bytes are the same data"
    interactions = catalogue / "interactions.parquet"
    pd.read_parquet(interactions).iloc[:-1].to_parquet(interactions, index=False)
    changed = nightly_embeddings(*arguments)
    assert not changed["cached"]
    assert changed["counts"]["kg"]["reused"] == changed["counts"]["kg"]["total"]


def test_nightly_flow_trains_when_due_and_otherwise_only_recommends(
    prefect_test_api, tiny_flow_inputs, tmp_path
):
    catalogue, config_path = tiny_flow_inputs
    out_dir = tmp_path / "run"
    arguments = (str(catalogue), str(out_dir), str(config_path))

    first = nightly(*arguments)
    assert first["retrained"] and first["model_age_days"] is None
    assert "final" in first["metrics"]
    assert Path(first["lists"]) == out_dir / "lists" / "recommendations.parquet"
    assert Path(first["lists"]).is_file() and Path(first["report"]).is_file()
    trained_at = (out_dir / "run.json").stat().st_mtime_ns
    steps = {row["step"]: row["status"] for row in _artifact_rows("nightly-steps")}
    assert steps["batch-recommend"] == "from training" and steps["report"] == "unchanged"
    assert Path(first["lists"]).read_bytes() == (out_dir / "recommendations.parquet").read_bytes()

    second = nightly(*arguments)
    assert not second["retrained"] and second["metrics"] is None
    assert 0 <= second["model_age_days"] < 1
    assert (out_dir / "run.json").stat().st_mtime_ns == trained_at
    steps = {row["step"]: row["status"] for row in _artifact_rows("nightly-steps")}
    assert steps == {
        "nightly-embeddings": "cached",
        "train-ranker": "skipped",
        "batch-recommend": "ran",
        "report": "unchanged",
    }
    built, published = pd.read_parquet(second["lists"]), pd.read_parquet(out_dir / "recommendations.parquet")
    key = ["user_id", "rank", "item_id"]
    pd.testing.assert_frame_equal(built[key], published[key])  # a batch on the same data rebuilds them
    np.testing.assert_allclose(built["score"], published["score"], rtol=1e-5)

    forced = nightly(*arguments, retrain_after_days=0)
    assert forced["retrained"]
    assert (out_dir / "run.json").stat().st_mtime_ns > trained_at


def test_batch_flow_without_a_model_fails_naming_train_ranker(prefect_test_api, tiny_flow_inputs, tmp_path):
    catalogue, config_path = tiny_flow_inputs
    with pytest.raises(ModelNotTrainedError) as raised:
        batch_recommend(str(catalogue), str(tmp_path / "empty"), str(config_path))
    assert "train-ranker" in raised.value.hint


def test_flows_run_command_runs_a_flow_and_prints_its_summary(prefect_test_api, trained, tiny_flow_inputs):
    from m6rec.cli import app

    out_dir, _ = trained
    catalogue, config_path = tiny_flow_inputs
    command = [
        "flows",
        "run",
        "batch-recommend",
        str(catalogue),
        "--out",
        str(out_dir),
        "--config",
        str(config_path),
    ]
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout[result.stdout.index("{") :])
    assert printed["counts"]["list_rows"] == len(
        pd.read_parquet(out_dir / "lists" / "recommendations.parquet")
    )

    unknown = CliRunner().invoke(app, ["flows", "run", "weekly", str(catalogue), "--out", str(out_dir)])
    assert unknown.exit_code == 2 and "expected one of nightly" in unknown.output


def test_deployments_declare_schedules_trigger_and_parameters(monkeypatch):
    monkeypatch.setenv("M6REC_DATA_DIR", "/srv/shop")
    monkeypatch.delenv("M6REC_OUT_DIR", raising=False)
    monkeypatch.delenv("M6REC_CONFIG", raising=False)
    deployments = {deployment.name: deployment for deployment in runner_deployments(deployment_parameters())}
    assert list(deployments) == ["nightly-embeddings", "train-ranker", "batch-recommend", "nightly"]
    crons = {name: [schedule.schedule.cron for schedule in d.schedules] for name, d in deployments.items()}
    assert crons == {
        "nightly-embeddings": ["0 2 * * *"],
        "train-ranker": ["0 3 * * 0"],
        "batch-recommend": [],
        "nightly": [],
    }
    (trigger,) = deployments["batch-recommend"].triggers
    assert trigger.expect == {"prefect.flow-run.Completed"}
    assert trigger.match_related.root == {
        "prefect.resource.role": "deployment",
        "prefect.resource.name": "nightly-embeddings",
    }
    assert not any(d.triggers for name, d in deployments.items() if name != "batch-recommend")
    for deployment in deployments.values():
        assert deployment.parameters["data_dir"] == "/srv/shop"
        assert deployment.parameters["out_dir"] == "/outputs"
        assert deployment.parameters["config_path"] is None
        module, function = deployment.entrypoint.rsplit(".", 1)
        assert (
            getattr(importlib.import_module(module), function).name == deployment.flow_name == deployment.name
        )
    assert deployments["nightly"].parameters["retrain_after_days"] == 7

    pooled = runner_deployments(deployment_parameters("/d", "/o", "/c.yaml"), WORK_POOL)
    for deployment in pooled:
        assert deployment.work_pool_name == WORK_POOL
        assert deployment.job_variables == {"env": RUN_ENVIRONMENT}
        assert deployment.parameters["config_path"] == "/c.yaml"


def test_prefect_yaml_declares_the_same_deployments():
    declared = yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]
    assert [entry["name"] for entry in declared] == [spec.name for spec in DEPLOYMENTS]
    for entry, spec in zip(declared, DEPLOYMENTS, strict=True):
        module, function = spec.flow.split(":")
        assert entry["entrypoint"] == f"{module.replace('.', '/')}.py:{function}"
        assert [schedule["cron"] for schedule in entry.get("schedules", [])] == (
            [spec.cron] if spec.cron else []
        )
        assert entry["work_pool"]["name"] == WORK_POOL
        assert entry["work_pool"]["job_variables"] == {"env": RUN_ENVIRONMENT}
        assert entry["parameters"]["data_dir"] == "{{ $M6REC_DATA_DIR }}"
        assert entry["parameters"]["out_dir"] == "{{ $M6REC_OUT_DIR }}"
        for key, value in spec.parameters:
            assert entry["parameters"][key] == value
        triggers = entry.get("triggers", [])
        if spec.after:
            (trigger,) = triggers
            assert trigger["expect"] == ["prefect.flow-run.Completed"]
            assert trigger["match_related"] == {
                "prefect.resource.role": "deployment",
                "prefect.resource.name": spec.after,
            }
        else:
            assert triggers == []


@pytest.mark.parametrize("command", ["serve", "deploy"])
def test_serve_and_deploy_without_a_server_stop_with_a_hint(command, tmp_path):
    environment = {key: value for key, value in os.environ.items() if not key.startswith("PREFECT_API")} | {
        "PREFECT_HOME": str(tmp_path)
    }
    completed = subprocess.run(
        [sys.executable, "-m", "m6rec", "flows", command],
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 2
    assert completed.stderr.startswith(f"error: m6rec flows {command} needs a Prefect server"), (
        completed.stderr
    )
    assert "hint: start one with `prefect server start`" in completed.stderr
