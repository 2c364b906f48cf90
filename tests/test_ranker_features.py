"""Ranker features on a hand-made world of 3 users and 5 items, every feature value worked out by hand.

World (days are unix days; the reference time is day 100):

- u0 saw i0 (day 10), i1 (day 80), i2 (day 95); u1 saw i1 (day 50), i3 (day 99); u2 saw nothing.
- text vectors (raw): i0 [1, 0], i1 [0, 1], i2 [1, 1], i3 [1, -1], i4 [-1, 0]. Profiles from history with a
  uniform mean: u0 [2/3, 2/3] (direction [1, 1]), u1 [1/2, 0] (direction [1, 0]), u2 none.
- image vectors: i0 [1, 0], i1 [0, 3], i2 null, i3 [3, 4], i4 [0, -1]; image profiles are given: u0 [0, 2],
  u1 zero (none), u2 [1, 0].
- two-tower: users [1, 2], [0, 0] (none), [2, 0]; items [1, 0], [0, 1], [1, 1], [3, 4], [0, 0] (none).
- KG: i1 -genre-> jazz, i2 -genre-> rock, i3 -genre-> pop, i3 -by-> artist_x, i4 -genre-> rock,
  i4 -by-> artist_x, i1 -similar_to-> i4. Neighbours: i0 none, i1 {jazz, i4}, i2 {rock}, i3 {pop, artist_x},
  i4 {rock, artist_x, i1}. u0's nodes {i1, i2, jazz, i4, rock}; u1's {i1, i3, jazz, i4, pop, artist_x}.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

import ranker.features.builder as ranker_features
from m6rec.data.contract import ITEM_ID, USER_ID
from m6rec.data.interactions import IdIndex, InteractionMatrix
from m6rec.embeddings.store import EmbeddingTable
from ranker.features import (
    FEATURES,
    KEY_COLUMNS,
    RankerContext,
    build_ranker_features,
    check_feature_table,
    feature_columns,
    read_feature_table,
    write_feature_table,
)

DAY = 86_400.0
ML_100K = Path("../shared/data/ml-100k")
SQRT_HALF = np.sqrt(0.5)
HISTORY = [("u0", "i0", 10), ("u0", "i1", 80), ("u0", "i2", 95), ("u1", "i1", 50), ("u1", "i3", 99)]
TEXT = {"i0": [1, 0], "i1": [0, 1], "i2": [1, 1], "i3": [1, -1], "i4": [-1, 0]}
IMAGE = {"i0": [1, 0], "i1": [0, 3], "i2": None, "i3": [3, 4], "i4": [0, -1]}
KG = [
    ("i1", "genre", "jazz"),
    ("i2", "genre", "rock"),
    ("i3", "genre", "pop"),
    ("i3", "by", "artist_x"),
    ("i4", "genre", "rock"),
    ("i4", "by", "artist_x"),
    ("i1", "similar_to", "i4"),
]
# (user row, item column) of every candidate; -1 is a user unknown to the training matrix.
PAIRS = [(0, 3), (0, 4), (0, 0), (1, 0), (1, 4), (1, 2), (2, 4), (2, 0), (-1, 1)]


def embedding_table(vectors: dict[str, list | None]) -> EmbeddingTable:
    keys = np.array(list(vectors), dtype=object)
    valid = np.array([vector is not None for vector in vectors.values()])
    matrix = np.array([vector or [0, 0] for vector in vectors.values()], dtype=np.float32)
    nothing = np.array([None] * len(keys), dtype=object)
    return EmbeddingTable(ITEM_ID, keys, matrix, valid, nothing, nothing, {"encoder": "test"})


def tiny_train(*, timestamps: bool) -> InteractionMatrix:
    frame = pd.DataFrame(HISTORY, columns=[USER_ID, ITEM_ID, "day"])
    frame["timestamp"] = frame["day"] * DAY
    users = IdIndex(np.array(["u0", "u1", "u2"], dtype=object))
    items = IdIndex(np.array(["i0", "i1", "i2", "i3", "i4"], dtype=object))
    return InteractionMatrix.from_frame(
        frame if timestamps else frame.drop(columns=["timestamp"]), users, items
    )


def tiny_candidates() -> pd.DataFrame:
    frame = pd.DataFrame(PAIRS, columns=["user_row", "item"])
    frame["ease_score"] = [0.9, 0.5, np.nan, 0.7, np.nan, 0.1, 0.4, 0.3, 0.2]
    frame["ease_rank"] = [1, 2, np.nan, 1, np.nan, 2, 1, 2, 1]
    frame["text_score"] = [np.nan, 0.8, 0.6, np.nan, 0.9, 0.2, np.nan, 0.5, np.nan]
    frame["text_rank"] = [np.nan, 1, 2, np.nan, 1, 2, np.nan, 1, np.nan]
    frame["n_sources"] = frame[["ease_rank", "text_rank"]].notna().sum(axis=1)
    frame["sources"] = [["ease"]] * len(frame)
    return frame


@pytest.fixture(scope="module")
def tiny_context() -> RankerContext:
    return RankerContext(
        tiny_train(timestamps=True),
        item_embeddings={"text": embedding_table(TEXT), "image": embedding_table(IMAGE)},
        user_profiles={"image": np.array([[0, 2], [0, 0], [1, 0]], dtype=np.float32)},
        two_tower_user_vectors=np.array([[1, 2], [0, 0], [2, 0]], dtype=np.float32),
        two_tower_item_vectors=embedding_table(
            {"i0": [1, 0], "i1": [0, 1], "i2": [1, 1], "i3": [3, 4], "i4": [0, 0]}
        ),
        items=pd.DataFrame(
            {
                ITEM_ID: ["i0", "i1", "i2", "i3", "i4"],
                "category": ["a", "b", "a", "b", "a"],
                "title": ["one", "two", "three", "four", "five"],
                "image_path": ["i0.png", "i1.png", "i0.png", "i3.png", "i4.png"],
            }
        ),
        users=pd.DataFrame(
            {
                USER_ID: ["u0", "u1", "u2"],
                "gender": ["f", "m", "f"],
                "country": ["x", "y", "z"],
                "age": [20, 30, 40],
            }
        ),
        kg=pd.DataFrame(KG, columns=["head", "relation", "tail"]),
        reference_time=100 * DAY,
        last_items=2,
        profile_half_life_days=None,
    )


@pytest.fixture(scope="module")
def tiny_features(tiny_context) -> pd.DataFrame:
    return build_ranker_features(tiny_candidates(), tiny_context)


def column(frame: pd.DataFrame, name: str) -> dict[tuple[int, int], float]:
    return dict(zip(PAIRS, frame[name].to_numpy(dtype=np.float64), strict=True))


def assert_values(actual: dict, expected: dict) -> None:
    for pair, value in expected.items():
        if np.isnan(value):
            assert np.isnan(actual[pair]), f"{pair}: expected NaN, got {actual[pair]}"
        else:
            assert actual[pair] == pytest.approx(value, abs=1e-6), pair


def test_keys_and_source_columns_pass_through(tiny_features):
    candidates = tiny_candidates()
    assert tiny_features["user_row"].tolist() == [user for user, _ in PAIRS]
    assert tiny_features["item"].tolist() == [item for _, item in PAIRS]
    for name in ("ease_score", "ease_rank", "text_score", "text_rank"):
        np.testing.assert_array_equal(tiny_features[name].to_numpy(), candidates[name].to_numpy(np.float32))
    assert tiny_features["n_sources"].tolist() == candidates["n_sources"].tolist()
    assert "sources" not in tiny_features.columns
    assert feature_columns(tiny_features)[:4] == ["ease_score", "ease_rank", "text_score", "text_rank"]


def test_scores_standardised_within_each_user(tiny_features):
    # ease: u0 (0.9, 0.5) mean 0.7 sd 0.2; u1 (0.7, 0.1) mean 0.4 sd 0.3; u2 (0.4, 0.3); the unknown user
    # has a single score, so sd 0 gives 0. text: u2 has a single score too, the unknown user none.
    nan = np.nan
    np.testing.assert_allclose(
        tiny_features["ease_score_z"].to_numpy(), [1, -1, nan, 1, nan, -1, 1, -1, 0], atol=1e-5
    )
    np.testing.assert_allclose(
        tiny_features["text_score_z"].to_numpy(), [nan, 1, -1, nan, 1, -1, nan, 0, nan], atol=1e-5
    )


def test_popularity_and_activity_shares(tiny_features):
    # Item popularity i0..i4 = 1, 2, 1, 1, 0 over the 2 users with history; activity u0 3, u1 2 (mean 2.5).
    np.testing.assert_allclose(
        tiny_features["item_pop_share"].to_numpy(), [0.5, 0, 0.5, 0.5, 0, 0.5, 0, 0.5, 1.0], atol=1e-6
    )
    np.testing.assert_allclose(
        tiny_features["user_activity_share"].to_numpy(), [1.2, 1.2, 1.2, 0.8, 0.8, 0.8, 0, 0, 0], atol=1e-6
    )


def test_cosine_to_profiles_computed_from_history_and_given(tiny_features):
    assert_values(
        column(tiny_features, "cos_text"),
        {
            (0, 3): 0.0,
            (0, 4): -SQRT_HALF,
            (0, 0): SQRT_HALF,
            (1, 0): 1.0,
            (1, 4): -1.0,
            (1, 2): SQRT_HALF,
            (2, 4): np.nan,
            (-1, 1): np.nan,
        },
    )
    assert_values(
        column(tiny_features, "cos_image"),
        {(0, 3): 0.8, (0, 4): -1.0, (0, 0): 0.0, (1, 0): np.nan, (1, 2): np.nan, (2, 0): 1.0, (2, 4): 0.0},
    )
    for modality in ("audio", "kg", "fused"):
        assert tiny_features[f"cos_{modality}"].isna().all()


def test_two_tower_dot(tiny_features):
    assert_values(
        column(tiny_features, "two_tower_dot"),
        {(0, 3): 11.0, (0, 0): 1.0, (0, 4): np.nan, (1, 0): np.nan, (2, 0): 2.0, (-1, 1): np.nan},
    )


def test_popularity_recency_window_and_ages(tiny_features):
    item_pop = {0: 1, 1: 2, 2: 1, 3: 1, 4: 0}
    item_pop_recent = {0: 0, 1: 1, 2: 1, 3: 1, 4: 0}  # window (day 70, day 100]
    item_age = {0: 90.0, 1: 50.0, 2: 5.0, 3: 1.0, 4: np.nan}
    assert_values(column(tiny_features, "item_pop"), {pair: item_pop[pair[1]] for pair in PAIRS})
    assert_values(
        column(tiny_features, "item_pop_recent"), {pair: item_pop_recent[pair[1]] for pair in PAIRS}
    )
    assert_values(column(tiny_features, "item_age_days"), {pair: item_age[pair[1]] for pair in PAIRS})
    activity = {0: 3, 1: 2, 2: 0, -1: 0}
    since_last = {0: 5.0, 1: 1.0, 2: np.nan, -1: np.nan}
    assert_values(column(tiny_features, "user_activity"), {pair: activity[pair[0]] for pair in PAIRS})
    assert_values(
        column(tiny_features, "user_days_since_last"), {pair: since_last[pair[0]] for pair in PAIRS}
    )


def test_reference_time_defaults_to_latest_interaction(tiny_context):
    context = RankerContext(tiny_context.train)
    features = build_ranker_features(tiny_candidates(), context)
    assert_values(column(features, "item_age_days"), {(0, 3): 0.0, (1, 2): 4.0, (0, 0): 89.0})
    assert_values(column(features, "user_days_since_last"), {(0, 3): 4.0, (1, 0): 0.0})


def test_similarity_to_the_two_latest_history_items(tiny_features):
    # u0's two latest are i2 (day 95) and i1 (day 80); u1's are i3 (day 99) and i1 (day 50).
    half = SQRT_HALF / 2
    assert_values(
        column(tiny_features, "sim_last_max"),
        {(0, 3): 0.0, (0, 0): SQRT_HALF, (0, 4): 0.0, (1, 0): SQRT_HALF, (1, 4): 0.0, (2, 0): np.nan},
    )
    assert_values(
        column(tiny_features, "sim_last_mean"),
        {(0, 3): -half, (0, 0): half, (0, 4): -half, (1, 0): half, (1, 4): -half, (-1, 1): np.nan},
    )


def test_similarity_uses_all_five_latest_by_default(tiny_context):
    context = RankerContext(tiny_context.train, item_embeddings=tiny_context.item_embeddings)
    features = build_ranker_features(tiny_candidates(), context)
    # u0 against i3 [1, -1]: i0 gives 1/sqrt(2), i1 -1/sqrt(2), i2 0.
    assert_values(column(features, "sim_last_max"), {(0, 3): SQRT_HALF})
    assert_values(column(features, "sim_last_mean"), {(0, 3): 0.0})


def test_latest_items_follow_item_order_without_timestamps(tiny_context):
    context = RankerContext(
        tiny_train(timestamps=False), item_embeddings=tiny_context.item_embeddings, last_items=1
    )
    features = build_ranker_features(tiny_candidates(), context)
    # Without times the latest is the highest item column: i2 for u0, i3 for u1.
    assert_values(column(features, "sim_last_max"), {(0, 3): 0.0, (0, 0): SQRT_HALF, (1, 0): SQRT_HALF})


def test_kg_overlap_counts_shared_neighbours(tiny_features):
    assert_values(
        column(tiny_features, "kg_overlap"),
        {(0, 3): 0, (0, 4): 2, (0, 0): 0, (1, 0): 0, (1, 4): 2, (1, 2): 0, (2, 4): 0, (-1, 1): 0},
    )
    assert_values(
        column(tiny_features, "kg_overlap_norm"),
        {(0, 3): 0, (0, 4): 2 / 3, (0, 0): np.nan, (1, 4): 2 / 3, (1, 2): 0, (2, 4): 0, (-1, 1): 0},
    )


def test_categorical_attributes_keep_low_cardinality_strings_only(tiny_features):
    attributes = [
        name for name in tiny_features.columns if isinstance(tiny_features[name].dtype, pd.CategoricalDtype)
    ]
    assert attributes == ["user_gender", "item_category"]
    assert list(tiny_features["item_category"].cat.categories) == ["a", "b"]
    assert tiny_features["item_category"].astype(object).tolist() == [
        "b",
        "a",
        "a",
        "a",
        "a",
        "a",
        "a",
        "a",
        "b",
    ]
    genders = tiny_features["user_gender"].astype(object).tolist()
    assert genders[:8] == ["f", "f", "f", "m", "m", "m", "f", "f"]
    assert pd.isna(genders[8])


def test_missing_inputs_give_nan(tiny_context):
    features = build_ranker_features(tiny_candidates(), RankerContext(tiny_train(timestamps=False)))
    for name in (
        *(f"cos_{modality}" for modality in ranker_features.ITEM_SPACES),
        "two_tower_dot",
        "item_pop_recent",
        "item_age_days",
        "user_days_since_last",
        "sim_last_max",
        "sim_last_mean",
        "kg_overlap",
        "kg_overlap_norm",
    ):
        assert features[name].isna().all(), name
    assert features["item_pop"].tolist() == [1, 0, 1, 1, 0, 1, 0, 1, 2]
    check_feature_table(features)


def test_n_sources_is_counted_when_absent(tiny_context):
    candidates = tiny_candidates().drop(columns=["n_sources"])
    features = build_ranker_features(candidates, RankerContext(tiny_context.train))
    assert features["n_sources"].tolist() == tiny_candidates()["n_sources"].tolist()


def test_dtypes_match_the_declaration(tiny_features):
    for spec in (*KEY_COLUMNS, *FEATURES):
        assert str(tiny_features[spec.name].dtype) == spec.dtype, spec.name
    specs = check_feature_table(tiny_features)
    assert [spec.name for spec in specs] == list(tiny_features.columns)
    assert next(spec for spec in specs if spec.name == "ease_rank").description.startswith(
        "rank candidate source ease"
    )


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (lambda frame: frame.astype({"cos_text": "float64"}), "cos_text"),
        (lambda frame: frame.drop(columns=["kg_overlap"]), "kg_overlap"),
        (lambda frame: frame.assign(mystery=1.0), "mystery"),
        (lambda frame: frame.assign(ease_score=frame["ease_score"].astype("float64")), "ease_score"),
        (lambda frame: frame.assign(user_gender=frame["user_gender"].astype(object)), "user_gender"),
    ],
)
def test_check_names_the_offending_column(tiny_features, change, named):
    with pytest.raises(ValueError, match=named):
        check_feature_table(change(tiny_features))


def test_parquet_round_trip_keeps_values_dtypes_and_descriptions(tiny_features, tmp_path):
    path = tmp_path / "features.parquet"
    subset = tiny_features.iloc[:2]  # category levels not present in these rows must survive too
    write_feature_table(subset, path)
    back = read_feature_table(path)
    pd.testing.assert_frame_equal(back, subset.reset_index(drop=True), check_exact=True)  # lossless Parquet
    assert list(back["item_category"].cat.categories) == ["a", "b"]
    schema = pq.read_schema(path)
    declaration = json.loads(schema.metadata[b"m6rec"])
    assert declaration["kind"] == "ranker_features"
    assert [entry["name"] for entry in declaration["columns"]] == list(subset.columns)
    described = {entry["name"]: entry for entry in declaration["columns"]}
    assert described["cos_text"]["dtype"] == "float32"
    assert schema.field("item_pop").metadata[b"description"].decode() == described["item_pop"]["description"]


def test_write_refuses_an_undeclared_table(tiny_features, tmp_path):
    with pytest.raises(ValueError, match="mystery"):
        write_feature_table(tiny_features.assign(mystery=1.0), tmp_path / "features.parquet")
    assert not (tmp_path / "features.parquet").exists()


def test_unknown_item_is_refused(tiny_context):
    candidates = pd.DataFrame({"user_row": [0], "item": [5]})
    with pytest.raises(ValueError, match="item"):
        build_ranker_features(candidates, tiny_context)


def test_batches_and_computation_paths_agree(tiny_context, monkeypatch):
    rng = np.random.default_rng(3)
    candidates = pd.DataFrame(
        {"user_row": rng.integers(-1, 3, size=200), "item": rng.integers(0, 5, size=200)}
    )
    candidates["ease_score"] = rng.random(200)
    whole = build_ranker_features(candidates, tiny_context)
    by_user = pd.concat(
        [
            build_ranker_features(part, tiny_context).set_axis(part.index)
            for _, part in candidates.groupby("user_row", sort=False)
        ]
    )
    pd.testing.assert_frame_equal(by_user.sort_index(), whole, atol=1e-6)
    monkeypatch.setattr(ranker_features, "_BLOCK_SCORES", 1)  # one left row per dense block
    blocked = build_ranker_features(candidates, tiny_context)
    monkeypatch.setattr(ranker_features, "_DENSE_WASTE_LIMIT", 0)  # always gather pairs row by row
    gathered = build_ranker_features(candidates, tiny_context)
    pd.testing.assert_frame_equal(blocked, whole, atol=1e-6)
    pd.testing.assert_frame_equal(gathered, whole, atol=1e-6)


@pytest.fixture(scope="module")
def ml_100k_ratings() -> pd.DataFrame:
    if not (ML_100K / "u.data").exists():
        pytest.skip("../shared/data/ml-100k is not available")
    ratings = pd.read_csv(
        ML_100K / "u.data", sep="\t", names=[USER_ID, ITEM_ID, "rating", "timestamp"], dtype=str
    )
    ratings["timestamp"] = ratings["timestamp"].astype(np.int64)
    return ratings


def test_real_ratings_give_counts_and_ages_that_match_the_file(ml_100k_ratings):
    ratings = ml_100k_ratings
    train = InteractionMatrix.from_frame(
        ratings, IdIndex.from_values(ratings[USER_ID]), IdIndex.from_values(ratings[ITEM_ID])
    )
    context = RankerContext(train)
    popular = np.argsort(-train.item_popularity(), kind="stable")[:50]
    candidates = pd.DataFrame(
        {"user_row": np.repeat(np.arange(100), len(popular)), "item": np.tile(popular, 100)}
    )
    features = build_ranker_features(candidates, context)
    check_feature_table(features)
    counts = ratings[ITEM_ID].value_counts()
    expected_pop = counts.reindex(train.items.ids[features["item"]]).to_numpy()
    np.testing.assert_array_equal(features["item_pop"].to_numpy(), expected_pop)
    latest = ratings["timestamp"].max()
    last_by_user = ratings.groupby(USER_ID)["timestamp"].max()
    expected_days = (latest - last_by_user.reindex(train.users.ids[features["user_row"]]).to_numpy()) / DAY
    np.testing.assert_allclose(features["user_days_since_last"].to_numpy(), expected_days, rtol=1e-6)
    window = ratings[ratings["timestamp"] > latest - 30 * DAY][ITEM_ID].value_counts()
    expected_recent = window.reindex(train.items.ids[features["item"]]).fillna(0).to_numpy()
    np.testing.assert_array_equal(features["item_pop_recent"].to_numpy(), expected_recent)


def test_latest_items_of_some_rows_are_those_rows_of_every_users(tiny_context):
    every = tiny_context.latest_items(np.arange(tiny_context.train.n_users))
    some = np.array([2, 0, 2])
    assert (every >= 0).any()
    np.testing.assert_array_equal(tiny_context.latest_items(some), every[some])
