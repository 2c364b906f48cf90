"""The synthetic scale generator: exact counts, no repeated pairs, planted popularity skew and topic
preferences with known right answers, a directory ``load_dataset`` accepts, byte-identical files per seed,
and the ``m6rec datasets synth`` command."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from m6rec.data.dataset import load_dataset
from m6rec.data.synth import (
    SYNTH_JSON,
    SyntheticSpec,
    generate_synthetic_dataset,
    planted_user_topics,
    read_synth_manifest,
)
from m6rec.errors import ConfigError

# 3,000 items in 10 topics (300 each) keep even the heaviest users well inside their topic; small row
# chunks make the generator cut the users into several row groups.
SPEC = SyntheticSpec(users=2_000, items=3_000, interactions=30_000, seed=3, topics=10, rows_per_chunk=4_000)
FILES = ("interactions.parquet", "test.parquet", "items.parquet", "users.parquet", "columns.yaml", SYNTH_JSON)


@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory) -> Path:
    return generate_synthetic_dataset(tmp_path_factory.mktemp("synth") / "data", SPEC)


@pytest.fixture(scope="module")
def all_interactions(synthetic_dir) -> pd.DataFrame:
    """Training and test interactions together, with each item's category."""
    frame = pd.concat(
        [
            pd.read_parquet(synthetic_dir / "interactions.parquet"),
            pd.read_parquet(synthetic_dir / "test.parquet"),
        ]
    )
    items = pd.read_parquet(synthetic_dir / "items.parquet")
    return frame.merge(items[["item_id", "category"]], on="item_id", how="left", validate="many_to_one")


def test_counts_are_exact_and_pairs_distinct(synthetic_dir, all_interactions):
    assert len(all_interactions) == SPEC.interactions
    assert not all_interactions.duplicated(["user_id", "item_id"]).any()
    assert len(pd.read_parquet(synthetic_dir / "items.parquet")) == SPEC.items
    users = pd.read_parquet(synthetic_dir / "users.parquet")
    assert len(users) == SPEC.users and users["user_id"].is_unique
    per_user = all_interactions.groupby("user_id").size()
    assert set(per_user.index) == set(users["user_id"]), "every user has at least one interaction"
    assert per_user.max() <= SPEC.max_items_per_user
    counts = read_synth_manifest(synthetic_dir)["counts"]
    assert counts["interactions"] + counts["test_interactions"] == SPEC.interactions


def test_activity_is_skewed_but_every_user_is_there(all_interactions):
    per_user = all_interactions.groupby("user_id").size()
    assert per_user.min() >= 1
    assert per_user.max() > 5 * per_user.median(), "lognormal activity has a long tail"


