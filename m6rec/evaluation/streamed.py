"""Test metrics added chunk by chunk of users: the evaluation of a run whose lists are streamed.

A chunk is anything with the shape of :class:`EvaluatedChunk` (the list scorer's chunks have it): the
user rows it holds, each source's own lists, the final lists and the merged candidates. The accumulators
hold sums only, so a million users cost what one chunk costs; on a cluster each partition counts into
:meth:`StreamedEvaluation.empty` and the driver :meth:`~StreamedEvaluation.merge`\\ s what it sent back.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import pandas as pd

from m6rec.candidates import Candidates
from m6rec.candidates.merge import ITEM, USER_ROW
from m6rec.data.interactions import InteractionMatrix
from m6rec.evaluation.metrics import RankingMetrics

# The name of the published lists among the evaluated ones (``metrics.json``'s key).
FINAL = "final"


class EvaluatedChunk(Protocol):
    """What the evaluation reads of one chunk of users' lists."""

    user_rows: np.ndarray
    source_lists: dict[str, Candidates]
    final: Candidates
    candidates: pd.DataFrame | None


@dataclass(frozen=True)
class CountedMetrics:
    """What a :class:`StreamedEvaluation` counted, without its test set (what a partition sends back)."""

    lists: dict[str, RankingMetrics]
    candidates_found: int
    with_candidates: bool


class StreamedEvaluation:
    """The test metrics of each source's lists and of the final lists (:data:`FINAL`), added chunk by
    chunk of users, and the share of the test items among the final candidates (``candidate_recall``).

    ``test`` holds the held-out interactions; they count over the users and items of ``train``, whose
    item popularity the popularity-bias metrics use."""

    def __init__(self, test: pd.DataFrame, train: InteractionMatrix, k_values: tuple[int, ...]):
        self.relevant = InteractionMatrix.from_frame(test, train.users, train.items).matrix.tocsr()
        self.settings = {
            "k_values": tuple(k_values),
            "n_catalogue_items": train.n_items,
            "item_popularity": train.item_popularity(),
        }
        self.lists: dict[str, RankingMetrics] = {}
        self.candidates_found = 0
        self.with_candidates = False

    def add(self, chunk: EvaluatedChunk) -> None:
        """Count one chunk's lists against the test items of its users."""
        relevant = self.relevant[chunk.user_rows]
        for name, lists in [*chunk.source_lists.items(), (FINAL, chunk.final)]:
            self.lists.setdefault(name, RankingMetrics(**self.settings)).add(lists.items, relevant)
        if chunk.candidates is not None:
            self.with_candidates = True
            rows, items = chunk.candidates[USER_ROW].to_numpy(), chunk.candidates[ITEM].to_numpy()
            self.candidates_found += int(np.asarray(self.relevant[rows, items]).ravel().sum())

    def empty(self) -> StreamedEvaluation:
        """The same test set and settings with nothing counted yet (a partition's, on a Dask worker)."""
        other = copy.copy(self)
        other.lists, other.candidates_found, other.with_candidates = {}, 0, False
        return other

    def counted(self) -> CountedMetrics:
        """What was counted, without the test set (what a partition sends back to :meth:`merge`)."""
        return CountedMetrics(self.lists, self.candidates_found, self.with_candidates)

    def merge(self, counted: CountedMetrics) -> None:
        """Count what another copy counted (:meth:`counted`), of other users."""
        for name, accumulator in counted.lists.items():
            self.lists.setdefault(name, RankingMetrics(**self.settings)).merge(accumulator)
        self.candidates_found += counted.candidates_found
        self.with_candidates |= counted.with_candidates

    def result(self) -> dict[str, dict[str, float]]:
        """The metrics per list name; the final list's ``candidate_recall`` when candidates were seen."""
        metrics = {name: accumulator.result() for name, accumulator in self.lists.items()}
        if self.with_candidates and self.relevant.nnz:
            metrics[FINAL]["candidate_recall"] = float(self.candidates_found / self.relevant.nnz)
        return metrics
