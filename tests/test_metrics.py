"""Evaluation metrics on lists with hand-computed answers, against a slow reference, and on MovieLens-100K."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from m6rec.evaluation import (
    auc,
    evaluate_recommendations,
    f1_at_threshold,
    ranking_metrics,
)

ML_100K = Path("../shared/data/ml-100k")


def relevance_matrix(relevant_sets: list[set[int]], n_items: int) -> sp.csr_array:
    rows = [row for row, items in enumerate(relevant_sets) for _ in items]
    cols = [item for items in relevant_sets for item in sorted(items)]
    return sp.csr_array((np.ones(len(rows)), (rows, cols)), shape=(len(relevant_sets), n_items))


def metrics_of(lists: list[list[int]], relevant_sets: list[set[int]], n_items: int = 10, **kwargs):
    width = max(len(items) for items in lists)
    recommended = np.array([items + [-1] * (width - len(items)) for items in lists], dtype=np.int64)
    kwargs.setdefault("n_catalogue_items", n_items)
    return ranking_metrics(recommended, relevance_matrix(relevant_sets, n_items), **kwargs)


def test_three_item_list_with_known_ndcg_precision_recall_map():
    a, b, c = 0, 1, 2
    result = metrics_of([[a, b, c]], [{a, c}], k_values=(3,))
    dcg = 1 / math.log2(2) + 1 / math.log2(4)  # hits at positions 1 and 3: 1 + 0.5 = 1.5
    idcg = 1 / math.log2(2) + 1 / math.log2(3)  # two relevant items, ideally at positions 1 and 2
    assert result["ndcg@3"] == pytest.approx(dcg / idcg)
    assert result["ndcg@3"] == pytest.approx(1.5 / 1.6309297535714575)
    assert result["precision@3"] == pytest.approx(2 / 3)
    assert result["recall@3"] == pytest.approx(1.0)
    assert result["hit_rate@3"] == pytest.approx(1.0)
    # precision@1 * rel_1 + precision@3 * rel_3 = 1 + 2/3, over min(K=3, r=2) = 2
    assert result["map@3"] == pytest.approx((1 + 2 / 3) / 2)
    assert result["mrr"] == pytest.approx(1.0)
    assert result["n_users"] == 1


def test_recall_and_map_when_more_relevant_items_than_k():
    result = metrics_of([[0, 9, 1]], [{0, 1, 2, 3, 4}], k_values=(2,))
    assert result["recall@2"] == pytest.approx(1 / 5)  # one hit in the top 2, five relevant items
    assert result["precision@2"] == pytest.approx(1 / 2)
    assert result["map@2"] == pytest.approx(1 / 2)  # precision@1 = 1, divided by min(K=2, r=5) = 2
    assert result["ndcg@2"] == pytest.approx(1 / (1 + 1 / math.log2(3)))  # IDCG fills both top-2 slots


def test_mrr_reads_the_whole_list_beyond_k():
    result = metrics_of([[9, 8, 3]], [{3}], k_values=(2,))
    assert result["hit_rate@2"] == pytest.approx(0.0)
    assert result["ndcg@2"] == pytest.approx(0.0)
    assert result["mrr"] == pytest.approx(1 / 3)


def test_padding_occupies_its_position_and_never_hits():
    n_items = 10
    recommended = np.array([[-1, 2, -1], [-1, -1, -1]])
    # Row 1's relevant item is the last item index, which a padding key of row 2 would alias if unmasked.
    relevant = relevance_matrix([{2}, {n_items - 1}], n_items)
    result = ranking_metrics(recommended, relevant, k_values=(3,), n_catalogue_items=n_items)
    assert result["ndcg@3"] == pytest.approx((1 / math.log2(3)) / 2)  # hit at position 2; second user 0
    assert result["precision@3"] == pytest.approx((1 / 3) / 2)
    assert result["mrr"] == pytest.approx((1 / 2) / 2)
    assert result["coverage@3"] == pytest.approx(1 / n_items)


def test_user_without_hits_counts_with_zeros():
    result = metrics_of([[0, 1], [5, 6]], [{0}, {1}], k_values=(2,))
    assert result["hit_rate@2"] == pytest.approx(0.5)
    assert result["recall@2"] == pytest.approx(0.5)
    assert result["ndcg@2"] == pytest.approx(0.5)
    assert result["map@2"] == pytest.approx(0.5)
    assert result["mrr"] == pytest.approx(0.5)
    assert result["n_users"] == 2


def test_users_without_relevant_items_are_ignored_everywhere():
    popularity = np.arange(10, dtype=float)
    alone = metrics_of([[0, 1]], [{0}], k_values=(2,), item_popularity=popularity)
    with_idle = metrics_of(
        [[0, 1], [7, 8], [9]],
        [{0}, set(), set()],
        k_values=(2,),
        item_popularity=popularity,
    )
    assert with_idle == pytest.approx(alone)
    assert with_idle["n_users"] == 1
    assert with_idle["coverage@2"] == pytest.approx(2 / 10)  # items 7, 8, 9 belong to ignored users


def test_k_longer_than_lists_counts_empty_positions():
    result = metrics_of([[0]], [{0}], k_values=(5,))
    assert result["precision@5"] == pytest.approx(1 / 5)
    assert result["ndcg@5"] == pytest.approx(1.0)


def test_catalogue_coverage_counts_distinct_items_in_top_k():
    lists = [[0, 1, 5], [1, 2, 6], [3, 0, 7]]
    result = metrics_of(lists, [{0}, {1}, {2}], n_items=10, k_values=(1, 2))
    assert result["coverage@1"] == pytest.approx(3 / 10)  # {0, 1, 3}
    assert result["coverage@2"] == pytest.approx(4 / 10)  # {0, 1, 2, 3}
    larger = metrics_of(lists, [{0}, {1}, {2}], n_items=10, k_values=(2,), n_catalogue_items=40)
    assert larger["coverage@2"] == pytest.approx(4 / 40)


def test_average_popularity_over_recommended_pairs_in_top_k():
    popularity = np.array([100.0, 10.0, 1.0, 0.0, 5.0])
    result = metrics_of(
        [[0, 1, 4], [2]],
        [{0}, {2}],
        n_items=5,
        k_values=(2,),
        item_popularity=popularity,
    )
    assert result["avg_popularity@2"] == pytest.approx((100 + 10 + 1) / 3)  # padding is not a pair
    assert "avg_popularity@2" not in metrics_of([[0]], [{0}], n_items=5, k_values=(2,))


def test_metric_names_per_cutoff():
    result = metrics_of([[0, 1]], [{0}], k_values=(1, 5), item_popularity=np.ones(10))
    names = [
        "ndcg",
        "recall",
        "precision",
        "hit_rate",
        "map",
        "coverage",
        "avg_popularity",
    ]
    expected = {f"{name}@{k}" for k in (1, 5) for name in names} | {"mrr", "n_users"}
    assert set(result) == expected


@pytest.mark.parametrize(
    ("recommended", "message"),
    [
        (np.array([[0, 1, 0]]), "more than once"),
        (np.array([[0, 10]]), "n_items"),
        (np.array([[0, -2]]), "padding"),
        (np.array([0, 1]), "2-D"),
        (np.array([[0.0, 1.0]]), "integer"),
        (np.array([[0], [1]]), "rows must correspond"),
    ],
)
def test_invalid_lists_are_rejected(recommended, message):
    with pytest.raises(ValueError, match=message):
        ranking_metrics(recommended, relevance_matrix([{0}], 10), n_catalogue_items=10)


def test_invalid_arguments_are_rejected():
    recommended, relevant = np.array([[0, 1]]), relevance_matrix([{0}], 10)
    with pytest.raises(ValueError, match="no user to evaluate"):
        ranking_metrics(recommended, relevance_matrix([set()], 10), n_catalogue_items=10)
    with pytest.raises(ValueError, match="k_values"):
        ranking_metrics(recommended, relevant, k_values=(0,), n_catalogue_items=10)
    with pytest.raises(ValueError, match="item_popularity"):
        ranking_metrics(recommended, relevant, n_catalogue_items=10, item_popularity=np.ones(3))
    with pytest.raises(ValueError, match="more than n_catalogue_items"):
        ranking_metrics(recommended, relevant, n_catalogue_items=1)


def reference_metrics(lists, relevant_sets, k_values, n_catalogue_items, popularity):
    """Plain-Python transcription of docs/metrics.md, one user at a time."""
    users = [(items, rel) for items, rel in zip(lists, relevant_sets, strict=True) if rel]
    result = {}
    for k in k_values:
        ndcg, recall, precision, hit_rate, average_precision = [], [], [], [], []
        distinct, popularities = set(), []
        for items, rel in users:
            top = list(items[:k]) + [-1] * max(0, k - len(items))
            flags = [1 if item != -1 and item in rel else 0 for item in top]
            hits = sum(flags)
            dcg = sum(flag / math.log2(i + 2) for i, flag in enumerate(flags))
            idcg = sum(1 / math.log2(i + 2) for i in range(min(k, len(rel))))
            ndcg.append(dcg / idcg)
            recall.append(hits / len(rel))
            precision.append(hits / k)
            hit_rate.append(1.0 if hits else 0.0)
            precision_sum = sum(sum(flags[: i + 1]) / (i + 1) * flags[i] for i in range(k))
            average_precision.append(precision_sum / min(k, len(rel)))
            listed = [item for item in top if item != -1]
            distinct.update(listed)
            popularities.extend(popularity[item] for item in listed)
        result[f"ndcg@{k}"] = sum(ndcg) / len(users)
        result[f"recall@{k}"] = sum(recall) / len(users)
        result[f"precision@{k}"] = sum(precision) / len(users)
        result[f"hit_rate@{k}"] = sum(hit_rate) / len(users)
        result[f"map@{k}"] = sum(average_precision) / len(users)
        result[f"coverage@{k}"] = len(distinct) / n_catalogue_items
        result[f"avg_popularity@{k}"] = sum(popularities) / len(popularities) if popularities else 0.0
    reciprocal_ranks = []
    for items, rel in users:
        first = next((i for i, item in enumerate(items) if item != -1 and item in rel), None)
        reciprocal_ranks.append(0.0 if first is None else 1 / (first + 1))
    result["mrr"] = sum(reciprocal_ranks) / len(users)
    result["n_users"] = len(users)
    return result


def test_matches_slow_reference_on_random_lists():
    rng = np.random.default_rng(7)
    n_users, n_items, width = 400, 60, 25
    recommended = np.full((n_users, width), -1, dtype=np.int64)
    relevant_sets = []
    for user in range(n_users):
        length = int(rng.integers(0, width + 1))
        recommended[user, :length] = rng.choice(n_items, size=length, replace=False)
        if rng.random() < 0.1:
            recommended[user, rng.integers(0, width)] = -1  # a hole inside the list
        relevant_sets.append(set(rng.choice(n_items, size=int(rng.integers(0, 15)), replace=False).tolist()))
    popularity = rng.integers(0, 500, size=n_items).astype(float)
    k_values = (1, 5, 10, 40)
    result = ranking_metrics(
        recommended,
        relevance_matrix(relevant_sets, n_items),
        k_values=k_values,
        n_catalogue_items=80,
        item_popularity=popularity,
    )
    expected = reference_metrics(recommended.tolist(), relevant_sets, k_values, 80, popularity)
    assert 0 < expected["n_users"] < n_users
    assert result.keys() == expected.keys()
    for name, value in expected.items():
        assert result[name] == pytest.approx(value, rel=1e-12, abs=1e-12), name


def test_large_batch_with_duplicate_free_lists_is_evaluated():
    rng = np.random.default_rng(0)
    n_users, n_items, width = 6000, 20000, 100
    recommended = np.argsort(rng.random((n_users, n_items // 100)), axis=1)[:, :width]
    recommended = recommended * 100 + rng.integers(0, 100, size=(n_users, 1))
    rows = np.repeat(np.arange(n_users), 20)
    relevant = sp.csr_array(
        (np.ones(rows.size), (rows, rng.integers(0, n_items, size=rows.size))),
        shape=(n_users, n_items),
    )
    result = ranking_metrics(
        recommended,
        relevant,
        k_values=(10, 20, 50, 100),
        n_catalogue_items=n_items,
        item_popularity=rng.random(n_items),
    )
    assert result["n_users"] == n_users
    assert 0.0 <= result["ndcg@100"] <= 1.0


def test_auc_counts_ties_as_half():
    labels = [1, 0, 1, 0]
    scores = [0.8, 0.8, 0.3, 0.1]
    # positive/negative pairs: (0.8, 0.8) tie 1/2, (0.8, 0.1) 1, (0.3, 0.8) 0, (0.3, 0.1) 1 -> 2.5 of 4
    assert auc(labels, scores) == pytest.approx(2.5 / 4)
    assert auc([True, False], [1.0, 1.0]) == pytest.approx(0.5)
    assert auc([0, 1], [0.0, 1.0]) == pytest.approx(1.0)


def test_auc_matches_brute_force_pair_count():
    rng = np.random.default_rng(3)
    labels = rng.random(300) < 0.3
    scores = np.round(rng.random(300), 1)  # coarse scores, so there are many ties
    positives, negatives = scores[labels], scores[~labels]
    wins = (positives[:, None] > negatives[None, :]).sum() + 0.5 * (
        positives[:, None] == negatives[None, :]
    ).sum()
    assert auc(labels.astype(int), scores) == pytest.approx(
        wins / (positives.size * negatives.size), rel=1e-12
    )


def test_auc_needs_both_classes_and_clean_input():
    with pytest.raises(ValueError, match="one class"):
        auc([1, 1, 1], [0.1, 0.5, 0.9])
    with pytest.raises(ValueError, match="one class"):
        auc([0, 0], [0.1, 0.5])
    with pytest.raises(ValueError, match="0/1"):
        auc([2, 0], [0.1, 0.5])
    with pytest.raises(ValueError, match="finite"):
        auc([1, 0], [np.nan, 0.5])
    with pytest.raises(ValueError, match="same length"):
        auc([1, 0, 1], [0.1, 0.5])


def test_f1_at_threshold():
    labels = [1, 1, 0, 0]
    scores = [0.9, 0.4, 0.6, 0.1]
    # predicted [1, 0, 1, 0]: TP 1, FP 1, FN 1 -> 2*1 / (2*1 + 1 + 1)
    assert f1_at_threshold(labels, scores) == pytest.approx(0.5)
    # threshold 0.4 predicts [1, 1, 1, 0] (a score equal to the threshold is positive): 2*2 / (2*2 + 1 + 0)
    assert f1_at_threshold(labels, scores, threshold=0.4) == pytest.approx(0.8)
    assert f1_at_threshold([0, 0], [0.1, 0.2]) == pytest.approx(0.0)


def test_evaluate_recommendations_on_string_ids_equals_ranking_metrics_on_indices():
    items = ["apple", "bread", "cheese", "dates", "eggs", "figs"]
    recommendations = pd.DataFrame(
        {
            "user_id": ["u2", "u1", "u1", "u1", "u2", "u9", "u2"],
            "item_id": ["bread", "cheese", "apple", "bread", "eggs", "figs", "apple"],
            "rank": [7, 3, 1, 2, 1, 1, 3],  # unordered rows, gaps in u2's ranks
        }
    )
    test = pd.DataFrame(
        {
            "user_id": ["u1", "u1", "u2", "u3"],
            "item_id": ["apple", "cheese", "bread", "dates"],
        }
    )
    popularity = {"apple": 50, "bread": 20, "cheese": 5, "eggs": 1}
    result = evaluate_recommendations(
        recommendations,
        test,
        k_values=(1, 2, 3),
        catalogue=items,
        item_popularity=popularity,
    )
    # users u1, u2, u3 (u9 is not in test); u3 has no list and counts with zeros
    recommended = np.array([[0, 1, 2], [4, 0, 1], [-1, -1, -1]])
    relevant = relevance_matrix([{0, 2}, {1}, {3}], len(items))
    expected = ranking_metrics(
        recommended,
        relevant,
        k_values=(1, 2, 3),
        n_catalogue_items=len(items),
        item_popularity=np.array([50.0, 20, 5, 0, 1, 0]),
    )
    assert result == pytest.approx(expected)
    assert result["n_users"] == 3
    assert result["mrr"] == pytest.approx((1 + 1 / 3 + 0) / 3)


def test_evaluate_recommendations_compares_ids_as_strings_and_defaults_catalogue():
    recommendations = pd.DataFrame({"user_id": [1, 1, 2], "item_id": [10, 11, 12], "rank": [1, 2, 1]})
    test = pd.DataFrame({"user_id": ["1", "2"], "item_id": ["11", "13"]})
    result = evaluate_recommendations(recommendations, test, k_values=(2,))
    assert result["hit_rate@2"] == pytest.approx(0.5)
    assert result["mrr"] == pytest.approx(0.25)  # user 1 hits at rank 2, user 2 misses
    assert result["coverage@2"] == pytest.approx(3 / 4)  # items 10, 11, 12 of {10, 11, 12, 13}
    assert not any(name.startswith("avg_popularity") for name in result)


def test_evaluate_recommendations_rejects_bad_input():
    test = pd.DataFrame({"user_id": ["u"], "item_id": ["a"]})
    duplicated = pd.DataFrame({"user_id": ["u", "u"], "item_id": ["a", "a"], "rank": [1, 2]})
    with pytest.raises(ValueError, match="more than once"):
        evaluate_recommendations(duplicated, test)
    outside = pd.DataFrame({"user_id": ["u"], "item_id": ["z"], "rank": [1]})
    with pytest.raises(ValueError, match="not in the catalogue"):
        evaluate_recommendations(outside, test, catalogue=["a", "b"])
    with pytest.raises(ValueError, match="lacks column"):
        evaluate_recommendations(outside.drop(columns="rank"), test)
    with pytest.raises(ValueError, match="no user to evaluate"):
        evaluate_recommendations(outside, test.iloc[:0])


@pytest.fixture
def movielens_ratings() -> pd.DataFrame:
    path = ML_100K / "u.data"
    if not path.exists():
        pytest.skip(f"{path} is not available")
    return pd.read_csv(path, sep="\t", names=["user_id", "item_id", "rating", "timestamp"])


def test_oracle_lists_on_movielens_score_perfectly(movielens_ratings):
    ratings = movielens_ratings
    oracle = ratings.sort_values(["user_id", "rating", "item_id"], ascending=[True, False, True])
    oracle = oracle.assign(rank=oracle.groupby("user_id").cumcount() + 1)
    result = evaluate_recommendations(
        oracle[["user_id", "item_id", "rank"]],
        ratings[["user_id", "item_id"]],
        k_values=(10,),
        catalogue=range(1, 1683),
        item_popularity=ratings["item_id"].value_counts(),
    )
    ratings_per_user = ratings.groupby("user_id").size()
    assert result["n_users"] == 943
    assert ratings_per_user.min() >= 10  # every user has a full top 10 of relevant items
    for name in ("ndcg@10", "precision@10", "hit_rate@10", "map@10", "mrr"):
        assert result[name] == pytest.approx(1.0), name
    assert result["recall@10"] == pytest.approx((10 / ratings_per_user).mean())
    top10 = oracle[oracle["rank"] <= 10]
    assert result["coverage@10"] == pytest.approx(top10["item_id"].nunique() / 1682)
    popularity = ratings["item_id"].value_counts()
    assert result["avg_popularity@10"] == pytest.approx(popularity.loc[top10["item_id"]].mean())


def test_metrics_added_chunk_by_chunk_equal_the_metrics_of_all_lists_at_once():
    """The run evaluates its lists chunk by chunk; the chunks change nothing but float summation order."""
    from m6rec.evaluation.metrics import RankingMetrics

    rng = np.random.default_rng(5)
    n_users, n_items = 60, 40
    lists = np.stack([rng.permutation(n_items)[:12] for _ in range(n_users)])
    lists[3, 8:] = -1
    relevant = sp.csr_matrix((rng.random((n_users, n_items)) < 0.1).astype(np.float32))
    popularity = rng.integers(0, 50, n_items)
    whole = ranking_metrics(
        lists, relevant, k_values=(5, 10), n_catalogue_items=n_items, item_popularity=popularity
    )
    chunked = RankingMetrics(k_values=(5, 10), n_catalogue_items=n_items, item_popularity=popularity)
    for start in range(0, n_users, 7):
        chunked.add(lists[start : start + 7], relevant[start : start + 7])
    got = chunked.result()
    assert list(got) == list(whole)
    assert got["n_users"] == whole["n_users"]
    for name, value in whole.items():
        assert got[name] == pytest.approx(value, rel=1e-12, abs=1e-15), name


def test_metrics_counted_in_parts_and_merged_equal_the_metrics_of_all_lists_at_once():
    """A Dask partition counts its users' lists in a copy of its own; merged, the copies give the metrics
    of all users, coverage included (an item listed in only one part counts once)."""
    from m6rec.evaluation.metrics import RankingMetrics

    rng = np.random.default_rng(6)
    n_users, n_items = 50, 30
    lists = np.stack([rng.permutation(n_items)[:10] for _ in range(n_users)])
    relevant = sp.csr_matrix((rng.random((n_users, n_items)) < 0.15).astype(np.float32))
    popularity = rng.integers(0, 50, n_items)
    settings = {"k_values": (5, 10), "n_catalogue_items": n_items, "item_popularity": popularity}
    whole = ranking_metrics(lists, relevant, **settings)
    merged = RankingMetrics(**settings)
    for start in range(0, n_users, 16):
        part = RankingMetrics(**settings)
        part.add(lists[start : start + 16], relevant[start : start + 16])
        merged.merge(part)
    got = merged.result()
    assert list(got) == list(whole)
    assert got["n_users"] == whole["n_users"]
    for name, value in whole.items():
        assert got[name] == pytest.approx(value, rel=1e-12, abs=1e-15), name
    with pytest.raises(ValueError, match="same k_values"):
        merged.merge(RankingMetrics(k_values=(5,), n_catalogue_items=n_items))
