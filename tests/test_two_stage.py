"""End to end: embeddings → candidate sources → LightGBM ranker → lists, on a small demo catalogue."""

from __future__ import annotations

import json
import os

import pandas as pd
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pipelines.run import run_pipeline  # noqa: E402
from ranker.features import check_feature_table, read_feature_table  # noqa: E402


@pytest.fixture(scope="module")
def two_stage_run(trained_demo_run, copy_trained_demo_run, tmp_path_factory):
    """The shared demo run (``conftest.trained_demo_run``: text, audio, KG and collaborative embeddings),
    and a second run of the same configuration on the same catalogue into a copy of its folder."""
    again = copy_trained_demo_run(tmp_path_factory.mktemp("two-stage"))
    second = run_pipeline(trained_demo_run.catalogue, again.run_dir, trained_demo_run.config())
    return trained_demo_run.catalogue, trained_demo_run.result, second


def test_every_feature_file_is_written_with_its_metadata(two_stage_run):
    _, result, _ = two_stage_run
    features = result.out_dir / "features"
    for name in ("text", "audio", "kg", "fused", "cf_items", "cf_users", "profile_text", "profile_fused"):
        frame = pd.read_parquet(features / f"{name}.parquet")
        assert len(frame) > 0, name
    assert (features / "fold" / "cf_items.parquet").exists()
    assert json.loads((features / "problems.json").read_text()) == []


def test_second_run_reuses_every_content_embedding(two_stage_run):
    _, first, second = two_stage_run
    first_counts = first.summary["embeddings"]["counts"]
    second_counts = second.summary["embeddings"]["counts"]
    for modality in ("text", "audio"):
        assert first_counts[modality]["computed"] == first_counts[modality]["total"] > 0
        assert second_counts[modality]["computed"] == 0
        assert second_counts[modality]["reused"] == second_counts[modality]["total"]


def test_lists_carry_provenance_and_metrics_carry_every_source(two_stage_run):
    _, result, _ = two_stage_run
    recs = pd.read_parquet(result.recommendations_path)
    assert {"user_id", "item_id", "rank", "score", "source", "sources"} <= set(recs.columns)
    assert any(column.endswith("_rank") and column != "rank" for column in recs.columns)
    assert recs["sources"].notna().mean() > 0.9
    metrics = json.loads((result.out_dir / "metrics.json").read_text())
    for source in ("popularity", "ease", "two_tower", "content", "kg_neighbours", "final"):
        assert source in metrics, source
    assert 0.0 < metrics["final"]["candidate_recall"] <= 1.0
    assert metrics["final"]["ndcg@10"] > metrics["popularity"]["ndcg@10"]


def test_ranker_is_saved_as_text_with_a_declared_feature_table(two_stage_run):
    _, result, _ = two_stage_run
    model = (result.out_dir / "ranker" / "model.txt").read_text()
    assert model.startswith("tree")
    table = read_feature_table(result.out_dir / "ranker_features.parquet")
    check_feature_table(table)
    assert {"cos_text", "cos_fused", "two_tower_dot", "kg_overlap"} <= set(table.columns)


def test_cold_items_reach_users_through_content(two_stage_run):
    catalogue, result, _ = two_stage_run
    cold = set(json.loads((catalogue / "catalogue.json").read_text())["cold_item_ids"])
    item_ids = pd.read_parquet(result.out_dir / "index" / "items.parquet")["item_id"].to_numpy()
    table = read_feature_table(result.out_dir / "ranker_features.parquet")
    proposed_by_content = set(item_ids[table.loc[table["content_rank"].notna(), "item"].to_numpy()])
    assert len(cold & proposed_by_content) >= len(cold) // 2
    assert result.metrics["content"]["recall@20"] > 0


def test_recommend_command_explains_one_users_list(two_stage_run):
    from pipelines.explain import explain_user

    _, result, _ = two_stage_run
    recs = pd.read_parquet(result.recommendations_path)
    user = (
        recs.loc[recs["source"] == "ranker", "user_id"].iloc[0]
        if (recs["source"] == "ranker").any()
        else None
    )
    user = user or recs["user_id"].iloc[0]
    explained = explain_user(result.out_dir, user)
    assert list(explained["item_id"]) == list(recs[recs["user_id"] == user].sort_values("rank")["item_id"])
    assert explained["reasons"].str.len().gt(0).all()
    assert "title" in explained.columns and explained["title"].notna().all()
    with pytest.raises(Exception, match="no recommendations"):
        explain_user(result.out_dir, "no-such-user")
