"""Folding new interactions into saved candidate sources instead of refitting them.

Every source is fitted on a small history ``M``, saved and loaded; folding ``M`` back in must give the
fitted lists. A newer history ``M2`` adds a user, an interaction of an existing user and an item, and
numbers users and items in another order: the item-side sources must score it as x_u·B (EASE), x_u·S
(ItemKNN) and a least-squares user solve against the fixed item factors (iALS), computed here by hand.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from m6rec.candidates import create_source, load_source, registered_sources, source_class
from m6rec.candidates import ials as ials_module
from m6rec.candidates.alignment import ItemAlignment
from m6rec.candidates.base import FoldInError
from m6rec.candidates.side_inputs import SideInputs
from m6rec.data.contract import ITEM_ID, KG_HEAD, KG_RELATION, KG_TAIL, TIMESTAMP, USER_ID
from m6rec.data.interactions import IdIndex, InteractionMatrix
from m6rec.embeddings.profiles import ProfileCache
from m6rec.embeddings.store import EmbeddingTable

SOURCE_NAMES = registered_sources()
FOLD_IN_PARAMS = {
    "ease": {"l2": 2.0},
    "itemknn": {"neighbours": 50, "shrink": 1.0},
    "ials": {"factors": 4, "iterations": 5, "regularization": 0.5, "alpha": 4.0, "seed": 0},
    "trend": {"window_days": 30.0, "half_life_days": 7.0},
    "sequential": {"window": 2},
    "kg_neighbours": {"recent": 5},
    "content": {"half_life_days": None},
}
ITEM_SIDE_SOURCES = ("ease", "itemknn", "ials")
NEW_USER, NEW_ITEM = "u-new", "i-new"
# The two existing users whose histories grow in the newer matrix: one by a known item, one by the new item.
CHANGED_USER, NEW_ITEM_USER = "u3", "u7"
DAY = 86_400.0
# Scores recomputed by hand (float64) against the sources' float32 arithmetic.
SCORE_RTOL, SCORE_ATOL = 1e-4, 1e-5


@dataclass(frozen=True)
class Histories:
    """The training history ``M``, the newer ``M2`` and the side inputs of each."""

    train: InteractionMatrix
    newer: InteractionMatrix
    train_inputs: SideInputs
    newer_inputs: SideInputs
    changed_item: str


def make_source(name: str):
    return create_source(name, **FOLD_IN_PARAMS.get(name, {}))


def matrix_of(frame: pd.DataFrame, users: list[str], items: list[str]) -> InteractionMatrix:
    return InteractionMatrix.from_frame(
        frame, IdIndex(np.array(users, dtype=object)), IdIndex(np.array(items, dtype=object))
    )


def side_inputs(train: InteractionMatrix, item_ids: list[str], user_ids: list[str]) -> SideInputs:
    """Two-tower, content and KG inputs for ``train``: random vectors (no two scores tie) for every ID
    given, whatever the matrix holds, and a KG linking each item to one of three genres and a label."""
    rng = np.random.default_rng(3)
    item_vectors = rng.standard_normal((len(item_ids), 6)).astype(np.float32)
    user_vectors = rng.standard_normal((len(user_ids), 6)).astype(np.float32)

    def table(key_column: str, keys: list[str], vectors: np.ndarray) -> EmbeddingTable:
        nothing = np.full(len(keys), None, dtype=object)
        keys = np.array(keys, dtype=object)
        return EmbeddingTable(key_column, keys, vectors, np.ones(len(keys), dtype=bool), nothing, nothing, {})

    kg = pd.DataFrame(
        {
            KG_HEAD: [*item_ids, *item_ids],
            KG_RELATION: ["genre"] * len(item_ids) + ["label"] * len(item_ids),
            KG_TAIL: [f"genre-{n % 3}" for n in range(len(item_ids))]
            + [f"label-{n // 2}" for n in range(len(item_ids))],
        }
    )
    return SideInputs(
        item_vectors={
            "cf_items": table(ITEM_ID, item_ids, item_vectors),
            "text": table(ITEM_ID, item_ids, item_vectors),
        },
        user_vectors={"cf_users": table(USER_ID, user_ids, user_vectors)},
        kg=kg,
        profiles=ProfileCache(train, half_life_days=None),
    )


@pytest.fixture(scope="module")
def histories() -> Histories:
    """``M``: 30 users × 16 items, random interactions (every user at least 3) with random times.

    ``M2`` adds ``u-new`` (two known items and the new item), one unseen known item for ``u3``, and
    ``i-new`` (also seen by ``u7``); its users and items come in another order than ``M``'s. The side
    inputs hold vectors for ``u-new`` and ``i-new`` in both.
    """
    rng = np.random.default_rng(8)
    users = [f"u{n}" for n in range(30)]
    items = [f"i{n}" for n in range(16)]
    seen = rng.random((30, 16)) < 0.35
    seen[np.arange(30)[:, None], rng.permuted(np.tile(np.arange(16), (30, 1)), axis=1)[:, :3]] = True
    rows, cols = np.nonzero(seen)
    frame = pd.DataFrame(
        {
            USER_ID: np.array(users)[rows],
            ITEM_ID: np.array(items)[cols],
            TIMESTAMP: 1_700_000_000.0 + rng.uniform(0, 40, len(rows)) * DAY,
        }
    )
    changed_item = items[int(np.flatnonzero(~seen[3])[0])]
    later = 1_700_000_000.0 + 41 * DAY
    added = pd.DataFrame(
        {
            USER_ID: [NEW_USER, NEW_USER, NEW_USER, CHANGED_USER, NEW_ITEM_USER],
            ITEM_ID: ["i1", "i4", NEW_ITEM, changed_item, NEW_ITEM],
            TIMESTAMP: [later, later + 1, later + 2, later + 3, later + 4],
        }
    )
    train = matrix_of(frame, users, items)
    newer_users = [*users[::-1][:10], NEW_USER, *users[::-1][10:]]
    newer_items = [*items[8:], NEW_ITEM, *items[:8][::-1]]
    newer = matrix_of(pd.concat([frame, added], ignore_index=True), newer_users, newer_items)
    every_item, every_user = [*items, NEW_ITEM], [*users, NEW_USER]
    return Histories(
        train=train,
        newer=newer,
        train_inputs=side_inputs(train, every_item, every_user),
        newer_inputs=side_inputs(newer, every_item, every_user),
        changed_item=changed_item,
    )


@pytest.fixture(scope="module")
def fitted(histories) -> dict:
    return {name: make_source(name).fit(histories.train, histories.train_inputs) for name in SOURCE_NAMES}


def saved_and_loaded(source, directory):
    source.save(directory)
    return load_source(directory)


def scores_by_id(source, matrix: InteractionMatrix, user: str, items: np.ndarray) -> np.ndarray:
    """``source``'s scores of ``user`` for the raw item IDs ``items``, over ``matrix``'s index space."""
    row = matrix.users.positions(np.array([user], dtype=object))
    return source.score(row)[0, matrix.items.positions(items)]


def test_the_sources_whose_fit_is_counting_refit_to_fold_in():
    refitting = {name for name in SOURCE_NAMES if source_class(name).refits_to_fold_in}

    assert refitting == {"popularity", "trend", "sequential", "kg_neighbours"}


@pytest.mark.parametrize("name", SOURCE_NAMES)
def test_folding_the_training_history_into_the_loaded_source_gives_the_fitted_lists(
    name, fitted, histories, tmp_path
):
    train, users = histories.train, np.arange(histories.train.n_users)
    expected = fitted[name].recommend(users, train.n_items)

    folded = saved_and_loaded(fitted[name], tmp_path / name).fold_in(train, histories.train_inputs)
    got = folded.recommend(users, train.n_items)

    np.testing.assert_array_equal(got.items, expected.items)
    np.testing.assert_allclose(got.scores, expected.scores, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", SOURCE_NAMES)
def test_a_newer_history_serves_the_new_user_and_excludes_the_changed_users_new_item(
    name, fitted, histories, tmp_path
):
    newer = histories.newer
    folded = saved_and_loaded(fitted[name], tmp_path / name).fold_in(newer, histories.newer_inputs)
    rows = newer.users.positions(np.array([NEW_USER, CHANGED_USER], dtype=object))

    candidates = folded.recommend(rows, newer.n_items)
    new_user_items, changed_user_items = (newer.items.ids[row[row >= 0]] for row in candidates.items)

    assert len(new_user_items) > 0
    assert not {"i1", "i4", NEW_ITEM} & set(new_user_items)
    assert histories.changed_item not in set(changed_user_items)
    assert folded.score(rows).shape == (2, newer.n_items)


@pytest.mark.parametrize("name", [name for name in SOURCE_NAMES if not source_class(name).refits_to_fold_in])
def test_an_unchanged_users_scores_follow_the_raw_item_ids_into_the_new_order(
    name, fitted, histories, tmp_path
):
    """``u0`` has the same history in both matrices: by raw ID its scores of the trained items stay."""
    old_items = histories.train.items.ids

    folded = saved_and_loaded(fitted[name], tmp_path / name).fold_in(histories.newer, histories.newer_inputs)

    np.testing.assert_allclose(
        scores_by_id(folded, histories.newer, "u0", old_items),
        scores_by_id(fitted[name], histories.train, "u0", old_items),
        rtol=1e-6,
        atol=1e-7,
    )


@pytest.mark.parametrize("name", ITEM_SIDE_SOURCES)
def test_item_side_sources_give_items_they_never_saw_no_score(name, histories):
    newer = histories.newer
    folded = make_source(name).fit(histories.train).fold_in(newer)
    new_column = newer.items.positions(np.array([NEW_ITEM], dtype=object))[0]

    scores = folded.score(np.arange(newer.n_users))
    candidates = folded.recommend(np.arange(newer.n_users), newer.n_items)

    assert np.all(scores[:, new_column] == -np.inf)
    assert np.isfinite(np.delete(scores, new_column, axis=1)).all()
    assert not (candidates.items == new_column).any()
    assert folded.learned_items.sum() == newer.n_items - 1


@pytest.mark.parametrize("name", [name for name in SOURCE_NAMES if source_class(name).refits_to_fold_in])
def test_sources_that_refit_to_fold_in_equal_a_fresh_fit(name, fitted, histories, tmp_path):
    newer, users = histories.newer, np.arange(histories.newer.n_users)
    folded = saved_and_loaded(fitted[name], tmp_path / name).fold_in(newer, histories.newer_inputs)
    fresh = make_source(name).fit(newer, histories.newer_inputs)

    np.testing.assert_array_equal(folded.score(users), fresh.score(users))


def on_training_columns(matrix: InteractionMatrix, train: InteractionMatrix) -> np.ndarray:
    """``matrix``'s users × ``train``'s item columns (dense 0/1, float64): items ``train`` lacks dropped."""
    dense = np.zeros((matrix.n_users, train.n_items))
    columns = train.items.positions(matrix.items.ids)
    known = columns >= 0
    dense[:, columns[known]] = matrix.matrix.toarray()[:, known]
    return dense


def on_newer_columns(scores: np.ndarray, train: InteractionMatrix, newer: InteractionMatrix) -> np.ndarray:
    """Scores over ``train``'s item columns moved to ``newer``'s, -inf for the items ``train`` lacks."""
    moved = np.full((len(scores), newer.n_items), -np.inf)
    columns = newer.items.positions(train.items.ids)
    moved[:, columns] = scores
    return moved


def hand_ease_weights(train: InteractionMatrix, l2: float) -> np.ndarray:
    """EASE's closed form B = I − P·diag(1/diag P), P = (XᵀX + l2·I)⁻¹, in float64."""
    dense = train.matrix.toarray().astype(np.float64)
    precision = np.linalg.inv(dense.T @ dense + l2 * np.eye(train.n_items))
    weights = -precision / np.diag(precision)
    np.fill_diagonal(weights, 0.0)
    return weights


