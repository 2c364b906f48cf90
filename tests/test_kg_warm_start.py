"""KG embeddings retrain only when the triples change, and then warm-start from the previous vectors."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json
import logging
import pickle
import struct
import zipfile

import numpy as np
import pandas as pd
import pytest

from features.kg import GraphRepresentations, KGConfig, representations_path, train_kg_embeddings
from m6rec.config import KG_MODELS, KGSettings
from m6rec.embeddings.store import read_embeddings

TRIPLE_COLUMNS = ["head", "relation", "tail"]


def _with_new_item(triples: pd.DataFrame) -> pd.DataFrame:
    """One more cluster-a item, tagged like the others: one new entity, no new relation."""
    added = [("a-item-8", "tagged", f"tag:a{tag}") for tag in range(4)] + [
        ("a-item-8", "in_genre", "genre:a")
    ]
    return pd.concat([triples, pd.DataFrame(added, columns=TRIPLE_COLUMNS)], ignore_index=True)


@pytest.fixture
def initial_tensors(monkeypatch) -> list:
    """The tensors the warm start hands to pykeen's ``PretrainedInitializer``, in order: every entity
    representation, then every relation representation."""
    from pykeen.nn import init

    handed = []

    class RecordingInitializer(init.PretrainedInitializer):
        def __init__(self, tensor):
            handed.append(tensor.detach().cpu().numpy().copy())
            super().__init__(tensor)

    monkeypatch.setattr(init, "PretrainedInitializer", RecordingInitializer)
    return handed


def _no_training(*args, **kwargs):
    raise AssertionError("trained although the triples did not change")


def _messages(caplog) -> list[str]:
    """The KG's own log lines."""
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == "m6rec" and record.getMessage().startswith("kg")
    ]


CONFIG = KGConfig(dimension=8, epochs=8, warm_start_epochs=2, batch_size=32, seed=0)


def test_the_same_triples_in_another_order_are_reused_without_training(
    planted_graph, tmp_path, monkeypatch, caplog
):
    triples, items, _ = planted_graph
    out = tmp_path / "kg.parquet"
    train_kg_embeddings(triples, items, out, CONFIG)
    written = out.read_bytes(), representations_path(out).read_bytes()
    monkeypatch.setattr("features.kg._train", _no_training)

    caplog.clear()  # only what the call under test logs

    with caplog.at_level(logging.INFO, logger="m6rec"):
        report = train_kg_embeddings(triples.sample(frac=1.0, random_state=3), items, out, CONFIG)

    assert (report.computed, report.reused, report.failed) == (0, 16, 0)
    assert (out.read_bytes(), representations_path(out).read_bytes()) == written
    assert _messages(caplog) == ["kg: reused kg.parquet: same triples, items and settings, nothing trained"]


def test_a_grown_catalogue_on_the_same_triples_is_exported_without_training(
    planted_graph, tmp_path, monkeypatch, caplog
):
    triples, items, _ = planted_graph
    out = tmp_path / "kg.parquet"
    train_kg_embeddings(triples, items, out, CONFIG)
    before = read_embeddings(out)
    stored = GraphRepresentations.load(representations_path(out))
    monkeypatch.setattr("features.kg._train", _no_training)

    grown = [*items, "genre:a", "brand-new"]  # an entity that was not an item yet, and no entity at all
    caplog.clear()  # only what the call under test logs
    with caplog.at_level(logging.INFO, logger="m6rec"):
        report = train_kg_embeddings(triples, grown, out, CONFIG)
    after = read_embeddings(out)

    assert (report.total, report.computed, report.reused, report.failed) == (18, 0, 18, 1)
    assert report.problems == [
        {"modality": "kg", "item_id": "brand-new", "problem": "not in the knowledge graph"}
    ]
    np.testing.assert_array_equal(after.vectors[:16], before.vectors)
    np.testing.assert_array_equal(
        after.vectors[16], stored.entity_vectors[0][stored.entities.index("genre:a")]
    )
    assert after.valid.tolist() == [True] * 17 + [False]
    assert after.metadata["weights"] == before.metadata["weights"]
    assert _messages(caplog) == [
        "kg: same triples and settings, 18 items exported from kg.safetensors, nothing trained"
    ]


