"""Cosine nearest-neighbour search over item vectors with FAISS, chosen and tuned for a recall target.

Vectors are L2-normalised on the way in (index and queries), so inner product is cosine similarity; a
row of zeros stays zero and scores 0 against everything.

Small catalogues (below ``exact_below``) get an exact flat index, larger ones an inverted file over the
full vectors (``IVF{n},Flat``); a FAISS factory string from the config overrides the choice. An
approximate index is tuned at build time for recall@k of at least ``target_recall`` (0.95) against exact
search, at the depth ``k`` its caller will search: on queries it has not indexed (a sample of the caller's
real query vectors, else items held out of the index while it is tuned and added afterwards), ``nprobe``
(IVF) or ``efSearch`` (HNSW) is raised step by step until the target is met. When the automatic choice
cannot meet it while scanning at most ``MAX_IVF_SCAN_SHARE`` of the vectors, the index is exact instead.
The chosen index, parameter and measured recall are logged once and kept in the JSON sidecar, so a loaded
index searches the same way.

On 100k clustered vectors of dimension 64 (``benchmarks/retrieval_recall.py``, ``docs/benchmarks.md``)
the tuned IVF-Flat reached recall@100 0.96 on held-out queries 9x to 13x faster than exact search (runs
on a shared 2-core machine); HNSW32 needed efSearch 300 for it and was then under 3x faster, and IVF-PQ
(the old choice from 1M vectors) reached 0.87, its quantised distances capping the recall.
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
from m6rec.vectors import unit_rows

log = logging.getLogger("m6rec")

EXACT_FACTORY = "Flat"
TARGET_RECALL = 0.95
RECALL_K = 100
RECALL_SAMPLE = 500
# FAISS k-means wants at least 39 training points per centroid; fewer lists than 4·√n keep it fed.
MIN_POINTS_PER_LIST = 39
# The automatic choice stays approximate only while it scans at most this share of the vectors: on two
# CPU cores IVF-Flat scanning half of them is about as slow as exact search, so this keeps it at least
# about twice as fast.
MAX_IVF_SCAN_SHARE = 0.25
# Each tuning step raises nprobe or efSearch by about this factor.
TUNING_STEP = 1.2
# HNSW indexes saved before efSearch was tuned searched with at least this breadth.
LEGACY_EF_SEARCH = 128
# The target counts as met where the measured mean recall minus this many standard errors reaches it
# (about 98% one-sided confidence), so that the sample's noise does not leave the true recall under it.
CONFIDENCE_Z = 2.0
# Inner products closer than this count as ties when recall is measured (float32 rounding).
SCORE_TOLERANCE = 1e-5
# FAISS GPU indexes answer at most this many neighbours per query; deeper searches run on the CPU copy.
GPU_MAX_K = 2048
# Vectors added per FAISS call, so that indexing a large catalogue can report progress.
ADD_BATCH = 100_000
# Vectors compared at once when the exact neighbours of the recall queries are computed.
EXACT_BATCH = 100_000


@functools.cache
def faiss_gpu_available() -> bool:
    """Whether this FAISS build has GPU support and sees at least one GPU."""
    import faiss

    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def default_factory(n_vectors: int, dimension: int, *, exact_below: int = 50_000) -> str:
    """The factory string chosen for a catalogue of ``n_vectors``: ``Flat``, else ``IVF{nlist},Flat``.

    ``nlist`` is about 4·√n, fewer where the lists would get under 39 vectors each (k-means needs them).
    """
    if n_vectors < exact_below:
        return EXACT_FACTORY
    nlist = max(1, min(int(4 * math.sqrt(n_vectors)), n_vectors // MIN_POINTS_PER_LIST))
    return f"IVF{nlist},Flat"


def normalise_rows(vectors: np.ndarray) -> np.ndarray:
    """Contiguous float32 ``vectors`` with every non-zero row scaled to unit L2 norm: a copy, unless
    ``vectors`` already is such an array (a million normalised 384-d profiles are 1.5 GB); read-only use."""
    return unit_rows(vectors)[0]


@dataclass
class VectorIndex:
    """A built FAISS inner-product index over normalised vectors, ids being row positions of the input.

    ``build_recall`` is the recall@``recall_k`` against exact search measured at build time on queries the
    index had not seen (1.0 for an exact index); ``nprobe`` (IVF) and ``ef_search`` (HNSW) are the search
    parameters tuned for it, for searches up to ``recall_k`` deep (deeper ones raise them in proportion).
    ``gpu_index`` is a GPU copy used for searches when present.
    """

    index: object
    factory: str
    dimension: int
    build_recall: float
    nprobe: int | None = None
    ef_search: int | None = None
    recall_k: int | None = None
    target_recall: float | None = None
    recall_queries: str | None = None
    gpu_index: object | None = None

    @property
    def n_vectors(self) -> int:
        return int(self.index.ntotal)

    def search(
        self, queries: np.ndarray, k: int, *, breadth: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` most similar vectors to each query, best first.

        ``breadth`` fixes how many candidates an HNSW search keeps while walking the graph (efSearch, at
        least ``k``) instead of the tuned one; with the same breadth, a shallower search returns a prefix
        of a deeper one. Each query's result depends on that query alone (up to float rounding), not on
        the others searched with it.

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
        nprobe = self._scaled(self.nprobe, depth, at_most=_nlist(self.index))
        if self.gpu_index is not None and depth <= GPU_MAX_K:
            if nprobe is not None and hasattr(self.gpu_index, "nprobe"):
                self.gpu_index.nprobe = nprobe
            found_scores, found_ids = self.gpu_index.search(queries, depth)
        else:
            if nprobe is not None:
                _set_nprobe(self.index, nprobe)
            ef_search = breadth if breadth is not None else self._scaled(self.ef_search, depth)
            params = _hnsw_parameters(self.index, max(depth, ef_search)) if ef_search is not None else None
            found_scores, found_ids = self.index.search(queries, depth, params=params)
        found = found_ids >= 0
        ids[:, :depth] = np.where(found, found_ids, -1)
        scores[:, :depth] = np.where(found, found_scores, -np.inf)
        return ids, scores

    def _scaled(self, parameter: int | None, depth: int, *, at_most: int | None = None) -> int | None:
        """A tuned search parameter, raised in proportion for a search deeper than ``recall_k``."""
        if parameter is None or not self.recall_k or depth <= self.recall_k:
            return parameter
        scaled = math.ceil(parameter * depth / self.recall_k)
        return scaled if at_most is None else min(scaled, at_most)

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
                "ef_search": self.ef_search,
                "recall_k": self.recall_k,
                "target_recall": self.target_recall,
                "recall_queries": self.recall_queries,
                "n_vectors": self.n_vectors,
            },
            sidecar_path(path),
        )

    @classmethod
    def load(cls, path: Path, *, use_gpu: bool | None = None) -> VectorIndex:
        """Read an index written by :meth:`save`, with its tuned parameters; ``use_gpu`` as in
        :func:`build_index`."""
        import faiss

        path = Path(path)
        meta = json.loads(sidecar_path(path).read_text())
        index = faiss.read_index(str(path))
        if meta["nprobe"] is not None:
            _set_nprobe(index, meta["nprobe"])
        ef_search = meta.get("ef_search")
        if ef_search is None and _hnsw_of(index) is not None:
            ef_search = LEGACY_EF_SEARCH
        return cls(
            index=index,
            factory=meta["factory"],
            dimension=meta["dimension"],
            build_recall=meta["build_recall"],
            nprobe=meta["nprobe"],
            ef_search=ef_search,
            recall_k=meta.get("recall_k"),
            target_recall=meta.get("target_recall"),
            recall_queries=meta.get("recall_queries"),
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
    k: int = RECALL_K,
    target_recall: float = TARGET_RECALL,
    queries: np.ndarray | None = None,
    recall_sample: int = RECALL_SAMPLE,
    nprobe: int | None = None,
    ef_search: int | None = None,
) -> VectorIndex:
    """Index ``vectors`` [n, d] for cosine search, tuned for recall@``k`` ≥ ``target_recall``.

    Args:
        vectors: item vectors; normalised here, zero rows stay zero. Ids are their row positions.
        factory: a FAISS factory string (``"IVF1024,Flat"``, ``"HNSW32"``), kept even when its tuning
            misses the target (then with a warning); None chooses: exact ``Flat`` below ``exact_below``
            vectors, else ``IVF{≈4√n},Flat``, or ``Flat`` where that cannot meet the target cheaply.
        exact_below: catalogue size from which the automatic choice stops being exact.
        use_gpu: True asks for a FAISS GPU copy (warns and stays on CPU when unavailable), False never,
            None uses one when this FAISS build has GPU support and sees a GPU.
        seed: seed of k-means training and of the recall sample.
        k: the search depth the recall is measured and tuned at (the caller's list length plus what it
            filters out).
        target_recall: the recall@k against exact search that the tuning must reach.
        queries: real query vectors [m, d] to measure recall on (a sample of ``recall_sample`` non-zero
            ones); None holds ``recall_sample`` items (at most a tenth of the catalogue) out of the index
            while it is tuned and adds them afterwards.
        recall_sample: how many queries measure recall.
        nprobe, ef_search: fixed search parameters for IVF or HNSW indexes instead of tuned ones: the
            recall is still measured and logged, and the index kept even below the target.

    Returns:
        The :class:`VectorIndex`, with its tuned parameter and measured ``build_recall`` (also logged).
    """
    import faiss

    vectors = normalise_rows(vectors)
    n_vectors, dimension = vectors.shape
    automatic = factory is None
    factory = factory or default_factory(n_vectors, dimension, exact_below=exact_below)
    if factory == EXACT_FACTORY:
        return _exact_index(vectors, use_gpu, reason=None)
    try:
        index = faiss.index_factory(dimension, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as error:
        raise ConfigError(
            f"FAISS cannot build index {factory!r}: {str(error).strip().splitlines()[-1]}"
        ) from None
    rng = np.random.default_rng(seed)
    probe, held_out, probe_kind = _recall_queries(vectors, queries, recall_sample, rng)
    _seed_training(index, seed)
    if not index.is_trained:
        index.train(vectors)
    if len(held_out) and _ivf_of(index) is None and not _has_ids(index):
        index = faiss.IndexIDMap(index)
    _add(index, vectors, factory, held_out)
    depth = min(k, n_vectors - len(held_out))
    fixed = nprobe if _ivf_of(index) is not None else ef_search
    tuning = _tune(
        index,
        probe,
        _exact_kth_scores(probe, vectors, depth, held_out),
        vectors,
        depth,
        target_recall,
        automatic=automatic,
        fixed=fixed,
    )
    if automatic and fixed is None and not tuning.met:
        reason = (
            f"{factory} reached recall@{depth} {tuning.recall:.3f} at most while scanning up to "
            f"{MAX_IVF_SCAN_SHARE:.0%} of the vectors (target {target_recall})"
        )
        return _exact_index(vectors, use_gpu, reason=reason)
    if len(held_out):
        index.add_with_ids(vectors[held_out], held_out)
    built = VectorIndex(
        index=index,
        factory=factory,
        dimension=dimension,
        build_recall=tuning.recall,
        nprobe=tuning.value if tuning.parameter == "nprobe" else None,
        ef_search=tuning.value if tuning.parameter == "efSearch" else None,
        recall_k=k,
        target_recall=target_recall,
        recall_queries=probe_kind,
    )
    log.log(
        logging.INFO if tuning.met else logging.WARNING,
        "FAISS index %s over %d vectors of dimension %d: %srecall@%d %.3f against exact search on %d %s "
        "(target %s%s)",
        factory,
        n_vectors,
        dimension,
        tuning.describe(),
        depth,
        tuning.recall,
        len(probe),
        built.recall_queries,
        target_recall,
        "" if tuning.met else ", not reached",
    )
    built.gpu_index = _to_gpu(index, use_gpu)
    return built


def _exact_index(vectors: np.ndarray, use_gpu: bool | None, *, reason: str | None) -> VectorIndex:
    """An exact flat index over ``vectors``; ``reason`` says why one replaces the automatic choice."""
    import faiss

    n_vectors, dimension = vectors.shape
    index = faiss.IndexFlatIP(dimension)
    _add(index, vectors, EXACT_FACTORY, np.empty(0, dtype=np.int64))
    # An exact index chosen by size finds the exact neighbours by construction: its line says nothing new.
    log.log(
        logging.DEBUG if reason is None else logging.INFO,
        "FAISS index %s over %d vectors of dimension %d: exact search%s",
        EXACT_FACTORY,
        n_vectors,
        dimension,
        "" if reason is None else f", since {reason}",
    )
    built = VectorIndex(index=index, factory=EXACT_FACTORY, dimension=dimension, build_recall=1.0)
    built.gpu_index = _to_gpu(index, use_gpu)
    return built


def _add(index, vectors: np.ndarray, factory: str, held_out: np.ndarray) -> None:
    """Add ``vectors`` in batches (with progress), all but the rows ``held_out``, under their row ids."""
    add_starts = range(0, len(vectors), ADD_BATCH)
    for start in progress(add_starts, desc=f"building FAISS index {factory}", unit="batch"):
        stop = min(start + ADD_BATCH, len(vectors))
        if len(held_out) == 0 and not _has_ids(index):
            index.add(vectors[start:stop])
            continue
        rows = np.arange(start, stop, dtype=np.int64)
        rows = rows[~np.isin(rows, held_out)]
        if len(rows):
            index.add_with_ids(vectors[rows], rows)


def _recall_queries(
    vectors: np.ndarray, queries: np.ndarray | None, sample: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, str]:
    """``(queries, held_out, kind)``: normalised recall queries, the sorted rows held out of the index
    while it is tuned, and what the queries are (``query vectors``, ``held-out items`` or ``none``).

    A sample of the caller's non-zero ``queries`` when there are any (nothing held out), else of the
    non-zero items, at most a tenth of the catalogue, which are then held out.
    """
    if queries is not None:
        queries = np.asarray(queries, dtype=np.float32)
        given = np.flatnonzero(np.any(queries != 0, axis=1))
        if len(given) and sample > 0:
            chosen = np.sort(rng.choice(given, size=min(sample, len(given)), replace=False))
            return normalise_rows(queries[chosen]), np.empty(0, dtype=np.int64), "query vectors"
    items = np.flatnonzero(np.any(vectors != 0, axis=1))
    size = min(sample, len(items), max(1, len(vectors) // 10)) if len(vectors) > 1 else 0
    held_out = np.sort(rng.choice(items, size=size, replace=False)).astype(np.int64)
    return vectors[held_out], held_out, "held-out items" if size else "none"


def _exact_kth_scores(queries: np.ndarray, vectors: np.ndarray, depth: int, held_out: np.ndarray):
    """Per query, the score of its ``depth``-th exact neighbour among the rows not ``held_out``."""
    import faiss

    best = np.full((len(queries), 0), -np.inf, dtype=np.float32)
    if depth <= 0 or len(queries) == 0:
        return np.full(len(queries), -np.inf, dtype=np.float32)
    for start in range(0, len(vectors), EXACT_BATCH):
        rows = np.arange(start, min(start + EXACT_BATCH, len(vectors)))
        rows = rows[~np.isin(rows, held_out)]
        if len(rows) == 0:
            continue
        found, _ = faiss.knn(queries, vectors[rows], min(depth, len(rows)), metric=faiss.METRIC_INNER_PRODUCT)
        best = -np.sort(-np.concatenate([best, found], axis=1), axis=1)[:, :depth]
    return best[:, depth - 1]


def _recalls(found: np.ndarray, queries: np.ndarray, vectors: np.ndarray, kth: np.ndarray) -> np.ndarray:
    """Per query, the share of its exact top-``depth`` that the ``found`` ids [queries, depth] hold.

    A found vector counts when it scores at least the ``depth``-th exact neighbour (``kth``), so ties at
    the cut count as hits.
    """
    depth = found.shape[1]
    if depth == 0:
        return np.ones(len(queries))
    hits = np.zeros(len(queries))
    chunk = max(1, EXACT_BATCH // depth)
    for start in range(0, len(queries), chunk):
        ids = found[start : start + chunk]
        scores = np.einsum("qd,qkd->qk", queries[start : start + chunk], vectors[np.maximum(ids, 0)])
        good = (ids >= 0) & (scores >= kth[start : start + chunk, None] - SCORE_TOLERANCE)
        hits[start : start + chunk] = np.minimum(good.sum(axis=1), depth)
    return hits / depth


@dataclass
class _Tuning:
    """The outcome of tuning: the parameter raised (None: nothing to tune), its value, recall, cost."""

    parameter: str | None
    value: int | None
    recall: float
    met: bool
    scan_share: float | None = None

    def describe(self) -> str:
        if self.parameter is None:
            return ""
        scanned = "" if self.scan_share is None else f" ({self.scan_share:.1%} of the vectors scanned)"
        return f"{self.parameter} {self.value}{scanned}, "


def _tune(
    index,
    queries: np.ndarray,
    kth: np.ndarray,
    vectors: np.ndarray,
    depth: int,
    target: float,
    *,
    automatic: bool,
    fixed: int | None,
) -> _Tuning:
    """Raise nprobe (IVF) or efSearch (HNSW) until recall@``depth`` on ``queries`` reaches ``target``
    (by its mean less ``CONFIDENCE_Z`` standard errors).

    An automatic choice stops where an IVF search would scan more than ``MAX_IVF_SCAN_SHARE`` of the
    vectors; a configured factory goes on to the end of the ladder (every list, or efSearch = n). A
    ``fixed`` parameter is measured, not tuned. The index is left set to the returned value.
    """
    import faiss

    ivf = _ivf_of(index)
    hnsw = _hnsw_of(index)

    def measure(params=None) -> tuple[float, bool]:
        """Mean recall of a search with ``params`` and whether it meets the target with confidence."""
        if len(queries) == 0:
            return 1.0, True
        found = index.search(queries, depth, params=params)[1] if depth > 0 else np.empty((len(queries), 0))
        recalls = _recalls(found, queries, vectors, kth)
        error = recalls.std(ddof=1) / math.sqrt(len(recalls)) if len(recalls) > 1 else 0.0
        return float(recalls.mean()), float(recalls.mean()) - CONFIDENCE_Z * error >= target

    if ivf is not None:
        shares = _scan_shares(index, ivf, queries)
        tuning = None
        for value in [min(fixed, ivf.nlist)] if fixed else _ladder(1, ivf.nlist):
            share = float(shares[value - 1])
            if automatic and share > MAX_IVF_SCAN_SHARE and tuning is not None:
                break
            ivf.nprobe = value
            tuning = _Tuning("nprobe", value, *measure(), share)
            if tuning.met:
                break
        ivf.nprobe = tuning.value
        return tuning
    if hnsw is not None:
        tuning = None
        for value in [max(fixed, depth)] if fixed else _ladder(max(depth, 1), max(depth, index.ntotal)):
            tuning = _Tuning("efSearch", value, *measure(faiss.SearchParametersHNSW(efSearch=int(value))))
            if tuning.met:
                break
        hnsw.hnsw.efSearch = int(tuning.value)
        return tuning
    return _Tuning(None, None, *measure())


def _ladder(start: int, stop: int) -> list[int]:
    """Integers from ``start`` to ``stop`` (both included), each about ``TUNING_STEP`` times the last."""
    values, value = [], start
    while value < stop:
        values.append(value)
        value = max(value + 1, round(value * TUNING_STEP))
    return [*values, stop]


def _scan_shares(index, ivf, queries: np.ndarray) -> np.ndarray:
    """Mean share of the indexed vectors an IVF search of ``queries`` scans at nprobe = 1, 2, …, nlist.

    Exact for a plain IVF index (the lists its quantiser would visit); ``nprobe / nlist`` for composites
    whose queries are transformed first.
    """
    import faiss

    nlist = ivf.nlist
    if not isinstance(faiss.downcast_index(index), faiss.IndexIVF) or len(queries) == 0:
        return np.arange(1, nlist + 1) / nlist
    sizes = np.array([ivf.invlists.list_size(number) for number in range(nlist)], dtype=np.float64)
    _, lists = ivf.quantizer.search(queries, nlist)
    scanned = np.cumsum(sizes[np.maximum(lists, 0)], axis=1).mean(axis=0)
    return scanned / max(sizes.sum(), 1.0)


def _ivf_of(index):
    """The IVF index inside ``index`` (also through wrappers), or None."""
    import faiss

    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


def _hnsw_of(index):
    """The HNSW index ``index`` is (or wraps in an id map), or None."""
    import faiss

    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexIDMap):
        index = faiss.downcast_index(index.index)
    return index if isinstance(index, faiss.IndexHNSW) else None


def _has_ids(index) -> bool:
    """Whether ``index`` stores ids of its own (IVF lists, id maps), so it takes ``add_with_ids``."""
    import faiss

    return _ivf_of(index) is not None or isinstance(faiss.downcast_index(index), faiss.IndexIDMap)


def _nlist(index) -> int:
    ivf = _ivf_of(index)
    return int(ivf.nlist) if ivf is not None else 0


def _seed_training(index, seed: int) -> None:
    """Seed the k-means of IVF coarse quantisers and product quantisers, where the index has them."""
    import faiss

    ivf = _ivf_of(index)
    if ivf is None:
        return
    ivf.cp.seed = seed
    product_quantiser = getattr(faiss.downcast_index(ivf), "pq", None)
    if product_quantiser is not None:
        product_quantiser.cp.seed = seed


def _set_nprobe(index, nprobe: int) -> None:
    import faiss

    faiss.extract_index_ivf(index).nprobe = int(nprobe)


def _hnsw_parameters(index, ef_search: int):
    """Search parameters giving an HNSW index the breadth ``ef_search``; None (the defaults) otherwise."""
    import faiss

    if _hnsw_of(index) is not None:
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
