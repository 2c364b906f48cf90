"""Cold start in the ranking stage: simulated new items in the ranker's fold, places reserved for new items
in the final lists, and, on a planted catalogue, new items reaching users' lists only with these."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest

from m6rec.candidates import Candidates, create_source
from m6rec.config import EmbeddingConfig, RankerConfig, RunConfig
from m6rec.data.contract import ITEM_ID, USER_ID
from m6rec.data.interactions import IdIndex
from m6rec.embeddings.store import read_embeddings, write_embeddings
from m6rec.errors import ConfigError
from pipelines.ranking import candidate_table, resampled_folds, train_ranker
from pipelines.source_tuning import make_fold
from ranker.features import RankerContext, build_ranker_features
from ranker.lists import rank_candidates, rank_with_new_item_slots, reserve_new_item_slots


def _interactions(n_users: int = 40, n_items: int = 50, per_user: int = 12, seed: int = 0):
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        [
            (f"u{user}", f"i{item}")
            for user in range(n_users)
            for item in rng.choice(n_items, size=per_user, replace=False)
        ],
        columns=[USER_ID, ITEM_ID],
    )
    # "never" has content but no interaction: it can never be a simulated new item.
    items = IdIndex.from_values(frame[ITEM_ID], pd.Series(["never"]))
    return frame, IdIndex.from_values(frame[USER_ID]), items


def test_fold_hides_the_history_of_its_simulated_new_items_and_keeps_their_labels():
    frame, users, items = _interactions()
    ordinary = make_fold(frame, users, items, 0.2, temporal=False, seed=3)
    fold = make_fold(frame, users, items, 0.2, temporal=False, seed=3, cold_item_share=0.1)

    full, history, labels = (m.matrix.toarray() for m in (fold.full, fold.history, fold.labels))
    hidden = fold.hidden.matrix.toarray()
    with_history = np.flatnonzero(full.sum(axis=0))
    assert len(fold.cold_items) == round(0.1 * len(with_history)) == 5
    assert set(fold.cold_items) <= set(with_history), "'never' has no interaction to hide"
    assert history[:, fold.cold_items].sum() == 0
    assert not fold.history_frame[ITEM_ID].isin(items.ids[fold.cold_items]).any()
    assert np.array_equal(history + labels + hidden, full), "no interaction lost or counted twice"
    assert np.array_equal(labels, ordinary.labels.matrix.toarray()), "labels as in the ordinary fold"
    warm = np.setdiff1d(np.arange(len(items)), fold.cold_items)
    assert np.array_equal(history[:, warm], ordinary.history.matrix[:, warm].toarray())
    assert np.array_equal(fold.seen.toarray() > 0, (history + hidden) > 0)
    assert fold.cold_item_share == pytest.approx(0.1)
    assert len(ordinary.cold_items) == 0 and ordinary.hidden is None and ordinary.cold_item_share == 0.0


def test_simulated_new_items_follow_the_seed():
    frame, users, items = _interactions()
    first, again, other = (
        make_fold(frame, users, items, 0.2, temporal=False, seed=seed, cold_item_share=0.2)
        for seed in (1, 1, 2)
    )
    assert np.array_equal(first.cold_items, again.cold_items)
    assert (first.history.matrix != again.history.matrix).nnz == 0
    assert not np.array_equal(first.cold_items, other.cold_items)


def test_a_share_outside_zero_to_one_is_refused():
    frame, users, items = _interactions()
    with pytest.raises(ValueError, match="cold_item_share"):
        make_fold(frame, users, items, 0.2, temporal=False, seed=1, cold_item_share=1.0)


def test_resampled_folds_simulate_as_many_new_items_elsewhere():
    frame, users, items = _interactions()
    fold = make_fold(frame, users, items, 0.2, temporal=False, seed=1, cold_item_share=0.1)
    sources = {"popularity": create_source("popularity").fit(fold.history)}

    (extra, refitted), *_ = resampled_folds(fold, sources, 1, seed=1)

    assert len(extra.cold_items) == len(fold.cold_items)
    assert not np.array_equal(extra.cold_items, fold.cold_items)
    assert extra.history.matrix[:, extra.cold_items].nnz == 0
    assert refitted["popularity"].recommend(np.arange(5), 60).items.shape == (5, 60)


def _lists(rows: list[list[int]]) -> Candidates:
    items = np.array(rows, dtype=np.int64)
    scores = np.where(items >= 0, 100.0 - np.arange(items.shape[1]), -np.inf).astype(np.float32)
    return Candidates(items, scores)


def test_new_items_move_up_to_the_reserved_places():
    #              positions 1  2  3  4  5  6  7  8   9  10
    ranked = _lists([[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]])
    is_new = np.zeros(12, dtype=bool)
    is_new[[7, 8, 9]] = True

    lists, moved = reserve_new_item_slots(ranked, is_new, slots=2, spacing=3)

    assert lists.items.tolist() == [[0, 1, 7, 2, 3, 8, 4, 5, 6, 9]]
    assert moved.tolist() == [[False, False, True, False, False, True, False, False, False, False]]
    assert lists.scores[0, 2] == ranked.scores[0, 7], "an item keeps its score"


def test_new_items_the_ranker_placed_high_enough_stay():
    ranked = _lists([[5, 0, 1, 2, 3, 6, 4, -1], [0, 1, 2, 3, 4, 5, 6, -1]])
    is_new = np.zeros(8, dtype=bool)
    is_new[[5, 6]] = True

    lists, moved = reserve_new_item_slots(ranked, is_new, slots=2, spacing=3)

    assert lists.items[0].tolist() == [5, 0, 1, 2, 3, 6, 4, -1], "5 at 1 <= 3, 6 at 6 <= 6"
    assert not moved[0].any()
    assert lists.items[1].tolist() == [0, 1, 5, 2, 3, 6, 4, -1]


def test_short_lists_and_fewer_new_items_than_places():
    # k larger than the catalogue: 3 candidates, a list of 6, one new item for 3 places.
    ranked = _lists([[0, 1, 2, -1, -1, -1], [-1, -1, -1, -1, -1, -1]])
    is_new = np.array([False, False, True])

    lists, moved = reserve_new_item_slots(ranked, is_new, slots=3, spacing=1)

    assert lists.items.tolist() == [[2, 0, 1, -1, -1, -1], [-1] * 6]
    assert np.isneginf(lists.scores[:, 3:]).all() and np.isneginf(lists.scores[1]).all()
    assert moved.sum() == 1


def test_no_places_leave_the_lists_unchanged_and_bad_arguments_are_refused():
    ranked = _lists([[3, 2, 1, 0]])
    is_new = np.array([True, False, False, False])
    lists, moved = reserve_new_item_slots(ranked, is_new, slots=0, spacing=1)
    assert np.array_equal(lists.items, ranked.items) and not moved.any()
    with pytest.raises(ValueError, match="spacing"):
        reserve_new_item_slots(ranked, is_new, slots=1, spacing=0)
    with pytest.raises(ValueError, match="slots"):
        reserve_new_item_slots(ranked, is_new, slots=-1, spacing=2)


@pytest.mark.parametrize(("slots", "spacing"), [(1, 1), (2, 4), (3, 2), (10, 1)])
def test_reordering_keeps_every_item_and_meets_the_guarantee(slots, spacing):
    rng = np.random.default_rng(slots * 10 + spacing)
    rows = []
    for _ in range(50):
        length = int(rng.integers(0, 13))
        rows.append(list(rng.choice(40, size=length, replace=False)) + [-1] * (12 - length))
    ranked = _lists(rows)
    is_new = rng.random(40) < 0.3

    lists, moved = reserve_new_item_slots(ranked, is_new, slots=slots, spacing=spacing)

    for before, after, before_scores, after_scores in zip(
        ranked.items, lists.items, ranked.scores, lists.scores, strict=True
    ):
        assert sorted(before.tolist()) == sorted(after.tolist()), "same items, no duplicate, no new one"
        assert dict(zip(before, before_scores, strict=True)) == dict(zip(after, after_scores, strict=True))
        real = after[after >= 0]
        assert np.all(after[len(real) :] == -1), "padding stays at the end"
        old = before[(before >= 0) & ~is_new[np.maximum(before, 0)]]
        assert after[(after >= 0) & ~is_new[np.maximum(after, 0)]].tolist() == old.tolist()
        new_before = before[(before >= 0) & is_new[np.maximum(before, 0)]]
        new_positions = np.flatnonzero((after >= 0) & is_new[np.maximum(after, 0)])
        assert after[new_positions].tolist() == new_before.tolist(), "new items keep the ranker's order"
        for number, position in enumerate(new_positions[:slots], start=1):
            assert position + 1 <= number * spacing
    assert moved.sum() <= (is_new[np.maximum(ranked.items, 0)] & (ranked.items >= 0)).sum()


def test_config_validates_the_cold_start_keys(tmp_path):
    for text, message in [
        (
            "ranker:\n  cold_item_share: 1.5\n",
            "ranker.cold_item_share: Input should be less than 1 (got 1.5)",
        ),
        (
            "ranker:\n  new_item_slots: -1\n",
            "ranker.new_item_slots: Input should be greater than or equal to 0",
        ),
        (
            "ranker:\n  new_item_slot_spacing: 0\n",
            "ranker.new_item_slot_spacing: Input should be greater than",
        ),
        (
            "ranker:\n  new_item_slots: two\n",
            "ranker.new_item_slots: Input should be a valid integer (got 'two')",
        ),
    ]:
        path = tmp_path / "run.yaml"
        path.write_text(text)
        with pytest.raises(ConfigError, match=re.escape(message)):
            RunConfig.from_yaml(path)


def test_new_items_are_simulated_only_where_content_can_reach_them():
    ranker = RankerConfig(cold_item_share=0.1)
    assert RunConfig(ranker=ranker).fold_cold_item_share() == 0.1
    assert RunConfig(ranker=ranker, embeddings=EmbeddingConfig(modalities=["cf"])).fold_cold_item_share() == 0
    assert RunConfig(ranker=ranker, embeddings=EmbeddingConfig(modalities=[])).fold_cold_item_share() == 0
    disabled = RankerConfig(enabled=False, cold_item_share=0.1)
    assert RunConfig(ranker=disabled).fold_cold_item_share() == 0


@dataclass
class Planted:
    """A catalogue with 4 taste groups: a user interacts only with warm items of its group (and 2 random
    ones); each group has 5 new items, never interacted with, whose content points along the group's axis
    like its warm items'. The right answer: a user's new items of interest are its group's."""

    frame: pd.DataFrame
    users: IdIndex
    items: IdIndex
    content: str
    relevant_new: np.ndarray  # [n_users, n_items]: new items of the user's group

    @property
    def is_new(self) -> np.ndarray:
        return self.relevant_new.any(axis=0)


