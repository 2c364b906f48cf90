"""The two-tower model: it beats popularity, serves cold items through content, and round-trips as data.

On the demo catalogue the frozen content blocks are stand-ins built here, not encoder outputs: a "text"
block that is the item's category one-hot plus noise (informative, as a real text encoder would be) and an
"image" block of pure noise (uninformative). Preferences in the catalogue are planted in the categories, so
the model must find them, must reach the cold items (in test only) through the text block, and its
attention should lean towards that block.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from features.fusion import FusionConfig
from features.two_tower import TwoTowerConfig, TwoTowerModel, train_two_tower
from m6rec.candidates.base import top_k
from m6rec.data.dataset import load_dataset
from m6rec.data.interactions import IdIndex, InteractionMatrix
from m6rec.data.splits import random_split
from m6rec.demo_catalogue import DemoCatalogueSpec, generate_demo_catalogue
from m6rec.embeddings.store import EmbeddingTable, read_embeddings
from m6rec.evaluation.metrics import ranking_metrics

ML_100K = Path("../shared/data/ml-100k")
# A user with attributes but no interactions: the model must still give it a vector.
LONELY_USER = pd.DataFrame({"user_id": ["user-lonely"], "age_group": ["25-34"], "country": ["DE"]})
DEMO_SPEC = DemoCatalogueSpec(
    n_users=300,
    n_items=240,
    n_topics=6,
    interactions_per_user=(10, 25),
    n_cold_items=24,
    seed=5,
    image_size=16,
    audio_seconds=0.05,
    sample_rate=4000,
)
DEMO_CONFIG = TwoTowerConfig(epochs=5, batch_size=256, force_cpu=True, fusion=FusionConfig(mode="attention"))


@dataclass(frozen=True)
class DemoData:
    """The demo catalogue as the two-tower model receives it, plus what the evaluation needs."""

    train: InteractionMatrix
    interactions: pd.DataFrame
    test: pd.DataFrame
    users: pd.DataFrame
    content: dict[str, EmbeddingTable]
    cold_item_ids: list[str]
    catalogue: np.ndarray


def stand_in_table(item_ids: np.ndarray, vectors: np.ndarray) -> EmbeddingTable:
    none = np.array([None] * len(item_ids), dtype=object)
    return EmbeddingTable(
        "item_id", item_ids, vectors.astype(np.float32), np.ones(len(item_ids), bool), none, none, {}
    )


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> DemoData:
    directory = generate_demo_catalogue(tmp_path_factory.mktemp("demo") / "catalogue", DEMO_SPEC)
    dataset = load_dataset(directory)
    cold_item_ids = json.loads((directory / "catalogue.json").read_text())["cold_item_ids"]
    frame = dataset.interactions
    train = InteractionMatrix.from_frame(
        frame, IdIndex.from_values(frame["user_id"]), IdIndex.from_values(frame["item_id"])
    )
    items = dataset.items
    item_ids = items["item_id"].to_numpy(dtype=object)
    categories = pd.Categorical(items["category"])
    rng = np.random.default_rng(0)
    one_hot = np.eye(len(categories.categories))[categories.codes]
    content = {
        "text": stand_in_table(item_ids, one_hot + 0.3 * rng.standard_normal(one_hot.shape)),
        "image": stand_in_table(item_ids, rng.standard_normal((len(item_ids), 8))),
    }
    assert not set(cold_item_ids) & set(train.items.ids)
    return DemoData(
        train=train,
        interactions=frame,
        test=dataset.test,
        users=pd.concat([dataset.users, LONELY_USER], ignore_index=True),
        content=content,
        cold_item_ids=cold_item_ids,
        catalogue=np.concatenate([train.items.ids, np.asarray(cold_item_ids, dtype=object)]),
    )


@pytest.fixture(scope="module")
def attention_model(demo) -> TwoTowerModel:
    return train_two_tower(
        demo.train, demo.content, DEMO_CONFIG, users=demo.users, interactions=demo.interactions
    )


@pytest.fixture(scope="module")
def concat_model(demo) -> TwoTowerModel:
    config = DEMO_CONFIG.replace(fusion=FusionConfig(mode="concat", weights={"text": 1.0, "image": 0.5}))
    return train_two_tower(demo.train, demo.content, config, users=demo.users, interactions=demo.interactions)


def ranking_quality(
    scores: np.ndarray,
    train: InteractionMatrix,
    catalogue: np.ndarray,
    test: pd.DataFrame,
    *,
    k: int,
    only_items: list[str] | None = None,
) -> dict[str, float]:
    """Ranking metrics of top-k lists from ``scores`` [train users, catalogue], seen items removed."""
    if only_items is not None:
        test = test[test["item_id"].isin(only_items)]
    rows = train.users.positions(test["user_id"])
    columns = pd.Index(catalogue).get_indexer(test["item_id"].to_numpy(dtype=object))
    known = (rows >= 0) & (columns >= 0)
    relevant = sp.csr_array(
        (np.ones(int(known.sum())), (rows[known], columns[known])), shape=(train.n_users, len(catalogue))
    )
    scores = np.array(scores, dtype=np.float32)
    seen = train.matrix.tocoo()
    scores[seen.row, seen.col] = -np.inf  # the catalogue starts with the training items, in matrix order
    recommended, _ = top_k(scores, k)
    return ranking_metrics(recommended, relevant, k_values=(k,), n_catalogue_items=len(catalogue))


def popularity_scores(train: InteractionMatrix, catalogue: np.ndarray) -> np.ndarray:
    counts = np.zeros(len(catalogue), dtype=np.float32)
    counts[: train.n_items] = train.item_popularity()
    return np.tile(counts, (train.n_users, 1))


def model_scores(model: TwoTowerModel, train: InteractionMatrix, catalogue: np.ndarray) -> np.ndarray:
    return model.user_vectors(train.users.ids) @ model.item_vectors(catalogue).T


@pytest.mark.parametrize("model_name", ["attention_model", "concat_model"])
def test_two_tower_beats_popularity_on_the_demo_catalogue(demo, model_name, request):
    model = request.getfixturevalue(model_name)
    popularity = ranking_quality(
        popularity_scores(demo.train, demo.catalogue), demo.train, demo.catalogue, demo.test, k=10
    )
    two_tower = ranking_quality(
        model_scores(model, demo.train, demo.catalogue), demo.train, demo.catalogue, demo.test, k=10
    )
    assert two_tower["ndcg@10"] > 2 * popularity["ndcg@10"], (two_tower["ndcg@10"], popularity["ndcg@10"])


@pytest.mark.parametrize("model_name", ["attention_model", "concat_model"])
def test_cold_items_are_reached_through_content(demo, model_name, request):
    model = request.getfixturevalue(model_name)
    args = (demo.train, demo.catalogue, demo.test)
    cold = ranking_quality(
        model_scores(model, demo.train, demo.catalogue), *args, k=50, only_items=demo.cold_item_ids
    )
    popular = ranking_quality(
        popularity_scores(demo.train, demo.catalogue), *args, k=50, only_items=demo.cold_item_ids
    )
    unseen = len(demo.catalogue) - demo.train.user_activity()
    chance = float(np.mean(50 / unseen))
    assert popular["recall@50"] == 0.0
    assert cold["recall@50"] > 2 * chance, (cold["recall@50"], chance)
    # A cold item's vector comes from content alone, the same whether content is stored or passed anew.
    np.testing.assert_allclose(
        model.item_vectors(demo.cold_item_ids),
        model.item_vectors(demo.cold_item_ids, content=demo.content),
        atol=1e-6,
    )


def test_attention_leans_towards_the_informative_block(attention_model):
    weights = attention_model.attention_weights()
    assert set(weights) == {"text", "image"}
    assert sum(weights.values()) == pytest.approx(1.0)
    assert weights["text"] > weights["image"]


def test_bpr_loss_trains_and_beats_popularity(demo):
    config = DEMO_CONFIG.replace(loss="bpr", temperature=1.0)
    model = train_two_tower(
        demo.train, demo.content, config, users=demo.users, interactions=demo.interactions
    )
    assert model.loss_history[-1] < model.loss_history[0]
    popularity = ranking_quality(
        popularity_scores(demo.train, demo.catalogue), demo.train, demo.catalogue, demo.test, k=10
    )
    bpr = ranking_quality(
        model_scores(model, demo.train, demo.catalogue), demo.train, demo.catalogue, demo.test, k=10
    )
    assert bpr["ndcg@10"] > 2 * popularity["ndcg@10"], (bpr["ndcg@10"], popularity["ndcg@10"])


def test_same_seed_gives_the_same_vectors(demo):
    config = DEMO_CONFIG.replace(epochs=1)
    kwargs = {"users": demo.users, "interactions": demo.interactions}
    first = train_two_tower(demo.train, demo.content, config, **kwargs)
    second = train_two_tower(demo.train, demo.content, config, **kwargs)
    other_seed = train_two_tower(demo.train, demo.content, config.replace(seed=1), **kwargs)
    np.testing.assert_array_equal(first.item_vectors(demo.catalogue), second.item_vectors(demo.catalogue))
    np.testing.assert_array_equal(
        first.user_vectors(demo.train.users.ids), second.user_vectors(demo.train.users.ids)
    )
    assert first.loss_history == second.loss_history
    assert first.weights_identity == second.weights_identity
    assert not np.allclose(first.item_vectors(demo.catalogue), other_seed.item_vectors(demo.catalogue))
    assert first.weights_identity != other_seed.weights_identity


def test_vectors_are_unit_length_and_unknown_items_are_zero(attention_model, demo):
    vectors = attention_model.item_vectors([*demo.catalogue[:5], "no-such-item"])
    np.testing.assert_allclose(np.linalg.norm(vectors[:5], axis=1), 1.0, rtol=1e-5)
    assert not vectors[5].any()
    users = attention_model.user_vectors(demo.train.users.ids[:5])
    np.testing.assert_allclose(np.linalg.norm(users, axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("safetensors_available", [True, False])
def test_save_and_load_round_trip(attention_model, demo, tmp_path, monkeypatch, safetensors_available):
    if not safetensors_available:
        monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    attention_model.save(tmp_path)
    expected_file = "model.safetensors" if safetensors_available else "model.pt"
    assert (tmp_path / expected_file).exists()
    loaded = TwoTowerModel.load(tmp_path)
    np.testing.assert_array_equal(
        loaded.item_vectors(demo.catalogue), attention_model.item_vectors(demo.catalogue)
    )
    np.testing.assert_array_equal(
        loaded.user_vectors(demo.train.users.ids), attention_model.user_vectors(demo.train.users.ids)
    )
    assert loaded.attention_weights() == attention_model.attention_weights()
    assert loaded.weights_identity == attention_model.weights_identity


def test_export_writes_the_embedding_contract(attention_model, demo, tmp_path):
    paths = attention_model.export(tmp_path)
    items = read_embeddings(paths.items)
    users = read_embeddings(paths.users)
    fused = read_embeddings(paths.fused)
    assert set(demo.cold_item_ids) <= set(items.keys)
    np.testing.assert_array_equal(items.vectors, attention_model.item_vectors(items.keys))
    np.testing.assert_array_equal(users.vectors, attention_model.user_vectors(users.keys))
    assert set(users.keys) == set(demo.users["user_id"])
    for table in (items, users):
        metadata = table.metadata
        assert metadata["encoder"] == "two-tower"
        assert metadata["weights"] == attention_model.weights_identity
        assert metadata["weights"].startswith("trained:")
        assert metadata["pretrained"] is False
        assert metadata["dimension"] == DEMO_CONFIG.dimension
        assert (metadata["loss"], metadata["epochs"]) == ("softmax", len(attention_model.loss_history))
        assert metadata["best_epoch"] == attention_model.best_epoch
        assert metadata["validation_loss"] == pytest.approx(attention_model.best_validation_loss)
        assert metadata["final_loss"] == pytest.approx(attention_model.loss_history[-1])
        assert metadata["attention_weights"] == pytest.approx(attention_model.attention_weights())
    assert fused.valid.all()
    assert fused.dimension == DEMO_CONFIG.fusion.dimension


def test_concat_model_exports_no_fused_file(concat_model, tmp_path):
    paths = concat_model.export(tmp_path)
    assert paths.fused is None
    assert not (tmp_path / "fused.parquet").exists()
    assert "attention_weights" not in read_embeddings(paths.items).metadata


def test_new_users_are_served_by_their_attributes(attention_model):
    attributes = pd.DataFrame(
        {
            "user_id": ["new-1", "new-2", "new-3"],
            "age_group": ["18-24", "18-24", "55+"],
            "country": ["US", "US", "JP"],
        }
    )
    vectors = attention_model.user_vectors(["new-1", "new-2", "new-3", "new-4"], attributes=attributes)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    # Same attributes, same vector; torch's float32 kernels promise no bitwise-equal rows within a batch.
    np.testing.assert_allclose(vectors[0], vectors[1], atol=1e-6)
    assert not np.allclose(vectors[0], vectors[2])
    assert not np.allclose(vectors[0], vectors[3])


def test_a_user_without_interactions_is_served_by_attributes_alone(attention_model):
    lonely = attention_model.user_vectors(["user-lonely"])
    newcomer = attention_model.user_vectors(["newcomer"], attributes=LONELY_USER.assign(user_id="newcomer"))
    np.testing.assert_allclose(lonely, newcomer, atol=1e-6)  # two paths through torch float32 kernels
    np.testing.assert_allclose(np.linalg.norm(lonely), 1.0, rtol=1e-5)


def test_given_histories_match_the_training_history(attention_model, demo):
    known = demo.train.users.ids[:20]
    stored = attention_model.user_vectors(known)
    by_time = demo.interactions.sort_values("timestamp", kind="stable")
    history = {
        user: list(group["item_id"]) for user, group in by_time.groupby("user_id") if user in set(known)
    }
    np.testing.assert_allclose(attention_model.user_vectors(known, history), stored, atol=1e-6)
    np.testing.assert_allclose(attention_model.user_vectors(known, demo.train), stored, atol=1e-6)


def test_only_the_latest_history_items_count(attention_model, demo):
    size = attention_model.config.history_size
    long_history = [str(item) for item in demo.catalogue[: size + 20]]
    user = demo.train.users.ids[0]
    full = attention_model.user_vectors([user], {user: long_history})
    latest = attention_model.user_vectors([user], {user: long_history[-size:]})
    earliest = attention_model.user_vectors([user], {user: long_history[:size]})
    np.testing.assert_allclose(full, latest, atol=1e-6)
    assert not np.allclose(full, earliest)


def test_config_names_the_bad_key():
    with pytest.raises(ValueError, match="loss"):
        TwoTowerConfig(loss="hinge")
    with pytest.raises(ValueError, match="id_dropout"):
        TwoTowerConfig(id_dropout=1.0)
    assert TwoTowerConfig(fusion={"mode": "attention"}).fusion == FusionConfig(mode="attention")


@pytest.fixture(scope="module")
def movielens() -> tuple[InteractionMatrix, pd.DataFrame, pd.DataFrame]:
    if not (ML_100K / "u.data").exists():
        pytest.skip(f"{ML_100K} is not available")
    ratings = pd.read_csv(
        ML_100K / "u.data",
        sep="\t",
        names=["user_id", "item_id", "rating", "timestamp"],
        dtype={"user_id": str, "item_id": str},
    )
    train_frame, test_frame = random_split(ratings, 0.25, seed=42)
    train = InteractionMatrix.from_frame(
        train_frame, IdIndex.from_values(train_frame["user_id"]), IdIndex.from_values(train_frame["item_id"])
    )
    return train, train_frame, test_frame


def test_id_only_two_tower_beats_popularity_on_movielens(movielens):
    train, train_frame, test_frame = movielens
    config = TwoTowerConfig(epochs=4, batch_size=1024, force_cpu=True)
    model = train_two_tower(train, {}, config, interactions=train_frame)
    catalogue = train.items.ids
    popularity = ranking_quality(popularity_scores(train, catalogue), train, catalogue, test_frame, k=10)
    two_tower = ranking_quality(model_scores(model, train, catalogue), train, catalogue, test_frame, k=10)
    assert popularity["ndcg@10"] == pytest.approx(0.25, abs=0.01)
    assert two_tower["ndcg@10"] > popularity["ndcg@10"] + 0.05, (two_tower["ndcg@10"], popularity["ndcg@10"])
