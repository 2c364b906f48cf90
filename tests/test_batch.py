"""Batch recommendations from a trained model: reproduce the run on unchanged data, serve new users and
items, never damage the last good lists."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pandas as pd
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from m6rec.config import RunConfig  # noqa: E402
from m6rec.errors import M6RecError  # noqa: E402
from pipelines.batch import batch_recommend  # noqa: E402
from pipelines.run_folder import BATCH_REPORT, ModelNotTrainedError  # noqa: E402


@pytest.fixture(scope="module")
def trained(trained_demo_run, copy_trained_demo_run, tmp_path_factory):
    """(catalogue, RunResult) of the shared demo run (``conftest.trained_demo_run``): its catalogue, read
    only, and a copy of its run folder, since a batch brings the item embeddings there up to date in place."""
    run = copy_trained_demo_run(tmp_path_factory.mktemp("batch"))
    return trained_demo_run.catalogue, run.result


@pytest.fixture
def config(trained_demo_run) -> RunConfig:
    """The configuration the shared demo run was trained with, a fresh copy for each test."""
    return trained_demo_run.config()


def _same_lists(got: pd.DataFrame, expected: pd.DataFrame) -> None:
    assert list(got.columns) == list(expected.columns)
    pd.testing.assert_frame_equal(
        got.sort_values(["user_id", "rank"]).reset_index(drop=True),
        expected.sort_values(["user_id", "rank"]).reset_index(drop=True),
        check_exact=False,
        atol=1e-5,
    )


def test_batch_on_unchanged_data_keeps_the_training_lists_without_scoring(trained, tmp_path, config):
    catalogue, run = trained
    batch = batch_recommend(catalogue, run.out_dir, tmp_path / "lists", config)
    got = pd.read_parquet(batch.recommendations_path)
    _same_lists(got, pd.read_parquet(run.recommendations_path))
    summary = json.loads((tmp_path / "lists" / BATCH_REPORT).read_text())
    assert summary["selected_model"] == run.selected_model
    assert summary["counts"]["list_rows"] == len(got)
    assert summary["reused_lists"] and "timings_seconds" not in summary, "nothing was scored"


def test_folded_in_sources_give_the_lists_of_refitted_ones_on_unchanged_data(trained, tmp_path, config):
    """Every user scored again, once by the saved sources folded into the same data and once by sources
    refitted on it: the same lists, and both those of the training run."""
    catalogue, run = trained
    model = shutil.copytree(run.out_dir, tmp_path / "model", symlinks=True)
    (model / "index" / "user_histories.parquet").unlink()  # no earlier lists to keep: score everyone
    folded = batch_recommend(catalogue, model, tmp_path / "folded", config)
    refitted = batch_recommend(
        catalogue, model, tmp_path / "refitted", config.replace(batch=config.batch.replace(incremental=False))
    )
    assert folded.summary["sources_mode"] == "fold-in" and refitted.summary["sources_mode"] == "refit"
    assert folded.summary["counts"]["users_scored"] == folded.summary["counts"]["users"]
    expected = pd.read_parquet(run.recommendations_path)
    _same_lists(pd.read_parquet(folded.recommendations_path), expected)
    _same_lists(pd.read_parquet(refitted.recommendations_path), expected)


def test_only_users_with_new_interactions_are_scored_again(trained, tmp_path, config):
    catalogue, run = trained
    data = shutil.copytree(catalogue, tmp_path / "data")
    interactions = pd.read_parquet(data / "interactions.parquet")
    first = batch_recommend(data, run.out_dir, tmp_path / "lists", config)
    before = pd.read_parquet(first.recommendations_path)
    changed_user = before["user_id"].iloc[0]
    new_item = before.loc[before["user_id"] == changed_user, "item_id"].iloc[0]
    extra = interactions.iloc[[0]].assign(user_id=changed_user, item_id=new_item)
    pd.concat([interactions, extra]).to_parquet(data / "interactions.parquet")

    second = batch_recommend(data, run.out_dir, tmp_path / "lists", config)
    counts = second.summary["counts"]
    assert counts["users_scored"] == 1 and counts["users_kept"] == counts["users"] - 1
    after = pd.read_parquet(second.recommendations_path)
    assert new_item not in set(after.loc[after["user_id"] == changed_user, "item_id"]), "now seen"
    others = before[before["user_id"] != changed_user]
    _same_lists(after[after["user_id"] != changed_user], others)
    third = batch_recommend(data, run.out_dir, tmp_path / "lists", config)
    assert third.summary["reused_lists"], "nothing changed since the second batch"


def test_new_interactions_users_and_items_reach_the_lists(trained, tmp_path, config):
    catalogue, run = trained
    data = tmp_path / "data"
    shutil.copytree(catalogue, data)
    interactions = pd.read_parquet(data / "interactions.parquet")
    users = pd.read_parquet(data / "users.parquet")
    newcomer_items = interactions["item_id"].value_counts().index[:3].tolist()
    newcomer = pd.DataFrame({"user_id": "user-new", "item_id": newcomer_items})
    for column in interactions.columns.difference(newcomer.columns):
        newcomer[column] = interactions[column].iloc[0]
    pd.concat([interactions, newcomer[interactions.columns]]).to_parquet(data / "interactions.parquet")
    no_history = users.iloc[[0]].assign(user_id="user-no-history")
    pd.concat([users, no_history]).to_parquet(data / "users.parquet")

    batch = batch_recommend(data, run.out_dir, tmp_path / "lists", config)
    lists = pd.read_parquet(batch.recommendations_path)
    mine = lists[lists["user_id"] == "user-new"]
    assert len(mine) == config.top_k
    assert not set(mine["item_id"]) & set(newcomer_items), "seen items must not be recommended"
    assert len(lists[lists["user_id"] == "user-no-history"]) == config.top_k
    assert batch.summary["counts"]["users_without_history"] >= 1
    assert batch.summary["counts"]["users"] == run.summary["counts"]["users"] + 2


def test_a_failed_batch_keeps_the_last_good_lists(trained, tmp_path, config):
    catalogue, run = trained
    out = tmp_path / "lists"
    batch_recommend(catalogue, run.out_dir, out, config)
    before = (out / "recommendations.parquet").read_bytes()
    broken = tmp_path / "broken"
    shutil.copytree(catalogue, broken)
    (broken / "interactions.parquet").write_text("not parquet")
    with pytest.raises(M6RecError, match="interactions"):
        batch_recommend(broken, run.out_dir, out, config)
    assert (out / "recommendations.parquet").read_bytes() == before
    assert not [path for path in out.iterdir() if path.name.startswith(".staging")]


def test_a_folder_without_a_model_is_named_with_a_hint(tmp_path, trained, config):
    catalogue, _ = trained
    with pytest.raises(ModelNotTrainedError, match="model.json is missing") as raised:
        batch_recommend(catalogue, tmp_path / "empty", config=config)
    assert "m6rec run" in raised.value.hint


def test_reserved_places_bring_new_items_into_the_lists_and_say_so(trained, tmp_path, config):
    catalogue, run = trained
    interacted = set(pd.read_parquet(catalogue / "interactions.parquet")["item_id"].astype(str))
    plain = pd.read_parquet(
        batch_recommend(catalogue, run.out_dir, tmp_path / "plain", config).recommendations_path
    )
    config.ranker.new_item_slots, config.ranker.new_item_slot_spacing = 2, 5
    lists = pd.read_parquet(
        batch_recommend(catalogue, run.out_dir, tmp_path / "slots", config).recommendations_path
    )

    placed = lists[lists["new_item_place"]]
    assert len(placed) > 0 and set(placed["rank"]) <= {5, 10}
    assert not set(placed["item_id"]) & interacted, "only items without interactions take reserved places"
    new_in_lists = (~lists["item_id"].isin(interacted)).sum()
    assert new_in_lists > (~plain["item_id"].isin(interacted)).sum()
    new_per_user = (~lists["item_id"].isin(interacted)).groupby(lists["user_id"]).sum()
    assert new_per_user.min() >= min(2, new_per_user.max())
    assert not lists.duplicated(["user_id", "item_id"]).any()


def test_scoring_users_in_chunks_gives_the_lists_of_scoring_them_at_once(trained, tmp_path, config):
    """The batch streams over user chunks (one Parquet row group each); chunk size changes nothing."""
    import pyarrow.parquet as pq

    from ranker.features import read_feature_table

    catalogue, run = trained
    whole = batch_recommend(catalogue, run.out_dir, tmp_path / "whole", config.replace(user_chunk=100_000))
    chunked = batch_recommend(catalogue, run.out_dir, tmp_path / "chunked", config.replace(user_chunk=7))
    assert pq.ParquetFile(chunked.recommendations_path).num_row_groups > 1
    assert pq.ParquetFile(whole.recommendations_path).num_row_groups == 1
    got, expected = pd.read_parquet(chunked.recommendations_path), pd.read_parquet(whole.recommendations_path)
    pd.testing.assert_frame_equal(got.drop(columns="score"), expected.drop(columns="score"))
    np.testing.assert_allclose(got["score"], expected["score"], rtol=1e-6)
    # Pair similarities go through a dense block or row by row depending on the chunk's shape: the same
    # float32 dot products summed in another order (differences up to about 1e-6).
    pd.testing.assert_frame_equal(
        read_feature_table(tmp_path / "chunked" / "ranker_features.parquet"),
        read_feature_table(tmp_path / "whole" / "ranker_features.parquet"),
        check_exact=False,
        rtol=1e-5,
        atol=1e-5,
    )
    assert chunked.summary["counts"] == whole.summary["counts"]


def _file_bytes(root) -> dict:
    return {path.relative_to(root): path.read_bytes() for path in root.rglob("*") if path.is_file()}


def test_a_batch_publishes_a_new_generation_of_the_model_folder_and_rollback_restores_the_last(
    trained, tmp_path, config, m6rec_main
):
    """The default lists folder (MODEL/lists) is a generation of the model folder: the batch's generation
    starts as links to the trained one's files, never writes into them, and rollback publishes the
    training lists again."""
    catalogue, run = trained
    model = shutil.copytree(run.out_dir, tmp_path / "model", symlinks=True)
    data = shutil.copytree(catalogue, tmp_path / "data")
    interactions = pd.read_parquet(data / "interactions.parquet")
    trained_generation = (model / "current").resolve()
    trained_files = _file_bytes(trained_generation)
    training_lists = pd.read_parquet(model / "recommendations.parquet")

    user = training_lists["user_id"].iloc[0]
    extra = interactions.iloc[[0]].assign(user_id=user, item_id=training_lists["item_id"].iloc[0])
    pd.concat([interactions, extra]).to_parquet(data / "interactions.parquet")
    batch = batch_recommend(data, model, None, config)

    assert batch.out_dir == model / "lists"
    published = (model / "current").resolve()
    assert published != trained_generation and published.parent == trained_generation.parent
    assert batch.summary["counts"]["users_scored"] == 1
    assert _file_bytes(trained_generation) == trained_files, "the trained generation is never written"
    assert (published / "model.json").stat().st_ino == (trained_generation / "model.json").stat().st_ino
    lists = pd.read_parquet(model / "lists" / "recommendations.parquet")
    assert len(lists) == len(training_lists)

    again = batch_recommend(data, model, None, config)
    assert again.summary["reused_lists"] and (model / "current").resolve() == published, "no new generation"

    code, out, _ = m6rec_main("rollback", model, "--json")
    assert code == 0 and json.loads(out)["published"] == trained_generation.name
    assert (model / "current").resolve() == trained_generation
    assert not (model / "lists").exists(), "the trained generation had no batch lists"
    _same_lists(pd.read_parquet(model / "recommendations.parquet"), training_lists)