GROUPS, WARM, NEW, USERS = 4, 30, 5, 240
DEPTH = 10


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> Planted:
    rng = np.random.default_rng(7)
    item_ids = [f"g{g}-w{n}" for g in range(GROUPS) for n in range(WARM)]
    item_ids += [f"g{g}-new{n}" for g in range(GROUPS) for n in range(NEW)]
    group = np.r_[np.repeat(np.arange(GROUPS), WARM), np.repeat(np.arange(GROUPS), NEW)]
    vectors = np.eye(8, dtype=np.float32)[group] + 0.35 * rng.standard_normal((len(item_ids), 8))
    content = tmp_path_factory.mktemp("planted") / "text.parquet"
    write_embeddings(
        content,
        ITEM_ID,
        item_ids,
        vectors.astype(np.float32),
        metadata={"encoder": "planted", "weights": "none"},
    )
    user_ids = [f"u{n}" for n in range(USERS)]
    user_group = np.arange(USERS) % GROUPS
    popularity = 1.0 / np.arange(1, WARM + 1) ** 0.8
    pairs = []
    for user, taste in zip(user_ids, user_group, strict=True):
        own = rng.choice(WARM, size=int(rng.integers(8, 16)), replace=False, p=popularity / popularity.sum())
        pairs += [(user, f"g{taste}-w{n}") for n in own]
        pairs += [(user, item_ids[n]) for n in rng.choice(GROUPS * WARM, size=2, replace=False)]
    frame = pd.DataFrame(pairs, columns=[USER_ID, ITEM_ID]).drop_duplicates()
    is_new = np.arange(len(item_ids)) >= GROUPS * WARM
    relevant_new = is_new[None, :] & (group[None, :] == user_group[:, None])
    return Planted(
        frame,
        IdIndex(np.array(user_ids, dtype=object)),
        IdIndex(np.array(item_ids, dtype=object)),
        str(content),
        relevant_new,
    )


