"""Training the two-tower model costs what it must: early stopping on held-out interactions, a warm start
from a model of a subset of the data, and folding current data into a saved model without training.

Early stopping is checked on interactions drawn at random, where nothing generalises: the validation loss
stops improving after a few epochs while the training loss keeps falling. The fold-in is checked on the
demo catalogue through the pipeline's own functions, against the files its training wrote.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from features.fusion import FusionConfig
from features.two_tower import TwoTowerConfig, TwoTowerModel, TwoTowerNetwork, train_two_tower
from features.two_tower.data import _item_catalogue, _user_catalogue
from features.two_tower.training import _copy_weights_by_id
from m6rec.config import EmbeddingConfig
from m6rec.data.dataset import Dataset, load_dataset
from m6rec.data.interactions import IdIndex, InteractionMatrix
from m6rec.demo_catalogue import DemoCatalogueSpec, generate_demo_catalogue
from m6rec.embeddings.profiles import ProfileCache
from m6rec.embeddings.store import read_embeddings, write_embeddings
from pipelines.collaborative import fold_in_collaborative, load_collaborative_model, train_collaborative
from pipelines.item_embeddings import EmbeddingResult
from pipelines.item_embeddings import interaction_matrix as _matrix

RANDOM_CONFIG = TwoTowerConfig(
    dimension=16,
    batch_size=64,
    learning_rate=0.03,
    epochs=40,
    patience=2,
    validation_share=0.5,
    id_dropout=0.0,
    force_cpu=True,
)


def random_interactions(n_users: int = 120, n_items: int = 60, per_user: int = 12, seed: int = 0):
    """Each user picks ``per_user`` items uniformly at random: there is nothing to learn but noise."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        [
            (f"u{user}", f"i{item}")
            for user in range(n_users)
            for item in rng.choice(n_items, per_user, replace=False)
        ],
        columns=["user_id", "item_id"],
    )
    return frame, InteractionMatrix.from_frame(
        frame, IdIndex.from_values(frame["user_id"]), IdIndex.from_values(frame["item_id"])
    )


def held_out_ids(model) -> set[tuple[str, str]]:
    """The model's held-out interactions as (user ID, item ID)."""
    return {(model.users.ids[user], model.items.ids[item]) for user, item in model.validation_pairs}


def test_training_stops_when_the_validation_loss_stops_improving_and_keeps_the_best_epoch():
    frame, train = random_interactions()
    model = train_two_tower(train, {}, RANDOM_CONFIG, interactions=frame)

    epochs_run = len(model.loss_history)
    assert epochs_run < RANDOM_CONFIG.epochs
    assert epochs_run == model.best_epoch + RANDOM_CONFIG.patience
    assert model.validation_history[model.best_epoch - 1] == min(model.validation_history)
    assert model.loss_history[-1] < model.loss_history[model.best_epoch - 1]  # it went on memorising
    assert len(model.validation_pairs) == round(RANDOM_CONFIG.validation_share * train.n_users)

    # The same seed trained for exactly the best epoch count ends with the weights early stopping kept.
    best_only = train_two_tower(train, {}, RANDOM_CONFIG.replace(epochs=model.best_epoch), interactions=frame)
    assert len(best_only.loss_history) == model.best_epoch
    np.testing.assert_allclose(
        model.item_vectors(train.items.ids), best_only.item_vectors(train.items.ids), atol=1e-6
    )
    np.testing.assert_allclose(
        model.user_vectors(train.users.ids), best_only.user_vectors(train.users.ids), atol=1e-6
    )


def test_held_out_interactions_are_left_out_of_training_but_not_out_of_the_served_history():
    frame, train = random_interactions()
    model = train_two_tower(train, {}, RANDOM_CONFIG.replace(epochs=1), interactions=frame)
    users, items = model.validation_pairs[:, 0], model.validation_pairs[:, 1]
    assert len(np.unique(users)) == len(users)  # one interaction per chosen user
    assert (np.asarray(train.matrix[users, items]).ravel() == 1).all()
    history_rows, history_items = model.history.rows(users)
    assert len(set(zip(history_rows, history_items, strict=True)) & set(enumerate(items))) == len(items)


