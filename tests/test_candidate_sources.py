"""Candidate sources: one contract every registered source runs, known answers per source, and ``top_k``."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from m6rec.candidates import CandidateSource, create_source, load_source, registered_sources, source_class
from m6rec.candidates import base as base_module
from m6rec.candidates import ease as ease_module
from m6rec.candidates import itemknn as itemknn_module
from m6rec.candidates.base import SparseScoresSource, strongest_per_row, top_k
from m6rec.config import BaselineConfig
from m6rec.data.contract import ITEM_ID, KG_HEAD, KG_RELATION, KG_TAIL, USER_ID
from m6rec.data.interactions import IdIndex, InteractionMatrix
from m6rec.embeddings.store import write_embeddings
from m6rec.errors import ConfigError
from m6rec.evaluation.metrics import ranking_metrics
from pipelines.source_tuning import make_fold, tune_and_fit

FAST_PARAMS = {
    "popularity": {},
    "itemknn": {"neighbours": 20, "shrink": 1.0},
    "ease": {"l2": 1.0},
    "ials": {"factors": 8, "iterations": 5, "regularization": 1.0, "seed": 0},
    "trend": {"window_days": 14.0, "half_life_days": 7.0},
    "two_tower": {"embeddings": "cf_items.parquet", "user_embeddings": "cf_users.parquet"},
    "content": {"embeddings": "content.parquet", "half_life_days": None},
    "kg_neighbours": {"kg": "kg.parquet", "recent": 5},
}
# Parameters naming an input file: FAST_PARAMS holds the file name, written by the source_files fixture.
FILE_PARAMS = ("embeddings", "user_embeddings", "kg")


def make_source(name: str, source_files: Path) -> CandidateSource:
    """A source with parameters small enough for tests (defaults for a source not listed above), its
    input files read from ``source_files``."""
    params = {
        key: str(source_files / value) if key in FILE_PARAMS else value
        for key, value in FAST_PARAMS.get(name, {}).items()
    }
    return create_source(name, **params)


SOURCE_NAMES = registered_sources()
# Building a source reads no file (fitting does), so a folder that does not exist serves here.
HISTORY_SOURCE_NAMES = [name for name in SOURCE_NAMES if make_source(name, Path("unbuilt")).needs_history]


def matrix_of(rows: np.ndarray) -> InteractionMatrix:
    """An InteractionMatrix over a dense 0/1 array, IDs being the row / column numbers."""
    rows = np.asarray(rows)
    users = IdIndex(np.array([str(user) for user in range(rows.shape[0])], dtype=object))
    items = IdIndex(np.array([str(item) for item in range(rows.shape[1])], dtype=object))
    return InteractionMatrix(sp.csr_matrix(rows.astype(np.float32)), users, items)


def assert_same_candidates(actual, expected) -> None:
    np.testing.assert_array_equal(actual.items, expected.items)
    np.testing.assert_array_equal(actual.scores, expected.scores)


@pytest.fixture(scope="module")
def source_files(tmp_path_factory, checkerboard_interactions) -> Path:
    """Inputs of the file-backed sources, planted with the checkerboard's groups.

    Content and two-tower vectors point along their group's axis plus a little item- or user-specific
    noise (so no two scores tie); in the knowledge graph every item links to its group's genre and to an
    entity of its own.
    """
    board = checkerboard_interactions
    folder = tmp_path_factory.mktemp("source_files")
    rng = np.random.default_rng(11)
    axes = np.eye(8, dtype=np.float32)

    def planted(groups: np.ndarray) -> np.ndarray:
        return axes[groups] + 0.05 * rng.standard_normal((len(groups), 8)).astype(np.float32)

    metadata = {"encoder": "planted", "weights": "none"}
    item_ids, user_ids = board.train.items.ids, board.train.users.ids
    write_embeddings(
        folder / "content.parquet", ITEM_ID, item_ids, planted(board.item_group), metadata=metadata
    )
    write_embeddings(
        folder / "cf_items.parquet", ITEM_ID, item_ids, planted(board.item_group), metadata=metadata
    )
    write_embeddings(
        folder / "cf_users.parquet", USER_ID, user_ids, planted(board.user_group), metadata=metadata
    )
    kg = pd.DataFrame(
        {
            KG_HEAD: np.r_[item_ids, item_ids],
            KG_RELATION: ["genre"] * len(item_ids) + ["label"] * len(item_ids),
            KG_TAIL: np.r_[
                [f"genre-{group}" for group in board.item_group], [f"label-{item}" for item in item_ids]
            ],
        }
    )
    kg.to_parquet(folder / "kg.parquet")
    return folder


@pytest.fixture(scope="module")
def fitted_sources(checkerboard_interactions, source_files) -> dict[str, CandidateSource]:
    """Every registered source, fitted once on the checkerboard."""
    return {
        name: make_source(name, source_files).fit(checkerboard_interactions.train) for name in SOURCE_NAMES
    }


@pytest.mark.parametrize("name", SOURCE_NAMES)
def test_recommend_returns_unseen_unique_sorted_items_padded_at_the_end(
    name, fitted_sources, checkerboard_interactions
):
    source, train = fitted_sources[name], checkerboard_interactions.train
    user_rows = np.arange(train.n_users)
    k = train.n_items + 5

    candidates = source.recommend(user_rows, k)

    assert candidates.items.shape == candidates.scores.shape == (train.n_users, k)
    assert candidates.items.dtype == np.int64 and candidates.scores.dtype == np.float32
    present = candidates.items >= 0
    assert np.all(present[:, :-1] >= present[:, 1:]), "padding must come only after the real candidates"
    assert np.all(np.isfinite(candidates.scores) == present)
    assert np.all(candidates.scores[~present] == -np.inf)
    assert np.all(candidates.scores[:, :-1] >= candidates.scores[:, 1:])
    seen = train.matrix.toarray() > 0
    scores = source.score(user_rows)
    for user, (items, row_present) in enumerate(zip(candidates.items, present, strict=True)):
        items = items[row_present]
        assert len(np.unique(items)) == len(items)
        assert not seen[user, items].any()
        assert len(items) <= train.n_items - seen[user].sum()
        np.testing.assert_array_equal(candidates.scores[user, row_present], scores[user, items])


@pytest.mark.parametrize("name", SOURCE_NAMES)
@pytest.mark.parametrize("exclude_seen", [True, False])
def test_recommend_is_the_top_of_the_scores(name, exclude_seen, fitted_sources, checkerboard_interactions):
    source, train = fitted_sources[name], checkerboard_interactions.train
    user_rows = np.arange(train.n_users)
    scores = source.score(user_rows)
    if exclude_seen:
        scores[train.matrix.toarray() > 0] = -np.inf

    candidates = source.recommend(user_rows, 8, exclude_seen=exclude_seen)

    expected_items, expected_scores = top_k(scores, 8)
    np.testing.assert_array_equal(candidates.items, expected_items)
    np.testing.assert_array_equal(candidates.scores, expected_scores)
    if not exclude_seen:
        assert (train.matrix.toarray()[user_rows[:, None], candidates.items] > 0).any(), (
            "seen items may return"
        )


@pytest.mark.parametrize("name", HISTORY_SOURCE_NAMES)
def test_history_sources_recommend_the_held_out_in_group_item_first(
    name, fitted_sources, checkerboard_interactions
):
    board = checkerboard_interactions
    user_rows = np.arange(board.train.n_users)
    source = fitted_sources[name]

    candidates = source.recommend(user_rows, 3)

    np.testing.assert_array_equal(candidates.items[:, 0], board.held_out)
    scores = source.score(user_rows)
    out_of_group = board.item_group[None, :] != board.user_group[:, None]
    best_out_of_group = np.where(out_of_group, scores, -np.inf).max(axis=1)
    assert np.all(scores[user_rows, board.held_out] > best_out_of_group)


@pytest.mark.parametrize("name", SOURCE_NAMES)
def test_batch_recommendations_equal_one_user_at_a_time(
    name, fitted_sources, checkerboard_interactions, monkeypatch
):
    source, train = fitted_sources[name], checkerboard_interactions.train
    user_rows = np.random.default_rng(0).permutation(np.r_[np.arange(train.n_users), 3, 3])
    monkeypatch.setattr(source, "batch_size", 7)

    batch = source.recommend(user_rows, 6)

    for position, user in enumerate(user_rows):
        alone = source.recommend(np.array([user]), 6)
        np.testing.assert_array_equal(batch.items[position], alone.items[0])
        np.testing.assert_array_equal(batch.scores[position], alone.scores[0])


@pytest.mark.parametrize("name", SOURCE_NAMES)
def test_save_and_load_round_trip_exactly_without_pickle(
    name, fitted_sources, checkerboard_interactions, tmp_path
):
    source, train = fitted_sources[name], checkerboard_interactions.train
    user_rows = np.r_[np.arange(train.n_users), -1, train.n_users]
    directory = tmp_path / "saved" / name

    source.save(directory)
    loaded = load_source(directory)

    expected_files = sorted(["arrays.npz", "source.json", *source.extra_files])
    assert sorted(path.name for path in directory.iterdir()) == expected_files
    assert json.loads((directory / "source.json").read_text())["name"] == name
    with np.load(directory / "arrays.npz", allow_pickle=False) as arrays:
        assert all(arrays[key].dtype != object for key in arrays.files)
    assert type(loaded) is type(source) and loaded.params == source.params
    np.testing.assert_array_equal(
        loaded.score(np.arange(train.n_users)), source.score(np.arange(train.n_users))
    )
    for exclude_seen in (True, False):
        assert_same_candidates(
            loaded.recommend(user_rows, train.n_items + 2, exclude_seen=exclude_seen),
            source.recommend(user_rows, train.n_items + 2, exclude_seen=exclude_seen),
        )


@pytest.mark.parametrize("name", SOURCE_NAMES)
def test_users_without_history_get_nothing_or_the_popular_items(
    name, checkerboard_interactions, source_files
):
    frame = checkerboard_interactions.frame
    users = IdIndex.from_values(frame[USER_ID], np.array(["cold-user"], dtype=object))
    train = InteractionMatrix.from_frame(frame, users, IdIndex.from_values(frame[ITEM_ID]))
    cold_rows = np.array([train.n_users - 1, -1, train.n_users + 3])
    source = make_source(name, source_files).fit(train)

    candidates = source.recommend(cold_rows, 5)

    if source.needs_history:
        assert np.all(candidates.items == -1) and np.all(candidates.scores == -np.inf)
    else:
        popular = np.argsort(-train.item_popularity(), kind="stable")[:5]
        np.testing.assert_array_equal(candidates.items, np.tile(popular, (len(cold_rows), 1)))
        np.testing.assert_array_equal(candidates.scores[0], train.item_popularity()[popular])


@pytest.mark.parametrize("name", SOURCE_NAMES)
def test_same_parameters_give_identical_outputs(name, checkerboard_interactions, source_files):
    train = checkerboard_interactions.train
    user_rows = np.arange(train.n_users)

    first, second = make_source(name, source_files).fit(train), make_source(name, source_files).fit(train)

    assert first.score(user_rows).tobytes() == second.score(user_rows).tobytes()
    assert_same_candidates(first.recommend(user_rows, 10), second.recommend(user_rows, 10))


def test_unknown_source_name_is_a_config_error_naming_the_known_sources():
    with pytest.raises(ConfigError) as error:
        create_source("no-such-source")

    assert "no-such-source" in str(error.value)
    assert {"popularity", "itemknn", "ease", "ials"} <= set(SOURCE_NAMES)
    assert all(name in str(error.value) for name in SOURCE_NAMES)


def test_recommend_before_fit_is_an_error():
    with pytest.raises(RuntimeError, match="not fitted"):
        create_source("popularity").recommend(np.array([0]), 3)


def test_top_k_returns_the_largest_scores_best_first():
    scores = np.array([[0.1, 0.9, 0.5, 0.3], [4.0, -2.0, 7.0, 1.0]], dtype=np.float32)

    items, values = top_k(scores, 2)

    np.testing.assert_array_equal(items, [[1, 2], [2, 0]])
    np.testing.assert_array_equal(values, np.array([[0.9, 0.5], [7.0, 4.0]], dtype=np.float32))


def test_top_k_breaks_ties_by_lower_index():
    scores = np.array([[1.0, 3.0, 3.0, 2.0, 3.0], [0.0, 0.0, 0.0, 0.0, 0.0]])

    assert top_k(scores, 2)[0].tolist() == [[1, 2], [0, 1]]
    assert top_k(scores, 4)[0].tolist() == [[1, 2, 4, 3], [0, 1, 2, 3]]
    wide_tie = np.zeros((2, 200))
    wide_tie[1, 150:] = 1.0
    assert top_k(wide_tie, 5)[0].tolist() == [[0, 1, 2, 3, 4], [150, 151, 152, 153, 154]]
    assert top_k(wide_tie, 60)[0][1].tolist() == [*range(150, 200), *range(10)]


def test_top_k_never_returns_minus_inf_nan_or_plus_inf_and_pads_at_the_end():
    scores = np.array([[-np.inf, 1.0, -np.inf, 0.0, np.nan, np.inf], [-np.inf] * 6])

    items, values = top_k(scores, 4)

    np.testing.assert_array_equal(items, [[1, 3, -1, -1], [-1, -1, -1, -1]])
    np.testing.assert_array_equal(values, [[1.0, 0.0, -np.inf, -np.inf], [-np.inf] * 4])


def test_top_k_pads_when_k_exceeds_the_width():
    items, values = top_k(np.array([[0.5, 2.0, 1.0]]), 5)

    np.testing.assert_array_equal(items, [[1, 2, 0, -1, -1]])
    np.testing.assert_array_equal(values, [[2.0, 1.0, 0.5, -np.inf, -np.inf]])
    assert items.dtype == np.int64 and values.dtype == np.float32


def test_top_k_handles_k_zero_and_zero_rows():
    items, values = top_k(np.ones((3, 4)), 0)
    assert items.shape == values.shape == (3, 0)

    items, values = top_k(np.ones((0, 4)), 2)
    assert items.shape == values.shape == (0, 2)

    items, values = top_k(np.ones((2, 0)), 2)
    np.testing.assert_array_equal(items, [[-1, -1], [-1, -1]])


def test_top_k_agrees_with_sorting_every_row():
    rng = np.random.default_rng(5)
    scores = rng.integers(0, 4, size=(30, 25)).astype(np.float32)
    scores[rng.random(scores.shape) < 0.2] = -np.inf

    for k in (1, 3, 10, 25, 30):
        items, values = top_k(scores, k)
        for row, row_scores in enumerate(scores):
            ranked = [item for item in sorted(range(25), key=lambda item: (-row_scores[item], item))]
            ranked = [item for item in ranked if np.isfinite(row_scores[item])][:k]
            expected = ranked + [-1] * (k - len(ranked))
            assert items[row].tolist() == expected
            np.testing.assert_array_equal(values[row, : len(ranked)], row_scores[ranked])


def test_popularity_ranks_items_by_their_interaction_counts():
    rng = np.random.default_rng(1)
    interactions = (rng.random((40, 12)) < np.linspace(0.05, 0.9, 12)).astype(np.float32)
    train = matrix_of(interactions)
    counts = interactions.sum(axis=0)

    source = create_source("popularity").fit(train)
    candidates = source.recommend(np.array([0, 7]), 12, exclude_seen=False)

    np.testing.assert_array_equal(source.item_counts, counts)
    np.testing.assert_array_equal(candidates.items, np.tile(np.argsort(-counts, kind="stable"), (2, 1)))
    np.testing.assert_array_equal(candidates.scores[0], counts[candidates.items[0]])


@pytest.mark.parametrize("name", ["popularity", "trend"])
def test_shared_score_lists_equal_the_top_of_the_dense_block_with_ties_and_heavy_users(name, monkeypatch):
    rng = np.random.default_rng(3)
    interactions = (rng.random((70, 30)) < rng.uniform(0.02, 0.6, 30)).astype(np.float32)
    interactions[4] = 1.0  # has seen every item
    interactions[9, :28] = 1.0  # two items left
    interactions[11] = 0.0
    train = matrix_of(interactions)
    source = create_source(name).fit(train)  # trend without timestamps: popularity, with many ties
    if name == "trend":
        source.item_trend[[2, 17]] = -np.inf  # items out of the window are never listed
    monkeypatch.setattr(type(source), "batch_size", 16)  # several batches, each with its own heaviest user
    user_rows = np.arange(train.n_users)
    dense = source.score(user_rows)
    dense[interactions > 0] = -np.inf

    candidates = source.recommend(user_rows, 10)

    expected_items, expected_scores = top_k(dense, 10)
    np.testing.assert_array_equal(candidates.items, expected_items)
    np.testing.assert_array_equal(candidates.scores, expected_scores)
    assert (candidates.items[4] == -1).all() and (candidates.items[9, 2:] == -1).all()


SPARSE_SCORE_SOURCES = {
    "itemknn": {"neighbours": 5, "shrink": 0.0},
    "ease": {"l2": 1.0, "max_items": 12, "tail_neighbours": 3},
    "sequential": {"window": 1},
}


def test_every_sparse_scoring_source_is_covered():
    assert set(SPARSE_SCORE_SOURCES) | {"kg_neighbours"} == {
        name for name in SOURCE_NAMES if issubclass(source_class(name), SparseScoresSource)
    }


@pytest.mark.parametrize("share", [0.0, 1.0], ids=["as-a-dense-block", "as-sorted-entries"])
@pytest.mark.parametrize("name", sorted(SPARSE_SCORE_SOURCES))
@pytest.mark.parametrize("exclude_seen", [True, False])
def test_sparse_scores_list_the_top_of_their_dense_block_either_way(name, share, exclude_seen, monkeypatch):
    rng = np.random.default_rng(5)
    interactions = (rng.random((80, 40)) < rng.uniform(0.01, 0.3, 40)).astype(np.float32)
    interactions[3] = 0.0
    train = matrix_of(interactions)
    source = create_source(name, **SPARSE_SCORE_SOURCES[name]).fit(train)
    monkeypatch.setattr(base_module, "DENSE_ENOUGH_SHARE", share)
    monkeypatch.setattr(type(source), "batch_size", 32)
    user_rows = np.arange(train.n_users)
    dense = source.score(user_rows)
    if exclude_seen:
        dense[interactions > 0] = -np.inf
    dense[interactions.sum(axis=1) == 0] = -np.inf  # needs a history

    listed = source.recommend(user_rows, 7, exclude_seen=exclude_seen)

    expected_items, expected_scores = top_k(dense, 7)
    np.testing.assert_array_equal(listed.items, expected_items)
    np.testing.assert_array_equal(listed.scores, expected_scores)
    assert (listed.items == -1).any() or name == "ease", "items nothing links to are not listed"


ITEMKNN_INTERACTIONS = np.array(
    [
        [1, 1, 1, 0, 0],
        [1, 1, 1, 0, 1],
        [1, 1, 0, 1, 0],
        [0, 0, 1, 1, 1],
        [0, 0, 0, 1, 1],
        [1, 1, 0, 0, 1],
        [0, 0, 1, 0, 1],
    ]
)


def brute_force_shrunk_cosine(interactions: np.ndarray, shrink: float) -> np.ndarray:
    """``dot(i, j) / (‖i‖·‖j‖ + shrink)`` for every pair of item columns, zero on the diagonal."""
    columns = interactions.astype(np.float64)
    norms = np.linalg.norm(columns, axis=0)
    similarity = columns.T @ columns / (np.outer(norms, norms) + shrink)
    np.fill_diagonal(similarity, 0.0)
    return similarity


def test_itemknn_similarity_is_the_shrunk_cosine_and_identical_items_are_nearest():
    expected = brute_force_shrunk_cosine(ITEMKNN_INTERACTIONS, shrink=2.0)

    source = create_source("itemknn", neighbours=10, shrink=2.0).fit(matrix_of(ITEMKNN_INTERACTIONS))

    similarity = source.similarity.toarray()
    np.testing.assert_allclose(similarity, expected, rtol=1e-6)
    assert similarity[0, 1] == similarity.max() and similarity[1, 0] == similarity.max()
    assert np.argmax(similarity[0]) == 1 and np.argmax(similarity[1]) == 0
    np.testing.assert_allclose(
        source.score(np.arange(len(ITEMKNN_INTERACTIONS))), ITEMKNN_INTERACTIONS @ expected, rtol=1e-6
    )


def test_itemknn_keeps_only_each_items_nearest_neighbours():
    expected = brute_force_shrunk_cosine(ITEMKNN_INTERACTIONS, shrink=2.0)
    nearest = expected.argmax(axis=1)
    assert all(np.sum(row == row.max()) == 1 for row in expected), (
        "the known answer needs a unique nearest item"
    )

    source = create_source("itemknn", neighbours=1, shrink=2.0).fit(matrix_of(ITEMKNN_INTERACTIONS))

    kept = source.similarity.toarray().T
    for item, neighbour in enumerate(nearest):
        assert np.flatnonzero(kept[item]).tolist() == [neighbour]
        assert kept[item, neighbour] == pytest.approx(expected[item, neighbour], rel=1e-6)


@pytest.mark.parametrize(
    ("budget", "block_sizes"),
    [(1, [1] * 6), (15, [2, 2, 2]), (10**9, [6])],
    ids=["item-by-item", "small-blocks", "one-block"],
)
def test_co_occurrence_blocks_cover_the_items_in_order_within_the_entry_budget(budget, block_sizes):
    rng = np.random.default_rng(4)
    interactions = (rng.random((50, 30)) < 0.15).astype(np.float32)
    columns = sp.csc_matrix(interactions)
    items, against = np.array([3, 0, 7, 7, 29, 12]), np.array([1, 2, 3, 28])
    # Each item's product row holds at most this many entries: 9, 6, 7, 7, 3, 7.
    user_sizes = interactions[:, against].sum(axis=1)

    blocks = list(itemknn_module.co_occurrence_blocks(columns, items, against, max_entries=budget))

    np.testing.assert_array_equal(np.concatenate([block for block, _ in blocks]), items)
    counts = sp.vstack([block_counts for _, block_counts in blocks]).toarray()
    np.testing.assert_array_equal(counts, interactions[:, items].T @ interactions[:, against])
    for block, _ in blocks:
        bound = (interactions[:, block].T @ user_sizes).sum()
        assert len(block) == 1 or bound <= budget
    assert [len(block) for block, _ in blocks] == block_sizes


def test_itemknn_fitted_item_by_item_equals_one_block(monkeypatch):
    rng = np.random.default_rng(6)
    interactions = (rng.random((80, 40)) < 0.2).astype(np.float32)
    interactions[:, 5] = 0.0  # an item without interactions
    train = matrix_of(interactions)
    one_block = create_source("itemknn", neighbours=7, shrink=2.0).fit(train)

    monkeypatch.setattr(itemknn_module, "BLOCK_ENTRIES", 1)
    item_by_item = create_source("itemknn", neighbours=7, shrink=2.0).fit(train)

    assert (item_by_item.similarity != one_block.similarity).nnz == 0
    assert np.all(np.diff(item_by_item.similarity.tocsc().indptr) <= 7)
    np.testing.assert_array_equal(item_by_item.score(np.arange(80)), one_block.score(np.arange(80)))


def test_strongest_per_row_keeps_the_largest_magnitudes_with_ties_to_the_lower_column():
    matrix = sp.csr_matrix(
        np.array(
            [[0, 2, -2, 3, 2, 1], [0, 0, 0, 0, 0, 0], [5, 0, 0, 0, 0, -4], [-1, -7, 6, 0, 0, 0]],
            dtype=np.float32,
        )
    )

    kept = strongest_per_row(matrix, 2).toarray()

    np.testing.assert_array_equal(
        kept, [[0, 2, 0, 3, 0, 0], [0] * 6, [5, 0, 0, 0, 0, -4], [0, -7, 6, 0, 0, 0]]
    )


@pytest.mark.parametrize("name", ["itemknn", "ease"])
def test_item_item_sources_over_targets_per_item_keep_each_items_strongest_weights(name, caplog):
    """One history item (with targets_per_item=2) makes a user's scores exactly its two strongest
    weights; a cap above every row changes nothing; the cut is logged."""
    rng = np.random.default_rng(8)
    interactions = (rng.random((120, 30)) < 0.3).astype(np.float32)
    train = matrix_of(interactions)
    extra = {"max_items": 4, "tail_neighbours": 3} if name == "ease" else {"neighbours": 10}
    free = create_source(name, targets_per_item=10**6, **extra).fit(train)
    with caplog.at_level(logging.INFO, logger="m6rec"):
        capped = create_source(name, targets_per_item=2, **extra).fit(train)
    weights = {"itemknn": "similarity", "ease": "tail_weights"}[name]
    uncapped, cut = getattr(free, weights).toarray(), getattr(capped, weights).toarray()
    assert (np.count_nonzero(uncapped, axis=1) > 2).any(), "the cap has to bind somewhere"
    for row, full_row in enumerate(uncapped):
        strongest = np.argsort(-np.abs(full_row), kind="stable")[: min(2, np.count_nonzero(full_row))]
        assert np.flatnonzero(cut[row]).tolist() == sorted(strongest.tolist())
        np.testing.assert_array_equal(cut[row, strongest], full_row[strongest])
    assert "restricted form" in caplog.text and "targets_per_item=2" in caplog.text
    same = create_source(name, targets_per_item=int(np.count_nonzero(uncapped, axis=1).max()), **extra).fit(
        train
    )
    np.testing.assert_array_equal(same.score(np.arange(120)), free.score(np.arange(120)))


def ease_closed_form(interactions: np.ndarray, l2: float) -> np.ndarray:
    """B = I − P·diag(1/diag(P)) with P = (XᵀX + l2·I)⁻¹, by a direct numpy solve."""
    columns = interactions.astype(np.float64)
    precision = np.linalg.solve(columns.T @ columns + l2 * np.eye(columns.shape[1]), np.eye(columns.shape[1]))
    return np.eye(columns.shape[1]) - precision @ np.diag(1.0 / np.diag(precision))


def test_ease_weights_equal_the_closed_form_with_a_zero_diagonal():
    rng = np.random.default_rng(2)
    interactions = (rng.random((25, 7)) < 0.4).astype(np.float32)
    interactions[np.arange(7), np.arange(7)] = 1.0

    source = create_source("ease", l2=3.0).fit(matrix_of(interactions))

    expected = ease_closed_form(interactions, 3.0)
    np.testing.assert_array_equal(source.active_items, np.arange(7))
    np.testing.assert_allclose(source.weights, expected, rtol=1e-5, atol=1e-6)
    assert np.all(np.diag(source.weights) == 0.0)
    np.testing.assert_allclose(source.score(np.arange(25)), interactions @ expected, rtol=1e-5, atol=1e-6)


def head_and_tail_interactions() -> np.ndarray:
    """60 users × 8 items with distinct popularities, every item sharing users with the popular ones."""
    rng = np.random.default_rng(3)
    shares = np.array([0.2, 0.9, 0.1, 0.7, 0.3, 0.8, 0.05, 0.4])
    interactions = (rng.random((60, 8)) < shares).astype(np.float32)
    assert len(np.unique(interactions.sum(axis=0))) == 8, "the known answer needs distinct popularities"
    return interactions


def restricted_ridge(interactions: np.ndarray, head: np.ndarray, item: int, width: int, l2: float) -> dict:
    """Item ``item`` regressed on its ``width`` most co-occurring ``head`` items (ties: the lower column),
    by a direct numpy solve: {head item: weight}."""
    columns = interactions.astype(np.float64)
    co_counts = columns[:, head].T @ columns[:, item]
    ranked = sorted(
        (position for position in range(len(head)) if co_counts[position] > 0),
        key=lambda position: (-co_counts[position], position),
    )[:width]
    support = head[ranked]
    system = columns[:, support].T @ columns[:, support] + l2 * np.eye(len(support))
    return dict(zip(support.tolist(), np.linalg.solve(system, co_counts[ranked]), strict=True))


def test_ease_over_max_items_is_exact_on_the_head_and_regresses_every_other_item_on_its_nearest_head_items(
    caplog,
):
    interactions = head_and_tail_interactions()
    popularity = interactions.sum(axis=0)
    head = np.sort(np.argsort(-popularity)[:3])
    tail = np.setdiff1d(np.arange(8), head)

    with caplog.at_level(logging.INFO, logger="m6rec"):
        source = create_source("ease", l2=2.0, max_items=3, tail_neighbours=2).fit(matrix_of(interactions))

    np.testing.assert_array_equal(source.active_items, head)
    np.testing.assert_allclose(
        source.weights, ease_closed_form(interactions[:, head], 2.0), rtol=1e-5, atol=1e-6
    )
    tail_weights = source.tail_weights.toarray()
    for item in tail:
        expected = restricted_ridge(interactions, head, item, width=2, l2=2.0)
        assert np.flatnonzero(tail_weights[:, item]).tolist() == sorted(expected)
        np.testing.assert_allclose(tail_weights[list(expected), item], list(expected.values()), rtol=1e-5)
    assert not tail_weights[:, head].any(), "head items are scored by the dense part only"
    scores = source.score(np.arange(60))
    tail_scores = interactions @ tail_weights
    reached = (interactions @ (tail_weights != 0)) > 0
    expected_scores = np.where(reached, tail_scores, -np.inf)  # unreached tail items: no score, not zero
    expected_scores[:, head] = interactions[:, head] @ source.weights
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-5, atol=1e-6)
    assert np.all(np.any(np.isfinite(scores), axis=0)), "every item with interactions gets scores"
    unseen = np.where(interactions > 0, -np.inf, scores)
    listed = source.recommend(np.arange(60), 6)  # from the head block and the tail's entries
    np.testing.assert_array_equal(listed.items, top_k(unseen, 6)[0])
    np.testing.assert_array_equal(listed.scores, top_k(unseen, 6)[1])
    assert source.mode == "dense head + sparse tail"
    message = " ".join(record.getMessage() for record in caplog.records)
    assert "dense head + sparse tail" in message and "8 of 8 catalogue items" in message
    assert "max_items=3" in message and "GiB" in message and "the other 5 regressed" in message


def test_ease_within_max_items_is_dense_with_an_empty_tail():
    source = create_source("ease", l2=2.0).fit(matrix_of(head_and_tail_interactions()))

    assert source.mode == "dense" and source.tail_weights.nnz == 0
    np.testing.assert_array_equal(source.active_items, np.arange(8))


def test_ease_over_max_items_saves_and_loads_its_tail(tmp_path):
    train = matrix_of(head_and_tail_interactions())
    source = create_source("ease", l2=2.0, max_items=3, tail_neighbours=2).fit(train)

    source.save(tmp_path / "ease")
    loaded = load_source(tmp_path / "ease")

    assert loaded.mode == source.mode == "dense head + sparse tail"
    np.testing.assert_array_equal(loaded.tail_weights.toarray(), source.tail_weights.toarray())
    np.testing.assert_array_equal(loaded.score(np.arange(60)), source.score(np.arange(60)))


L2_GRID = [50.0, 2.0, 10.0, 500.0, 1.0, 100.0]


@pytest.fixture
def linear_algebra_calls(monkeypatch) -> dict[str, int]:
    """Counts of the dense inverses and eigendecompositions EASE computes while the test runs."""
    calls = {"inv": 0, "eigh": 0}
    inverse, eigh = np.linalg.inv, ease_module.eigh

    def counted(name, function):
        def call(*args, **kwargs):
            calls[name] += 1
            return function(*args, **kwargs)

        return call

    monkeypatch.setattr(np.linalg, "inv", counted("inv", inverse))
    monkeypatch.setattr(ease_module, "eigh", counted("eigh", eigh))
    return calls


@pytest.mark.parametrize("max_items", [8000, 3], ids=["dense", "head-and-tail"])
def test_ease_fit_grid_equals_one_fit_per_l2_from_one_eigendecomposition(max_items, linear_algebra_calls):
    interactions = head_and_tail_interactions()
    train = matrix_of(interactions)
    grid = [{"l2": l2, "max_items": max_items, "tail_neighbours": 2} for l2 in L2_GRID]
    alone = [create_source("ease", **params).fit(train) for params in grid]
    assert linear_algebra_calls == {"inv": len(grid), "eigh": 0}

    together = list(source_class("ease").fit_grid(train, grid))

    assert linear_algebra_calls == {"inv": len(grid), "eigh": 1}, "one eigendecomposition, no inverse"
    for params, grid_source, single in zip(grid, together, alone, strict=True):
        assert grid_source.params == single.params == {**single.params, **params}
        np.testing.assert_array_equal(grid_source.active_items, single.active_items)
        # float64 eigendecomposition vs inverse, both rounded to float32 weights
        np.testing.assert_allclose(grid_source.weights, single.weights, rtol=1e-5, atol=1e-7)
        np.testing.assert_array_equal(grid_source.tail_weights.toarray(), single.tail_weights.toarray())
        users = np.arange(train.n_users)
        np.testing.assert_allclose(grid_source.score(users), single.score(users), rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(grid_source.recommend(users, 5).items, single.recommend(users, 5).items)


def test_ease_fit_grid_below_the_eigen_threshold_inverts_and_equals_fit_exactly(linear_algebra_calls):
    train = matrix_of(head_and_tail_interactions())
    grid = [{"l2": l2} for l2 in L2_GRID[: ease_module.EIGEN_FROM_GRID_SIZE - 1]]

    together = list(source_class("ease").fit_grid(train, grid))

    assert linear_algebra_calls == {"inv": len(grid), "eigh": 0}
    for params, grid_source in zip(grid, together, strict=True):
        np.testing.assert_array_equal(grid_source.weights, create_source("ease", **params).fit(train).weights)


def test_tuning_fits_the_ease_grid_once_and_scores_each_l2_as_a_single_fit_would(
    checkerboard_interactions, monkeypatch
):
    board = checkerboard_interactions
    fold = make_fold(board.frame, board.train.users, board.train.items, 0.2, temporal=False, seed=0)
    config = BaselineConfig(models=["ease"], search_spaces={"ease": {"l2": L2_GRID}}, selection_k=3)
    grids = []
    fit_grid = source_class("ease").fit_grid

    def recorded(train, params_list, inputs=None):
        grids.append(params_list)
        return fit_grid(train, params_list, inputs)

    monkeypatch.setattr(source_class("ease"), "fit_grid", recorded)

    tuned = tune_and_fit(fold, ["ease"], config)["ease"]

    assert grids == [[{"l2": l2} for l2 in L2_GRID]]
    key = "ndcg@3"
    for trial, l2 in zip(tuned.trials, L2_GRID, strict=True):
        single = create_source("ease", l2=l2).fit(fold.history)
        expected = ranking_metrics(
            single.recommend(fold.label_users, 3).items,
            fold.labels.matrix[fold.label_users],
            k_values=(3,),
            n_catalogue_items=fold.full.n_items,
        )[key]
        assert trial == {"params": {"l2": l2}, key: expected}
    assert tuned.validation_ndcg == max(trial[key] for trial in tuned.trials)
    np.testing.assert_array_equal(
        tuned.source.weights, create_source("ease", **tuned.params).fit(fold.full).weights
    )


def held_out_hits(source: CandidateSource, checkerboard) -> np.ndarray:
    """Whether each user's first candidate is its held-out item."""
    first = source.recommend(np.arange(checkerboard.train.n_users), 1).items[:, 0]
    return first == checkerboard.held_out


