"""FAISS vector index: exact search equals brute force, approximate search is tuned until it recalls it on
queries it has not indexed, files round-trip with the tuned parameters."""

from __future__ import annotations

import json
import logging

import faiss
import numpy as np
import pytest

from m6rec.candidates.faiss_index import (
    TARGET_RECALL,
    VectorIndex,
    build_index,
    default_factory,
    faiss_gpu_available,
    normalise_rows,
)
from m6rec.errors import ConfigError

N_CLUSTERS, PER_CLUSTER, DIMENSION = 16, 100, 16
HNSW_FACTORY = "HNSW32"


@pytest.fixture(scope="module")
def clustered_vectors() -> tuple[np.ndarray, np.ndarray]:
    """16 tight clusters around orthogonal-ish random centres; returns (vectors, cluster of each)."""
    rng = np.random.default_rng(3)
    centres = rng.standard_normal((N_CLUSTERS, DIMENSION))
    clusters = np.repeat(np.arange(N_CLUSTERS), PER_CLUSTER)
    vectors = centres[clusters] + 0.15 * rng.standard_normal((len(clusters), DIMENSION))
    return vectors.astype(np.float32), clusters


def brute_force_top_k(vectors: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Cosine top-k by numpy: (ids, scores) best first."""
    scores = normalise_rows(queries).astype(np.float64) @ normalise_rows(vectors).T.astype(np.float64)
    ids = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return ids, np.take_along_axis(scores, ids, axis=1)


def recall(found: np.ndarray, expected: np.ndarray) -> float:
    return float(np.mean([len(np.intersect1d(f, e)) / len(e) for f, e in zip(found, expected, strict=True)]))


@pytest.fixture(scope="module")
def overlapping_clusters() -> tuple[np.ndarray, np.ndarray]:
    """6000 vectors of 100 overlapping Gaussian clusters (dimension 16) and 300 fresh queries drawn the same
    way, none of them indexed: one IVF list or a narrow HNSW search misses many of their neighbours."""
    rng = np.random.default_rng(1)
    centres = rng.standard_normal((100, DIMENSION))

    def draw(count: int) -> np.ndarray:
        noise = 0.8 * rng.standard_normal((count, DIMENSION))
        return (centres[rng.integers(100, size=count)] + noise).astype(np.float32)

    return draw(6000), draw(300)


def held_out_recall(index: VectorIndex, vectors: np.ndarray, queries: np.ndarray, k: int, **search) -> float:
    expected, _ = brute_force_top_k(vectors, queries, k)
    return recall(index.search(queries, k, **search)[0], expected)


def test_exact_index_equals_brute_force_top_k():
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((500, 12)).astype(np.float32) * rng.uniform(0.5, 3.0, (500, 1)).astype(
        np.float32
    )
    queries = rng.standard_normal((40, 12)).astype(np.float32)

    index = build_index(vectors)
    ids, scores = index.search(queries, 15)

    expected_ids, expected_scores = brute_force_top_k(vectors, queries, 15)
    assert index.factory == "Flat" and index.build_recall == 1.0
    np.testing.assert_array_equal(ids, expected_ids)
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-5, atol=1e-6)
    assert ids.dtype == np.int64 and scores.dtype == np.float32


@pytest.mark.parametrize("factory", ["HNSW32", "IVF16,Flat"])
def test_approximate_indexes_recall_the_exact_neighbours_on_clustered_data(factory, clustered_vectors):
    vectors, clusters = clustered_vectors
    queries = vectors[::7]

    index = build_index(vectors, factory=factory, seed=0)
    found, _ = index.search(queries, 10)

    expected, _ = brute_force_top_k(vectors, queries, 10)
    assert np.all(clusters[expected] == clusters[::7][:, None]), (
        "the known structure: neighbours share a cluster"
    )
    assert recall(found, expected) >= 0.9
    assert np.all(clusters[found] == clusters[::7][:, None])
    assert 0.9 <= index.build_recall <= 1.0


def test_build_recall_of_a_fixed_nprobe_is_measured_on_held_out_items_and_logged(
    overlapping_clusters, caplog
):
    vectors, queries = overlapping_clusters

    with caplog.at_level(logging.INFO, logger="m6rec"):
        index = build_index(vectors, factory="IVF64,Flat", nprobe=1, k=20, recall_sample=200)

    assert index.nprobe == 1 and index.recall_k == 20 and index.recall_queries == "held-out items"
    assert index.build_recall < TARGET_RECALL, "one probe of 64 lists misses neighbours in other lists"
    assert abs(index.build_recall - held_out_recall(index, vectors, queries, 20)) < 0.05
    assert f"{index.build_recall:.3f}" in caplog.text and "IVF64,Flat" in caplog.text
    assert "nprobe 1" in caplog.text and "not reached" in caplog.text
    assert index.n_vectors == len(vectors), "the held-out items are indexed after the measurement"
    ids, _ = index.search(vectors[:5], 1)
    assert ids[:, 0].tolist() == [0, 1, 2, 3, 4], "every item is found under its own row"


def test_the_automatic_index_is_tuned_until_held_out_queries_meet_the_target(overlapping_clusters, caplog):
    vectors, queries = overlapping_clusters

    with caplog.at_level(logging.INFO, logger="m6rec"):
        index = build_index(vectors, exact_below=1000, k=50)

    assert index.factory == "IVF153,Flat" and index.recall_k == 50 and index.target_recall == TARGET_RECALL
    assert index.build_recall >= TARGET_RECALL
    assert held_out_recall(index, vectors, queries, 50) >= TARGET_RECALL
    assert index.nprobe > 1 and faiss.extract_index_ivf(index.index).nprobe == index.nprobe
    untuned = VectorIndex(index.index, index.factory, index.dimension, index.build_recall, nprobe=1)
    assert held_out_recall(untuned, vectors, queries, 50) < 0.8, "the known answer: one list is not enough"
    built = [record.getMessage() for record in caplog.records if "FAISS index" in record.getMessage()]
    assert len(built) == 1 and f"nprobe {index.nprobe} " in built[0] and "recall@50" in built[0]


def test_a_configured_hnsw_index_raises_ef_search_until_held_out_queries_meet_the_target(
    overlapping_clusters,
):
    vectors, queries = overlapping_clusters

    index = build_index(vectors, factory="HNSW4", k=50)

    assert index.build_recall >= TARGET_RECALL and index.ef_search > 50
    assert held_out_recall(index, vectors, queries, 50) >= TARGET_RECALL
    assert held_out_recall(index, vectors, queries, 50, breadth=50) < 0.92, "a breadth of k falls short"
    assert index.n_vectors == len(vectors)
    ids, _ = index.search(vectors[:5], 1)
    assert ids[:, 0].tolist() == [0, 1, 2, 3, 4], "held-out items keep their row ids"


def test_given_query_vectors_measure_the_recall_those_queries_get(overlapping_clusters):
    vectors, queries = overlapping_clusters

    index = build_index(vectors, factory="IVF64,Flat", nprobe=2, k=30, queries=queries)

    assert index.recall_queries == "query vectors"
    assert index.build_recall == pytest.approx(held_out_recall(index, vectors, queries, 30), abs=1e-9)


def test_the_automatic_choice_is_exact_where_nothing_cheaper_meets_the_target(caplog):
    """Uniform random directions in 32 dimensions have no cluster an inverted list could follow."""
    vectors = np.random.default_rng(2).standard_normal((4000, 32)).astype(np.float32)

    with caplog.at_level(logging.INFO, logger="m6rec"):
        index = build_index(vectors, exact_below=1000, k=50)

    assert index.factory == "Flat" and index.build_recall == 1.0
    assert isinstance(faiss.downcast_index(index.index), faiss.IndexFlatIP)
    assert "exact search, since IVF102,Flat reached recall@50" in caplog.text


def test_a_search_deeper_than_the_tuned_depth_raises_nprobe_in_proportion(overlapping_clusters):
    vectors, queries = overlapping_clusters
    index = build_index(vectors, exact_below=1000, k=20)
    tuned = index.nprobe

    deep = held_out_recall(index, vectors, queries, 60)

    assert faiss.extract_index_ivf(index.index).nprobe == min(3 * tuned, 153)
    assert deep >= TARGET_RECALL
    index.search(queries, 20)
    assert faiss.extract_index_ivf(index.index).nprobe == tuned


def test_search_pads_with_minus_one_when_k_exceeds_the_catalogue():
    vectors = np.eye(4, dtype=np.float32)

    ids, scores = build_index(vectors).search(vectors[:2], 7)

    assert ids.shape == scores.shape == (2, 7)
    np.testing.assert_array_equal(ids[:, 4:], -1)
    np.testing.assert_array_equal(scores[:, 4:], -np.inf)
    assert ids[0, 0] == 0 and ids[1, 0] == 1
    assert sorted(ids[0, :4]) == [0, 1, 2, 3]


def test_hnsw_also_pads_beyond_the_catalogue(clustered_vectors):
    vectors, _ = clustered_vectors
    small = vectors[:30]

    ids, scores = build_index(small, factory=HNSW_FACTORY).search(small[:3], 40)

    assert np.all(ids[:, :30] >= 0) and np.all(ids[:, 30:] == -1)
    assert np.all(np.isneginf(scores[:, 30:]))
    assert all(sorted(row[:30]) == list(range(30)) for row in ids)


def test_vectors_are_normalised_and_zero_rows_stay_zero():
    vectors = np.array([[3.0, 0.0], [0.0, 0.5], [0.0, 0.0]], dtype=np.float32)
    index = build_index(vectors)

    ids, scores = index.search(np.array([[10.0, 0.0], [0.0, 0.0]], dtype=np.float32), 3)

    assert ids[0].tolist()[0] == 0 and scores[0, 0] == pytest.approx(1.0)
    np.testing.assert_allclose(scores[0, 1:], [0.0, 0.0], atol=1e-6)  # FAISS float32 inner products
    np.testing.assert_allclose(scores[1], [0.0, 0.0, 0.0], atol=1e-6)
    np.testing.assert_array_equal(normalise_rows(vectors)[2], [0.0, 0.0])


@pytest.mark.parametrize("factory", ["HNSW16", "IVF8,Flat", "Flat", None])
def test_save_and_load_round_trip_search_results_exactly(factory, clustered_vectors, tmp_path):
    vectors, _ = clustered_vectors
    index = build_index(vectors, factory=factory, nprobe=2 if factory else None, exact_below=1000)
    path = tmp_path / "index.faiss"

    index.save(path)
    loaded = VectorIndex.load(path)

    sidecar = json.loads((tmp_path / "index.json").read_text())
    assert sidecar["factory"] == index.factory and sidecar["dimension"] == DIMENSION
    assert sidecar["build_recall"] == index.build_recall == loaded.build_recall
    assert (loaded.nprobe, loaded.ef_search, loaded.recall_k) == (
        index.nprobe,
        index.ef_search,
        index.recall_k,
    )
    for before, after in zip(index.search(vectors[:50], 12), loaded.search(vectors[:50], 12), strict=True):
        np.testing.assert_array_equal(before, after)


def test_a_loaded_index_keeps_its_tuned_parameters(overlapping_clusters, tmp_path):
    vectors, queries = overlapping_clusters
    ivf = build_index(vectors, exact_below=1000, k=50)
    hnsw = build_index(vectors, factory="HNSW4", k=50)
    ivf.save(tmp_path / "ivf.faiss")
    hnsw.save(tmp_path / "hnsw.faiss")

    loaded_ivf = VectorIndex.load(tmp_path / "ivf.faiss")
    loaded_hnsw = VectorIndex.load(tmp_path / "hnsw.faiss")

    assert (
        loaded_ivf.nprobe == ivf.nprobe > 1 and faiss.extract_index_ivf(loaded_ivf.index).nprobe == ivf.nprobe
    )
    assert loaded_hnsw.ef_search == hnsw.ef_search > 50
    sidecar = json.loads((tmp_path / "hnsw.json").read_text())
    assert sidecar["ef_search"] == hnsw.ef_search and sidecar["recall_k"] == 50
    assert sidecar["target_recall"] == TARGET_RECALL and sidecar["recall_queries"] == "held-out items"
    for built, loaded in ((ivf, loaded_ivf), (hnsw, loaded_hnsw)):
        np.testing.assert_array_equal(built.search(queries, 50)[0], loaded.search(queries, 50)[0])
        assert held_out_recall(loaded, vectors, queries, 50) >= TARGET_RECALL


def test_factory_string_is_honoured(clustered_vectors):
    vectors, _ = clustered_vectors

    ivf = build_index(vectors, factory="IVF8,Flat", nprobe=3)
    hnsw = build_index(vectors, factory="HNSW16")

    inverted_lists = faiss.extract_index_ivf(ivf.index)
    assert inverted_lists.nlist == 8 and inverted_lists.nprobe == 3 and ivf.factory == "IVF8,Flat"
    assert inverted_lists.metric_type == faiss.METRIC_INNER_PRODUCT
    id_map = faiss.downcast_index(hnsw.index)
    assert isinstance(id_map, faiss.IndexIDMap), "held-out items are added later under their row ids"
    assert isinstance(faiss.downcast_index(id_map.index), faiss.IndexHNSWFlat)
    assert faiss.downcast_index(id_map.index).hnsw.nb_neighbors(1) == 16
    assert hnsw.n_vectors == ivf.n_vectors == len(vectors)


def test_the_catalogue_size_chooses_the_index():
    assert default_factory(49_999, 64) == "Flat"
    assert default_factory(50_000, 64) == "IVF894,Flat"
    assert default_factory(999_999, 64) == "IVF3999,Flat"
    assert default_factory(4_000_000, 64) == "IVF8000,Flat", "full vectors: IVF-PQ missed the target"
    assert default_factory(1000, 8, exact_below=50) == "IVF25,Flat", "at least 39 vectors per list"


def test_build_index_uses_an_inverted_file_from_exact_below(clustered_vectors):
    vectors, _ = clustered_vectors

    index = build_index(vectors, exact_below=len(vectors))

    assert index.factory == "IVF41,Flat" and index.build_recall >= TARGET_RECALL
    assert isinstance(faiss.downcast_index(index.index), faiss.IndexIVFFlat)


def test_an_unknown_factory_is_a_config_error():
    with pytest.raises(ConfigError, match="NoSuchIndex"):
        build_index(np.eye(3, dtype=np.float32), factory="NoSuchIndex")


def test_queries_of_the_wrong_dimension_are_rejected():
    with pytest.raises(ValueError, match="dimension"):
        build_index(np.eye(3, dtype=np.float32)).search(np.ones((1, 4), dtype=np.float32), 2)


@pytest.mark.skipif(faiss_gpu_available(), reason="checks the fallback of a FAISS build without GPU support")
def test_asking_for_a_gpu_without_one_warns_and_stays_on_the_cpu(caplog):
    with caplog.at_level(logging.WARNING, logger="m6rec"):
        index = build_index(np.eye(3, dtype=np.float32), use_gpu=True)

    assert index.gpu_index is None
    assert "GPU" in caplog.text
    assert index.search(np.eye(3, dtype=np.float32), 1)[0].ravel().tolist() == [0, 1, 2]


def test_with_a_fixed_breadth_a_shallow_hnsw_search_is_a_prefix_of_a_deep_one(clustered_vectors):
    vectors, _ = clustered_vectors
    index = build_index(vectors, factory="HNSW8")

    shallow_ids, shallow_scores = index.search(vectors[::5], 5, breadth=300)
    deep_ids, deep_scores = index.search(vectors[::5], 60, breadth=300)

    np.testing.assert_array_equal(shallow_ids, deep_ids[:, :5])
    np.testing.assert_array_equal(shallow_scores, deep_scores[:, :5])
