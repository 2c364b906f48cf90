"""User profiles (recency-weighted means of item vectors) and modality fusion, on hand-computed answers."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pandas as pd
import pytest
import torch

from features.fusion import (
    FusionConfig,
    ModalityAttention,
    attention_fusion,
    concat_fusion,
    mean_attention_weights,
)
from m6rec.embeddings import profiles as profiles_module
from m6rec.embeddings.profiles import user_profiles
from m6rec.embeddings.store import EmbeddingTable

DAY = 86_400


def embedding_table(vectors: dict[str, list[float] | None], dimension: int) -> EmbeddingTable:
    """A table whose ``None`` entries are null (invalid) embeddings."""
    keys = list(vectors)
    matrix = np.array([v if v is not None else [0.0] * dimension for v in vectors.values()], dtype=np.float32)
    valid = np.array([v is not None for v in vectors.values()])
    none = np.array([None] * len(keys), dtype=object)
    return EmbeddingTable("item_id", np.array(keys, dtype=object), matrix, valid, none, none, {})


@pytest.fixture
def item_table() -> EmbeddingTable:
    return embedding_table({"a": [2.0, 0.0], "b": [0.0, 1.0], "null": None}, dimension=2)


def profile_of(user: str, user_ids, vectors, present) -> tuple[np.ndarray, bool]:
    position = list(user_ids).index(user)
    return vectors[position], bool(present[position])


def test_profile_is_the_recency_weighted_mean_skipping_null_items(item_table):
    t0 = 1_700_000_000
    interactions = pd.DataFrame(
        {
            "user_id": ["u1", "u1", "u2", "u1"],
            "item_id": ["a", "b", "b", "null"],
            "timestamp": [t0, t0 + 30 * DAY, t0, t0 + 20 * DAY],
        }
    )
    user_ids, vectors, present = user_profiles(interactions, item_table, half_life_days=30.0)
    # a is one half-life older than b: 0.5 * [2, 0] + 1 * [0, 1] = [1, 1], over a total weight of 1.5.
    vector, found = profile_of("u1", user_ids, vectors, present)
    assert found
    np.testing.assert_allclose(vector, [np.sqrt(0.5), np.sqrt(0.5)], rtol=1e-6)
    assert list(user_ids) == ["u1", "u2"]
    assert vectors.dtype == np.float32


def test_profile_without_usable_items_is_absent(item_table):
    interactions = pd.DataFrame({"user_id": ["u1", "u2"], "item_id": ["a", "null"]})
    user_ids, vectors, present = user_profiles(interactions, item_table)
    vector, found = profile_of("u2", user_ids, vectors, present)
    assert not found
    assert not vector.any()


@pytest.mark.parametrize("timestamps", [False, True])
def test_profile_is_uniform_without_timestamps_or_half_life(item_table, timestamps):
    interactions = pd.DataFrame({"user_id": ["u", "u"], "item_id": ["a", "b"]})
    if timestamps:
        interactions["timestamp"] = [0, 400 * DAY]
    _, vectors, _ = user_profiles(interactions, item_table, half_life_days=None if timestamps else 30.0)
    np.testing.assert_allclose(vectors[0], np.array([2.0, 1.0]) / np.sqrt(5.0), rtol=1e-6)


def test_max_history_keeps_the_latest_usable_items(item_table):
    interactions = pd.DataFrame(
        {"user_id": ["u", "u", "u"], "item_id": ["b", "a", "null"], "timestamp": [20, 10, 30]}
    )
    _, vectors, _ = user_profiles(interactions, item_table, max_history=1)
    np.testing.assert_allclose(vectors[0], [0.0, 1.0], rtol=1e-6, atol=1e-7)
    _, vectors, _ = user_profiles(interactions.drop(columns="timestamp"), item_table, max_history=1)
    np.testing.assert_allclose(vectors[0], [1.0, 0.0], rtol=1e-6, atol=1e-7)


def test_datetime_timestamps_give_the_same_profiles_as_unix_seconds(item_table):
    interactions = pd.DataFrame(
        {"user_id": ["u", "u", "v"], "item_id": ["a", "b", "a"], "timestamp": [0, 10 * DAY, 5]}
    )
    as_dates = interactions.assign(timestamp=pd.to_datetime(interactions["timestamp"], unit="s", utc=True))
    _, expected, _ = user_profiles(interactions, item_table, half_life_days=7.0)
    _, vectors, _ = user_profiles(as_dates, item_table, half_life_days=7.0)
    np.testing.assert_allclose(vectors, expected, rtol=1e-6)


@pytest.mark.parametrize("chunk_users", [65_536, 7], ids=["one-chunk", "chunks-of-7"])
def test_profiles_match_a_per_user_computation(chunk_users, monkeypatch):
    monkeypatch.setattr(profiles_module, "PROFILE_CHUNK_USERS", chunk_users)
    rng = np.random.default_rng(0)
    n_items, n_rows = 40, 3000
    item_vectors = rng.standard_normal((n_items, 5))
    table = embedding_table({f"i{k}": list(item_vectors[k]) for k in range(n_items)}, dimension=5)
    interactions = pd.DataFrame(
        {
            "user_id": rng.integers(0, 60, n_rows).astype(str),
            "item_id": [f"i{k}" for k in rng.integers(0, n_items, n_rows)],
            "timestamp": rng.integers(0, 200 * DAY, n_rows),
        }
    )
    user_ids, vectors, present = user_profiles(interactions, table, half_life_days=20.0, max_history=30)
    assert present.all()
    for user in user_ids:
        rows = interactions[interactions["user_id"] == user].sort_values("timestamp", kind="stable").tail(30)
        ages = (rows["timestamp"].max() - rows["timestamp"]) / DAY
        weights = 0.5 ** (ages.to_numpy() / 20.0)
        expected = weights @ item_vectors[rows["item_id"].str[1:].astype(int)]
        vector, _ = profile_of(user, user_ids, vectors, present)
        np.testing.assert_allclose(vector, expected / np.linalg.norm(expected), rtol=1e-5, atol=1e-6)


def test_concat_fusion_weights_normalised_blocks():
    blocks = {
        "text": embedding_table({"a": [3.0, 4.0], "b": None}, dimension=2),
        "image": embedding_table({"a": [0.0, 0.0, 2.0], "b": [5.0, 0.0, 0.0]}, dimension=3),
    }
    vectors, present = concat_fusion(blocks, ["a", "b", "unknown"], {"image": 2.0})
    # Sorted modality order (image, text); each block unit length, image doubled, then normalised.
    expected_a = np.array([0.0, 0.0, 2.0, 0.6, 0.8]) / np.sqrt(5.0)
    expected_b = np.array([1.0, 0.0, 0.0, 0.0, 0.0])
    np.testing.assert_allclose(vectors[0], expected_a, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(vectors[1], expected_b, rtol=1e-6, atol=1e-7)
    assert not vectors[2].any()
    assert present.tolist() == [True, True, False]


def test_concat_fusion_rejects_weights_for_absent_modalities():
    with pytest.raises(ValueError, match="audio"):
        concat_fusion({"text": embedding_table({"a": [1.0]}, 1)}, ["a"], {"audio": 1.0})


def test_fusion_config_rejects_an_unknown_mode():
    with pytest.raises(ValueError, match="^mode: Input should be .concat. or .attention."):
        FusionConfig(mode="sum")


def test_modality_attention_averages_available_blocks_with_a_zero_query():
    torch.manual_seed(0)
    module = ModalityAttention([2, 3], dimension=4)
    with torch.no_grad():
        module.query.zero_()
    x_text = torch.tensor([[1.0, 2.0], [0.0, 0.0], [0.0, 0.0]])
    x_image = torch.tensor([[1.0, 0.0, 1.0], [0.0, 3.0, 0.0], [0.0, 0.0, 0.0]])
    masks = [torch.tensor([True, False, False]), torch.tensor([True, True, False])]
    fused, attention = module([x_text, x_image], masks)
    projected_text, projected_image = module.projections[0](x_text), module.projections[1](x_image)
    # Equal scores: the weights are uniform over the blocks an item has.
    np.testing.assert_allclose(attention.detach().numpy(), [[0.5, 0.5], [0.0, 1.0], [0.0, 0.0]], atol=1e-6)
    torch.testing.assert_close(fused[0], 0.5 * projected_text[0] + 0.5 * projected_image[0])
    torch.testing.assert_close(fused[1], projected_image[1])
    assert not fused[2].any()


def test_modality_attention_weights_follow_the_query():
    torch.manual_seed(0)
    module = ModalityAttention([2, 2], dimension=2)
    with torch.no_grad():
        for projection in module.projections:
            projection.weight.copy_(torch.eye(2))
            projection.bias.zero_()
        module.query.copy_(torch.tensor([1.0, 0.0]))
    blocks = [torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])]
    masks = [torch.tensor([True]), torch.tensor([True])]
    _, attention = module(blocks, masks)
    scores = np.array([np.tanh(1.0), 0.0])
    np.testing.assert_allclose(
        attention.detach().numpy()[0], np.exp(scores) / np.exp(scores).sum(), rtol=1e-6
    )


def test_attention_fusion_export_and_mean_weights():
    torch.manual_seed(0)
    module = ModalityAttention([2, 3], dimension=4)
    rng = np.random.default_rng(0)
    blocks = [rng.standard_normal((5, 2)).astype(np.float32), rng.standard_normal((5, 3)).astype(np.float32)]
    masks = [np.array([1, 1, 0, 0, 1], bool), np.array([1, 0, 1, 0, 1], bool)]
    vectors, present, attention = attention_fusion(module, blocks, masks, batch_size=2)
    with torch.no_grad():
        fused, expected_attention = module(
            [torch.from_numpy(b) for b in blocks], [torch.from_numpy(m) for m in masks]
        )
    # Batches of 2 against one batch of 5: float32 torch results may differ in the last bit.
    np.testing.assert_allclose(vectors, fused.numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(attention, expected_attention.numpy(), rtol=1e-6, atol=1e-6)
    assert present.tolist() == [True, True, True, False, True]
    assert not vectors[3].any()
    weights = mean_attention_weights(np.array([[1.0, 0.0], [0.5, 0.5], [0.0, 0.0]]), ["image", "text"])
    assert weights == pytest.approx({"image": 0.75, "text": 0.25})


def test_the_cache_profiles_from_the_matrix_equal_the_profiles_of_its_interactions():
    from m6rec.data.interactions import IdIndex, InteractionMatrix
    from m6rec.embeddings.profiles import ProfileCache

    rng = np.random.default_rng(2)
    items = [f"i{n}" for n in range(30)]
    table = embedding_table(
        {item: (None if n % 7 == 3 else rng.normal(size=4).tolist()) for n, item in enumerate(items)}, 4
    )
    pairs = pd.DataFrame(
        {"user_id": rng.choice([f"u{n}" for n in range(12)], 200), "item_id": rng.choice(items, 200)}
    ).drop_duplicates()
    # Distinct times: which of two equally old interactions is "latest" follows row order, which differs.
    pairs["timestamp"] = 1_700_000_000 + rng.permutation(len(pairs)) * 3600
    users = IdIndex.from_values(pairs["user_id"])
    train = InteractionMatrix.from_frame(pairs, users, IdIndex.from_values(pd.Series(items)))

    vectors, present = ProfileCache(train, half_life_days=20.0, max_history=5).aligned("text", table)

    user_ids, expected, expected_present = user_profiles(pairs, table, half_life_days=20.0, max_history=5)
    rows = train.users.positions(user_ids)
    np.testing.assert_array_equal(present[rows], expected_present)
    np.testing.assert_allclose(vectors[rows], expected, rtol=1e-5, atol=1e-6)


def test_the_profiles_of_some_rows_equal_those_rows_of_every_users_profiles():
    """A batch computes a chunk's profiles alone: the same vectors as the whole population's rows,
    whether the chunk's users have timestamps, none of them, or no history."""
    from m6rec.data.interactions import IdIndex, InteractionMatrix
    from m6rec.embeddings.profiles import ProfileCache

    rng = np.random.default_rng(4)
    items = [f"i{n}" for n in range(25)]
    table = embedding_table({item: rng.normal(size=3).tolist() for item in items}, 3)
    pairs = pd.DataFrame(
        {"user_id": rng.choice([f"u{n}" for n in range(10)], 150), "item_id": rng.choice(items, 150)}
    ).drop_duplicates()
    pairs["timestamp"] = (1_700_000_000 + rng.permutation(len(pairs)) * 7200).astype(float)
    pairs.loc[pairs["user_id"] == "u3", "timestamp"] = np.nan  # a user without any time
    users = IdIndex.from_values(pd.concat([pairs["user_id"], pd.Series(["nobody"])]))
    train = InteractionMatrix.from_frame(pairs, users, IdIndex.from_values(pd.Series(items)))
    chunk = train.users.positions(np.array(["u3", "nobody", "u7", "u0"], dtype=object))

    whole = ProfileCache(train, half_life_days=5.0, max_history=6)
    vectors, present = whole.aligned("text", table)
    by_rows = ProfileCache(train, half_life_days=5.0, max_history=6)
    chunk_vectors, chunk_present = by_rows.rows("text", table, chunk)

    assert by_rows.computed == [], "nobody else's profiles were computed"
    np.testing.assert_array_equal(chunk_present, present[chunk])
    assert chunk_present.tolist() == [True, False, True, True]
    np.testing.assert_allclose(chunk_vectors, vectors[chunk], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(whole.rows("text", table, chunk)[0], vectors[chunk], rtol=0, atol=0)
