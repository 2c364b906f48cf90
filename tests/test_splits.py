"""Train/test splits on synthetic interaction frames whose right split can be read off the timestamps."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from m6rec.data.splits import SplitSpec, leave_last_out, random_split, temporal_split, time_cutoff
from m6rec.errors import ConfigError, DataError

ML_100K = Path("../shared/data/ml-100k")


def synthetic_interactions(sizes: dict[str, int]) -> pd.DataFrame:
    """The k-th user ``u`` has ``sizes[u]`` interactions: item ``u-j`` at time ``1000 * k + j``.

    Rows are shuffled (fixed seed) so that file order and time order differ.
    """
    rows = [
        (user, f"{user}-{j}", 1.0, 1000 * k + j)
        for k, (user, size) in enumerate(sizes.items())
        for j in range(size)
    ]
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "weight", "timestamp"])
    frame["timestamp"] = frame["timestamp"].astype("Int64")
    return frame.sample(frac=1.0, random_state=0).reset_index(drop=True)


SIZES = {f"u{n}": n for n in range(1, 21)} | {"heavy": 100}


@pytest.fixture
def interactions() -> pd.DataFrame:
    return synthetic_interactions(SIZES)


def item_number(item_id: str) -> int:
    return int(item_id.rsplit("-", 1)[1])


def assert_partition(frame: pd.DataFrame, train: pd.DataFrame, test: pd.DataFrame) -> None:
    """train ∪ test == frame and train ∩ test == ∅, row by row, each part in the frame's own order."""
    assert len(train) + len(test) == len(frame)
    assert set(train.index).isdisjoint(test.index)
    pd.testing.assert_frame_equal(pd.concat([train, test]).sort_index(), frame)
    assert train.index.is_monotonic_increasing and test.index.is_monotonic_increasing
    assert list(train.columns) == list(frame.columns) == list(test.columns)


def per_user_counts(part: pd.DataFrame) -> dict[str, int]:
    return part.groupby("user_id").size().to_dict()


def expected_train_counts(sizes: dict[str, int], test_ratio: float) -> dict[str, int]:
    return {user: max(1, round((1 - test_ratio) * n)) for user, n in sizes.items()}


def test_random_split_keeps_round_three_quarters_per_user_in_train(interactions):
    train, test = random_split(interactions, 0.25, seed=1)
    assert_partition(interactions, train, test)
    assert per_user_counts(train) == expected_train_counts(SIZES, 0.25)
    # n=1 → 1, n=2 → round(1.5) = 2, n=4 → 3, n=6 → round(4.5) = 4 (half to even, as numpy and Python do)
    assert [per_user_counts(train)[f"u{n}"] for n in (1, 2, 4, 6)] == [1, 2, 3, 4]
    assert "u1" not in set(test["user_id"])


def test_random_split_is_seeded(interactions):
    first_train, first_test = random_split(interactions, 0.25, seed=7)
    again_train, again_test = random_split(interactions, 0.25, seed=7)
    pd.testing.assert_frame_equal(first_train, again_train)
    pd.testing.assert_frame_equal(first_test, again_test)
    other_train, other_test = random_split(interactions, 0.25, seed=8)
    assert set(other_test.index) != set(first_test.index)
    assert per_user_counts(other_train) == per_user_counts(first_train)


def test_random_split_is_not_a_time_split(interactions):
    _, test = random_split(interactions, 0.25, seed=3)
    heavy = test[test["user_id"] == "heavy"]["item_id"].map(item_number)
    assert len(heavy) == 25
    assert heavy.min() < 75  # some early interaction of the 100 was held out, unlike in a temporal split


def test_random_split_does_not_need_timestamps(interactions):
    frame = interactions.drop(columns="timestamp")
    train, test = random_split(frame, 0.5, seed=0)
    assert_partition(frame, train, test)
    assert per_user_counts(train) == expected_train_counts(SIZES, 0.5)


@pytest.mark.parametrize("ratio", [0.0, 1.0, -0.1, 1.5])
def test_random_split_rejects_a_ratio_outside_zero_one(interactions, ratio):
    with pytest.raises(ConfigError, match="between 0 and 1"):
        random_split(interactions, ratio)


