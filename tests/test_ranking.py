"""The ranking stage's training helpers: which columns the ranker learns from and the stacked folds."""

from __future__ import annotations

import numpy as np
import pandas as pd

from m6rec.candidates import create_source
from m6rec.data.interactions import IdIndex
from pipelines.ranking import model_columns, resampled_folds
from pipelines.source_tuning import make_fold


def test_model_columns_drop_keys_label_and_excluded_patterns():
    table = pd.DataFrame(
        columns=["user_row", "item", "ease_score", "ease_rank", "ease_score_z", "item_pop", "item_pop_share"]
        + ["label"]
    )
    assert model_columns(table, ["*_score", "item_pop"]) == ["ease_rank", "ease_score_z", "item_pop_share"]
    assert model_columns(table, []) == [
        "ease_score",
        "ease_rank",
        "ease_score_z",
        "item_pop",
        "item_pop_share",
    ]


def test_resampled_folds_cut_the_same_data_differently_and_refit_the_sources():
    # 20 users with 10 items each: every fold holds 2 labels per user, 8 history items.
    frame = pd.DataFrame(
        [(f"u{user}", f"i{(user + step) % 30}") for user in range(20) for step in range(10)],
        columns=["user_id", "item_id"],
    )
    users, items = IdIndex.from_values(frame.user_id), IdIndex.from_values(frame.item_id)
    fold = make_fold(frame, users, items, 0.2, temporal=False, seed=1)
    sources = {"ease": create_source("ease", l2=10.0).fit(fold.history)}
    extra = resampled_folds(fold, sources, 2, seed=1)

    assert len(extra) == 2
    label_sets = [fold.labels.matrix.toarray()] + [other.labels.matrix.toarray() for other, _ in extra]
    for other, refitted in extra:
        assert other.labels.matrix.nnz == fold.labels.matrix.nnz == 40
        assert (
            other.history.matrix + other.labels.matrix
        ).toarray().tolist() == fold.full.matrix.toarray().tolist()
        assert refitted["ease"].params == sources["ease"].params
        history_items = refitted["ease"].recommend(np.arange(20), 30).items
        seen = other.history.matrix.toarray()
        assert not any(seen[user, item] for user in range(20) for item in history_items[user] if item >= 0)
    assert not np.array_equal(label_sets[0], label_sets[1])
    assert not np.array_equal(label_sets[1], label_sets[2])
