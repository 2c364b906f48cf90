"""Knowledge-graph embeddings: planted clusters, every model by name, attribute relations, the KGCN graph."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.kg import (
    NOT_IN_GRAPH,
    KGConfig,
    build_kg_triples,
    categorical_item_columns,
    train_kg_embeddings,
)
from m6rec.config import KG_MODELS
from m6rec.embeddings.store import read_embeddings
from m6rec.errors import ConfigError, DataError

KGCN_MUSIC = Path("../shared/data/kgcn-music")
TRIPLE_COLUMNS = ["head", "relation", "tail"]


@pytest.fixture(scope="module")
def kgcn_graph() -> tuple[pd.DataFrame, list[str]]:
    """KGCN's music graph with mapped entities written as Last.FM artist IDs, others as ``entity:<id>``."""
    if not KGCN_MUSIC.exists():
        pytest.skip("../shared/data/kgcn-music is not available")
    graph = pd.read_csv(KGCN_MUSIC / "kg.txt", sep="\t", header=None, names=TRIPLE_COLUMNS, dtype=str)
    mapping = pd.read_csv(
        KGCN_MUSIC / "item_index2entity_id.txt", sep="\t", header=None, names=["artist", "entity"], dtype=str
    ).drop_duplicates("entity")
    artist_of_entity = dict(zip(mapping["entity"], mapping["artist"], strict=True))
    for end in ("head", "tail"):
        graph[end] = [artist_of_entity.get(entity, f"entity:{entity}") for entity in graph[end]]
    return graph, mapping["artist"].tolist()


def _cluster_separation(vectors: np.ndarray, cluster: np.ndarray) -> tuple[float, float]:
    """Mean within-cluster over mean across-cluster distance, and the share of same-cluster nearest items."""
    distances = np.linalg.norm(vectors[:, None, :] - vectors[None, :, :], axis=-1)
    same = cluster[:, None] == cluster[None, :]
    ratio = distances[same & ~np.eye(len(cluster), dtype=bool)].mean() / distances[~same].mean()
    np.fill_diagonal(distances, np.inf)
    return float(ratio), float((cluster[distances.argmin(axis=1)] == cluster).mean())


def test_items_of_a_planted_cluster_embed_together(planted_graph, tmp_path):
    triples, items, cluster = planted_graph
    config = KGConfig(model="TransE", dimension=16, epochs=40, batch_size=16, seed=0)
    report = train_kg_embeddings(triples, items, tmp_path / "kg.parquet", config)
    table = read_embeddings(tmp_path / "kg.parquet")

    assert (report.total, report.computed, report.failed) == (16, 16, 0)
    ratio, nearest_in_cluster = _cluster_separation(table.vectors, cluster)
    assert ratio < 0.9
    assert nearest_in_cluster == 1.0
    train_kg_embeddings(triples, items, tmp_path / "one-epoch.parquet", config.replace(epochs=1))
    barely_trained, _ = _cluster_separation(read_embeddings(tmp_path / "one-epoch.parquet").vectors, cluster)
    assert barely_trained > ratio


def _train(triples, items, path: Path, **settings) -> Path:
    defaults = {"dimension": 8, "epochs": 2, "batch_size": 32, "seed": 0}
    train_kg_embeddings(triples, items, path, KGConfig(**{**defaults, **settings}))
    return path


@pytest.mark.parametrize("model", KG_MODELS)
def test_every_model_trains_and_exports_one_row_per_item(model, planted_graph, tmp_path):
    triples, items, _ = planted_graph
    table = read_embeddings(_train(triples, [*items, "stranger"], tmp_path / "kg.parquet", model=model))

    assert list(table.keys) == [*items, "stranger"]
    assert table.dimension == (16 if model == "RotatE" else 8)  # RotatE: real then imaginary parts
    assert table.valid.tolist() == [True] * len(items) + [False]
    assert table.problems[-1] == NOT_IN_GRAPH
    assert np.isfinite(table.vectors).all() and np.abs(table.vectors[:-1]).sum(axis=1).min() > 0
    metadata = table.metadata
    assert metadata["encoder"] == f"pykeen:{model}" and metadata["weights"].startswith("trained:")
    assert metadata["pretrained"] is False and metadata["model"] == model and metadata["epochs"] == 2
    assert (metadata["n_triples"], metadata["n_entities"]) == (80, 16 + 8 + 2)
    assert np.isfinite(metadata["final_loss"])


