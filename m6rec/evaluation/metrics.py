"""Offline evaluation metrics: top-K ranking quality, catalogue coverage, popularity bias and CTR metrics.

Conventions follow Microsoft Recommenders' ``python_evaluation`` with binary relevance: every test item of
a user is relevant, items seen in training are removed from the lists by the caller, and the per-user
metrics are means over the evaluated users (users with at least one relevant item). The formulas are in
``docs/metrics.md``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.stats import rankdata

from m6rec.data.contract import ITEM_ID, USER_ID

RANK = "rank"
PADDING = -1


def ranking_metrics(
    recommended: np.ndarray,
    relevant: sp.csr_matrix | sp.csr_array,
    *,
    k_values: Sequence[int] = (10,),
    n_catalogue_items: int,
    item_popularity: np.ndarray | None = None,
) -> dict[str, float]:
    """Top-K ranking metrics of recommendation lists against binary relevant sets, averaged over users.

    Args:
        recommended: integer array ``[n_users, L]`` of item indices in rank order; ``-1`` marks padding
            (no item). Positions are the columns, so padding inside a list still occupies its position.
        relevant: sparse ``[n_users, n_items]`` matrix; the nonzero entries of row ``u`` are the relevant
            (test) items of the user whose list is row ``u`` of ``recommended``.
        k_values: cut-offs K; each gives ``ndcg@K``, ``recall@K``, ``precision@K``, ``hit_rate@K``,
            ``map@K``, ``coverage@K`` and, with ``item_popularity``, ``avg_popularity@K``.
        n_catalogue_items: catalogue size, the denominator of ``coverage@K``.
        item_popularity: optional ``[n_items]`` training interaction counts per item.

    Returns:
        Metric name to value, plus ``mrr`` (first relevant item over the whole list) and ``n_users``, the
        number of evaluated users. Rows without a relevant item are left out of every metric, coverage and
        average popularity included.

    Raises:
        ValueError: on mismatched shapes, item indices out of range, an item listed twice for one user,
            invalid cut-offs or catalogue size, or when no row has a relevant item.
    """
    accumulator = RankingMetrics(
        k_values=k_values, n_catalogue_items=n_catalogue_items, item_popularity=item_popularity
    )
    accumulator.add(recommended, relevant)
    return accumulator.result()


class RankingMetrics:
    """:func:`ranking_metrics` over lists that arrive in chunks of users: :meth:`add` each chunk (its lists
    and the relevant rows of the same users), then :meth:`result`. Per-user sums, the items listed per
    cut-off and their popularity are kept, never the lists, so memory does not grow with the users."""

    def __init__(
        self,
        *,
        k_values: Sequence[int] = (10,),
        n_catalogue_items: int,
        item_popularity: np.ndarray | None = None,
    ):
        self.k_values = _check_k_values(k_values)
        if n_catalogue_items < 1:
            raise ValueError(f"n_catalogue_items must be positive, got {n_catalogue_items}")
        self.n_catalogue_items = n_catalogue_items
        self.item_popularity = (
            None if item_popularity is None else np.asarray(item_popularity, dtype=np.float64)
        )
        self.n_users = 0
        self._sums: dict[str, float] = {}
        self._listed: dict[int, np.ndarray] = {}
        self._popularity = dict.fromkeys(self.k_values, 0.0)
        self._n_listed = dict.fromkeys(self.k_values, 0)

    def add(self, recommended: np.ndarray, relevant: sp.csr_matrix | sp.csr_array) -> None:
        """Count one chunk: row ``u`` of ``recommended`` is the list of the user of row ``u`` of ``relevant``."""
        recommended = _check_recommended(recommended)
        relevant = sp.csr_array(relevant, copy=True)
        relevant.sum_duplicates()
        relevant.eliminate_zeros()
        n_rows, n_items = relevant.shape
        if recommended.shape[0] != n_rows:
            raise ValueError(
                f"recommended has {recommended.shape[0]} rows but relevant has {n_rows}; rows must correspond"
            )
        if recommended.size and int(recommended.max()) >= n_items:
            raise ValueError(f"recommended holds item index {int(recommended.max())} >= n_items={n_items}")
        popularity = self.item_popularity
        if popularity is not None and popularity.shape != (n_items,):
            raise ValueError(
                f"item_popularity has shape {popularity.shape}, expected ({n_items},) to match relevant"
            )

        n_relevant = np.diff(relevant.indptr)
        evaluated = n_relevant > 0
        if not evaluated.any():
            return
        self.n_users += int(evaluated.sum())
        lists = recommended[evaluated]
        n_relevant = n_relevant[evaluated].astype(np.float64)
        hits = _hit_matrix(lists, relevant[evaluated], n_items)
        list_length = lists.shape[1]
        max_k = max(self.k_values)
        # Columns past the end of the lists are empty positions: no item, no hit.
        if list_length < max_k:
            lists = np.pad(lists, ((0, 0), (0, max_k - list_length)), constant_values=PADDING)
            hits = np.pad(hits, ((0, 0), (0, max_k - list_length)))

        positions = np.arange(1, hits.shape[1] + 1, dtype=np.float64)
        discounts = 1.0 / np.log2(positions + 1.0)
        cumulative_hits = np.cumsum(hits, axis=1, dtype=np.float64)
        discounted_gains = np.cumsum(hits * discounts, axis=1)
        precision_gains = np.cumsum(hits * (cumulative_hits / positions), axis=1)
        ideal_dcg = np.cumsum(discounts)

        for k in self.k_values:
            hits_at_k = cumulative_hits[:, k - 1]
            relevant_in_reach = np.minimum(n_relevant, k)
            ideal_at_k = ideal_dcg[relevant_in_reach.astype(np.int64) - 1]
            self._sum(f"ndcg@{k}", discounted_gains[:, k - 1] / ideal_at_k)
            self._sum(f"recall@{k}", hits_at_k / n_relevant)
            self._sum(f"precision@{k}", hits_at_k / k)
            self._sum(f"hit_rate@{k}", hits_at_k > 0)
            self._sum(f"map@{k}", precision_gains[:, k - 1] / relevant_in_reach)
            top_k = lists[:, :k]
            listed = top_k[top_k != PADDING]
            seen = self._listed.setdefault(k, np.zeros(n_items, dtype=bool))
            seen[listed] = True
            if popularity is not None:
                self._popularity[k] += float(popularity[listed].sum())
                self._n_listed[k] += int(listed.size)
        has_hit = hits.any(axis=1)
        first_hit = np.argmax(hits, axis=1)
        self._sum("mrr", np.where(has_hit, 1.0 / (first_hit + 1.0), 0.0))

    def merge(self, other: RankingMetrics) -> None:
        """Count the users ``other`` counted (the same settings, other users): as if its chunks had been
        added here."""
        if other.k_values != self.k_values or other.n_catalogue_items != self.n_catalogue_items:
            raise ValueError("only metrics with the same k_values and catalogue can be merged")
        self.n_users += other.n_users
        for name, value in other._sums.items():
            self._sums[name] = self._sums.get(name, 0.0) + value
        for k, listed in other._listed.items():
            seen = self._listed.setdefault(k, np.zeros_like(listed))
            seen |= listed
        for k in self.k_values:
            self._popularity[k] += other._popularity[k]
            self._n_listed[k] += other._n_listed[k]

    def _sum(self, name: str, values: np.ndarray) -> None:
        self._sums[name] = self._sums.get(name, 0.0) + float(np.sum(values, dtype=np.float64))

    def result(self) -> dict[str, float]:
        """The metrics of every chunk added, as :func:`ranking_metrics` returns them."""
        if self.n_users == 0:
            raise ValueError("no row of relevant has a relevant item, so there is no user to evaluate")
        metrics: dict[str, float] = {}
        for k in self.k_values:
            for name in ("ndcg", "recall", "precision", "hit_rate", "map"):
                metrics[f"{name}@{k}"] = self._sums[f"{name}@{k}"] / self.n_users
            n_distinct = int(self._listed[k].sum())
            if n_distinct > self.n_catalogue_items:
                raise ValueError(
                    f"the top-{k} lists hold {n_distinct} distinct items, more than "
                    f"n_catalogue_items={self.n_catalogue_items}"
                )
            metrics[f"coverage@{k}"] = n_distinct / self.n_catalogue_items
            if self.item_popularity is not None:
                listed = self._n_listed[k]
                metrics[f"avg_popularity@{k}"] = self._popularity[k] / listed if listed else 0.0
        metrics["mrr"] = self._sums["mrr"] / self.n_users
        metrics["n_users"] = self.n_users
        return metrics


def evaluate_recommendations(
    recommendations: pd.DataFrame,
    test: pd.DataFrame,
    *,
    k_values: Sequence[int] = (10,),
    catalogue: Sequence | None = None,
    item_popularity: Mapping | pd.Series | None = None,
) -> dict[str, float]:
    """Ranking metrics of recommendation lists keyed by raw IDs, against a test table.

    Args:
        recommendations: columns ``user_id``, ``item_id``, ``rank`` (1-based). Only the order of ``rank``
            within a user matters: the list is re-numbered 1, 2, ... in that order. Seen items must already
            be removed. Users absent from ``test`` are ignored.
        test: columns ``user_id``, ``item_id``; every row is a relevant item. Each test user is evaluated,
            with an empty list if ``recommendations`` has none for them.
        k_values: cut-offs K, as in :func:`ranking_metrics`.
        catalogue: item IDs of the catalogue; recommending an item outside it is an error. Defaults to the
            items appearing in either frame.
        item_popularity: training interaction count per raw item ID (mapping or Series indexed by ID);
            items missing from it count 0. Without it the ``avg_popularity@K`` keys are omitted.

    Returns:
        The dictionary of :func:`ranking_metrics`. IDs are compared as strings, so ``7`` and ``"7"`` match.

    Raises:
        ValueError: on missing columns, a user listing an item twice, non-numeric ranks, recommended items
            outside ``catalogue``, or an empty test table.
    """
    _check_columns(recommendations, (USER_ID, ITEM_ID, RANK), "recommendations")
    _check_columns(test, (USER_ID, ITEM_ID), "test")
    if test.empty:
        raise ValueError("test has no rows, so there is no user to evaluate")
    test_users = test[USER_ID].astype(str)
    test_items = test[ITEM_ID].astype(str)
    rec_users = recommendations[USER_ID].astype(str)
    rec_items = recommendations[ITEM_ID].astype(str)
    ranks = pd.to_numeric(recommendations[RANK], errors="coerce")
    if ranks.isna().any():
        raise ValueError(f"recommendations.{RANK} must be numeric and not null")
    duplicated = pd.DataFrame({USER_ID: rec_users, ITEM_ID: rec_items}).duplicated()
    if duplicated.any():
        first = duplicated.to_numpy().argmax()
        user, item = rec_users.iloc[first], rec_items.iloc[first]
        raise ValueError(f"recommendations list item {item!r} more than once for user {user!r}")

    user_index = pd.Index(pd.unique(test_users))
    if catalogue is None:
        catalogue_index = pd.Index(pd.unique(pd.concat([rec_items, test_items], ignore_index=True)))
    else:
        catalogue_index = pd.Index(pd.unique(pd.Series(list(catalogue), dtype=object).astype(str)))
        outside = ~rec_items.isin(catalogue_index)
        if outside.any():
            example = rec_items[outside].iloc[0]
            raise ValueError(
                f"{int(outside.sum())} recommended items are not in the catalogue, e.g. {example!r}"
            )
    # Test items outside the catalogue get indices after it: they can be relevant but never recommended.
    extra_items = pd.unique(test_items[~test_items.isin(catalogue_index)])
    item_index = catalogue_index.append(pd.Index(extra_items))

    relevant_rows = user_index.get_indexer(test_users)
    relevant_cols = item_index.get_indexer(test_items)
    relevant = sp.csr_array(
        (np.ones(len(test), dtype=np.int8), (relevant_rows, relevant_cols)),
        shape=(len(user_index), len(item_index)),
    )

    rec_rows = user_index.get_indexer(rec_users)
    kept = rec_rows >= 0
    lists = pd.DataFrame(
        {
            "row": rec_rows[kept],
            "item": item_index.get_indexer(rec_items[kept]),
            RANK: ranks.to_numpy()[kept],
        }
    ).sort_values(["row", RANK], kind="stable")
    positions = lists.groupby("row").cumcount().to_numpy()
    list_length = int(positions.max()) + 1 if len(lists) else 0
    recommended = np.full((len(user_index), list_length), PADDING, dtype=np.int64)
    recommended[lists["row"].to_numpy(), positions] = lists["item"].to_numpy()

    popularity = None
    if item_popularity is not None:
        counts = pd.Series(item_popularity, dtype=np.float64)
        counts.index = counts.index.astype(str)
        counts = counts.groupby(level=0).sum()
        popularity = counts.reindex(item_index, fill_value=0.0).to_numpy()

    return ranking_metrics(
        recommended,
        relevant,
        k_values=k_values,
        n_catalogue_items=len(catalogue_index),
        item_popularity=popularity,
    )


def auc(labels: np.ndarray | Sequence, scores: np.ndarray | Sequence) -> float:
    """ROC AUC of scored pairs: the chance a random positive outscores a random negative, ties counting 1/2.

    Computed from ranks (Mann-Whitney U) in O(n log n).

    Args:
        labels: 0/1 (or boolean) labels, one per pair.
        scores: real scores, one per pair; higher means more likely positive.

    Raises:
        ValueError: on mismatched lengths, labels other than 0/1, non-finite scores, or only one class.
    """
    labels, scores = _check_scored_pairs(labels, scores)
    n_positive = int(labels.sum())
    n_negative = labels.size - n_positive
    if n_positive == 0 or n_negative == 0:
        raise ValueError("AUC needs both positive and negative labels; only one class is present")
    ranks = rankdata(scores)
    positive_rank_sum = float(ranks[labels].sum())
    u_statistic = positive_rank_sum - n_positive * (n_positive + 1) / 2.0
    return u_statistic / (n_positive * n_negative)


def f1_at_threshold(
    labels: np.ndarray | Sequence, scores: np.ndarray | Sequence, threshold: float = 0.5
) -> float:
    """F1 of the positive class when a pair is predicted positive iff ``score >= threshold``.

    Returns 0.0 when there are neither positive labels nor positive predictions.

    Raises:
        ValueError: on mismatched lengths, labels other than 0/1, or non-finite scores.
    """
    labels, scores = _check_scored_pairs(labels, scores)
    predicted = scores >= threshold
    true_positives = int(np.sum(predicted & labels))
    denominator = int(predicted.sum()) + int(labels.sum())
    return 2.0 * true_positives / denominator if denominator else 0.0


def _hit_matrix(lists: np.ndarray, relevant: sp.csr_array, n_items: int) -> np.ndarray:
    """Boolean ``[n_users, L]``: whether each listed item is in its row's relevant set."""
    relevant_rows = np.repeat(np.arange(relevant.shape[0], dtype=np.int64), np.diff(relevant.indptr))
    relevant_keys = np.sort(relevant_rows * n_items + relevant.indices.astype(np.int64))
    listed_keys = np.arange(lists.shape[0], dtype=np.int64)[:, None] * n_items + lists
    slots = np.searchsorted(relevant_keys, listed_keys)
    found = relevant_keys[np.minimum(slots, relevant_keys.size - 1)] == listed_keys
    return found & (lists != PADDING)


