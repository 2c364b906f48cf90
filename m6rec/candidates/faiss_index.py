"""Cosine nearest-neighbour search over item vectors with FAISS, sized to the catalogue.

Vectors are L2-normalised on the way in (index and queries), so inner product is cosine similarity; a
row of zeros stays zero and scores 0 against everything. Small catalogues get an exact flat index,
medium ones HNSW, large ones IVF-PQ (whose lower recall, logged at build, is the price of its small
memory); a FAISS factory string from the config overrides the choice.
"""

from __future__ import annotations

import functools
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from m6rec.errors import ConfigError
from m6rec.io import atomic_path, write_json
from m6rec.progress import progress

log = logging.getLogger("m6rec")

EXACT_FACTORY = "Flat"
HNSW_FACTORY = "HNSW32"
HNSW_BELOW = 1_000_000
HNSW_MIN_EF_SEARCH = 128
# FAISS GPU indexes answer at most this many neighbours per query; deeper searches run on the CPU copy.
GPU_MAX_K = 2048
# Vectors added per FAISS call, so that indexing a large catalogue can report progress.
ADD_BATCH = 100_000


@functools.cache
def faiss_gpu_available() -> bool:
    """Whether this FAISS build has GPU support and sees at least one GPU."""
    import faiss

    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def default_factory(n_vectors: int, dimension: int, *, exact_below: int = 50_000) -> str:
    """The factory string chosen for a catalogue of ``n_vectors``: Flat, then HNSW32, then IVF-PQ."""
    if n_vectors < exact_below:
        return EXACT_FACTORY
    if n_vectors < HNSW_BELOW:
        return HNSW_FACTORY
    # "np": no polysemous training, which only serves polysemous search and takes most of the build time.
    return f"IVF{int(4 * math.sqrt(n_vectors))},PQ{_pq_subquantizers(dimension)}np"