def test_without_a_validation_share_every_epoch_runs(tmp_path):
    frame, train = random_interactions()
    config = RANDOM_CONFIG.replace(epochs=6, validation_share=0.0)
    model = train_two_tower(train, {}, config, interactions=frame)
    assert len(model.loss_history) == 6 and model.best_epoch == 6
    assert len(model.validation_pairs) == 0 and model.best_validation_loss is None

    model.save(tmp_path)

    def no_constants(name):
        raise AssertionError(f"config.json holds {name}, which is not JSON")

    json.loads((tmp_path / "config.json").read_text(), parse_constant=no_constants)
    loaded = TwoTowerModel.load(tmp_path)
    assert (loaded.best_epoch, loaded.best_validation_loss, len(loaded.validation_history)) == (6, None, 6)


def test_the_saved_model_keeps_its_validation_history_and_held_out_pairs(tmp_path):
    frame, train = random_interactions()
    model = train_two_tower(train, {}, RANDOM_CONFIG.replace(epochs=3), interactions=frame)
    model.save(tmp_path)
    loaded = TwoTowerModel.load(tmp_path)
    assert loaded.validation_history == pytest.approx(model.validation_history)
    assert loaded.best_epoch == model.best_epoch
    np.testing.assert_array_equal(loaded.validation_pairs, model.validation_pairs)


def test_a_saved_model_of_the_same_inputs_is_reused_and_any_change_trains_anew(tmp_path):
    frame, train = random_interactions()
    config = RANDOM_CONFIG.replace(epochs=2)
    model = train_two_tower(train, {}, config, interactions=frame)
    model.save(tmp_path)
    saved = TwoTowerModel.load(tmp_path)
    assert train_two_tower(train, {}, config, interactions=frame, reuse=saved) is saved
    assert (
        train_two_tower(
            train, {}, config.replace(dimension=config.dimension * 2), interactions=frame, reuse=saved
        )
        is not saved
    )
    fewer = frame.iloc[1:]
    changed = InteractionMatrix.from_frame(fewer, train.users, train.items)
    assert train_two_tower(changed, {}, config, interactions=fewer, reuse=saved) is not saved


def test_warm_start_copies_id_vectors_by_raw_id():
    frame, _ = random_interactions()
    subset = frame[~frame["user_id"].isin(["u0", "u1"]) & (frame["item_id"] != "i0")]
    previous = train_two_tower(
        InteractionMatrix.from_frame(
            subset, IdIndex.from_values(subset["user_id"]), IdIndex.from_values(subset["item_id"])
        ),
        {},
        RANDOM_CONFIG.replace(epochs=2),
        interactions=subset,
    )
    # The full data indexes its users and items in another order than the subset did.
    users = IdIndex.from_values(frame["user_id"].sort_values(ascending=False))
    items = IdIndex.from_values(frame["item_id"].sort_values(ascending=False))
    full = InteractionMatrix.from_frame(frame, users, items)
    item_catalogue, user_catalogue = _item_catalogue(full, {}), _user_catalogue(full, None)
    network = TwoTowerNetwork(
        n_item_ids=full.n_items,
        n_user_ids=full.n_users,
        attribute_sizes=[],
        content_dimensions=[],
        fusion=FusionConfig(),
        dimension=RANDOM_CONFIG.dimension,
    )
    _copy_weights_by_id(network, item_catalogue, user_catalogue, {}, previous)

    shared_item = "i7"
    new_row = item_catalogue.id_rows[full.items.positions([shared_item])[0]]
    old_row = previous.items.id_rows[previous.items.positions([shared_item])[0]]
    assert new_row != old_row
    torch.testing.assert_close(network.item_ids.weight[new_row], previous.network.item_ids.weight[old_row])
    with torch.no_grad():
        vector = network.items(torch.as_tensor([new_row]), []).numpy()
    np.testing.assert_allclose(vector, previous.item_vectors([shared_item]), atol=1e-6)
    # IDs the subset had no vector for start at zero, the "no ID" input of ID dropout.
    for catalogue, weight, new_id in (
        (item_catalogue, network.item_ids, "i0"),
        (user_catalogue, network.user_ids, "u1"),
    ):
        row = catalogue.id_rows[catalogue.positions([new_id])[0]]
        assert not weight.weight[row].any()
    torch.testing.assert_close(network.item_mlp[0].weight, previous.network.item_mlp[0].weight)


