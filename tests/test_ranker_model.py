"""The LightGBM ranker on synthetic queries whose order is planted in one feature (like make_ranking).

Each query holds 20 documents; the relevance label (0..4) is the quintile of ``signal`` within the query,
three noise features carry nothing. A second data set plants relevance in a category instead.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from m6rec.evaluation.metrics import auc
from ranker.model import LightGBMRanker

DOCS_PER_QUERY = 20
FAST = {"n_estimators": 80, "learning_rate": 0.1, "num_leaves": 7, "min_child_samples": 5, "n_jobs": 1}


def make_ranking(n_queries: int, seed: int) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """``(X, labels, group)``: labels are the within-query quintile of ``signal`` (0 worst, 4 best)."""
    rng = np.random.default_rng(seed)
    n = n_queries * DOCS_PER_QUERY
    signal = rng.normal(size=n)
    query = np.repeat(np.arange(n_queries), DOCS_PER_QUERY)
    quantile = pd.Series(signal).groupby(query).rank(method="first").to_numpy() - 1
    labels = (quantile * 5 // DOCS_PER_QUERY).astype(np.int64)
    X = pd.DataFrame({"noise_a": rng.normal(size=n), "signal": signal, "noise_b": rng.normal(size=n)})
    X["noise_c"] = rng.integers(0, 3, size=n).astype(np.float32)
    return X, labels, np.full(n_queries, DOCS_PER_QUERY)


def mean_ndcg(labels: np.ndarray, scores: np.ndarray, group: np.ndarray, k: int = 10) -> float:
    """Mean NDCG@k over queries with gains 2^label - 1 (LightGBM's definition)."""
    values, start = [], 0
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    for size in group:
        query_labels, query_scores = labels[start : start + size], scores[start : start + size]
        start += size
        gains = 2.0 ** query_labels[np.argsort(-query_scores, kind="stable")][:k] - 1
        ideal = 2.0 ** np.sort(query_labels)[::-1][:k] - 1
        values.append((gains * discounts[: len(gains)]).sum() / (ideal * discounts[: len(ideal)]).sum())
    return float(np.mean(values))


@pytest.fixture(scope="module")
def ranking_data():
    return {
        "train": make_ranking(120, seed=0),
        "valid": make_ranking(40, seed=1),
        "test": make_ranking(60, seed=2),
    }


@pytest.fixture(scope="module")
def fitted_ranker(ranking_data) -> LightGBMRanker:
    X, y, group = ranking_data["train"]
    X_valid, y_valid, group_valid = ranking_data["valid"]
    return LightGBMRanker(**FAST, early_stopping_rounds=10).fit(
        X, y, group=group, eval_set=(X_valid, y_valid), eval_group=group_valid
    )


def test_lambdarank_recovers_the_planted_order(fitted_ranker, ranking_data):
    X, y, group = ranking_data["test"]
    learned = mean_ndcg(y, fitted_ranker.predict(X), group)
    chance = mean_ndcg(y, np.random.default_rng(9).random(len(y)), group)
    assert learned > 0.9
    assert learned > chance + 0.3


def test_the_planted_feature_has_the_top_importance(fitted_ranker):
    importance = fitted_ranker.feature_importance()
    assert list(importance.columns) == ["feature", "gain", "split"]
    assert sorted(importance["feature"]) == ["noise_a", "noise_b", "noise_c", "signal"]
    assert importance["feature"].iloc[0] == "signal"
    assert importance["gain"].iloc[0] > 5 * importance["gain"].iloc[1:].sum()


def test_early_stopping_keeps_the_best_iteration(fitted_ranker):
    history = fitted_ranker.evals_result_["eval_0"]["ndcg@10"]
    assert 1 <= fitted_ranker.best_iteration_ <= len(history)
    assert history[fitted_ranker.best_iteration_ - 1] == max(history)


def test_lambdarank_without_group_is_refused(ranking_data):
    X, y, group = ranking_data["train"]
    with pytest.raises(ValueError, match="lambdarank' needs group"):
        LightGBMRanker(**FAST).fit(X, y)
    with pytest.raises(ValueError, match=f"group sums to {len(X) - 1} but there are {len(X)} rows"):
        LightGBMRanker(**FAST).fit(X, y, group=np.r_[group[:-1], DOCS_PER_QUERY - 1])
    with pytest.raises(ValueError, match="eval_group"):
        LightGBMRanker(**FAST).fit(X, y, group=group, eval_set=(X, y))


def test_labels_and_columns_are_checked(ranking_data):
    X, y, group = ranking_data["train"]
    with pytest.raises(ValueError, match="integer relevance labels"):
        LightGBMRanker(**FAST).fit(X, y + 0.5, group=group)
    with pytest.raises(ValueError, match="'title'"):
        LightGBMRanker(**FAST).fit(X.assign(title="free text"), y, group=group)
    with pytest.raises(ValueError, match="objective"):
        LightGBMRanker(objective="regression")


def test_predict_picks_features_by_name_and_names_a_missing_one(fitted_ranker, ranking_data):
    X, _, _ = ranking_data["test"]
    shuffled = X[["noise_c", "signal", "noise_b", "noise_a"]].assign(user_row=1)
    np.testing.assert_array_equal(fitted_ranker.predict(shuffled), fitted_ranker.predict(X))
    with pytest.raises(ValueError, match="signal"):
        fitted_ranker.predict(X.drop(columns=["signal"]))


def test_predict_in_slices_of_rows_scores_like_all_rows_at_once(fitted_ranker, ranking_data, monkeypatch):
    from ranker import model as model_module

    X, _, _ = ranking_data["test"]
    at_once = fitted_ranker.predict(X)
    monkeypatch.setattr(model_module, "PREDICT_ROWS", 7)
    np.testing.assert_allclose(fitted_ranker.predict(X), at_once, rtol=1e-12, atol=0)
    assert len(X) > 7


def test_save_load_round_trip_is_exact(fitted_ranker, ranking_data, tmp_path):
    X, _, _ = ranking_data["test"]
    fitted_ranker.save(tmp_path)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["importance.json", "model.txt", "ranker.json"]
    loaded = LightGBMRanker.load(tmp_path)
    np.testing.assert_array_equal(loaded.predict(X), fitted_ranker.predict(X))
    assert loaded.get_params() == fitted_ranker.get_params()
    assert loaded.booster_.num_trees() == fitted_ranker.best_iteration_
    assert "feature_names=noise_a signal noise_b noise_c" in (tmp_path / "model.txt").read_text()
    meta = json.loads((tmp_path / "ranker.json").read_text())
    assert meta["best_iteration"] == fitted_ranker.best_iteration_
    assert meta["features"] == ["noise_a", "signal", "noise_b", "noise_c"]
    importance = json.loads((tmp_path / "importance.json").read_text())
    assert importance == fitted_ranker.feature_importance().to_dict(orient="records")
    pd.testing.assert_frame_equal(
        loaded.feature_importance(), fitted_ranker.feature_importance(), check_exact=True
    )


def genre_ranking(n_queries: int, seed: int) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Documents whose relevance is their genre: horror 0, drama 1, comedy 2, jazz 3 (plus a noise column)."""
    rng = np.random.default_rng(seed)
    n = n_queries * DOCS_PER_QUERY
    genres = np.array(["horror", "drama", "comedy", "jazz"])
    labels = rng.integers(0, 4, size=n)
    X = pd.DataFrame(
        {
            "genre": pd.Categorical(genres[labels], categories=["comedy", "drama", "horror", "jazz"]),
            "noise": rng.normal(size=n),
        }
    )
    return X, labels, np.full(n_queries, DOCS_PER_QUERY)


def test_category_codes_stay_fixed_when_predict_data_lacks_levels(tmp_path):
    X, y, group = genre_ranking(60, seed=0)
    ranker = LightGBMRanker(**FAST).fit(X, y, group=group)
    assert ranker.categorical_levels_ == {"genre": ["comedy", "drama", "horror", "jazz"]}
    scores = ranker.predict(X)
    assert auc(y == 3, scores) > 0.95
    # Only jazz and horror, in another category order: pandas codes differ from training, scores must not.
    some = X[X["genre"].isin(["jazz", "horror"])].copy()
    some["genre"] = pd.Categorical(some["genre"].astype(str), categories=["jazz", "horror"])
    np.testing.assert_array_equal(ranker.predict(some), scores[some.index])
    as_strings = X.assign(genre=X["genre"].astype(str))
    np.testing.assert_array_equal(ranker.predict(as_strings), scores)
    ranker.save(tmp_path)
    np.testing.assert_array_equal(LightGBMRanker.load(tmp_path).predict(some), scores[some.index])
    unseen = X.iloc[:3].assign(genre=pd.Categorical(["polka", None, "polka"]))
    missing = X.iloc[:3].assign(genre=pd.Categorical([None, None, None], categories=["comedy"]))
    np.testing.assert_array_equal(ranker.predict(unseen), ranker.predict(missing))


def test_binary_objective_learns_a_pointwise_classifier(ranking_data):
    X, y, group = ranking_data["train"]
    X_test, y_test, _ = ranking_data["test"]
    relevant, relevant_test = (y >= 3).astype(int), (y_test >= 3).astype(int)
    classifier = LightGBMRanker(objective="binary", **FAST, early_stopping_rounds=10).fit(
        X, relevant, eval_set=(X_test, relevant_test)
    )
    assert auc(relevant_test, classifier.predict(X_test)) > 0.95
    assert classifier.feature_importance()["feature"].iloc[0] == "signal"
    with pytest.raises(ValueError, match="0/1 labels"):
        LightGBMRanker(objective="binary", **FAST).fit(X, y)


def test_unfitted_ranker_says_so(ranking_data):
    with pytest.raises(RuntimeError, match="not fitted"):
        LightGBMRanker().predict(ranking_data["test"][0])


def test_monotone_patterns_keep_the_score_rising_with_a_feature_whose_planted_effect_bends():
    # Relevance peaks where signal is near 0: free trees follow the bend, a constrained one cannot.
    X, _, group = make_ranking(120, seed=3)
    labels = (np.abs(X["signal"].to_numpy()) < 0.5).astype(np.int64)
    grid = pd.DataFrame({"noise_a": 0.0, "signal": np.linspace(-2, 2, 41), "noise_b": 0.0, "noise_c": 0.0})

    free = LightGBMRanker(**FAST).fit(X, labels, group=group)
    rising = LightGBMRanker(**FAST, monotone={"sig*": 1, "*": -1}).fit(X, labels, group=group)

    assert rising.monotone_directions(list(X.columns)) == [-1, 1, -1, -1]
    assert np.all(np.diff(rising.predict(grid)) >= 0)
    assert np.any(np.diff(free.predict(grid)) < 0)


def test_monotone_directions_survive_save_and_load(tmp_path):
    X, y, group = make_ranking(30, seed=4)
    ranker = LightGBMRanker(**FAST, monotone={"signal": 1}).fit(X, y, group=group)
    ranker.save(tmp_path / "ranker")

    loaded = LightGBMRanker.load(tmp_path / "ranker")

    assert loaded.monotone == {"signal": 1}
    np.testing.assert_array_equal(loaded.predict(X), ranker.predict(X))


@pytest.mark.parametrize("monotone", [{"signal": 2}, {"signal": True}, {3: 1}])
def test_monotone_directions_must_be_minus_one_zero_or_one(monotone):
    with pytest.raises(ValueError, match="monotone"):
        LightGBMRanker(monotone=monotone)
