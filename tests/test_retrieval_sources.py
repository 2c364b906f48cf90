"""Retrieval sources on planted data: embedding (two-tower, content), trend and knowledge-graph neighbours.

Also the interaction timestamps they read (``InteractionMatrix.timestamps``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from m6rec.candidates import create_source, load_source
from m6rec.candidates.trend import SECONDS_PER_DAY
from m6rec.data.contract import ITEM_ID, KG_HEAD, KG_RELATION, KG_TAIL, TIMESTAMP, USER_ID
from m6rec.data.interactions import IdIndex, InteractionMatrix
from m6rec.embeddings.store import write_embeddings
from m6rec.errors import ConfigError

METADATA = {"encoder": "planted", "weights": "none"}
DAY = SECONDS_PER_DAY
LATEST = 1_700_000_000.0


def interactions(pairs: list[tuple], *, items: list[str] | None = None, users: list[str] | None = None):
    """An InteractionMatrix of (user, item[, timestamp]) tuples; ``items``/``users`` fix the ID order."""
    columns = [USER_ID, ITEM_ID, TIMESTAMP][: len(pairs[0])]
    frame = pd.DataFrame(pairs, columns=columns)
    user_index = IdIndex(np.array(users, dtype=object)) if users else IdIndex.from_values(frame[USER_ID])
    item_index = IdIndex(np.array(items, dtype=object)) if items else IdIndex.from_values(frame[ITEM_ID])
    return InteractionMatrix.from_frame(frame, user_index, item_index)


@pytest.fixture(scope="module")
def planted_catalogue(tmp_path_factory):
    """Two groups of 6 users and 8 items (+1 cold item per group, never interacted with).

    Each user saw 4 items of its own group; item and user vectors point along their group's axis with a
    little noise, the cold items exactly along it. Users ``u0``..``u5`` are group 0, ``u6``..``u11`` group 1.
    """
    rng = np.random.default_rng(5)
    folder = tmp_path_factory.mktemp("planted")
    items = [f"i{group}-{n}" for group in range(2) for n in range(8)] + ["cold-0", "cold-1"]
    item_group = np.array([0] * 8 + [1] * 8 + [0, 1])
    users = [f"u{n}" for n in range(12)]
    user_group = np.repeat([0, 1], 6)
    pairs = [
        (user, f"i{group}-{n}")
        for user, group in zip(users, user_group, strict=True)
        for n in rng.choice(8, size=4, replace=False)
    ]
    axes = np.eye(6, dtype=np.float32)
    noise = 0.1 * rng.standard_normal((len(items), 6)).astype(np.float32)
    noise[-2:] = 0.0
    write_embeddings(folder / "content.parquet", ITEM_ID, items, axes[item_group] + noise, metadata=METADATA)
    write_embeddings(folder / "items.parquet", ITEM_ID, items, axes[item_group] + noise, metadata=METADATA)
    user_vectors = axes[user_group] + 0.1 * rng.standard_normal((12, 6)).astype(np.float32)
    # u11 has no user vector; "new" has one but no interactions
    write_embeddings(
        folder / "users.parquet",
        USER_ID,
        [*users[:11], "new"],
        np.vstack([user_vectors[:11], axes[1]]),
        metadata=METADATA,
    )
    train = interactions(pairs, items=items, users=[*users, "new"])
    return folder, train, item_group, np.r_[user_group, 1]


def group_of_candidates(candidates, item_group: np.ndarray) -> np.ndarray:
    return np.where(candidates.items >= 0, item_group[np.maximum(candidates.items, 0)], -1)


def test_two_tower_recommends_in_group_items_and_nothing_to_users_without_a_vector(planted_catalogue):
    folder, train, item_group, user_group = planted_catalogue
    source = create_source(
        "two_tower", embeddings=str(folder / "items.parquet"), user_embeddings=str(folder / "users.parquet")
    ).fit(train)

    candidates = source.recommend(np.arange(train.n_users), 5)

    served = np.arange(train.n_users) != 11
    assert np.all(group_of_candidates(candidates, item_group)[served] == user_group[served, None])
    assert np.all(candidates.items[11] == -1), "u11 has no user vector"
    assert np.all(candidates.items[12] >= 0), "a user with a vector is served without history"
    seen = train.matrix.toarray() > 0
    assert not any(seen[user, items[items >= 0]].any() for user, items in enumerate(candidates.items))


def test_content_source_reaches_the_cold_item_of_the_users_group(planted_catalogue):
    folder, train, item_group, user_group = planted_catalogue
    assert train.item_popularity()[-2:].tolist() == [0, 0], "the cold items have no interactions"
    source = create_source("content", embeddings=str(folder / "content.parquet")).fit(train)

    candidates = source.recommend(np.arange(train.n_users), 5)

    has_history = train.user_activity() > 0
    assert np.all(group_of_candidates(candidates, item_group)[has_history] == user_group[has_history, None])
    cold_item = np.where(user_group == 0, train.n_items - 2, train.n_items - 1)
    assert all(cold_item[user] in candidates.items[user] for user in np.flatnonzero(has_history))
    assert np.all(candidates.items[~has_history] == -1), "a profile needs history"
    assert np.isin(train.n_items - 2, source.indexed_items)


def test_content_profiles_weigh_recent_items_more(tmp_path):
    """A user with three old group-1 items and one recent group-0 item: recency decides the group."""
    items = ["a0", "a1", "a2", "b0", "b1", "b2", "b3"]
    vectors = np.array([[1, 0]] * 3 + [[0, 1]] * 4, dtype=np.float32) + np.arange(7)[:, None] * 1e-3
    write_embeddings(tmp_path / "content.parquet", ITEM_ID, items, vectors, metadata=METADATA)
    pairs = [
        ("u", "b0", LATEST - 300 * DAY),
        ("u", "b1", LATEST - 300 * DAY),
        ("u", "b2", LATEST - 300 * DAY),
    ]
    pairs.append(("u", "a0", LATEST))
    train = interactions(pairs, items=items)

    recent_first = create_source("content", embeddings=str(tmp_path / "content.parquet"), half_life_days=10.0)
    uniform = create_source("content", embeddings=str(tmp_path / "content.parquet"), half_life_days=None)

    assert recent_first.fit(train).recommend(np.array([0]), 2).items[0].tolist() == [1, 2]
    assert uniform.fit(train).recommend(np.array([0]), 1).items[0].tolist() == [6]


def test_an_hnsw_index_gives_the_exact_lists_on_the_planted_data(planted_catalogue, tmp_path):
    folder, train, _, _ = planted_catalogue
    params = {"embeddings": str(folder / "content.parquet")}
    exact = create_source("content", **params).fit(train)
    approximate = create_source("content", **params, factory="HNSW32").fit(train)

    approximate.save(tmp_path / "content")
    loaded = load_source(tmp_path / "content")

    assert approximate.index.factory == loaded.index.factory == "HNSW32"
    users = np.arange(train.n_users)
    for source in (approximate, loaded):
        np.testing.assert_array_equal(source.recommend(users, 6).items, exact.recommend(users, 6).items)
        np.testing.assert_array_equal(source.recommend(users, 6).scores, exact.recommend(users, 6).scores)


def test_embedding_files_of_the_wrong_kind_or_catalogue_are_config_errors(planted_catalogue, tmp_path):
    folder, train, _, _ = planted_catalogue
    write_embeddings(tmp_path / "other.parquet", ITEM_ID, ["x", "y"], np.eye(2), metadata=METADATA)

    with pytest.raises(ConfigError, match="expected item_id"):
        create_source("content", embeddings=str(folder / "users.parquet")).fit(train)
    with pytest.raises(ConfigError, match="none of the 18 training items"):
        create_source("content", embeddings=str(tmp_path / "other.parquet")).fit(train)
    with pytest.raises(ConfigError, match="not found"):
        create_source("content", embeddings=str(tmp_path / "missing.parquet")).fit(train)
    with pytest.raises(ConfigError, match="user_embeddings"):
        create_source("two_tower", embeddings=str(folder / "items.parquet"))


def test_trend_favours_recently_popular_items_over_old_popular_ones():
    old_hits = [(f"u{n}", "old-hit", LATEST - 60 * DAY) for n in range(6)]
    recent = [("u0", "new", LATEST), ("u1", "new", LATEST - 7 * DAY), ("u2", "week", LATEST - 7 * DAY)]
    recent.append(("u3", "edge", LATEST - 20 * DAY))
    train = interactions(old_hits + recent, items=["old-hit", "new", "week", "edge"])

    trend = create_source("trend").fit(train)
    popularity = create_source("popularity").fit(train)

    np.testing.assert_allclose(trend.item_trend, [-np.inf, 1.5, 0.5, -np.inf], rtol=1e-6)  # float32
    assert trend.recommend(np.array([5]), 4).items[0].tolist() == [1, 2, -1, -1]
    assert popularity.recommend(np.array([5]), 1, exclude_seen=False).items[0].tolist() == [0]
    wider = create_source("trend", window_days=30.0, half_life_days=7.0).fit(train)
    assert wider.recommend(np.array([5]), 4).items[0].tolist() == [1, 2, 3, -1]


def test_trend_without_timestamps_falls_back_to_popularity_with_a_warning(caplog):
    train = interactions([("u0", "a"), ("u1", "a"), ("u1", "b")])

    with caplog.at_level(logging.WARNING, logger="m6rec"):
        trend = create_source("trend").fit(train)

    assert "no timestamps" in caplog.text
    np.testing.assert_array_equal(trend.item_trend, [2.0, 1.0])


def test_sequential_scores_items_next_to_the_users_history_in_other_users_time_order():
    # u0 watched d, a, b, c in that order (column order a, b, c, d differs); u1 watched only a.
    watched = [("u0", item, LATEST + position * DAY) for position, item in enumerate("dabc")]
    train = interactions([*watched, ("u1", "a", LATEST)], items=list("abcd"))
    pair = 1 / np.sqrt(3 * 2)  # a was seen by two users, b, c and d by one; popularity + 1 each

    def scores_for_u1(window):
        return create_source("sequential", window=window).fit(train).score(np.array([1]))[0]

    # Items never next to the history have no score (not zero): never candidates.
    np.testing.assert_allclose(scores_for_u1(1), [-np.inf, pair, -np.inf, pair], rtol=1e-6)
    np.testing.assert_allclose(scores_for_u1(2), [-np.inf, pair, pair, pair], rtol=1e-6)
    top = create_source("sequential", window=1).fit(train).recommend(np.array([1]), 2)
    assert top.items[0].tolist() == [1, 3]


def test_sequential_without_timestamps_counts_every_pair_with_a_warning(caplog):
    train = interactions([("u0", "a"), ("u0", "b"), ("u0", "c"), ("u1", "a")])

    with caplog.at_level(logging.WARNING, logger="m6rec"):
        source = create_source("sequential", window=1).fit(train)

    assert "no timestamps" in caplog.text
    np.testing.assert_allclose(
        source.score(np.array([1]))[0], [-np.inf, 1 / np.sqrt(6), 1 / np.sqrt(6)], rtol=1e-6
    )


def test_sequential_window_must_be_a_positive_integer():
    with pytest.raises(ConfigError, match="window"):
        create_source("sequential", window=0)
    with pytest.raises(ConfigError, match="window"):
        create_source("sequential", window=2.5)


def test_trend_parameters_must_be_positive():
    with pytest.raises(ConfigError, match="half_life_days"):
        create_source("trend", half_life_days=0)


def write_kg(path: Path, triples: list[tuple[str, str, str]]) -> str:
    frame = pd.DataFrame(triples, columns=[KG_HEAD, KG_RELATION, KG_TAIL])
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path)
    return str(path)


# X comes after the items it must outrank, so only the entity weights can put it first.
KG_ITEMS = ["A", "B", "Y", "Z", "F1", "X", "V", "F2"]
KG_TRIPLES = [
    ("B", "label", "rare-label"),
    ("X", "label", "rare-label"),
    ("B", "genre", "rock"),
    ("Y", "genre", "rock"),
    ("Z", "genre", "rock"),
    ("F1", "genre", "rock"),
    ("A", "artist", "someone"),
    ("someone", "produced", "V"),
]


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_kg_neighbour_sharing_a_rare_entity_with_the_last_item_ranks_first(suffix, tmp_path):
    kg = write_kg(tmp_path / f"kg{suffix}", KG_TRIPLES)
    train = interactions([("u", "A", LATEST - DAY), ("u", "B", LATEST)], items=KG_ITEMS)

    source = create_source("kg_neighbours", kg=kg, recent=1).fit(train)
    candidates = source.recommend(np.array([0]), 6)

    assert candidates.items[0].tolist() == [5, 2, 3, 4, -1, -1]
    np.testing.assert_allclose(
        candidates.scores[0, :4], [np.log(8 / 2), np.log(8 / 4), np.log(8 / 4), np.log(8 / 4)]
    )


def test_kg_neighbours_of_older_items_count_once_they_are_recent(tmp_path):
    kg = write_kg(tmp_path / "kg.parquet", KG_TRIPLES)
    train = interactions([("u", "A", LATEST - DAY), ("u", "B", LATEST)], items=KG_ITEMS)
    untimed = interactions([("u", "A"), ("u", "B")], items=KG_ITEMS)

    two_recent = create_source("kg_neighbours", kg=kg, recent=2).fit(train)
    without_times = create_source("kg_neighbours", kg=kg, recent=1).fit(untimed)

    expected = [5, 6, 2, 3, 4]  # X and V (rare entities, tie: lower index first), then the rock items
    assert two_recent.recommend(np.array([0]), 5).items[0].tolist() == expected
    assert without_times.recommend(np.array([0]), 5).items[0].tolist() == expected


def test_kg_neighbours_never_recommend_an_item_for_its_own_entities(tmp_path):
    kg = write_kg(tmp_path / "kg.parquet", KG_TRIPLES)
    train = interactions([("u", "B", LATEST)], items=KG_ITEMS)

    scores = create_source("kg_neighbours", kg=kg).fit(train).score(np.array([0]))[0]

    assert scores[1] == -np.inf, "B shares its entities only with itself among its history"
    assert np.isneginf(scores[[0, 6, 7]]).all()


def test_kg_neighbours_missing_file_is_a_config_error(tmp_path):
    train = interactions([("u", "A")], items=KG_ITEMS)
    with pytest.raises(ConfigError, match="not found"):
        create_source("kg_neighbours", kg=str(tmp_path / "none.parquet")).fit(train)


def test_timestamps_hold_the_latest_time_of_each_pair_with_the_matrix_sparsity():
    frame = pd.DataFrame(
        {
            USER_ID: ["a", "a", "b", "b", "a", "c"],
            ITEM_ID: ["x", "y", "x", "x", "x", "unknown"],
            TIMESTAMP: pd.array([5, 7, 3, None, 9, 1], dtype="Int64"),
        }
    )
    train = InteractionMatrix.from_frame(
        frame, IdIndex.from_values(frame[USER_ID]), IdIndex.from_values(["x", "y"])
    )

    np.testing.assert_array_equal(train.timestamps.indptr, train.matrix.indptr)
    np.testing.assert_array_equal(train.timestamps.indices, train.matrix.indices)
    np.testing.assert_array_equal(train.timestamps.toarray(), [[9.0, 7.0], [3.0, 0.0], [0.0, 0.0]])
    assert (
        InteractionMatrix.from_frame(frame.drop(columns=TIMESTAMP), train.users, train.items).timestamps
        is None
    )


def test_datetime_timestamps_become_unix_seconds_and_unknown_times_nan():
    frame = pd.DataFrame(
        {
            USER_ID: ["a", "b"],
            ITEM_ID: ["x", "x"],
            TIMESTAMP: pd.to_datetime(["2023-11-14T22:13:20", None]),
        }
    )

    train = InteractionMatrix.from_frame(
        frame, IdIndex.from_values(frame[USER_ID]), IdIndex.from_values(["x"])
    )

    assert train.timestamps.data[0] == LATEST
    assert np.isnan(train.timestamps.data[1])


@pytest.fixture(scope="module")
def movielens_100k() -> pd.DataFrame:
    path = Path("../shared/data/ml-100k/u.data")
    if not path.exists():
        pytest.skip("the shared MovieLens-100K data is not available")
    frame = pd.read_csv(
        path, sep="\t", names=[USER_ID, ITEM_ID, "rating", TIMESTAMP], dtype={USER_ID: str, ITEM_ID: str}
    )
    return frame


def test_trend_on_movielens_ranks_items_of_its_last_two_weeks(movielens_100k):
    frame = movielens_100k
    train = InteractionMatrix.from_frame(
        frame, IdIndex.from_values(frame[USER_ID]), IdIndex.from_values(frame[ITEM_ID])
    )

    trend = create_source("trend").fit(train)
    top = trend.recommend(np.array([-1]), 10).items[0]

    assert train.timestamps.nnz == train.matrix.nnz == 100_000
    assert np.nanmax(train.timestamps.data) == frame[TIMESTAMP].max()
    recent = frame[frame[TIMESTAMP] >= frame[TIMESTAMP].max() - 14 * DAY]
    assert set(train.items.ids[top]) <= set(recent[ITEM_ID])
    assert np.isfinite(trend.item_trend).sum() == recent[ITEM_ID].nunique()
    popular = create_source("popularity").fit(train).recommend(np.array([-1]), 10).items[0]
    assert not np.array_equal(top, popular)


def test_hnsw_retrieval_in_a_batch_equals_one_user_at_a_time(planted_catalogue):
    folder, train, _, _ = planted_catalogue
    source = create_source("content", embeddings=str(folder / "content.parquet"), factory="HNSW8").fit(train)
    users = np.r_[np.arange(train.n_users), 4, -1]

    batch = source.recommend(users, 7)

    for position, user in enumerate(users):
        alone = source.recommend(np.array([user]), 7)
        np.testing.assert_array_equal(batch.items[position], alone.items[0])
        np.testing.assert_array_equal(batch.scores[position], alone.scores[0])


def test_side_inputs_give_the_same_candidates_as_the_files_and_profiles_of_the_rows_asked(planted_catalogue):
    """Given loaded side inputs, the embedding sources read no file, and the content source and the
    ranker context compute the profiles of the users they score only (the same vectors)."""
    from m6rec.candidates.side_inputs import SideInputs
    from m6rec.embeddings.profiles import ProfileCache
    from m6rec.embeddings.store import read_embeddings
    from ranker.features import RankerContext

    folder, train, _, _ = planted_catalogue
    users = np.arange(train.n_users)
    from_files = {
        "content": create_source("content", embeddings=str(folder / "content.parquet")).fit(train),
        "two_tower": create_source(
            "two_tower",
            embeddings=str(folder / "items.parquet"),
            user_embeddings=str(folder / "users.parquet"),
        ).fit(train),
    }
    cache = ProfileCache(train, half_life_days=30.0)
    inputs = SideInputs(
        item_vectors={
            "text": read_embeddings(folder / "content.parquet"),
            "cf_items": read_embeddings(folder / "items.parquet"),
        },
        user_vectors={"cf_users": read_embeddings(folder / "users.parquet")},
        profiles=cache,
    )
    assert inputs.available() == {"content", "cf_items", "cf_users"}
    for name, by_file in from_files.items():
        by_inputs = create_source(name).fit(train, inputs)
        expected, got = by_file.recommend(users, 5), by_inputs.recommend(users, 5)
        np.testing.assert_array_equal(got.items, expected.items)
        np.testing.assert_allclose(got.scores, expected.scores, rtol=1e-6)
    context = RankerContext(
        train=train, item_embeddings={"text": inputs.item_vectors["text"]}, profiles=cache
    )
    chunk = np.array([5, 0, 3])
    vectors, present = context.user_profile_rows("text", chunk)
    assert cache.computed == [], "the source and the ranker compute the profiles of the users they score"
    whole, whole_present = cache.aligned("text", inputs.item_vectors["text"])
    np.testing.assert_array_equal(present, whole_present[chunk])
    np.testing.assert_allclose(vectors, whole[chunk], rtol=1e-6, atol=1e-7)


def test_sources_declare_their_capabilities():
    from m6rec.candidates import registered_sources, source_class

    with_side_inputs = {name for name in registered_sources() if source_class(name).side_inputs}
    assert with_side_inputs == {"two_tower", "content", "kg_neighbours"}
    assert {name for name in registered_sources() if source_class(name).needs_timestamps} == {
        "trend",
        "sequential",
    }
    assert all(
        source_class(name).refittable() != bool(source_class(name).side_inputs)
        for name in registered_sources()
    )
    with pytest.raises(ConfigError, match="no embeddings file and no side inputs"):
        create_source("content").fit(interactions([("u", "i")]))


@pytest.fixture(scope="module")
def heavy_user_catalogue(tmp_path_factory):
    """300 items in 10 clusters (dimension 8) and 40 users with a two-tower vector near one cluster.

    User 0 has seen 250 items, users 1..9 30 of their own cluster's nearest items (more than the search
    margin), the rest 0 to 4 items: the heavy and the medium users' lists come up short after the seen
    items are dropped. Returns ``(item_files, train, item_vectors, user_vectors)``.
    """
    rng = np.random.default_rng(11)
    folder = tmp_path_factory.mktemp("heavy")
    centres = rng.standard_normal((10, 8))
    item_vectors = (centres[rng.integers(10, size=300)] + 0.5 * rng.standard_normal((300, 8))).astype(
        np.float32
    )
    user_vectors = (centres[rng.integers(10, size=40)] + 0.3 * rng.standard_normal((40, 8))).astype(
        np.float32
    )
    items, users = [f"i{n}" for n in range(300)], [f"u{n}" for n in range(40)]
    nearest = np.argsort(-(user_vectors @ item_vectors.T), axis=1)
    pairs = [("u0", f"i{n}") for n in rng.choice(300, size=250, replace=False)]
    pairs += [(f"u{user}", f"i{item}") for user in range(1, 10) for item in nearest[user, :30]]
    pairs += [(f"u{user}", f"i{n}") for user in range(10, 40) for n in rng.choice(300, size=user % 5)]
    write_embeddings(folder / "items.parquet", ITEM_ID, items, item_vectors, metadata=METADATA)
    write_embeddings(folder / "users.parquet", USER_ID, users, user_vectors, metadata=METADATA)
    files = {"embeddings": str(folder / "items.parquet"), "user_embeddings": str(folder / "users.parquet")}
    return files, interactions(pairs, items=items, users=users), item_vectors, user_vectors


def exact_lists_without_seen(item_vectors, user_vectors, seen, users, k):
    """Brute force: float64 cosine scores rounded to float32, seen items removed, best first, ties to the
    lower item."""
    from m6rec.candidates.faiss_index import normalise_rows

    scores = (
        normalise_rows(user_vectors[users]).astype(np.float64)
        @ normalise_rows(item_vectors).T.astype(np.float64)
    ).astype(np.float32)
    scores[seen[users].toarray() > 0] = -np.inf
    order = np.lexsort((np.broadcast_to(np.arange(scores.shape[1]), scores.shape), -scores), axis=-1)[:, :k]
    return order, np.take_along_axis(scores, order, axis=1)


def test_lists_equal_exact_search_without_seen_items_where_the_index_is_exact(heavy_user_catalogue):
    import scipy.sparse as sp

    files, train, item_vectors, user_vectors = heavy_user_catalogue
    source = create_source("two_tower", **files).fit(train)
    users = np.arange(train.n_users)

    candidates = source.recommend(users, 20)

    assert source.index.factory == "Flat"
    expected_items, expected_scores = exact_lists_without_seen(
        item_vectors, user_vectors, train.matrix, users, 20
    )
    np.testing.assert_array_equal(candidates.items, expected_items)
    np.testing.assert_allclose(candidates.scores, expected_scores, rtol=1e-6)
    unfiltered = source.recommend(users, 20, exclude_seen=False)
    nothing_seen = sp.csr_matrix(train.matrix.shape)
    expected_items, _ = exact_lists_without_seen(item_vectors, user_vectors, nothing_seen, users, 20)
    np.testing.assert_array_equal(unfiltered.items, expected_items)


@pytest.mark.parametrize("factory", [None, "IVF4,Flat", "HNSW8"])
def test_a_heavy_user_neither_deepens_the_search_nor_changes_other_users_lists(
    factory, heavy_user_catalogue, monkeypatch
):
    from m6rec.candidates.embedding_sources import search_depth

    files, train, item_vectors, user_vectors = heavy_user_catalogue
    source = create_source("two_tower", **files, factory=factory).fit(train)
    searches = []
    search = source.index.search

    def recorded(queries, k, **options):
        searches.append((k, len(queries)))
        return search(queries, k, **options)

    monkeypatch.setattr(source.index, "search", recorded)
    others = np.arange(1, train.n_users)

    with_heavy = source.recommend(np.arange(train.n_users), 20)
    searched_with_heavy, searches[:] = list(searches), []
    without_heavy = source.recommend(others, 20)

    assert searched_with_heavy[0] == (search_depth(20), train.n_users) and search_depth(20) == 30
    assert searches[0] == (30, len(others)), "the depth is k plus a fixed margin, whatever the histories"
    assert all(depth > 30 and count <= 10 for depth, count in searched_with_heavy[1:] + searches[1:]), (
        "only the users left short (u0..u9) are searched again, deeper"
    )
    np.testing.assert_array_equal(with_heavy.items[1:], without_heavy.items)
    np.testing.assert_array_equal(with_heavy.scores[1:], without_heavy.scores)
    short = np.arange(10)
    expected_items, _ = exact_lists_without_seen(item_vectors, user_vectors, train.matrix, short, 20)
    if factory is None:
        np.testing.assert_array_equal(with_heavy.items[short], expected_items)
    assert np.all(with_heavy.items[short] >= 0)
    assert not (train.matrix[0].toarray()[0, with_heavy.items[0]] > 0).any()


def test_a_user_the_index_leaves_short_even_searched_deeper_gets_an_exact_search(
    heavy_user_catalogue, monkeypatch
):
    """One probe of four inverted lists holds about 75 items; u0 has seen 250 of the 300."""
    files, train, item_vectors, user_vectors = heavy_user_catalogue
    source = create_source("two_tower", **files, factory="IVF4,Flat", nprobe=1).fit(train)
    exact_searches = []
    exact_top = source._exact_top
    monkeypatch.setattr(
        source,
        "_exact_top",
        lambda rows, k, history: exact_searches.append(rows) or exact_top(rows, k, history),
    )

    candidates = source.recommend(np.arange(train.n_users), 20)

    assert [rows.tolist() for rows in exact_searches] == [[0]]
    expected_items, expected_scores = exact_lists_without_seen(
        item_vectors, user_vectors, train.matrix, np.array([0]), 20
    )
    np.testing.assert_array_equal(candidates.items[0], expected_items[0])
    np.testing.assert_allclose(candidates.scores[0], expected_scores[0], rtol=1e-6)


def test_embedding_sources_tune_their_index_on_the_users_query_vectors(heavy_user_catalogue, tmp_path):
    from m6rec.candidates.embedding_sources import search_depth

    files, train, item_vectors, user_vectors = heavy_user_catalogue
    source = create_source("two_tower", **files, factory="IVF8,Flat", recall_k=20).fit(train)

    source.save(tmp_path / "two_tower")
    loaded = load_source(tmp_path / "two_tower")

    assert source.index.recall_queries == "query vectors" and source.index.recall_k == search_depth(20)
    assert source.index.build_recall >= source.params["target_recall"] == 0.95
    assert (loaded.index.nprobe, loaded.index.recall_k) == (source.index.nprobe, source.index.recall_k)
    users = np.arange(train.n_users)
    np.testing.assert_array_equal(loaded.recommend(users, 20).items, source.recommend(users, 20).items)