@pytest.fixture(scope="module")
def planted_rankers(planted):
    """For a fold without and with 10% simulated new items: the ranker trained on it, the final candidates'
    feature table (sources refitted on all interactions), and each user's random-placement hits."""
    table = read_embeddings(planted.content)
    # One LightGBM thread: on a busy machine extra threads spin-wait and made this fixture 7 times slower.
    params = RankerConfig().params.replace(min_child_samples=50, n_estimators=150, n_jobs=1)

    def sources(matrix):
        return {
            "popularity": create_source("popularity").fit(matrix),
            "ease": create_source("ease", l2=50.0).fit(matrix),
            "content": create_source("content", embeddings=planted.content).fit(matrix),
        }

    trained = {}
    for share in (0.0, 0.1):
        config = RankerConfig(candidates_per_source=50, params=params)
        fold = make_fold(
            planted.frame, planted.users, planted.items, 0.2, temporal=False, seed=0, cold_item_share=share
        )
        context = RankerContext(fold.history, {"text": table})
        trained[share] = train_ranker(fold, sources(fold.history), context, config, seed=0)
    users = np.arange(len(planted.users))
    candidates, _ = candidate_table(sources(fold.full), users, 50, fold.full.matrix)
    features = build_ranker_features(candidates, RankerContext(fold.full, {"text": table}))
    rows, items = candidates["user_row"].to_numpy(), candidates["item"].to_numpy()
    per_user = pd.DataFrame(
        {"wanted": planted.relevant_new[rows, items], "new": planted.is_new[items]}, index=rows
    ).groupby(level=0)
    sizes = per_user.size().to_numpy()
    random_hits = np.minimum(DEPTH, sizes) * per_user["wanted"].sum().to_numpy() / sizes
    return trained, features, random_hits, per_user["new"].sum().to_numpy()