def hand_shrunk_cosine(train: InteractionMatrix, shrink: float) -> np.ndarray:
    dense = train.matrix.toarray().astype(np.float64)
    norms = np.linalg.norm(dense, axis=0)
    similarity = dense.T @ dense / (np.outer(norms, norms) + shrink)
    np.fill_diagonal(similarity, 0.0)
    return similarity


def test_ease_fold_in_scores_each_current_history_with_the_trained_weights(fitted, histories, tmp_path):
    train, newer = histories.train, histories.newer
    weights = hand_ease_weights(train, FOLD_IN_PARAMS["ease"]["l2"])

    folded = saved_and_loaded(fitted["ease"], tmp_path / "ease").fold_in(newer)

    expected = on_newer_columns(on_training_columns(newer, train) @ weights, train, newer)
    np.testing.assert_allclose(
        folded.score(np.arange(newer.n_users)), expected, rtol=SCORE_RTOL, atol=SCORE_ATOL
    )


def test_itemknn_fold_in_sums_the_trained_similarities_over_each_current_history(fitted, histories, tmp_path):
    train, newer = histories.train, histories.newer
    similarity = hand_shrunk_cosine(train, FOLD_IN_PARAMS["itemknn"]["shrink"])

    folded = saved_and_loaded(fitted["itemknn"], tmp_path / "itemknn").fold_in(newer)

    expected = on_newer_columns(on_training_columns(newer, train) @ similarity, train, newer)
    np.testing.assert_allclose(
        folded.score(np.arange(newer.n_users)), expected, rtol=SCORE_RTOL, atol=SCORE_ATOL
    )