def test_a_warm_started_training_runs_a_short_schedule_on_the_held_out_pairs_of_its_start():
    frame, train = random_interactions()
    subset = frame.groupby("user_id").head(10)
    previous = train_two_tower(
        InteractionMatrix.from_frame(subset, train.users, train.items), {}, RANDOM_CONFIG, interactions=subset
    )
    config = RANDOM_CONFIG.replace(warm_start_epochs_share=0.5, patience=40)
    model = train_two_tower(train, {}, config, interactions=frame, warm_start=previous)
    assert len(model.loss_history) == max(1, int(np.ceil(previous.best_epoch * 0.5)))
    assert held_out_ids(model) == held_out_ids(previous)
    assert model.input_hash != train_two_tower(train, {}, config, interactions=frame).input_hash


DEMO_SPEC = DemoCatalogueSpec(
    n_users=80,
    n_items=60,
    n_topics=4,
    interactions_per_user=(6, 12),
    n_cold_items=6,
    seed=3,
    image_size=16,
    audio_seconds=0.05,
    sample_rate=4000,
)
EMBEDDING_CONFIG = EmbeddingConfig(
    modalities=["cf"],
    two_tower={"epochs": 3, "dimension": 16, "batch_size": 64},
    fusion={"mode": "attention", "dimension": 8},
    force_cpu=True,
)
FILES = ("cf_items", "cf_users", "fused")


@pytest.fixture(scope="module")
def demo_dataset(tmp_path_factory) -> Dataset:
    directory = generate_demo_catalogue(tmp_path_factory.mktemp("demo") / "catalogue", DEMO_SPEC)
    return load_dataset(directory)


def content_embeddings(dataset: Dataset, directory: Path) -> EmbeddingResult:
    """A stand-in text block, each item's category one-hot plus noise, written as the encoders write it."""
    items = dataset.items
    rng = np.random.default_rng(0)
    one_hot = np.eye(items["category"].nunique())[pd.Categorical(items["category"]).codes]
    path = directory / "text.parquet"
    write_embeddings(
        path,
        "item_id",
        items["item_id"],
        one_hot + 0.3 * rng.standard_normal(one_hot.shape),
        metadata={"encoder": "stand-in", "weights": "none"},
    )
    result = EmbeddingResult(directory)
    result.paths["text"] = path
    return result


def collaborative(dataset: Dataset, directory: Path, content: EmbeddingResult, model=None) -> EmbeddingResult:
    """Train (``model`` None) or fold in the collaborative files of all of ``dataset``'s interactions."""
    frame = dataset.interactions
    profiles = ProfileCache(_matrix(dataset, frame), half_life_days=None)
    if model is None:
        return train_collaborative(dataset, frame, content, directory, EMBEDDING_CONFIG, profiles)
    return fold_in_collaborative(dataset, frame, content, model, directory, EMBEDDING_CONFIG, profiles)


def file_stamps(result: EmbeddingResult) -> dict[str, tuple[int, int]]:
    return {name: (result.paths[name].stat().st_ino, result.paths[name].stat().st_mtime_ns) for name in FILES}


@pytest.fixture(scope="module")
def trained(demo_dataset, tmp_path_factory):
    directory = tmp_path_factory.mktemp("trained")
    content = content_embeddings(demo_dataset, directory)
    return directory, content, collaborative(demo_dataset, directory, content)


def test_training_saves_the_model_next_to_its_files(trained):
    directory, _, result = trained
    model = load_collaborative_model(directory)
    assert model is not None and model.weights_identity == result.table("cf_items").metadata["weights"]
    assert load_collaborative_model(directory / "nowhere") is None
    description = json.loads((directory / "two_tower" / "config.json").read_text())
    assert description["best_epoch"] == model.best_epoch and len(description["validation_history"]) >= 1


def test_folding_unchanged_data_into_the_saved_model_gives_the_exported_vectors(
    demo_dataset, trained, tmp_path
):
    directory, content, result = trained
    folded = collaborative(demo_dataset, tmp_path, content, load_collaborative_model(directory))
    for name in FILES:
        exported, again = result.table(name), folded.table(name)
        assert list(again.keys) == list(exported.keys)
        np.testing.assert_allclose(again.vectors, exported.vectors, atol=1e-6)
        np.testing.assert_array_equal(again.valid, exported.valid)


