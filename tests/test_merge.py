"""Merging candidate lists: provenance columns, de-duplication, padding, seen items, speed."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from m6rec.candidates import Candidates
from m6rec.candidates.merge import merge_candidates

NAN = np.nan


def candidates(items: list[list[int]], scores: list[list[float]]) -> Candidates:
    items = np.array(items, dtype=np.int64)
    scores = np.array(scores, dtype=np.float32)
    return Candidates(items, np.where(items >= 0, scores, -np.inf).astype(np.float32))


@pytest.fixture
def two_sources() -> dict[str, Candidates]:
    """Users 5 and 7 (in that order); user 7 gets one item from ``ease`` and none from ``content``."""
    return {
        "ease": candidates([[3, 1, -1], [2, -1, -1]], [[0.9, 0.4, 0], [0.7, 0, 0]]),
        "content": candidates([[1, 4, 3], [-1, -1, -1]], [[0.8, 0.6, 0.5], [0, 0, 0]]),
    }


def test_provenance_columns_are_exact_on_a_hand_made_example(two_sources):
    merged = merge_candidates(two_sources, np.array([5, 7]))

    expected = pd.DataFrame(
        {
            "user_row": [5, 5, 5, 7],
            "item": [1, 3, 4, 2],
            "ease_rank": [2, 1, NAN, 1],
            "ease_score": [0.4, 0.9, NAN, 0.7],
            "content_rank": [1, 3, 2, NAN],
            "content_score": [0.8, 0.5, 0.6, NAN],
            "n_sources": [2, 2, 1, 1],
            "sources": ["ease,content", "ease,content", "content", "ease"],
        }
    )
    assert list(merged.columns) == list(expected.columns)
    pd.testing.assert_frame_equal(merged, expected, check_dtype=False, check_exact=False, rtol=1e-6)
    assert merged["user_row"].dtype == np.int64 and merged["item"].dtype == np.int64
    assert merged["ease_score"].dtype == np.float32


def test_the_source_order_of_the_dict_fixes_the_column_and_label_order(two_sources):
    reversed_sources = {"content": two_sources["content"], "ease": two_sources["ease"]}

    merged = merge_candidates(reversed_sources, np.array([5, 7]))

    assert list(merged.columns[2:6]) == ["content_rank", "content_score", "ease_rank", "ease_score"]
    assert merged["sources"].tolist() == ["content,ease", "content,ease", "content", "ease"]


def test_an_item_twice_in_one_list_keeps_its_best_rank():
    merged = merge_candidates({"a": candidates([[4, 2, 4]], [[3.0, 2.0, 1.0]])}, np.array([0]))

    assert merged["item"].tolist() == [2, 4]
    assert merged["a_rank"].tolist() == [2.0, 1.0] and merged["a_score"].tolist() == [2.0, 3.0]


def test_padding_users_without_candidates_and_k_beyond_the_catalogue():
    sources = {
        "wide": candidates([[0, 1, -1, -1, -1], [-1] * 5, [1, -1, -1, -1, -1]], [[2, 1, 0, 0, 0]] * 3),
        "empty": candidates([[-1] * 5] * 3, [[0] * 5] * 3),
    }

    merged = merge_candidates(sources, np.array([10, 11, 12]))

    assert merged[["user_row", "item"]].to_numpy().tolist() == [[10, 0], [10, 1], [12, 1]]
    assert merged["empty_rank"].isna().all() and (merged["n_sources"] == 1).all()
    assert (merged["sources"] == "wide").all()


def test_nothing_at_all_gives_an_empty_frame_with_every_column():
    merged = merge_candidates({"a": candidates([[-1, -1]], [[0, 0]])}, np.array([3]))

    assert merged.empty
    assert list(merged.columns) == ["user_row", "item", "a_rank", "a_score", "n_sources", "sources"]


def test_seen_items_that_slip_through_are_dropped(two_sources):
    seen = sp.csr_matrix(([1.0, 1.0, 1.0], ([5, 7, 6], [4, 2, 1])), shape=(8, 6))

    merged = merge_candidates(two_sources, np.array([5, 7]), seen=seen)

    assert merged[["user_row", "item"]].to_numpy().tolist() == [[5, 1], [5, 3]]


def test_user_rows_must_be_distinct_and_match_the_blocks(two_sources):
    with pytest.raises(ValueError, match="distinct"):
        merge_candidates(two_sources, np.array([5, 5]))
    with pytest.raises(ValueError, match="'ease'"):
        merge_candidates(two_sources, np.array([5, 7, 9]))


def naive_merge(per_source: dict[str, Candidates], user_rows: np.ndarray) -> pd.DataFrame:
    """The same table by a per-row Python loop, for comparison."""
    records: dict[tuple[int, int], dict] = {}
    for name, source in per_source.items():
        for position, user in enumerate(user_rows):
            for slot, item in enumerate(source.items[position]):
                record = records.setdefault((position, int(item)), {"user_row": int(user), "item": int(item)})
                if item >= 0 and f"{name}_rank" not in record:
                    record[f"{name}_rank"] = slot + 1.0
                    record[f"{name}_score"] = float(source.scores[position, slot])
    rows = [records[key] for key in sorted(records) if key[1] >= 0]
    frame = pd.DataFrame(rows)
    for name in per_source:
        for column in (f"{name}_rank", f"{name}_score"):
            if column not in frame:
                frame[column] = np.nan
    frame["n_sources"] = frame[[f"{name}_rank" for name in per_source]].notna().sum(axis=1)
    frame["sources"] = [
        ",".join(name for name in per_source if not np.isnan(row[f"{name}_rank"]))
        for _, row in frame.iterrows()
    ]
    return frame


def random_sources(rng: np.random.Generator, n_users: int, n_sources: int, k: int, n_items: int):
    sources = {}
    for index in range(n_sources):
        items = np.stack([rng.permutation(n_items)[:k] for _ in range(n_users)]).astype(np.int64)
        items[rng.random(items.shape) < 0.1] = -1
        items = -np.sort(-items, axis=1) if index % 2 else items  # some lists padded at the end only
        scores = np.where(items >= 0, rng.random(items.shape), -np.inf).astype(np.float32)
        sources[f"source{index}"] = Candidates(items, scores)
    return sources


def test_merge_equals_a_row_by_row_merge_on_random_lists():
    rng = np.random.default_rng(0)
    sources = random_sources(rng, n_users=12, n_sources=3, k=6, n_items=15)
    user_rows = rng.permutation(40)[:12]

    merged = merge_candidates(sources, user_rows)

    expected = naive_merge(sources, user_rows)
    pd.testing.assert_frame_equal(merged, expected[merged.columns], check_dtype=False, rtol=1e-6)


def test_merging_movielens_sized_lists_keeps_every_proposal_once():
    rng = np.random.default_rng(1)
    offsets = rng.integers(0, 1682, size=(943, 1))
    sources = {
        # strides coprime with 1682 = 2 * 29 * 29 give 200 distinct items per user, overlapping across sources
        name: Candidates(
            (offsets + stride * np.arange(200)) % 1682, rng.random((943, 200)).astype(np.float32)
        )
        for name, stride in zip(
            ("popularity", "itemknn", "ease", "ials", "content", "two_tower"),
            (1, 3, 5, 7, 9, 11),
            strict=True,
        )
    }

    merged = merge_candidates(sources, np.arange(943))
    assert merged["n_sources"].sum() == 943 * 6 * 200
    assert not merged.duplicated(["user_row", "item"]).any()