def test_popularity_is_skewed(all_interactions):
    popularity = all_interactions["item_id"].value_counts().to_numpy()
    top_tenth = popularity[: SPEC.items // 10].sum() / len(all_interactions)
    assert top_tenth > 0.4  # Zipf s = 1 over 3,000 items gives about 0.55 after removing repeats


def test_users_concentrate_on_their_planted_topic(synthetic_dir, all_interactions):
    names = read_synth_manifest(synthetic_dir)["topics"]
    user_ids = sorted(all_interactions["user_id"].unique())
    user_topic = dict(zip(user_ids, np.array(names)[planted_user_topics(SPEC)], strict=True))
    own = all_interactions["category"].to_numpy() == all_interactions["user_id"].map(user_topic).to_numpy()
    # Expected: topic_affinity plus the catalogue draws that land in the topic, 0.7 + 0.3 / 10 = 0.73.
    assert own.mean() >= SPEC.topic_affinity - 0.03
    assert own.mean() <= SPEC.topic_affinity + 0.3 / SPEC.topics + 0.03


def test_item_text_reflects_the_topic(synthetic_dir):
    items = pd.read_parquet(synthetic_dir / "items.parquet")
    words = (
        items.assign(word=items["description"].str.lower().str.replace(r"[,.]", "", regex=True).str.split())
        .explode("word")
        .query("word not in ('with', 'and', 'for', 'fans')")
    )
    by_word = words.groupby(["word", "category"]).size().unstack(fill_value=0)
    # Four words in five come from the item's own topic and the rest from a random one of ten, so a word's
    # occurrences fall into its own topic's items 0.82 of the time (0.8 + 0.2 / 10 over 0.8 + 0.2).
    purity = by_word.max(axis=1).sum() / by_word.to_numpy().sum()
    assert 0.75 < purity < 0.9
    assert by_word.shape == (SPEC.topics * 24, SPEC.topics), "24 own words per topic"
    title_words = items["title"].str.split().str[:2].explode().str.lower()
    topics_per_title_word = items.loc[title_words.index, "category"].groupby(title_words.to_numpy()).nunique()
    assert (topics_per_title_word == 1).all(), "titles use only the item's own topic's words"
    assert items["title"].is_unique


def test_test_table_holds_each_users_latest_interactions(synthetic_dir):
    train = pd.read_parquet(synthetic_dir / "interactions.parquet")
    test = pd.read_parquet(synthetic_dir / "test.parquet")
    latest_train = train.groupby("user_id")["timestamp"].max()
    earliest_test = test.groupby("user_id")["timestamp"].min()
    assert (earliest_test >= latest_train.loc[earliest_test.index]).all()
    assert 0.08 < len(test) / SPEC.interactions < 0.12
    assert train["rating"].between(1, 5).all()
    window_end = SPEC.window_start + SPEC.window_days * 86_400
    assert train["timestamp"].between(SPEC.window_start, window_end).all()
    ordered = train.sort_values(["user_id", "timestamp"], kind="stable")
    assert ordered.index.equals(train.index), "rows are sorted by user, then time"


def test_load_dataset_accepts_it(synthetic_dir):
    dataset = load_dataset(synthetic_dir)
    assert dataset.report.merged_duplicate_interactions == 0
    assert len(dataset.interactions) + len(dataset.test) == SPEC.interactions
    assert dataset.item_columns.role("category") == "categorical"
    assert dataset.item_columns.role("description") == "text"
    assert set(dataset.item_columns.declared) == {"title", "description", "category", "brand"}


def test_same_seed_gives_byte_identical_files(tmp_path, synthetic_dir):
    again = generate_synthetic_dataset(tmp_path / "again", SPEC)
    for name in FILES:
        assert (again / name).read_bytes() == (synthetic_dir / name).read_bytes(), name
    other = generate_synthetic_dataset(tmp_path / "other", dataclasses.replace(SPEC, seed=4))
    assert (other / "interactions.parquet").read_bytes() != (
        synthetic_dir / "interactions.parquet"
    ).read_bytes()


def test_no_test_share_writes_no_test_table_and_removes_a_stale_one(tmp_path):
    out = tmp_path / "data"
    generate_synthetic_dataset(out, SyntheticSpec(users=50, items=40, interactions=300, test_share=0.2))
    assert (out / "test.parquet").exists()
    generate_synthetic_dataset(out, SyntheticSpec(users=50, items=40, interactions=300, test_share=0))
    assert not (out / "test.parquet").exists()
    assert len(pd.read_parquet(out / "interactions.parquet")) == 300


def test_smallest_catalogue_gives_every_user_one_item(tmp_path):
    out = generate_synthetic_dataset(tmp_path / "data", SyntheticSpec(users=30, items=2, interactions=30))
    frame = pd.read_parquet(out / "interactions.parquet")
    assert len(frame) == 30 and frame["user_id"].is_unique


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        ({"items": 1}, "items must be at least 2"),
        ({"interactions": 10}, "interactions (10) must be at least users (20)"),
        ({"interactions": 2_001}, "must be at most users × 0.5 × items (2000)"),
        ({"test_share": 1.0}, "test_share must be in [0, 1)"),
        ({"topic_affinity": 1.5}, "topic_affinity must be in [0, 1]"),
    ],
)
def test_bad_spec_is_a_config_error(tmp_path, settings, problem):
    spec = SyntheticSpec(**{"users": 20, "items": 200, "interactions": 100, **settings})
    with pytest.raises(ConfigError, match=re.escape(problem)):
        generate_synthetic_dataset(tmp_path / "data", spec)
    assert not (tmp_path / "data").exists()


def test_cli_writes_the_dataset_and_prints_json(tmp_path, m6rec_main):
    out = tmp_path / "data"
    args = ("datasets", "synth", "--out", out, "--users", 100, "--items", 50, "--interactions", 800)
    code, stdout, _ = m6rec_main(*args, "--seed", 5, "--test-share", 0.2, "--json")
    assert code == 0
    result = json.loads(stdout)
    assert result["out_dir"] == str(out)
    assert result["counts"]["users"] == 100 and result["counts"]["items"] == 50
    assert result["counts"]["interactions"] + result["counts"]["test_interactions"] == 800
    assert result["seconds"] >= 0
    assert read_synth_manifest(out)["spec"]["seed"] == 5
    code, stdout, _ = m6rec_main(*args)
    assert code == 0
    assert stdout.startswith(f"wrote a synthetic dataset to {out} in ") and "100 users, 50 items" in stdout


def test_cli_bad_value_is_one_error_line_and_exit_2(tmp_path, m6rec_main):
    code, stdout, stderr = m6rec_main(
        "datasets", "synth", "--out", tmp_path / "data", "--users", 100, "--items", 50, "--interactions", 99
    )
    assert code == 2
    assert stdout == ""
    assert stderr.splitlines() == [
        "error: synthetic dataset: interactions (99) must be at least users (100): every user gets at least one"
    ]