def test_ease_head_and_tail_move_to_the_new_order_by_raw_id(histories):
    """Above ``max_items`` the tail's sparse weights move with the head's dense ones: every user whose
    history did not change keeps its scores of the trained items."""
    train, newer = histories.train, histories.newer
    source = create_source("ease", l2=2.0, max_items=8, tail_neighbours=3).fit(train)
    assert source.mode == "dense head + sparse tail" and source.tail_weights.nnz > 0
    unchanged = [user for user in train.users.ids if user not in (CHANGED_USER, NEW_ITEM_USER)]
    fitted_scores = [scores_by_id(source, train, user, train.items.ids) for user in unchanged]

    source.fold_in(newer)

    for user, expected in zip(unchanged, fitted_scores, strict=True):
        np.testing.assert_allclose(
            scores_by_id(source, newer, user, train.items.ids), expected, rtol=1e-6, atol=1e-7
        )


def hand_user_solve(history: np.ndarray, item_factors: np.ndarray, *, alpha: float, regularization: float):
    """argmin_x Σ_i c_i (p_i − x·y_i)² + λ‖x‖², p = the 0/1 history, c = alpha where seen, 1 elsewhere."""
    factors = item_factors.astype(np.float64)
    seen = factors[history > 0]
    system = factors.T @ factors + regularization * np.eye(factors.shape[1]) + (alpha - 1.0) * seen.T @ seen
    return np.linalg.solve(system, alpha * seen.sum(axis=0))