def test_folding_unchanged_data_in_place_rewrites_no_file(demo_dataset, trained):
    directory, content, result = trained
    before = file_stamps(result)
    folded = collaborative(demo_dataset, directory, content, load_collaborative_model(directory))
    assert file_stamps(folded) == before
    assert all(folded.counts[name]["computed"] == 0 for name in FILES)
    assert all(folded.counts[name]["reused"] == folded.counts[name]["total"] > 0 for name in FILES)


def with_newcomers(dataset: Dataset, content: EmbeddingResult, directory: Path, *, new_item: bool):
    """``dataset`` with a new user (attributes and three interactions, after every other one) and, with
    ``new_item``, a new item (in the items table and the text block) that the new user took last; the
    text block is written to ``directory``. Returns the dataset, its content and the new user's history."""
    items, text = dataset.items, content.table("text")
    history = list(dataset.interactions["item_id"].iloc[:2])
    history.append("item-new" if new_item else dataset.interactions["item_id"].iloc[2])
    new_rows = dataset.interactions.iloc[: len(history)].copy()
    new_rows["user_id"], new_rows["item_id"] = "user-new", history
    new_rows["timestamp"] = int(dataset.interactions["timestamp"].max()) + np.arange(1, len(history) + 1)
    keys, vectors = list(text.keys), text.vectors
    if new_item:
        items = pd.concat([items, items.iloc[[0]].assign(item_id="item-new")], ignore_index=True)
        keys, vectors = [*keys, "item-new"], np.vstack([vectors, 0.5 * vectors[[0]] + 0.1])
    current = dataclasses.replace(
        dataset,
        items=items,
        users=pd.concat(
            [dataset.users, dataset.users.iloc[[0]].assign(user_id="user-new")], ignore_index=True
        ),
        interactions=pd.concat([dataset.interactions, new_rows], ignore_index=True),
    )
    path = directory / "text.parquet"
    write_embeddings(path, "item_id", keys, vectors, metadata={"encoder": "stand-in", "weights": "none"})
    current_content = EmbeddingResult(directory)
    current_content.paths["text"] = path
    return current, current_content, history


def test_a_new_user_and_a_new_item_get_vectors_from_history_and_content(demo_dataset, trained, tmp_path):
    directory, content, result = trained
    model = load_collaborative_model(directory)
    current, current_content, history = with_newcomers(demo_dataset, content, tmp_path, new_item=True)
    folded = collaborative(current, tmp_path, current_content, model)

    items, users = folded.table("cf_items"), folded.table("cf_users")
    new_item = items.lookup(["item-new"])[0][0]
    np.testing.assert_allclose(np.linalg.norm(new_item), 1.0, rtol=1e-5)
    # A new item has no ID vector: its vector is the model's content-only one of its text block.
    content_only = model.item_vectors(["item-new"], content=current_content.content_tables())[0]
    np.testing.assert_allclose(new_item, content_only, atol=1e-6)
    trained_items = result.table("cf_items")
    np.testing.assert_allclose(items.lookup(trained_items.keys)[0], trained_items.vectors, atol=1e-6)

    assert "user-new" not in set(result.table("cf_users").keys)
    new_user = users.lookup(["user-new"])[0][0]
    np.testing.assert_allclose(np.linalg.norm(new_user), 1.0, rtol=1e-5)
    current_model = model.fold_in(
        _matrix(current, current.interactions), current_content.content_tables(), users=current.users
    )
    np.testing.assert_allclose(
        new_user, current_model.user_vectors(["user-new"], {"user-new": history})[0], atol=1e-6
    )
    without_new_item = current_model.user_vectors(["user-new"], {"user-new": history[:-1]})[0]
    assert not np.allclose(new_user, without_new_item, atol=1e-3)  # the new item counts in its history