def test_temporal_split_puts_each_users_latest_interactions_in_test(interactions):
    train, test = temporal_split(interactions, 0.2)
    assert_partition(interactions, train, test)
    train_counts = expected_train_counts(SIZES, 0.2)
    assert per_user_counts(train) == train_counts
    for user, size in SIZES.items():
        held_out = sorted(test.loc[test["user_id"] == user, "item_id"].map(item_number))
        assert held_out == list(range(train_counts[user], size)), user


def test_temporal_split_breaks_timestamp_ties_in_file_order():
    frame = pd.DataFrame({"user_id": ["u"] * 4, "item_id": list("abcd"), "timestamp": [5, 5, 5, 5]})
    train, test = temporal_split(frame, 0.25)
    assert test["item_id"].tolist() == ["d"]


def test_leave_last_out_holds_out_exactly_the_last_interaction(interactions):
    train, test = leave_last_out(interactions, 1)
    assert_partition(interactions, train, test)
    assert sorted(zip(test["user_id"], test["item_id"], strict=True)) == sorted(
        (user, f"{user}-{size - 1}") for user, size in SIZES.items() if size > 1
    )
    assert per_user_counts(train)["u1"] == 1


def test_leave_last_out_keeps_small_users_whole(interactions):
    train, test = leave_last_out(interactions, 3)
    assert_partition(interactions, train, test)
    expected_test = {user: 3 for user, size in SIZES.items() if size > 3}
    assert per_user_counts(test) == expected_test
    assert all(per_user_counts(train)[f"u{n}"] == n for n in (1, 2, 3))
    last_three = test.loc[test["user_id"] == "heavy", "item_id"].map(item_number)
    assert sorted(last_three) == [97, 98, 99]


def test_leave_last_out_rejects_n_below_one(interactions):
    with pytest.raises(ConfigError, match="n >= 1"):
        leave_last_out(interactions, 0)


def test_time_cutoff_sends_interactions_at_or_after_the_cutoff_to_test(interactions):
    train, test = time_cutoff(interactions, 5000)
    assert_partition(interactions, train, test)
    assert (train["timestamp"] < 5000).all() and (test["timestamp"] >= 5000).all()
    assert set(test["user_id"]) == {f"u{n}" for n in range(6, 21)} | {"heavy"}
    assert len(train) == sum(range(1, 6))


def test_time_cutoff_keeps_rows_without_a_timestamp_in_train():
    frame = pd.DataFrame(
        {"user_id": ["u", "u", "u"], "item_id": list("abc"), "timestamp": pd.array([10, None, 30], "Int64")}
    )
    train, test = time_cutoff(frame, 20)
    assert train["item_id"].tolist() == ["a", "b"]
    assert test["item_id"].tolist() == ["c"]


@pytest.mark.parametrize(
    "split",
    [lambda f: temporal_split(f, 0.2), lambda f: leave_last_out(f, 1), lambda f: time_cutoff(f, 0)],
    ids=["temporal", "leave-last-out", "cutoff"],
)
def test_temporal_splits_without_timestamps_raise_data_error(interactions, split):
    with pytest.raises(DataError, match="needs a timestamp column"):
        split(interactions.drop(columns="timestamp"))
    all_missing = interactions.assign(timestamp=pd.array([None] * len(interactions), "Int64"))
    with pytest.raises(DataError, match="needs a timestamp column"):
        split(all_missing)


@pytest.mark.parametrize("spec", ["random:0.25", "temporal:0.2", "leave-last-out:2", "cutoff:5000"])
def test_splits_work_on_row_positions_when_index_labels_repeat(spec):
    frame = pd.concat([synthetic_interactions({"a": 8, "b": 4}), synthetic_interactions({"c": 3, "d": 9})])
    assert not frame.index.is_unique
    expected_train, expected_test = SplitSpec.parse(spec).apply(frame.reset_index(drop=True))
    train, test = SplitSpec.parse(spec).apply(frame)
    assert len(train) + len(test) == len(frame)
    assert train.values.tolist() == expected_train.values.tolist()
    assert test.values.tolist() == expected_test.values.tolist()


