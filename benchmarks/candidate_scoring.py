"""What listing one user's candidates costs as the catalogue grows, per source: the dense path (a users ×
catalogue score block and a top-k over all of it) against the path each source takes now (one global
order for popularity and trend, EASE's dense head plus its sparse tail, ItemKNN's sparse neighbour sums,
iALS through a FAISS inner-product search, exact up to 50,000 items and an inverted file tuned for recall
above), side by side in one process.

Interactions are ``item_item_scale.synthetic_interactions`` (Zipf popularity, taste clusters, log-normal
activity) for the same users at each catalogue size; each source is fitted once per size (EASE with its
default ``max_items`` 8000 head, ItemKNN 100 neighbours, both with the default ``targets_per_item``, iALS 64 factors and 3 iterations, trend without
timestamps: popularity), then a sample of users is listed ``k`` deep both ways. Reported: milliseconds
per 1000 users each way, the growth of the new path from the smallest to the largest catalogue, and
whether both ways give the same lists (where not, the share of the dense lists' items found).

Usage: .venv/bin/python benchmarks/candidate_scoring.py [--users 30000] [--items 10000 100000]
       [--sample 2000] [--k 50] [--out docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import update_section  # noqa: E402
from item_item_scale import synthetic_interactions  # noqa: E402

from m6rec.candidates import create_source  # noqa: E402
from m6rec.candidates.base import Candidates, ScoreBlock, top_k  # noqa: E402

SOURCES = {
    "popularity": {},
    "trend": {},
    "ease": {"l2": 500.0},
    "itemknn": {"neighbours": 100},
    "ials": {"factors": 64, "iterations": 3, "regularization": 10.0, "alpha": 1.0},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=30_000)
    parser.add_argument("--items", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--sample", type=int, default=2000)
    parser.add_argument("--k", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    top_k(np.zeros((2, 8), dtype=np.float32), 1)  # loads torch's top-k outside the timings
    rows = []
    for n_items in args.items:
        train = synthetic_interactions(args.users, n_items, args.seed)
        users = np.sort(np.random.default_rng(args.seed).choice(args.users, args.sample, replace=False))
        for name, params in SOURCES.items():
            source = create_source(name, **params).fit(train)
            # What a source builds on first use (iALS's inverted file, once per process) is timed apart.
            build_seconds, _ = _timed(source.recommend, users[:1], args.k)
            dense_seconds, dense = _timed(_dense_lists, source, users, args.k)
            now_seconds, now = _timed(source.recommend, users, args.k)
            rows.append(
                {
                    "items": n_items,
                    "source": name,
                    "dense_ms_per_1000": 1000 * dense_seconds / len(users) * 1000,
                    "now_ms_per_1000": 1000 * now_seconds / len(users) * 1000,
                    "first_call_s": build_seconds,
                    "same_lists": bool(np.array_equal(dense.items, now.items)),
                    "found": _found_share(now.items, dense.items),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    body = _table(rows, args)
    print(body)
    if args.out:
        update_section(args.out, "candidate-scoring", body)


def _dense_lists(source, users: np.ndarray, k: int) -> Candidates:
    """The lists of the dense path: the full score block of each batch, then top-k over the catalogue."""
    items = np.full((len(users), k), -1, dtype=np.int64)
    scores = np.full((len(users), k), -np.inf, dtype=np.float32)
    for start in range(0, len(users), source.batch_size):
        rows = users[start : start + source.batch_size]
        block = ScoreBlock(np.arange(source.n_items), source.score(rows))
        listed = source._top_of_block(block, source._history(rows), k, True)
        items[start : start + len(rows)], scores[start : start + len(rows)] = listed
    return Candidates(items, scores)


def _found_share(found: np.ndarray, exact: np.ndarray) -> float:
    """Share of the dense path's listed items that the source's own path lists too (1.0: the same items)."""
    hits = sum(len(np.intersect1d(a[a >= 0], b[b >= 0])) for a, b in zip(found, exact, strict=True))
    return hits / max(int((exact >= 0).sum()), 1)


def _timed(work, *args):
    started = time.perf_counter()
    result = work(*args)
    return time.perf_counter() - started, result


def _table(rows: list[dict], args) -> str:
    smallest, largest = min(args.items), max(args.items)
    by = {(row["items"], row["source"]): row for row in rows}
    lines = [
        "## Candidate scoring as the catalogue grows: dense block against each source's own path",
        "",
        f"Command: `.venv/bin/python benchmarks/candidate_scoring.py --users {args.users} --items "
        f"{' '.join(map(str, args.items))} --sample {args.sample} --k {args.k} --out docs/benchmarks.md`",
        "",
        f"Measured on {platform.machine()} with {os.cpu_count()} cores, both paths on the same fitted "
        f"source one after the other; {args.sample} users listed {args.k} deep out of {args.users:,}. "
        "First call: one user listed before the timings, which includes what a source builds on first use "
        "(iALS's inverted file past 50,000 items, once per process).",
        "",
        "| source | items | dense path (ms / 1000 users) | now (ms / 1000 users) | dense / now | same lists | first call (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['source']} | {row['items']:,} | {row['dense_ms_per_1000']:.0f} | {row['now_ms_per_1000']:.0f} "
            f"| {row['dense_ms_per_1000'] / row['now_ms_per_1000']:.1f}× | "
            + ("yes" if row["same_lists"] else f"no: {row['found']:.1%} of their items found")
            + f" | {row['first_call_s']:.2f} |"
        )
    growth = [
        f"{name} {by[(largest, name)]['now_ms_per_1000'] / by[(smallest, name)]['now_ms_per_1000']:.2f}× "
        f"(dense {by[(largest, name)]['dense_ms_per_1000'] / by[(smallest, name)]['dense_ms_per_1000']:.1f}×)"
        for name in SOURCES
        if (largest, name) in by and (smallest, name) in by
    ]
    lines += [
        "",
        f"Cost per user from {smallest:,} to {largest:,} items, now (dense path in brackets): "
        + "; ".join(growth)
        + ".",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