def _planted_lists(planted_rankers, cold_item_share: float, new_item_slots: int) -> Candidates:
    trained, features, _, _ = planted_rankers
    training = trained[cold_item_share]
    users = np.arange(len(planted_rankers[2]))
    return rank_candidates(
        training.ranker,
        features,
        training.columns,
        users,
        DEPTH,
        new_item_slots=new_item_slots,
        new_item_slot_spacing=5,
    )


def _new_recall(lists: Candidates, planted: Planted) -> float:
    hits = [planted.relevant_new[user, row[row >= 0]].sum() for user, row in enumerate(lists.items)]
    return float(np.mean(hits) / NEW)


def test_without_cold_start_handling_new_items_stay_out_of_the_lists(planted, planted_rankers):
    lists = _planted_lists(planted_rankers, cold_item_share=0.0, new_item_slots=0)
    random_recall = planted_rankers[2].mean() / NEW
    assert _new_recall(lists, planted) < 0.25 * random_recall


def test_simulated_new_items_teach_the_ranker_to_order_new_items_by_content(planted, planted_rankers):
    trained = planted_rankers[0]
    assert trained[0.0].cold_candidate_recall is None
    assert trained[0.1].cold_candidate_recall > 0.5, "content retrieval reaches the simulated new items"
    precision = {}
    for share in (0.0, 0.1):
        lists = _planted_lists(planted_rankers, cold_item_share=share, new_item_slots=2)
        users, places = np.nonzero((lists.items >= 0) & planted.is_new[np.maximum(lists.items, 0)])
        precision[share] = planted.relevant_new[users, lists.items[users, places]].mean()
    assert precision[0.1] >= 0.9, "the new items shown are those of the user's taste group"
    assert precision[0.1] > precision[0.0]


def test_reserved_places_put_new_items_in_every_list_that_has_new_candidates(planted, planted_rankers):
    lists = _planted_lists(planted_rankers, cold_item_share=0.0, new_item_slots=2)
    new_candidates = planted_rankers[3]
    new_in_lists = np.array([planted.is_new[row[row >= 0]].sum() for row in lists.items])
    assert len(new_in_lists) == len(new_candidates) == USERS
    assert np.all(new_in_lists >= np.minimum(new_candidates, 2))
    assert np.all(new_in_lists <= 2), "the ranker alone puts no new item in these lists"
    assert _new_recall(lists, planted) > planted_rankers[2].mean() / NEW
    trained, features, _, _ = planted_rankers
    _, moved = rank_with_new_item_slots(
        trained[0.0].ranker, features, trained[0.0].columns, np.arange(USERS), DEPTH, slots=2, spacing=5
    )
    assert np.array_equal(moved, planted.is_new[np.maximum(lists.items, 0)] & (lists.items >= 0))
    assert np.flatnonzero(moved.any(axis=0)).tolist() == [4, 9], "places 5 and 10"