@pytest.mark.parametrize("model", KG_MODELS)
def test_an_added_triple_warm_starts_the_known_entities_from_their_previous_vectors(
    model, planted_graph, tmp_path, initial_tensors, caplog
):
    triples, items, _ = planted_graph
    out = tmp_path / "kg.parquet"
    config = CONFIG.replace(model=model)
    train_kg_embeddings(triples, items, out, config)
    previous = GraphRepresentations.load(representations_path(out))
    assert initial_tensors == []  # the first training started from scratch

    caplog.clear()  # only what the call under test logs

    with caplog.at_level(logging.DEBUG, logger="m6rec"):
        report = train_kg_embeddings(_with_new_item(triples), [*items, "a-item-8"], out, config)
    warm = GraphRepresentations.load(representations_path(out))

    assert (report.computed, report.failed) == (17, 0)
    assert len(warm.entities) == 27 and warm.relations == previous.relations
    n_representations = len(previous.entity_vectors) + len(previous.relation_vectors)
    assert len(initial_tensors) == n_representations == (3 if model == "TransH" else 2)
    entity_start, relation_starts = initial_tensors[0], initial_tensors[1:]
    row_now = {label: row for row, label in enumerate(warm.entities)}
    for row, label in enumerate(previous.entities):
        np.testing.assert_array_equal(entity_start[row_now[label]], previous.entity_vectors[0][row])
    fresh = entity_start[row_now["a-item-8"]]  # pykeen's initialisation, unlike any previous vector
    assert np.isfinite(fresh).all()
    assert np.abs(previous.entity_vectors[0] - fresh).reshape(26, -1).max(axis=1).min() > 1e-3
    for start, before in zip(relation_starts, previous.relation_vectors, strict=True):
        np.testing.assert_array_equal(start, before)  # the same relations in the same order
    if model == "RotatE":
        assert entity_start.shape == (27, 8, 2)  # real and imaginary parts, pykeen's storage layout

    metadata = read_embeddings(out).metadata
    assert (metadata["start"], metadata["epochs_trained"], metadata["carried_entities"]) == ("warm", 2, 26)
    assert metadata["epochs"] == 8 and metadata["warm_started_from"] == previous.metadata["weights"]
    messages = _messages(caplog)
    assert [m.split(":")[0] for m in messages if " epoch " in m] == ["kg epoch 1/2", "kg epoch 2/2"]
    summary = [m for m in messages if m.startswith(f"kg: {model}, 2 epochs in ")]
    assert len(summary) == 1
    assert summary[0].endswith(
        "warm start from kg.safetensors: 26 of 27 entities and 2 of 2 relations carried over"
    )


@pytest.mark.parametrize("model", KG_MODELS)
def test_one_warm_epoch_keeps_the_carried_entities_near_their_previous_vectors(
    model, planted_graph, tmp_path
):
    """The training loop re-initialises the model before it trains; the previous vectors must survive
    that (pykeen's own PretrainedInitializer lets torch overwrite them, pykeen issue #640)."""
    triples, items, _ = planted_graph
    config = CONFIG.replace(model=model, warm_start_epochs=1)
    train_kg_embeddings(triples, items, tmp_path / "warm" / "kg.parquet", config)
    previous = GraphRepresentations.load(tmp_path / "warm" / "kg.safetensors")
    grown = _with_new_item(triples)
    train_kg_embeddings(grown, items, tmp_path / "warm" / "kg.parquet", config)
    train_kg_embeddings(grown, items, tmp_path / "cold" / "kg.parquet", config.replace(epochs=1))

    def distance_to_previous(folder: str) -> float:
        trained = GraphRepresentations.load(tmp_path / folder / "kg.safetensors")
        rows = [trained.entities.index(label) for label in previous.entities]
        moved = trained.entity_vectors[0][rows] - previous.entity_vectors[0]
        return float(np.linalg.norm(moved.reshape(len(rows), -1), axis=1).mean())

    assert distance_to_previous("warm") < 0.1 * distance_to_previous("cold")


def test_a_warm_started_item_joins_its_planted_cluster(planted_graph, tmp_path):
    triples, items, _ = planted_graph
    out = tmp_path / "kg.parquet"
    config = KGConfig(dimension=16, epochs=40, warm_start_epochs=10, batch_size=16, seed=0)
    train_kg_embeddings(triples, items, out, config)
    train_kg_embeddings(_with_new_item(triples), [*items, "a-item-8"], out, config)
    table = read_embeddings(out)

    assert table.metadata["start"] == "warm"
    distances = np.linalg.norm(table.vectors[:-1] - table.vectors[-1], axis=1)
    nearest = [items[i] for i in np.argsort(distances)[:4]]
    assert all(item.startswith("a-") for item in nearest), nearest


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (
            {"dimension": 16},
            "previous representations ignored, trained with other settings: dimension 8 -> 16",
        ),
        (
            {"model": "DistMult"},
            "previous representations ignored, trained with other settings: model 'TransE' -> 'DistMult'",
        ),
        (
            {"learning_rate": 0.02},
            "previous representations ignored, trained with other settings: learning_rate 0.01 -> 0.02",
        ),
        ({"warm_start_epochs": 0}, "warm start off (warm_start_epochs: 0)"),
    ],
)
def test_other_settings_train_from_scratch(change, reason, planted_graph, tmp_path, initial_tensors, caplog):
    triples, items, _ = planted_graph
    out = tmp_path / "kg.parquet"
    train_kg_embeddings(triples, items, out, CONFIG)

    caplog.clear()  # only what the call under test logs

    with caplog.at_level(logging.INFO, logger="m6rec"):
        train_kg_embeddings(_with_new_item(triples), items, out, CONFIG.replace(**change))

    assert initial_tensors == []
    metadata = read_embeddings(out).metadata
    assert (metadata["start"], metadata["epochs_trained"], metadata["carried_entities"]) == ("cold", 8, 0)
    assert [m for m in _messages(caplog) if m.startswith("kg: ")][-1].endswith(f"from scratch: {reason}")