def test_model_names_are_checked_and_normalised():
    with pytest.raises(
        ConfigError,
        match=r"^model: unknown KG model; allowed: TransE, TransH, RotatE, DistMult \(got 'ComplExx'\)$",
    ):
        KGConfig(model="ComplExx")
    assert KGConfig(model="rotate").model == "RotatE"
    for bad in ({"dimension": 0}, {"epochs": -1}, {"batch_size": 2.5}, {"learning_rate": 0.0}):
        with pytest.raises(ConfigError, match=f"^{next(iter(bad))}: "):
            KGConfig(**bad)


def test_attribute_relations_come_from_short_categorical_item_columns():
    items = pd.DataFrame(
        {
            "item_id": ["1", "2", "3", "4", "5", "6"],
            "title": ["Alpha", "Beta", "Gamma", "Delta", "Epsilon", "Zeta"],
            "genres": ["Rock|Pop", "Pop", "Jazz|Rock", "Jazz", "Pop|Jazz", None],
            "category": ["music", "music", "film", "film", "music", "film"],
            "brand": ["b1", "b2", "b3", "b4", "b5", "b6"],
            "description": [
                f"A long free-text description of item number {i}, written out." for i in range(6)
            ],
            "image_path": ["images/1.png", "images/2.png", "images/1.png", "images/2.png", "", None],
            "price": [1.0, 2.0, 1.0, 2.0, 1.0, 2.0],
        }
    )
    assert categorical_item_columns(items) == ["genres", "category"]
    kg = pd.DataFrame({"head": ["1", "2"], "relation": ["similar_to", "similar_to"], "tail": ["2", "1"]})
    triples = build_kg_triples(kg, items)

    assert list(triples.columns) == TRIPLE_COLUMNS
    assert set(map(tuple, triples.to_numpy())) == {
        ("1", "similar_to", "2"),
        ("2", "similar_to", "1"),
        ("1", "has_genres", "genres:Rock"),
        ("1", "has_genres", "genres:Pop"),
        ("2", "has_genres", "genres:Pop"),
        ("3", "has_genres", "genres:Jazz"),
        ("3", "has_genres", "genres:Rock"),
        ("4", "has_genres", "genres:Jazz"),
        ("5", "has_genres", "genres:Pop"),
        ("5", "has_genres", "genres:Jazz"),
        *(
            (item, "has_category", f"category:{value}")
            for item, value in zip(items.item_id, items.category, strict=True)
        ),
    }
    assert len(triples) == 16

    tags = ["calm, piano", "calm", "loud, drums", "calm, drums", "piano", "loud"]
    listed = pd.DataFrame({"item_id": ["1", "2", "3", "4", "5", "6"], "tags": tags})
    assert set(build_kg_triples(None, listed)["tail"]) == {
        "tags:calm",
        "tags:piano",
        "tags:loud",
        "tags:drums",
    }
    chosen = build_kg_triples(None, items, attribute_columns=["brand"])
    assert sorted(chosen["tail"]) == [f"brand:b{i}" for i in range(1, 7)]
    with pytest.raises(ConfigError, match="'colour' is not in items"):
        build_kg_triples(None, items, attribute_columns=["colour"])
    assert build_kg_triples(None, None).empty