def test_a_new_user_alone_rewrites_only_the_user_file(demo_dataset, trained, tmp_path):
    directory, content, result = trained
    copies = tmp_path / "run"
    copies.mkdir()
    for name in FILES:
        (copies / f"{name}.parquet").write_bytes(result.paths[name].read_bytes())
    current, current_content, _ = with_newcomers(demo_dataset, content, copies, new_item=False)
    before = {name: (copies / f"{name}.parquet").stat().st_mtime_ns for name in FILES}
    folded = collaborative(current, copies, current_content, load_collaborative_model(directory))
    after = {name: folded.paths[name].stat().st_mtime_ns for name in FILES}
    assert after["cf_items"] == before["cf_items"] and after["fused"] == before["fused"]
    assert after["cf_users"] != before["cf_users"]
    assert "user-new" in set(read_embeddings(folded.paths["cf_users"]).keys)


def stage_embeddings(dataset: Dataset, features: Path, **two_tower):
    """The training stage's embeddings of two histories: all interactions and a fold of each user's
    first five, with ``two_tower`` settings over :data:`EMBEDDING_CONFIG`'s."""
    from m6rec.config import RunConfig
    from pipelines.histories import History, embed_histories

    frame = dataset.interactions
    fold_frame = frame.groupby("user_id").head(5)
    histories = {
        "collaborative": History(frame, _matrix(dataset, frame), features),
        "fold": History(fold_frame, _matrix(dataset, fold_frame), features / "fold"),
    }
    settings = EMBEDDING_CONFIG.model_dump()
    settings["two_tower"] = {**settings["two_tower"], **two_tower}
    config = RunConfig(embeddings=EmbeddingConfig(**settings))
    return embed_histories(dataset, features, config, histories)


@pytest.mark.parametrize("warm_start", [False, True])
def test_the_stage_warm_starts_the_full_model_from_the_fold_model_only_when_asked(
    demo_dataset, tmp_path, warm_start
):
    embeddings = stage_embeddings(
        demo_dataset,
        tmp_path / "features",
        warm_start=warm_start,
        warm_start_epochs_share=1.0,
        validation_share=0.5,
    )

    assert list(embeddings.collaborative) == ["collaborative", "fold"]
    fold_model = load_collaborative_model(tmp_path / "features" / "fold")
    full_model = load_collaborative_model(tmp_path / "features")
    assert (held_out_ids(full_model) == held_out_ids(fold_model)) is warm_start
    if warm_start:
        assert len(full_model.loss_history) <= fold_model.best_epoch


def test_the_histories_models_trained_side_by_side_are_those_trained_one_after_the_other(
    demo_dataset, tmp_path, monkeypatch
):
    import torch

    import pipelines.histories

    threads_before = torch.get_num_threads()
    vectors = {}
    for side_by_side in (False, True):
        monkeypatch.setattr(pipelines.histories, "_trains_side_by_side", lambda *_, flag=side_by_side: flag)
        features = tmp_path / f"side-by-side-{side_by_side}"
        embeddings = stage_embeddings(demo_dataset, features)
        vectors[side_by_side] = {
            (name, file): read_embeddings(result.paths[file])
            for name, result in embeddings.collaborative.items()
            for file in FILES
            if file in result.paths
        }
        assert torch.get_num_threads() == threads_before

    assert set(vectors[True]) == set(vectors[False]) and len(vectors[False]) == 4
    for key, one_after_the_other in vectors[False].items():
        side_by_side = vectors[True][key]
        assert list(side_by_side.keys) == list(one_after_the_other.keys), key
        np.testing.assert_allclose(side_by_side.vectors, one_after_the_other.vectors, rtol=0, atol=1e-6)


def test_the_profile_files_are_written_without_keeping_every_users_profiles(demo_dataset, tmp_path):
    content = content_embeddings(demo_dataset, tmp_path)
    frame = demo_dataset.interactions
    profiles = ProfileCache(_matrix(demo_dataset, frame), half_life_days=None)
    result = train_collaborative(demo_dataset, frame, content, tmp_path, EMBEDDING_CONFIG, profiles)

    assert profiles.computed == []
    written = read_embeddings(result.paths["profile_text"])
    assert list(written.keys) == list(profiles.train.users.ids.astype(str))
    vectors, present = profiles.rows("text", content.content_tables()["text"], np.arange(len(written.keys)))
    np.testing.assert_array_equal(np.asarray(written.valid, dtype=bool), present)
    np.testing.assert_allclose(written.vectors[present], vectors[present], rtol=0, atol=1e-6)
