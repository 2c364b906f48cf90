"""The run folder's one owner: training writes the model manifest (model.json) that the batch serves from;
the manifest carries the configuration and a fingerprint of the data, and a version this code does not
know is refused with one line."""

from __future__ import annotations

import json
import logging
from datetime import datetime

import pandas as pd
import pytest

from m6rec.config import RunConfig
from m6rec.data.fingerprint import data_fingerprint
from pipelines.batch import batch_recommend
from pipelines.run import run_pipeline
from pipelines.run_folder import ModelNotTrainedError, RunFolder
from pipelines.trained_model import MANIFEST_SCHEMA_VERSION, ModelManifest, config_digest


def _dataset(directory, extra_rows: int = 0):
    directory.mkdir(parents=True, exist_ok=True)
    rows = [(f"u{user}", f"i{(user * 3 + step) % 12}") for user in range(10) for step in range(5)]
    rows += [(f"u{row}", f"i{(row + 7) % 12}") for row in range(extra_rows)]
    pd.DataFrame(rows, columns=["user_id", "item_id"]).drop_duplicates().to_csv(
        directory / "interactions.csv", index=False
    )
    return directory


def _config(**changes) -> RunConfig:
    return RunConfig(
        top_k=5,
        baselines={"models": ["popularity", "itemknn"]},
        embeddings={"modalities": []},
        ranker={"enabled": False},
    ).replace(**changes)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("run-folder")
    data = _dataset(root / "data")
    config = _config()
    return data, run_pipeline(data, root / "run", config), config


def test_training_writes_a_manifest_with_its_configuration_and_data(trained):
    data, result, config = trained
    folder = RunFolder(result.out_dir)
    manifest = ModelManifest.read(folder.model_manifest)
    report = folder.read_run_report()
    assert manifest.schema_version == MANIFEST_SCHEMA_VERSION
    assert manifest.config_digest == config_digest(config)
    assert manifest.run_config() == config
    assert manifest.data_fingerprint == data_fingerprint(data)
    assert manifest.source_params == {name: entry["params"] for name, entry in report["models"].items()}
    assert manifest.selected_model == report["selected_model"] and not manifest.ranker_used
    assert datetime.fromisoformat(manifest.trained_at).tzinfo is not None
    assert "trained_at" not in report, "run.json stays a report"
    assert set(report["peak_rss_mib"]) == set(report["timings_seconds"])
    assert all(value > 0 for value in report["peak_rss_mib"].values())


def test_each_stage_reports_its_own_peak_memory(monkeypatch):
    import numpy as np

    from m6rec import progress

    clock = progress.StageClock()
    block = np.ones((4096, 8192))  # 256 MiB, freed before the stage ends: the stage's peak still holds it
    del block
    clock.lap("large")
    assert clock.report()["peak_rss_mib"]["large"] > 256

    # The bookkeeping, with a fake memory gauge: each lap reads the peak since the previous lap, then resets it.
    gauge = {"peak": 0.0}
    monkeypatch.setattr(progress, "_peak_rss_mib", lambda: gauge["peak"])
    monkeypatch.setattr(progress, "_reset_peak_rss", lambda: gauge.update(peak=100.0) or True)
    clock = progress.StageClock()
    gauge["peak"] = 900.0
    clock.lap("embeddings")
    clock.lap("ranking")
    assert clock.report()["peak_rss_mib"] == {"embeddings": 900.0, "ranking": 100.0}
    assert clock.report()["peak_rss_kind"] == "per stage"


def test_the_data_fingerprint_follows_the_tables(tmp_path):
    first = data_fingerprint(_dataset(tmp_path / "a"))
    assert data_fingerprint(_dataset(tmp_path / "b")) == first
    assert data_fingerprint(_dataset(tmp_path / "c", extra_rows=3)) != first


def test_the_batch_serves_with_the_trained_configuration(trained, tmp_path, caplog):
    data, result, _ = trained
    lists = batch_recommend(data, result.out_dir, tmp_path / "lists")
    per_user = pd.read_parquet(lists.recommendations_path).groupby("user_id").size()
    assert per_user.max() == 5, "top_k of the trained configuration"
    assert json.loads(RunFolder(tmp_path / "lists").batch_report.read_text())["model_config_digest"] == (
        ModelManifest.read(RunFolder(result.out_dir).model_manifest).config_digest
    )

    with caplog.at_level(logging.WARNING, logger="m6rec"):
        shorter = batch_recommend(data, result.out_dir, tmp_path / "short", _config(top_k=3))
    assert pd.read_parquet(shorter.recommendations_path).groupby("user_id").size().max() == 3
    assert not [record for record in caplog.records if record.levelno >= logging.WARNING], (
        "a serving key may change without a warning"
    )

    caplog.clear()
    changed = _config(baselines={"models": ["popularity"], "validation_ratio": 0.3})
    with caplog.at_level(logging.WARNING, logger="m6rec"):
        batch_recommend(data, result.out_dir, tmp_path / "changed", changed)
    warned = [
        record.getMessage() for record in caplog.records if "differs from the one" in record.getMessage()
    ]
    assert len(warned) == 1, "said once"
    assert "baselines.models, baselines.validation_ratio;" in warned[0], "naming the keys"


def test_serving_settings_come_from_the_field_metadata_and_replace_as_a_whole():
    trained = _config()
    today = _config(top_k=3, keep_generations=9, ranker={"new_item_slots": 2}, seed=5)
    served = trained.with_serving(today.serving())
    assert (served.top_k, served.keep_generations, served.ranker.new_item_slots) == (3, 9, 2)
    assert served.seed == trained.seed, "not a serving setting: the trained value stays"
    assert set(today.serving().run) == {
        "top_k",
        "candidate_depth",
        "user_chunk",
        "skip_invalid_rows",
        "keep_generations",
        "batch",
        "dask",
    }
    assert set(today.serving().ranker) == {"new_item_slots", "new_item_slot_spacing"}
    # What changes no list or model stays out of the digest; what shapes the lists does not.
    assert config_digest(trained.replace(keep_generations=9, dask={"partition_users": 7})) == config_digest(
        trained
    )
    assert config_digest(trained.replace(top_k=3)) != config_digest(trained)


def test_a_manifest_of_an_unknown_schema_version_is_refused_in_one_line(trained, tmp_path):
    data, result, _ = trained
    import shutil

    copy = shutil.copytree(result.out_dir, tmp_path / "future", symlinks=True)
    manifest = json.loads((copy / "model.json").read_text())
    manifest["schema_version"] = MANIFEST_SCHEMA_VERSION + 1
    (copy / "model.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelNotTrainedError) as raised:
        batch_recommend(data, copy)
    message = str(raised.value)
    assert "\n" not in message
    assert (
        f"schema version {MANIFEST_SCHEMA_VERSION + 1}" in message
        and f"reads version {MANIFEST_SCHEMA_VERSION}" in message
    )

    (copy / "model.json").write_text("{not json")
    with pytest.raises(ModelNotTrainedError, match="cannot read the model manifest"):
        batch_recommend(data, copy)
