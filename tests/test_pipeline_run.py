"""End-to-end tests of the main job (`pipelines.run.run_pipeline`) and its output contract."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest

from m6rec.config import BaselineConfig, EmbeddingConfig, RankerConfig, RunConfig
from m6rec.data.splits import random_split, temporal_split
from m6rec.errors import ConfigError
from pipelines import run_folder as run_folder_module
from pipelines.run import is_cut_in_time, run_pipeline
from pipelines.run_folder import RunFolder

ML100K = Path("../shared/data/ml-100k")


@pytest.fixture(scope="module")
def movielens_dir(tmp_path_factory) -> Path:
    if not (ML100K / "u.data").exists():
        pytest.skip("../shared/data/ml-100k is not available")
    directory = tmp_path_factory.mktemp("ml100k")
    ratings = pd.read_csv(ML100K / "u.data", sep="\t", names=["user_id", "item_id", "rating", "timestamp"])
    ratings.to_csv(directory / "interactions.csv", index=False)
    return directory


@pytest.fixture(scope="module")
def movielens_run(movielens_dir, tmp_path_factory):
    config = RunConfig(
        split="random:0.25",
        baselines=BaselineConfig(models=["popularity", "ease"], params={"ease": {"l2": 500.0}}),
        ranker=RankerConfig(enabled=False),
    )
    out = tmp_path_factory.mktemp("ml100k-run")
    return run_pipeline(movielens_dir, out, config)


def test_ease_on_movielens_reaches_published_level(movielens_run):
    metrics = json.loads((movielens_run.out_dir / "metrics.json").read_text())
    assert set(metrics) == {"popularity", "ease", "final"}
    assert metrics["ease"]["ndcg@10"] >= 0.47
    assert metrics["ease"]["ndcg@10"] > metrics["popularity"]["ndcg@10"] + 0.15
    assert metrics["final"]["n_users"] == 943


def test_metrics_json_agrees_with_an_independent_sql_computation(movielens_run):
    """NDCG@10, recall@10 and precision@10 recomputed in DuckDB from the two written Parquet files."""
    out = movielens_run.out_dir
    query = f"""
        WITH recs AS (SELECT * FROM '{out / "recommendations.parquet"}' WHERE rank <= 10),
        test AS (SELECT DISTINCT user_id, item_id FROM '{out / "test_interactions.parquet"}'),
        per_user AS (
            SELECT t.user_id,
                   COUNT(*) AS n_relevant,
                   (SELECT COALESCE(SUM(1.0 / log2(r.rank + 1)), 0) FROM recs r JOIN test t2
                      ON r.user_id = t2.user_id AND r.item_id = t2.item_id WHERE r.user_id = t.user_id) AS dcg,
                   (SELECT COUNT(*) FROM recs r JOIN test t2
                      ON r.user_id = t2.user_id AND r.item_id = t2.item_id WHERE r.user_id = t.user_id) AS hits
            FROM test t GROUP BY t.user_id
        ),
        ideal AS (
            SELECT user_id, (SELECT SUM(1.0 / log2(i + 1)) FROM range(1, LEAST(n_relevant, 10) + 1) AS g(i)) AS idcg
            FROM per_user
        )
        SELECT AVG(dcg / idcg), AVG(hits / n_relevant), AVG(hits / 10.0)
        FROM per_user JOIN ideal USING (user_id)
    """
    ((ndcg, recall, precision),) = duckdb.sql(query).fetchall()
    final = json.loads((out / "metrics.json").read_text())["final"]
    assert final["ndcg@10"] == pytest.approx(ndcg, abs=1e-9)
    assert final["recall@10"] == pytest.approx(recall, abs=1e-9)
    assert final["precision@10"] == pytest.approx(precision, abs=1e-9)


def test_recommendations_contract(movielens_run, movielens_dir):
    recs = pd.read_parquet(movielens_run.recommendations_path)
    assert list(recs.columns)[:5] == ["user_id", "item_id", "rank", "score", "source"]
    assert "sources" in recs.columns and f"{movielens_run.selected_model}_rank" in recs.columns, (
        "a fixed schema"
    )
    assert recs.groupby("user_id").size().eq(10).all()
    assert recs["user_id"].nunique() == 943
    train = pd.read_csv(movielens_dir / "interactions.csv", dtype=str)
    held_out = pd.read_parquet(movielens_run.out_dir / "test_interactions.parquet")
    seen = train.merge(held_out, how="left", on=["user_id", "item_id"], indicator=True)
    seen = seen[seen["_merge"] == "left_only"][["user_id", "item_id"]]
    assert recs.merge(seen, on=["user_id", "item_id"]).empty, "seen training items must not be recommended"
    ordered = recs.sort_values(["user_id", "rank"])
    assert (ordered.groupby("user_id")["score"].diff().dropna() <= 1e-6).all()


def _planted_dataset(directory: Path) -> Path:
    """Two user groups, each liking its own half of 20 items; 'u-new' exists only in users.csv."""
    rows = []
    for user in range(12):
        group = user % 2
        for item in range(10):
            if (user + item) % 5:
                rows.append((f"u-{user:02d}", f"item-{group}-{item}", 1700000000 + user * 100 + item))
    directory.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"]).to_csv(
        directory / "interactions.csv", index=False
    )
    users = [f"u-{user:02d}" for user in range(12)] + ["u-new"]
    pd.DataFrame({"user_id": users, "segment": ["a"] * 13}).to_csv(directory / "users.csv", index=False)
    return directory


def test_run_without_test_set_serves_every_user_and_writes_no_metrics(tmp_path):
    data = _planted_dataset(tmp_path / "data")
    config = RunConfig(
        top_k=2,
        baselines=BaselineConfig(models=["popularity", "itemknn"]),
        ranker=RankerConfig(enabled=False),
    )
    result = run_pipeline(data, tmp_path / "out", config)
    assert not (tmp_path / "out" / "metrics.json").exists()
    recs = pd.read_parquet(result.recommendations_path)
    assert set(recs["user_id"]) == {f"u-{user:02d}" for user in range(12)} | {"u-new"}
    assert set(recs.loc[recs["user_id"] == "u-new", "source"]) == {"popularity"}
    known = recs[recs["user_id"] != "u-new"]
    own_group = known.apply(
        lambda row: row["item_id"].split("-")[1] == str(int(row["user_id"][2:]) % 2), axis=1
    )
    assert own_group.all(), "each user has exactly two unseen items of their own group"


def test_failed_run_leaves_previous_outputs_untouched(tmp_path, monkeypatch):
    data = _planted_dataset(tmp_path / "data")
    config = RunConfig(
        split="leave-last-out:1",
        baselines=BaselineConfig(models=["popularity"]),
        ranker=RankerConfig(enabled=False),
    )
    out = tmp_path / "out"
    run_pipeline(data, out, config)

    def published() -> dict:
        root = RunFolder.published(out).root
        return {path.relative_to(out): path.read_bytes() for path in root.rglob("*") if path.is_file()}

    before = published()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(run_folder_module, "write_json", crash)
    with pytest.raises(OSError, match="disk full"):
        run_pipeline(data, out, config)
    assert published() == before
    assert (out / "recommendations.parquet").read_bytes() == before[
        Path("generations/000001/recommendations.parquet")
    ]


def test_same_seed_gives_identical_recommendations(tmp_path):
    data = _planted_dataset(tmp_path / "data")
    config = RunConfig(
        split="random:0.25",
        seed=3,
        baselines=BaselineConfig(
            models=["popularity", "ials"], params={"ials": {"factors": 4, "iterations": 3}}
        ),
        ranker=RankerConfig(enabled=False),
    )
    first = run_pipeline(data, tmp_path / "a", config)
    second = run_pipeline(data, tmp_path / "b", config)
    pd.testing.assert_frame_equal(
        pd.read_parquet(first.recommendations_path), pd.read_parquet(second.recommendations_path)
    )
    assert np.isclose(first.metrics["final"]["ndcg@10"], second.metrics["final"]["ndcg@10"])


def test_a_test_set_counts_as_temporal_only_when_it_follows_each_users_training():
    frame = pd.DataFrame(
        [
            (f"u{user}", f"i{item}", 1_700_000_000 + user * 7 + item * 3600)
            for user in range(30)
            for item in range(12)
        ],
        columns=["user_id", "item_id", "timestamp"],
    )
    later_train, later_test = temporal_split(frame, 0.25)
    random_train, random_test = random_split(frame, 0.25, seed=0)

    assert is_cut_in_time(later_train, later_test)
    assert not is_cut_in_time(random_train, random_test)
    assert not is_cut_in_time(later_train, later_test.assign(user_id="someone-new"))


@pytest.mark.parametrize(
    ("test_cut", "fold_split", "expected"),
    [("random", "auto", "random"), ("temporal", "auto", "temporal"), ("random", "temporal", "temporal")],
)
def test_the_fold_is_cut_the_way_the_test_file_was(tmp_path, test_cut, fold_split, expected):
    data = _planted_dataset(tmp_path / "data")
    interactions = pd.read_csv(data / "interactions.csv")
    split = (
        temporal_split(interactions, 0.25)
        if test_cut == "temporal"
        else random_split(interactions, 0.25, seed=1)
    )
    split[0].to_csv(data / "interactions.csv", index=False)
    split[1].to_csv(data / "test.csv", index=False)
    config = RunConfig(
        fold_split=fold_split,
        baselines=BaselineConfig(models=["popularity"]),
        ranker=RankerConfig(enabled=False),
    )

    result = run_pipeline(data, tmp_path / "out", config)

    assert result.summary["fold_split"] == expected


def test_fold_split_must_be_known():
    with pytest.raises(ConfigError, match="fold_split"):
        RunConfig(fold_split="sideways")


def test_time_order_sources_join_the_ranker_only_when_interactions_have_timestamps(tmp_path):
    data = _planted_dataset(tmp_path / "data")
    config = RunConfig(
        split="random:0.25",
        baselines=BaselineConfig(models=["popularity", "itemknn"]),
        embeddings=EmbeddingConfig(modalities=[]),
        ranker=RankerConfig(extra_sources=["trend", "sequential"], params={"n_estimators": 20}),
    )

    timed = run_pipeline(data, tmp_path / "timed", config)
    interactions = pd.read_csv(data / "interactions.csv")
    interactions.drop(columns="timestamp").to_csv(data / "interactions.csv", index=False)
    untimed = run_pipeline(data, tmp_path / "untimed", config)

    assert {"trend", "sequential"} <= set(timed.summary["models"])
    assert not {"trend", "sequential"} & set(untimed.summary["models"])


def test_a_run_scoring_users_in_chunks_gives_the_lists_and_metrics_of_scoring_them_at_once(tmp_path):
    """The run streams its final lists over user chunks (one row group each) and adds the metrics chunk by
    chunk; chunk size changes nothing."""
    import pyarrow.parquet as pq

    from ranker.features import read_feature_table

    data = _planted_dataset(tmp_path / "data")
    config = RunConfig(
        split="random:0.25",
        baselines=BaselineConfig(models=["popularity", "itemknn", "ease"]),
        embeddings=EmbeddingConfig(modalities=[]),
        ranker=RankerConfig(params={"n_estimators": 20}),
    )
    whole = run_pipeline(data, tmp_path / "whole", config)
    chunked = run_pipeline(data, tmp_path / "chunked", config.replace(user_chunk=3))
    assert pq.ParquetFile(chunked.recommendations_path).num_row_groups > 1
    pd.testing.assert_frame_equal(
        pd.read_parquet(chunked.recommendations_path), pd.read_parquet(whole.recommendations_path)
    )
    pd.testing.assert_frame_equal(
        read_feature_table(tmp_path / "chunked" / "ranker_features.parquet"),
        read_feature_table(tmp_path / "whole" / "ranker_features.parquet"),
        check_exact=False,
        atol=1e-6,
    )
    assert chunked.metrics.keys() == whole.metrics.keys()
    for name, metrics in whole.metrics.items():
        assert chunked.metrics[name] == pytest.approx(metrics, rel=1e-9), name


def test_the_listed_feature_table_holds_the_rows_of_the_published_lists(tmp_path):
    from ranker.features import read_feature_table

    data = _planted_dataset(tmp_path / "data")
    config = RunConfig(
        top_k=3,
        baselines=BaselineConfig(models=["popularity", "itemknn"]),
        embeddings=EmbeddingConfig(modalities=[]),
        ranker=RankerConfig(params={"n_estimators": 20}, feature_table="listed"),
    )
    result = run_pipeline(data, tmp_path / "out", config)
    table = read_feature_table(tmp_path / "out" / "ranker_features.parquet")
    lists = pd.read_parquet(result.recommendations_path)
    users = pd.read_parquet(tmp_path / "out" / "index" / "users.parquet")["user_id"].to_numpy()
    items = pd.read_parquet(tmp_path / "out" / "index" / "items.parquet")["item_id"].to_numpy()
    rows = set(zip(users[table["user_row"]], items[table["item"]], strict=True))
    listed = set(zip(lists["user_id"], lists["item_id"], strict=True))
    assert rows == listed, (sorted(rows - listed)[:5], sorted(listed - rows)[:5], result.selected_model)