def test_same_triples_with_other_epochs_train_from_scratch(planted_graph, tmp_path, initial_tensors, caplog):
    triples, items, _ = planted_graph
    out = tmp_path / "kg.parquet"
    train_kg_embeddings(triples, items, out, CONFIG)
    caplog.clear()  # only what the call under test logs
    with caplog.at_level(logging.INFO, logger="m6rec"):
        train_kg_embeddings(triples, items, out, CONFIG.replace(epochs=9))

    assert initial_tensors == [] and read_embeddings(out).metadata["epochs_trained"] == 9
    assert _messages(caplog)[-1].endswith("from scratch: same triples, other epochs")


def test_a_mostly_new_graph_trains_from_scratch(planted_graph, tmp_path, initial_tensors, caplog):
    triples, items, _ = planted_graph
    out = tmp_path / "kg.parquet"
    train_kg_embeddings(triples, items, out, CONFIG)
    renamed = triples.replace({"head": {item: f"other-{item}" for item in items[1:]}})

    caplog.clear()  # only what the call under test logs

    with caplog.at_level(logging.INFO, logger="m6rec"):
        train_kg_embeddings(renamed, items, out, CONFIG)

    assert initial_tensors == []
    assert _messages(caplog)[-1].endswith("from scratch: only 11 of 26 entities known from the previous run")


def test_an_unreadable_previous_file_is_ignored(planted_graph, tmp_path, initial_tensors, caplog):
    triples, items, _ = planted_graph
    out = tmp_path / "kg.parquet"
    train_kg_embeddings(triples, items, out, CONFIG)
    representations_path(out).write_bytes(b"not a safetensors file")

    caplog.clear()  # only what the call under test logs

    with caplog.at_level(logging.INFO, logger="m6rec"):
        train_kg_embeddings(_with_new_item(triples), items, out, CONFIG)

    assert initial_tensors == [] and read_embeddings(out).metadata["start"] == "cold"
    assert "from scratch: previous kg.safetensors unreadable (" in _messages(caplog)[-1]
    GraphRepresentations.load(representations_path(out))  # rewritten whole


def test_the_representations_file_is_safetensors_not_a_pickle(planted_graph, tmp_path):
    triples, items, _ = planted_graph
    out = tmp_path / "kg.parquet"
    train_kg_embeddings(triples, items, out, CONFIG.replace(model="TransH"))
    path = representations_path(out)
    raw = path.read_bytes()

    assert sorted(p.name for p in tmp_path.iterdir()) == ["kg.parquet", "kg.safetensors"]
    assert not zipfile.is_zipfile(path)  # torch.save's format
    with pytest.raises(pickle.UnpicklingError):
        pickle.loads(raw)
    (header_length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + header_length])
    assert {name: header[name]["shape"] for name in header if name != "__metadata__"} == {
        "entity.0": [26, 8],
        "relation.0": [2, 8],
        "relation.1": [2, 8],
    }
    assert json.loads(header["__metadata__"]["relations"]) == ["in_genre", "tagged"]

    loaded = GraphRepresentations.load(path)
    loaded.save(tmp_path / "copy.safetensors")
    again = GraphRepresentations.load(tmp_path / "copy.safetensors")
    assert (again.entities, again.relations, again.metadata) == (
        loaded.entities,
        loaded.relations,
        loaded.metadata,
    )
    for first, second in zip(
        loaded.entity_vectors + loaded.relation_vectors,
        again.entity_vectors + again.relation_vectors,
        strict=True,
    ):
        np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(loaded.item_vectors(items)[0], read_embeddings(out).vectors)


def test_warm_start_epochs_default_to_a_tenth_of_the_epochs():
    assert KGSettings().warm_start_epoch_count() == 10
    assert KGSettings(epochs=9).warm_start_epoch_count() == 1
    assert KGSettings(epochs=40, warm_start_epochs=7).warm_start_epoch_count() == 7
    assert KGSettings(warm_start_epochs=0).warm_start_epoch_count() == 0