def _pq_subquantizers(dimension: int) -> int:
    """The largest divisor of ``dimension`` that gives sub-vectors of at least 4 dimensions (at most 64)."""
    target = max(1, min(64, dimension // 4))
    return next(m for m in range(target, 0, -1) if dimension % m == 0)


def normalise_rows(vectors: np.ndarray) -> np.ndarray:
    """Contiguous float32 copy of ``vectors`` with every non-zero row scaled to unit L2 norm."""
    vectors = np.array(vectors, dtype=np.float32, order="C", ndmin=2)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    np.divide(vectors, norms, out=vectors, where=norms > 0)
    return vectors


@dataclass
class VectorIndex:
    """A built FAISS inner-product index over normalised vectors, ids being row positions of the input.

    ``build_recall`` is the recall@k of this index against exact search, measured at build time (1.0 for
    an exact index). ``gpu_index`` is a GPU copy used for searches when present.
    """

    index: object
    factory: str
    dimension: int
    build_recall: float
    nprobe: int | None = None
    gpu_index: object | None = None

    @property
    def n_vectors(self) -> int:
        return int(self.index.ntotal)

    def search(
        self, queries: np.ndarray, k: int, *, breadth: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` most similar vectors to each query, best first.

        ``breadth`` is how many candidates an HNSW search keeps while walking the graph (efSearch; at
        least ``max(128, k)``). With the same breadth, a shallower search returns a prefix of a deeper
        one, so callers that vary ``k`` keep results consistent by passing a fixed breadth.

        Returns ``(ids, scores)``: int64 row positions (-1 where there are fewer than ``k`` results,
        including ``k`` beyond the number of vectors) and float32 cosine scores (-inf there).
        """
        queries = normalise_rows(queries)
        if queries.shape[1] != self.dimension:
            raise ValueError(f"queries have dimension {queries.shape[1]}, the index {self.dimension}")
        ids = np.full((len(queries), k), -1, dtype=np.int64)
        scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        depth = min(k, self.n_vectors)
        if depth == 0 or len(queries) == 0:
            return ids, scores
        if self.gpu_index is not None and depth <= GPU_MAX_K:
            found_scores, found_ids = self.gpu_index.search(queries, depth)
        else:
            found_scores, found_ids = self.index.search(
                queries,
                depth,
                params=_search_parameters(self.index, max(HNSW_MIN_EF_SEARCH, depth, breadth or 0)),
            )
        found = found_ids >= 0
        ids[:, :depth] = np.where(found, found_ids, -1)
        scores[:, :depth] = np.where(found, found_scores, -np.inf)
        return ids, scores

    def save(self, path: Path) -> None:
        """Write the index with ``faiss.write_index`` (CPU form) and a JSON sidecar beside it."""
        import faiss

        path = Path(path)
        with atomic_path(path) as temporary:
            faiss.write_index(self.index, str(temporary))
        write_json(
            {
                "factory": self.factory,
                "dimension": self.dimension,
                "build_recall": self.build_recall,
                "nprobe": self.nprobe,
                "n_vectors": self.n_vectors,
            },
            sidecar_path(path),
        )

    @classmethod
    def load(cls, path: Path, *, use_gpu: bool | None = None) -> VectorIndex:
        """Read an index written by :meth:`save`; ``use_gpu`` as in :func:`build_index`."""
        import faiss

        path = Path(path)
        meta = json.loads(sidecar_path(path).read_text())
        index = faiss.read_index(str(path))
        if meta["nprobe"] is not None:
            _set_nprobe(index, meta["nprobe"])
        return cls(
            index=index,
            factory=meta["factory"],
            dimension=meta["dimension"],
            build_recall=meta["build_recall"],
            nprobe=meta["nprobe"],
            gpu_index=_to_gpu(index, use_gpu),
        )


def sidecar_path(path: Path) -> Path:
    """Where the JSON sidecar of the index file ``path`` lives (``index.faiss`` → ``index.json``)."""
    return Path(path).with_suffix(".json")


def build_index(
    vectors: np.ndarray,
    *,
    factory: str | None = None,
    exact_below: int = 50_000,
    use_gpu: bool | None = None,
    seed: int = 0,
    recall_sample: int = 200,
    nprobe: int | None = None,
) -> VectorIndex:
    """Index ``vectors`` [n, d] for cosine search; ids are their row positions.

    Args:
        vectors: item vectors; normalised here, zero rows stay zero.
        factory: a FAISS factory string (``"IVF1024,Flat"``, ``"HNSW32"``); None chooses by size: exact
            ``Flat`` below ``exact_below`` vectors, ``HNSW32`` below a million, ``IVF{4√n},PQ{m}`` above.
        exact_below: catalogue size from which the automatic choice stops being exact.
        use_gpu: True asks for a FAISS GPU copy (warns and stays on CPU when unavailable), False never,
            None uses one when this FAISS build has GPU support and sees a GPU.
        seed: seed of k-means training and of the recall sample.
        recall_sample: how many vectors serve as queries to measure recall against exact search.
        nprobe: inverted lists visited per query for IVF indexes (None: about √nlist).

    Returns:
        The :class:`VectorIndex`, with its measured ``build_recall`` (also logged).
    """
    import faiss

    vectors = normalise_rows(vectors)
    n_vectors, dimension = vectors.shape
    factory = factory or default_factory(n_vectors, dimension, exact_below=exact_below)
    try:
        index = faiss.index_factory(dimension, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as error:
        raise ConfigError(
            f"FAISS cannot build index {factory!r}: {str(error).strip().splitlines()[-1]}"
        ) from None
    _seed_training(index, seed)
    if not index.is_trained:
        index.train(vectors)
    add_starts = range(0, n_vectors, ADD_BATCH)
    for start in progress(add_starts, desc=f"building FAISS index {factory}", unit="batch"):
        index.add(vectors[start : start + ADD_BATCH])
    nprobe = _configure_nprobe(index, nprobe)
    built = VectorIndex(index=index, factory=factory, dimension=dimension, build_recall=1.0, nprobe=nprobe)
    if factory != EXACT_FACTORY:
        built.build_recall = _recall_against_exact(built, vectors, recall_sample, seed)
    # An exact index finds the exact neighbours by construction: its recall line says nothing new.
    log.log(
        logging.DEBUG if factory == EXACT_FACTORY else logging.INFO,
        "FAISS index %s over %d vectors of dimension %d: recall@%d vs exact %.3f",
        factory,
        n_vectors,
        dimension,
        min(10, n_vectors),
        built.build_recall,
    )
    built.gpu_index = _to_gpu(index, use_gpu)
    return built


def _recall_against_exact(index: VectorIndex, vectors: np.ndarray, sample: int, seed: int) -> float:
    """Mean share of the exact top-k (k = min(10, n)) that ``index`` finds, for sampled non-zero vectors."""
    import faiss

    candidates = np.flatnonzero(np.any(vectors != 0, axis=1))
    if len(candidates) == 0 or sample <= 0:
        return 1.0
    rng = np.random.default_rng(seed)
    queries = vectors[np.sort(rng.choice(candidates, size=min(sample, len(candidates)), replace=False))]
    k = min(10, len(vectors))
    exact = faiss.IndexFlatIP(vectors.shape[1])
    exact.add(vectors)
    _, expected = exact.search(queries, k)
    found, _ = index.search(queries, k)
    hits = [
        len(np.intersect1d(row_found[row_found >= 0], row_expected))
        for row_found, row_expected in zip(found, expected, strict=True)
    ]
    return float(np.sum(hits) / expected.size)


def _seed_training(index, seed: int) -> None:
    """Seed the k-means of IVF coarse quantisers and product quantisers, where the index has them."""
    import faiss

    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:
        return
    ivf.cp.seed = seed
    product_quantiser = getattr(faiss.downcast_index(ivf), "pq", None)
    if product_quantiser is not None:
        product_quantiser.cp.seed = seed


def _configure_nprobe(index, nprobe: int | None) -> int | None:
    """Set nprobe on an IVF index (default about √nlist) and return it; None for other indexes."""
    import faiss

    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:
        return None
    nprobe = nprobe or max(1, round(math.sqrt(ivf.nlist)))
    _set_nprobe(index, nprobe)
    return int(nprobe)


def _set_nprobe(index, nprobe: int) -> None:
    import faiss

    faiss.extract_index_ivf(index).nprobe = int(nprobe)


def _search_parameters(index, ef_search: int):
    """Search parameters giving an HNSW index the breadth ``ef_search``; None (the defaults) otherwise."""
    import faiss

    if isinstance(faiss.downcast_index(index), faiss.IndexHNSW):
        return faiss.SearchParametersHNSW(efSearch=int(ef_search))
    return None


def _to_gpu(index, use_gpu: bool | None):
    """A GPU copy of ``index`` when asked for (or, with None, when possible); None otherwise."""
    if use_gpu is False or (use_gpu is None and not faiss_gpu_available()):
        return None
    if not faiss_gpu_available():
        log.warning("FAISS GPU requested but this FAISS build has no GPU support or sees no GPU; using CPU")
        return None
    import faiss

    resources = faiss.StandardGpuResources()
    try:
        gpu_index = faiss.index_cpu_to_gpu(resources, 0, index)
    except RuntimeError as error:  # e.g. HNSW has no GPU implementation
        log.warning("FAISS index cannot move to the GPU (%s); using CPU", str(error).strip().splitlines()[-1])
        return None
    gpu_index.gpu_resources = resources  # the resources must outlive the index that uses them
    return gpu_index