def _check_recommended(recommended: np.ndarray) -> np.ndarray:
    recommended = np.asarray(recommended)
    if recommended.ndim != 2:
        raise ValueError(f"recommended must be a 2-D [n_users, L] array, got {recommended.ndim} dimensions")
    if recommended.size and not np.issubdtype(recommended.dtype, np.integer):
        raise ValueError(f"recommended must hold integer item indices, got dtype {recommended.dtype}")
    recommended = recommended.astype(np.int64, copy=False)
    if recommended.size and int(recommended.min()) < PADDING:
        raise ValueError(
            f"recommended holds {int(recommended.min())}; item indices are >= 0 and -1 is padding"
        )
    ordered = np.sort(recommended, axis=1)
    repeated = (ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] != PADDING)
    if repeated.any():
        row = int(np.flatnonzero(repeated.any(axis=1))[0])
        raise ValueError(f"recommended row {row} lists an item more than once")
    return recommended


def _check_k_values(k_values: Sequence[int]) -> list[int]:
    k_values = [int(k) for k in k_values]
    if not k_values or min(k_values) < 1:
        raise ValueError(f"k_values must be a non-empty sequence of positive cut-offs, got {k_values}")
    return list(dict.fromkeys(k_values))


def _check_columns(frame: pd.DataFrame, columns: Sequence[str], name: str) -> None:
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise ValueError(f"{name} lacks column(s) {missing}; it has {list(frame.columns)}")


def _check_scored_pairs(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels)
    scores = np.asarray(scores, dtype=np.float64)
    if labels.ndim != 1 or labels.shape != scores.shape:
        raise ValueError(f"labels {labels.shape} and scores {scores.shape} must be 1-D of the same length")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError("labels must be 0/1 or boolean")
    if not np.isfinite(scores).all():
        raise ValueError("scores must be finite")
    return labels.astype(bool), scores