def test_splits_keep_a_filtered_frames_labels(interactions):
    subset = interactions[interactions["user_id"].isin(["u8", "heavy"])]
    train, test = temporal_split(subset, 0.25)
    assert_partition(subset, train, test)
    assert per_user_counts(test) == {"u8": 2, "heavy": 25}


@pytest.mark.parametrize(
    ("text", "kind", "value", "shown"),
    [
        ("random", "random", 0.25, "random:0.25"),
        ("random:0.1", "random", 0.1, "random:0.1"),
        ("temporal", "temporal", 0.2, "temporal:0.2"),
        ("temporal:0.5", "temporal", 0.5, "temporal:0.5"),
        ("leave-last-out", "leave-last-out", 1.0, "leave-last-out:1"),
        ("leave-last-out:3", "leave-last-out", 3.0, "leave-last-out:3"),
        ("cutoff:1700000000", "cutoff", 1700000000.0, "cutoff:1700000000"),
        ("cutoff:2024-01-01", "cutoff", 1704067200.0, "cutoff:1704067200"),
        ("cutoff:2024-01-01T01:00:00+01:00", "cutoff", 1704067200.0, "cutoff:1704067200"),
    ],
)
def test_split_spec_parse(text, kind, value, shown):
    spec = SplitSpec.parse(text, seed=5)
    assert (spec.kind, spec.value, spec.seed) == (kind, value, 5)
    assert str(spec) == shown
    assert SplitSpec.parse(str(spec), seed=5) == spec


@pytest.mark.parametrize(
    "text",
    [
        "",
        "none",
        "bogus:0.2",
        "Random:0.25",
        "random:abc",
        "random:0",
        "random:1",
        "random:1.5",
        "temporal:-0.2",
        "temporal:nan",
        "leave-last-out:0",
        "leave-last-out:1.5",
        "leave-last-out:x",
        "cutoff",
        "cutoff:",
        "cutoff:not-a-date",
        "cutoff:2024-13-01",
    ],
)
def test_split_spec_parse_rejects_bad_strings(text):
    with pytest.raises(ConfigError):
        SplitSpec.parse(text)


def test_split_spec_apply_runs_the_named_split(interactions):
    cases = [
        ("random:0.3", random_split(interactions, 0.3, seed=9)),
        ("temporal:0.3", temporal_split(interactions, 0.3)),
        ("leave-last-out:2", leave_last_out(interactions, 2)),
        ("cutoff:7000", time_cutoff(interactions, 7000)),
    ]
    for text, (expected_train, expected_test) in cases:
        train, test = SplitSpec.parse(text, seed=9).apply(interactions)
        pd.testing.assert_frame_equal(train, expected_train)
        pd.testing.assert_frame_equal(test, expected_test)
        assert_partition(interactions, train, test)


@pytest.fixture(scope="module")
def ml_100k() -> pd.DataFrame:
    path = ML_100K / "u.data"
    if not path.exists():
        pytest.skip(f"{path} not found")
    frame = pd.read_csv(path, sep="\t", names=["user_id", "item_id", "rating", "timestamp"], dtype=str)
    frame["timestamp"] = frame["timestamp"].astype("int64")
    return frame


def test_ml_100k_random_split_matches_the_75_25_protocol(ml_100k):
    train, test = random_split(ml_100k, 0.25, seed=42)
    assert_partition(ml_100k, train, test)
    sizes = ml_100k.groupby("user_id").size()
    assert len(sizes) == 943
    expected = sizes.map(lambda n: round(0.75 * n))
    assert (train.groupby("user_id").size() == expected).all()
    assert len(train) == expected.sum()
    assert 0.24 < len(test) / len(ml_100k) < 0.26


def test_ml_100k_leave_last_out_holds_out_one_per_user(ml_100k):
    train, test = leave_last_out(ml_100k, 1)
    assert_partition(ml_100k, train, test)
    assert len(test) == 943 and test["user_id"].is_unique
    latest = ml_100k.groupby("user_id")["timestamp"].max()
    assert (test.set_index("user_id")["timestamp"] == latest.loc[test["user_id"]]).all()