def test_ials_fold_in_keeps_the_fitted_factors_of_users_whose_history_did_not_change(fitted, tmp_path):
    source = fitted["ials"]
    folded = saved_and_loaded(source, tmp_path / "ials").fold_in(
        InteractionMatrix(
            source.seen, IdIndex(source.user_ids.astype(object)), IdIndex(source.item_ids.astype(object))
        )
    )
    np.testing.assert_array_equal(folded.user_factors, source.user_factors)


def test_ials_fold_in_solves_each_new_or_changed_history_against_the_fixed_item_factors(
    fitted, histories, tmp_path
):
    train, newer, params = histories.train, histories.newer, FOLD_IN_PARAMS["ials"]
    item_factors = fitted["ials"].item_factors.copy()

    folded = saved_and_loaded(fitted["ials"], tmp_path / "ials").fold_in(newer)

    histories_on_train = on_training_columns(newer, train)
    fitted_rows = {user: row for row, user in enumerate(train.users.ids)}
    trained_histories = train.matrix.toarray()
    user_factors, solved = [], 0
    for user, history in zip(newer.users.ids, histories_on_train, strict=True):
        row = fitted_rows.get(user)
        if row is not None and np.array_equal(history > 0, trained_histories[row] > 0):
            user_factors.append(fitted["ials"].user_factors[row])
        else:
            solved += 1
            user_factors.append(
                hand_user_solve(
                    history, item_factors, alpha=params["alpha"], regularization=params["regularization"]
                )
            )
    user_factors = np.array(user_factors)
    assert solved >= 2, "the new user and the changed one are solved"
    np.testing.assert_allclose(folded.user_factors, user_factors, rtol=SCORE_RTOL, atol=SCORE_ATOL)
    expected = on_newer_columns(user_factors @ item_factors.T.astype(np.float64), train, newer)
    np.testing.assert_allclose(
        folded.score(np.arange(newer.n_users)), expected, rtol=SCORE_RTOL, atol=SCORE_ATOL
    )


def test_ials_user_solve_in_small_batches_equals_one_batch(fitted, histories, monkeypatch):
    one_batch = fitted["ials"]._solve_users(histories.train.matrix)
    monkeypatch.setattr(ials_module, "USER_SOLVE_BATCH", 7)

    np.testing.assert_array_equal(fitted["ials"]._solve_users(histories.train.matrix), one_batch)