def test_kgcn_music_graph_embeds_its_artists(kgcn_graph, tmp_path):
    graph, artists = kgcn_graph
    assert len(graph) == 15_518
    out = tmp_path / "kg.parquet"
    config = KGConfig(dimension=16, epochs=1, batch_size=4096, seed=0)
    report = train_kg_embeddings(graph, artists, out, config)
    table = read_embeddings(out)

    assert (report.total, report.computed, report.failed) == (3846, 3846, 0)
    assert table.valid.all() and table.dimension == 16 and np.isfinite(table.vectors).all()
    assert table.metadata["n_triples"] == 15_518 and table.metadata["n_relations"] == 60
    assert table.metadata["n_entities"] == len(set(graph["head"]) | set(graph["tail"]))

    shuffled = graph.sample(frac=1.0, random_state=1)
    again = train_kg_embeddings(shuffled, artists, out, config)
    assert (again.computed, again.reused) == (0, 3846)
    assert read_embeddings(out).metadata["file_hash"] == table.metadata["file_hash"]


def test_unchanged_inputs_reuse_the_file_and_any_change_retrains(planted_graph, tmp_path, capfd):
    triples, items, _ = planted_graph
    out = tmp_path / "kg.parquet"
    config = KGConfig(dimension=8, epochs=2, batch_size=32)
    first = train_kg_embeddings(triples, items, out, config)
    created = read_embeddings(out).metadata["created_at"], out.stat().st_mtime_ns
    second = train_kg_embeddings(triples, items, out, config)

    assert (first.computed, second.computed, second.reused) == (16, 0, 16)
    assert (read_embeddings(out).metadata["created_at"], out.stat().st_mtime_ns) == created
    assert (
        train_kg_embeddings(triples, items, out, KGConfig(dimension=8, epochs=3, batch_size=32)).computed
        == 16
    )
    assert train_kg_embeddings(triples.iloc[1:], items, out, config).computed == 16
    assert train_kg_embeddings(triples, [*items, "new"], out, config).computed == 17
    reused_gap = train_kg_embeddings(triples, [*items, "new"], out, config)
    assert (reused_gap.computed, reused_gap.failed) == (0, 1)
    assert reused_gap.problems == [{"modality": "kg", "item_id": "new", "problem": NOT_IN_GRAPH}]
    assert "epoch" not in capfd.readouterr().err  # no progress bars when stderr is not a terminal


def test_unchanged_graph_and_settings_train_nothing_and_leave_the_file_as_it_is(
    planted_graph, tmp_path, monkeypatch
):
    triples, items, _ = planted_graph
    out = tmp_path / "kg.parquet"
    config = KGConfig(dimension=8, epochs=2, batch_size=32)
    train_kg_embeddings(triples, items, out, config)
    stat = out.stat()
    written = (stat.st_ino, stat.st_mtime_ns, out.read_bytes())

    def no_training(graph, config):
        raise AssertionError("trained although nothing changed")

    monkeypatch.setattr("features.kg._train", no_training)
    shuffled = triples.sample(frac=1.0, random_state=2)  # the same graph in another order
    report = train_kg_embeddings(shuffled, items, out, config.replace(force_cpu=True))

    assert (report.total, report.computed, report.reused, report.failed) == (16, 0, 16, 0)
    stat = out.stat()
    assert (stat.st_ino, stat.st_mtime_ns, out.read_bytes()) == written


def test_same_seed_same_vectors_other_seed_other_vectors(planted_graph, tmp_path):
    triples, items, _ = planted_graph
    first = read_embeddings(_train(triples, items, tmp_path / "a.parquet", seed=3)).vectors
    second = read_embeddings(_train(triples, items, tmp_path / "b.parquet", seed=3)).vectors
    other = read_embeddings(_train(triples, items, tmp_path / "c.parquet", seed=4)).vectors
    np.testing.assert_array_equal(first, second)
    assert not np.allclose(first, other)


def test_a_graph_without_triples_is_a_data_error(tmp_path):
    empty = pd.DataFrame({"head": [" "], "relation": ["r"], "tail": ["t"]})
    with pytest.raises(DataError, match="no knowledge-graph triples"):
        train_kg_embeddings(empty, ["a"], tmp_path / "kg.parquet", KGConfig(epochs=1))
