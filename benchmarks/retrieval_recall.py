"""FAISS retrieval: the index m6rec builds against exact search, side by side, on held-out queries.

100k item vectors of dimension 64 from 1000 Gaussian clusters (each vector its cluster's centre plus noise
of the same scale, then normalised) and 1000 queries drawn the same way, none of them indexed. Each index
searches every query (in batches of 256, as the embedding sources do) in interleaved rounds with exact
search (``IndexFlatIP``); the speed is the ratio of the median times of the two, the recall that of the
exact top-k found. Rows: the index m6rec builds for top-100 (automatic choice, tuned at build time), the
same built the way the embedding sources search (k = 100 plus their seen-item margin), HNSW32 tuned by
m6rec, and the two old settings for reference (HNSW32 with efSearch 128, chosen below 1M vectors; IVF-PQ
with nprobe ≈ √nlist, chosen from 1M).

Usage: .venv/bin/python benchmarks/retrieval_recall.py [--out docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import update_section  # noqa: E402

from m6rec.candidates.embedding_sources import search_depth  # noqa: E402
from m6rec.candidates.faiss_index import VectorIndex, build_index, normalise_rows  # noqa: E402

N_ITEMS, DIMENSION, N_CLUSTERS, NOISE = 100_000, 64, 1000, 1.0
N_QUERIES, K, BATCH, ROUNDS, SEED = 1000, 100, 256, 5, 0
COMMAND = ".venv/bin/python benchmarks/retrieval_recall.py --out docs/benchmarks.md"


@dataclass
class Row:
    name: str
    parameter: str
    depth: int
    build_seconds: float
    search: object  # queries -> ids [len(queries), depth]
    build_recall: float | None = None
    every_list: object | None = None  # queries -> ids with every inverted list scanned
    seconds: list[float] | None = None
    recall: float | None = None


def clustered(rng: np.random.Generator, count: int, centres: np.ndarray) -> np.ndarray:
    """``count`` normalised vectors: a random centre plus Gaussian noise of scale ``NOISE`` each."""
    noise = NOISE * rng.standard_normal((count, DIMENSION))
    return normalise_rows(centres[rng.integers(len(centres), size=count)] + noise)


def main() -> None:
    import faiss

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="Markdown file whose section to update")
    args = parser.parse_args()

    rng = np.random.default_rng(SEED)
    centres = rng.standard_normal((N_CLUSTERS, DIMENSION))
    items, queries = clustered(rng, N_ITEMS, centres), clustered(rng, N_QUERIES, centres)
    exact = faiss.IndexFlatIP(DIMENSION)
    exact.add(items)
    rows = [_m6rec_row("m6rec, built for top-100", items, k=K, depth=K)]
    rows.append(
        _m6rec_row("m6rec, built for a source's top-100", items, k=search_depth(K), depth=search_depth(K))
    )
    rows.append(_m6rec_row("m6rec, HNSW32 tuned", items, k=K, depth=K, factory="HNSW32"))
    rows.append(_hnsw_ef128(items))
    rows.append(_ivf_pq(items))
    depths = sorted({row.depth for row in rows})
    truth = {depth: exact.search(queries, depth)[1] for depth in depths}
    exact_seconds = {depth: [] for depth in depths}
    for row in rows:
        row.seconds = []
        row.recall = _recall(row.search(queries), truth[row.depth])
    pq_ceiling = _recall(rows[-1].every_list(queries), truth[K])
    for _ in range(ROUNDS):
        for depth in depths:
            exact_seconds[depth].append(
                _timed(lambda d=depth: _batched(queries, lambda q: exact.search(q, d)[1]))
            )
        for row in rows:
            row.seconds.append(_timed(lambda r=row: r.search(queries)))
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}, "
        f"faiss {faiss.__version__} ({faiss.omp_get_max_threads()} threads)",
        "exact_ms": {depth: 1000 * statistics.median(times) for depth, times in exact_seconds.items()},
        "ivf_pq_recall_every_list": pq_ceiling,
        "rows": [
            {
                "index": row.name,
                "parameter": row.parameter,
                "depth": row.depth,
                "build_s": round(row.build_seconds, 1),
                "build_recall": row.build_recall,
                "search_ms": 1000 * statistics.median(row.seconds),
                "speed_vs_exact": statistics.median(exact_seconds[row.depth])
                / statistics.median(row.seconds),
                "recall": row.recall,
            }
            for row in rows
        ],
    }
    body = _table(result)
    print(body)
    print(json.dumps(result, indent=2))
    if args.out:
        update_section(args.out, "retrieval-recall", body)


def _m6rec_row(name: str, items: np.ndarray, *, k: int, depth: int, factory: str | None = None) -> Row:
    started = time.perf_counter()
    index = build_index(items, k=k, factory=factory, seed=SEED, use_gpu=False)
    seconds = time.perf_counter() - started
    parameter = _parameter(index)
    return Row(
        f"{name}: {index.factory}",
        parameter,
        depth,
        seconds,
        lambda queries: _batched(queries, lambda batch: index.search(batch, depth)[0]),
        build_recall=index.build_recall,
    )


def _parameter(index: VectorIndex) -> str:
    if index.nprobe is not None:
        return f"nprobe {index.nprobe}"
    if index.ef_search is not None:
        return f"efSearch {index.ef_search}"
    return "exact"


def _hnsw_ef128(items: np.ndarray) -> Row:
    import faiss

    started = time.perf_counter()
    index = faiss.index_factory(DIMENSION, "HNSW32", faiss.METRIC_INNER_PRODUCT)
    index.add(items)
    params = faiss.SearchParametersHNSW(efSearch=128)
    return Row(
        "old choice below 1M: HNSW32",
        "efSearch 128",
        K,
        time.perf_counter() - started,
        lambda queries: _batched(queries, lambda batch: index.search(batch, K, params=params)[1]),
    )


def _ivf_pq(items: np.ndarray) -> Row:
    import faiss

    nlist = int(4 * math.sqrt(N_ITEMS))
    started = time.perf_counter()
    index = faiss.index_factory(DIMENSION, f"IVF{nlist},PQ16np", faiss.METRIC_INNER_PRODUCT)
    faiss.extract_index_ivf(index).cp.seed = SEED
    index.train(items)
    index.add(items)
    index.nprobe = round(math.sqrt(nlist))
    every_list = faiss.SearchParametersIVF(nprobe=nlist)
    return Row(
        f"old choice from 1M: IVF{nlist},PQ16np",
        f"nprobe {index.nprobe}",
        K,
        time.perf_counter() - started,
        lambda queries: _batched(queries, lambda batch: index.search(batch, K)[1]),
        every_list=lambda queries: _batched(
            queries, lambda batch: index.search(batch, K, params=every_list)[1]
        ),
    )


def _batched(queries: np.ndarray, search) -> np.ndarray:
    return np.vstack([search(queries[start : start + BATCH]) for start in range(0, len(queries), BATCH)])


def _timed(call) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def _recall(found: np.ndarray, expected: np.ndarray) -> float:
    hits = sum(
        len(np.intersect1d(row_found, row_expected))
        for row_found, row_expected in zip(found, expected, strict=True)
    )
    return hits / expected.size


def _table(result: dict) -> str:
    lines = [
        "## FAISS retrieval: recall at the depth searched, against exact search",
        "",
        f"Command: `{COMMAND}`",
        "",
        f"Machine: {result['machine']}. {N_ITEMS:,} item vectors of dimension {DIMENSION} from {N_CLUSTERS} "
        f"Gaussian clusters (centre plus noise of the same scale, normalised); {N_QUERIES} queries drawn the "
        f"same way and never indexed. Each index searches all queries in batches of {BATCH}, in {ROUNDS} "
        "rounds interleaved with exact search (`IndexFlatIP`) at the same depth; speed is the ratio of the "
        "median times, recall the share of the exact top-k found. Build-time recall is what m6rec measured "
        "on its own held-out items while tuning (target 0.95, met with two standard errors to spare).",
        "",
        "| index | search parameter | depth k | build s | search ms | speed vs IndexFlatIP | recall@k | "
        "build-time recall@k |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for depth, milliseconds in sorted(result["exact_ms"].items()):
        lines.append(f"| IndexFlatIP (exact) | exact | {depth} | 0.0 | {milliseconds:.0f} | 1.0 | 1.000 | |")
    for row in result["rows"]:
        build_recall = "" if row["build_recall"] is None else f"{row['build_recall']:.3f}"
        lines.append(
            f"| {row['index']} | {row['parameter']} | {row['depth']} | {row['build_s']:.1f} | "
            f"{row['search_ms']:.0f} | {row['speed_vs_exact']:.1f} | {row['recall']:.3f} | {build_recall} |"
        )
    ours, old_hnsw = result["rows"][0], result["rows"][3]
    lines += [
        "",
        f"The index m6rec builds for top-100 ({ours['index'].split(': ')[-1]}, {ours['parameter']}) searches "
        f"{ours['speed_vs_exact']:.1f}x faster than `IndexFlatIP` at recall@100 {ours['recall']:.3f} on the "
        "held-out queries. An embedding source searches 50% deeper (for the seen items it drops) and tunes "
        "for recall at that depth, which takes more probes. The old HNSW32 / efSearch 128 setting reaches "
        f"recall@100 {old_hnsw['recall']:.3f}; IVF-PQ's quantised distances cap its recall at "
        f"{result['ivf_pq_recall_every_list']:.3f} even with every inverted list scanned.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