def test_ials_beats_popularity_on_the_checkerboard_hold_out(fitted_sources, checkerboard_interactions):
    ials_hits = held_out_hits(fitted_sources["ials"], checkerboard_interactions)
    popularity_hits = held_out_hits(fitted_sources["popularity"], checkerboard_interactions)

    np.testing.assert_array_equal(popularity_hits, checkerboard_interactions.user_group == 0)
    assert ials_hits.mean() > popularity_hits.mean()


def test_ials_seed_changes_the_factors(checkerboard_interactions):
    params = {**FAST_PARAMS["ials"], "seed": 1}

    reseeded = create_source("ials", **params).fit(checkerboard_interactions.train)
    baseline = create_source("ials", **FAST_PARAMS["ials"]).fit(checkerboard_interactions.train)

    assert not np.array_equal(reseeded.item_factors, baseline.item_factors)
    assert reseeded.item_factors.shape == (checkerboard_interactions.train.n_items, params["factors"])


@pytest.mark.parametrize("exclude_seen", [True, False])
def test_ials_lists_are_the_same_through_the_faiss_search_and_the_dense_block(exclude_seen, monkeypatch):
    from m6rec.candidates import ials as ials_module

    rng = np.random.default_rng(11)
    interactions = (rng.random((90, 50)) < rng.uniform(0.02, 0.5, 50)).astype(np.float32)
    interactions[7] = 0.0  # no history: no list
    interactions[8, :45] = 1.0  # a heavy user: searched deeper
    source = create_source("ials", **FAST_PARAMS["ials"]).fit(matrix_of(interactions))
    wider = np.hstack([interactions, np.zeros((90, 3), dtype=np.float32)])
    wider[0, 50:] = 1.0
    source.fold_in(matrix_of(wider))  # three items it never learned: never listed
    user_rows = np.arange(90)

    monkeypatch.setattr(ials_module, "DENSE_UP_TO_ITEMS", 10**9)
    dense = source.recommend(user_rows, 12, exclude_seen=exclude_seen)
    monkeypatch.setattr(ials_module, "DENSE_UP_TO_ITEMS", 0)
    searched = source.recommend(user_rows, 12, exclude_seen=exclude_seen)

    np.testing.assert_array_equal(searched.items, dense.items)
    np.testing.assert_array_equal(searched.scores, dense.scores)
    assert (dense.items[7] == -1).all() and not np.isin(dense.items, [50, 51, 52]).any()


