"""Merging several sources' candidate lists into one de-duplicated table with provenance per source."""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp

from m6rec.candidates.base import Candidates

USER_ROW = "user_row"
ITEM = "item"
N_SOURCES = "n_sources"
SOURCES = "sources"


def merge_candidates(
    per_source: dict[str, Candidates], user_rows: np.ndarray, *, seen: sp.csr_matrix | None = None
) -> pd.DataFrame:
    """One row per distinct (user, item) proposed by any source, with where each came from.

    Args:
        per_source: each source's candidates for ``user_rows`` (row i of every block is ``user_rows[i]``);
            item -1 marks padding. The dict's order is the fixed order of the columns and of ``sources``.
        user_rows: distinct user rows (matrix index space) the blocks were made for.
        seen: optional training matrix; any (user, item) pair in it is dropped.

    Returns:
        A frame sorted by position in ``user_rows`` then item, with ``user_row`` and ``item`` (int64);
        per source ``<source>_rank`` (1-based position in its list) and ``<source>_score`` (float32, NaN
        where the source did not propose the item); ``n_sources`` (int16); ``sources``, the proposing
        sources joined by ",". Users without any candidate have no row.
    """
    user_rows = np.asarray(user_rows, dtype=np.int64)
    if len(np.unique(user_rows)) != len(user_rows):
        raise ValueError("merge_candidates: user_rows must be distinct")
    names = list(per_source)
    if len(names) > 62:
        raise ValueError(f"merge_candidates: at most 62 sources, got {len(names)}")
    for name, candidates in per_source.items():
        if candidates.items.shape != candidates.scores.shape or len(candidates.items) != len(user_rows):
            raise ValueError(
                f"merge_candidates: {name!r} has items {candidates.items.shape} and scores "
                f"{candidates.scores.shape} for {len(user_rows)} users"
            )
    width = 1 + max((int(candidates.items.max(initial=0)) for candidates in per_source.values()), default=0)
    keys, source_of, ranks, scores = _proposals(list(per_source.values()), width)
    order = _order_by_pair_then_source_then_rank(keys, source_of, ranks, len(names))
    keys, source_of, ranks, scores = keys[order], source_of[order], ranks[order], scores[order]
    first_of_pair = np.r_[True, keys[1:] != keys[:-1]][: len(keys)]
    best_of_source = first_of_pair | (source_of != np.r_[-1, source_of[:-1]][: len(keys)])
    pair = np.cumsum(first_of_pair) - 1
    pair_keys = keys[first_of_pair]

    shape = (len(pair_keys), len(names))
    rank_table = np.full(shape, np.nan, dtype=np.float32, order="F")
    score_table = np.full(shape, np.nan, dtype=np.float32, order="F")
    rank_table[pair[best_of_source], source_of[best_of_source]] = ranks[best_of_source]
    score_table[pair[best_of_source], source_of[best_of_source]] = scores[best_of_source]
    if seen is not None and len(pair_keys):
        unseen = ~_in_matrix(seen, user_rows[pair_keys // width], pair_keys % width)
        pair_keys, rank_table, score_table = pair_keys[unseen], rank_table[unseen], score_table[unseen]

    columns: dict[str, object] = {USER_ROW: user_rows[pair_keys // width], ITEM: pair_keys % width}
    for index, name in enumerate(names):
        columns[f"{name}_rank"], columns[f"{name}_score"] = rank_table[:, index], score_table[:, index]
    proposed = ~np.isnan(rank_table)
    columns[N_SOURCES] = proposed.sum(axis=1).astype(np.int16)
    columns[SOURCES] = _source_labels(proposed, names)
    return pd.DataFrame(columns)


def _proposals(blocks: list[Candidates], width: int) -> tuple[np.ndarray, ...]:
    """Every real candidate of every block, flattened in (block, row, slot) order: its
    ``position * width + item`` key, block number, 1-based rank and score."""
    keys, source_of, ranks, scores = [], [], [], []
    for number, candidates in enumerate(blocks):
        items = np.asarray(candidates.items, dtype=np.int64)
        positions, slots = np.nonzero(items >= 0)
        keys.append(positions * width + items[positions, slots])
        source_of.append(np.full(len(positions), number, dtype=np.int64))
        ranks.append((slots + 1).astype(np.float32))
        scores.append(np.asarray(candidates.scores, dtype=np.float32)[positions, slots])
    if not blocks:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros(0, np.float32)
    return tuple(np.concatenate(parts) for parts in (keys, source_of, ranks, scores))


def _order_by_pair_then_source_then_rank(
    keys: np.ndarray, source_of: np.ndarray, ranks: np.ndarray, n_sources: int
) -> np.ndarray:
    """Sorting order of the proposals by key, then source, then rank.

    One composite int64 key sorted by numpy's fast unstable sort when it cannot overflow, else a stable
    sort of the keys alone (proposals arrive in source then rank order, which a stable sort keeps).
    """
    if len(keys) == 0:
        return np.zeros(0, dtype=np.int64)
    depth = int(ranks.max()) + 1
    if int(keys.max()) < np.iinfo(np.int64).max // (n_sources * depth):
        return np.argsort((keys * n_sources + source_of) * depth + ranks.astype(np.int64))
    return np.argsort(keys, kind="stable")


def _source_labels(proposed: np.ndarray, names: list[str]) -> pd.api.extensions.ExtensionArray:
    """Per row of the [pairs, sources] mask ``proposed``, the proposing sources' names joined by ","."""
    import pyarrow as pa

    membership = proposed.astype(np.int64) @ (np.int64(1) << np.arange(len(names), dtype=np.int64))
    if len(names) <= 16:  # a lookup over every possible combination beats sorting the rows
        codes = np.flatnonzero(np.bincount(membership, minlength=1 << len(names)))
        lookup = np.zeros(1 << len(names), dtype=np.int64)
        lookup[codes] = np.arange(len(codes))
        inverse = lookup[membership]
    else:
        codes, inverse = np.unique(membership, return_inverse=True)
    labels = [",".join(name for bit, name in enumerate(names) if code >> bit & 1) for code in codes]
    return pd.array(pa.array(labels, pa.large_string()).take(pa.array(inverse.ravel())), dtype="str")


def _in_matrix(matrix: sp.csr_matrix, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Whether each (row, col) pair is stored in ``matrix``; rows outside it are not."""
    matrix = matrix.tocsr()
    matrix.sort_indices()
    inside = (rows >= 0) & (rows < matrix.shape[0]) & (cols < matrix.shape[1])
    width = matrix.shape[1]
    stored = np.repeat(np.arange(matrix.shape[0]), np.diff(matrix.indptr)) * width + matrix.indices
    wanted = np.where(inside, rows * width + cols, -1)
    where = np.minimum(np.searchsorted(stored, wanted), max(len(stored) - 1, 0))
    return inside & (stored[where] == wanted) if len(stored) else np.zeros(len(rows), dtype=bool)