@pytest.mark.parametrize("name", ["content", "two_tower"])
def test_embedding_sources_keep_an_unchanged_index_and_rebuild_one_that_changed(
    name, fitted, histories, tmp_path
):
    newer = histories.newer
    loaded = saved_and_loaded(fitted[name], tmp_path / name)
    saved_index = loaded.index

    assert loaded.fold_in(histories.train, histories.train_inputs).index is saved_index
    loaded.fold_in(newer, histories.newer_inputs)

    assert loaded.index is not saved_index
    assert loaded.index.n_vectors == newer.n_items
    new_column = newer.items.positions(np.array([NEW_ITEM], dtype=object))[0]
    new_user = newer.users.positions(np.array([NEW_USER], dtype=object))
    unseen_by = np.flatnonzero(newer.matrix.toarray()[:, new_column] == 0)
    assert np.isfinite(loaded.score(unseen_by)[:, new_column]).all(), (
        "the new item has a vector: it is retrieved"
    )
    assert (loaded.recommend(new_user, 5).items[0] >= 0).all(), "the new user's vector queries the index"


def test_a_folded_in_source_saves_and_folds_in_again_by_raw_id(fitted, histories, tmp_path):
    """Fold in ``M2``, save, load and fold in ``M2`` renumbered once more: the same scores by raw ID."""
    newer = histories.newer
    once = saved_and_loaded(fitted["ease"], tmp_path / "first").fold_in(newer)
    renumbered = InteractionMatrix(
        newer.matrix[::-1, ::-1].tocsr(), IdIndex(newer.users.ids[::-1]), IdIndex(newer.items.ids[::-1])
    )

    twice = saved_and_loaded(once, tmp_path / "second").fold_in(renumbered)

    for user in (NEW_USER, CHANGED_USER, "u0"):
        np.testing.assert_allclose(
            scores_by_id(twice, renumbered, user, newer.items.ids),
            scores_by_id(once, newer, user, newer.items.ids),
            rtol=1e-6,
            atol=1e-7,
        )


def without_item_ids(directory) -> None:
    """Rewrite ``arrays.npz`` as an older version saved it: without the item IDs and learned items."""
    with np.load(directory / "arrays.npz", allow_pickle=False) as arrays:
        kept = {key: arrays[key] for key in arrays.files if key not in ("item_ids", "learned_items")}
    np.savez(directory / "arrays.npz", **kept)


def test_a_source_saved_without_item_ids_serves_but_refuses_to_fold_in_with_one_clear_error(
    fitted, histories, tmp_path
):
    fitted["ease"].save(tmp_path / "ease")
    without_item_ids(tmp_path / "ease")
    users = np.arange(histories.train.n_users)

    legacy = load_source(tmp_path / "ease")

    np.testing.assert_array_equal(legacy.recommend(users, 5).items, fitted["ease"].recommend(users, 5).items)
    with pytest.raises(FoldInError, match="ease: this saved source has no item IDs") as error:
        legacy.fold_in(histories.newer)
    assert "retrain" in error.value.hint


@pytest.mark.parametrize("name", ["popularity", "content"])
def test_sources_that_need_no_item_ids_fold_in_by_refitting_when_saved_without_them(
    name, fitted, histories, tmp_path
):
    """Popularity refits anyway; an embedding source cannot tell whether its index is current, so it
    rebuilds it."""
    newer, users = histories.newer, np.arange(histories.newer.n_users)
    fitted[name].save(tmp_path / name)
    without_item_ids(tmp_path / name)

    folded = load_source(tmp_path / name).fold_in(newer, histories.newer_inputs)

    fresh = make_source(name).fit(newer, histories.newer_inputs)
    np.testing.assert_array_equal(folded.score(users), fresh.score(users))


def test_item_alignment_moves_histories_and_item_pairs_by_raw_id():
    alignment = ItemAlignment.by_id(
        np.array(["a", "b", "c"]), IdIndex(np.array(["c", "new", "a"], dtype=object))
    )
    histories = sp.csr_matrix(np.array([[1.0, 1.0, 0.0], [0.0, 1.0, 1.0]]))  # over c, new, a
    pairs = sp.csr_matrix(np.array([[0.0, 2.0, 3.0], [4.0, 0.0, 5.0], [6.0, 7.0, 0.0]]))  # over a, b, c

    np.testing.assert_array_equal(alignment.learned_of_current, [2, -1, 0])
    np.testing.assert_array_equal(alignment.current_of_learned, [2, -1, 0])
    np.testing.assert_array_equal(alignment.histories_on_learned(histories).toarray(), [[0, 0, 1], [1, 0, 0]])
    np.testing.assert_array_equal(alignment.item_item(pairs).toarray(), [[0, 0, 6], [0, 0, 0], [3, 0, 0]])
    np.testing.assert_array_equal(
        alignment.learned_items(np.array([True, True, False])), [False, False, True]
    )
    np.testing.assert_array_equal(alignment.item_rows(np.array([[1.0], [2.0], [3.0]])), [[3.0], [0.0], [1.0]])