def test_ials_past_the_exact_size_searches_an_index_tuned_for_recall_on_its_users(monkeypatch, caplog):
    """Planted taste groups over 2,000 items, searched through an inverted file: the lists find at least
    95% of the exact lists' items, with the exact scores, and the measured recall is logged."""
    from m6rec.candidates import ials as ials_module

    rng = np.random.default_rng(12)
    groups = rng.integers(0, 20, size=600)
    item_groups = rng.integers(0, 20, size=2000)
    likes = np.where(groups[:, None] == item_groups[None, :], 0.08, 0.004)
    interactions = (rng.random((600, 2000)) < likes).astype(np.float32)
    source = create_source("ials", **FAST_PARAMS["ials"]).fit(matrix_of(interactions))
    user_rows = np.arange(600)
    monkeypatch.setattr(ials_module, "DENSE_UP_TO_ITEMS", 10**9)
    exact = source.recommend(user_rows, 20)

    monkeypatch.setattr(ials_module, "DENSE_UP_TO_ITEMS", 0)
    monkeypatch.setattr(ials_module, "APPROXIMATE_FROM_ITEMS", 1000)
    with caplog.at_level(logging.INFO, logger="m6rec"):
        searched = source.recommend(user_rows, 20)

    found = np.mean(
        [len(np.intersect1d(a, b)) / 20 for a, b in zip(searched.items, exact.items, strict=True)]
    )
    assert found >= 0.95
    assert "FAISS index IVF" in caplog.text and "recall@" in caplog.text
    seen = interactions[user_rows[:, None], np.maximum(searched.items, 0)] > 0
    assert not seen[searched.items >= 0].any()
    pair_scores = np.einsum("ud,ukd->uk", source.user_factors, source.item_factors[searched.items])
    np.testing.assert_allclose(searched.scores, pair_scores, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("block_cells", [base_module.BLOCK_CELLS, 0], ids=["cell-table", "sorted-keys"])
def test_sparse_block_entries_in_any_column_order_list_like_the_dense_block(block_cells, monkeypatch):
    """Products give rows whose columns are not sorted: ties at the cut still go to the lower column and
    seen items are still dropped (looked up in a table of the block's cells, or among sorted keys)."""
    monkeypatch.setattr(base_module, "BLOCK_CELLS", block_cells)
    rng = np.random.default_rng(3)
    n_rows, n_items = 30, 50
    dense = np.where(rng.random((n_rows, n_items)) < 0.4, rng.integers(1, 4, (n_rows, n_items)), 0)
    rows, cols = np.nonzero(dense)
    shuffled = rng.permutation(len(rows))
    order = shuffled[np.argsort(rows[shuffled], kind="stable")]  # rows grouped, columns shuffled within
    block = sp.csr_matrix((n_rows, n_items), dtype=np.float32)
    block.data = dense[rows[order], cols[order]].astype(np.float32)
    block.indices = cols[order].astype(np.int32)
    block.indptr = np.r_[0, np.cumsum(np.bincount(rows, minlength=n_rows))].astype(np.int32)
    assert not block.has_sorted_indices
    seen = sp.csr_matrix((rng.random((n_rows, n_items)) < 0.2).astype(np.float32))
    served = np.ones(n_rows, dtype=bool)
    served[4] = False

    entries = base_module._listable_entries(block, seen, served, np.ones(n_items, dtype=bool))
    listed, scores = base_module._top_of_rows(entries, 6, missing=n_items)

    expected = np.where(dense > 0, dense, -np.inf).astype(np.float32)
    expected[seen.toarray() > 0] = -np.inf
    expected[4] = -np.inf
    expected_items, expected_scores = top_k(expected, 6)
    np.testing.assert_array_equal(np.where(expected_items >= 0, listed, -1), expected_items)
    np.testing.assert_array_equal(scores, expected_scores)
