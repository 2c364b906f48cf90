"""List scoring: one chunk of user rows in, their final lists (and the candidates' features) out.

The same for a training run and a batch. :class:`ListScorer` holds what is fixed across chunks (the
fitted sources, the ranker and its features' context, the fallback) and :class:`ListSettings`, the few
numbers that shape a list; on a cluster it is what every worker receives, so it carries no configuration.
:mod:`pipelines.lists` writes what it scores.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from m6rec.candidates import Candidates, CandidateSource
from m6rec.candidates.merge import ITEM, SOURCES, USER_ROW, merge_candidates
from m6rec.config import RunConfig
from m6rec.data.contract import ITEM_ID, USER_ID
from m6rec.data.interactions import IdIndex, InteractionMatrix
from pipelines.run_folder import ModelNotTrainedError


@dataclass(frozen=True)
class ListSettings:
    """What shapes a final list: its length ``top_k``; ``depth``, how many items a source's, the
    ranker's and the published list hold before the cut to ``top_k``; the users scored at once
    (``user_chunk``); the candidates each source proposes to the ranker; which feature rows are kept
    (``feature_table``: all, listed, none); the places reserved for new items and their spacing."""

    top_k: int
    depth: int
    user_chunk: int
    candidates_per_source: int
    feature_table: str
    new_item_slots: int
    new_item_slot_spacing: int

    @classmethod
    def of(cls, config: RunConfig) -> ListSettings:
        """The list settings of ``config``; the depth is enough for the evaluation's largest cut-off."""
        ranker = config.ranker
        return cls(
            top_k=config.top_k,
            depth=max(config.candidate_depth, config.top_k, *config.k_values),
            user_chunk=config.user_chunk,
            candidates_per_source=ranker.candidates_per_source,
            feature_table=ranker.feature_table,
            new_item_slots=ranker.new_item_slots,
            new_item_slot_spacing=ranker.new_item_slot_spacing,
        )


def with_fallback(
    lists: Candidates, fallback: CandidateSource, user_rows: np.ndarray, depth: int, name: str
) -> tuple[Candidates, np.ndarray]:
    """``lists`` with users it cannot serve (empty list) served by ``fallback``; returns the lists and the
    name of the source behind each user's list."""
    items, scores = lists.items.copy(), lists.scores.copy()
    origin = np.full(len(user_rows), name, dtype=object)
    unserved = items[:, 0] < 0
    if unserved.any():
        backup = fallback.recommend(user_rows[unserved], depth)
        width = min(depth, items.shape[1])
        items[unserved], scores[unserved] = -1, -np.inf
        items[unserved, :width], scores[unserved, :width] = backup.items[:, :width], backup.scores[:, :width]
        origin[unserved] = fallback.name
    return Candidates(items, scores), origin


def recommendation_frame(
    final: Candidates,
    origin: np.ndarray,
    candidates: pd.DataFrame | None,
    users: IdIndex,
    items: IdIndex,
    top_k: int,
    new_item_places: np.ndarray | None = None,
    user_rows: np.ndarray | None = None,
) -> pd.DataFrame:
    """The published lists: ``user_id``, ``item_id`` (raw IDs), ``rank``, ``score``, ``source``, and with
    candidates each source that proposed the item (``sources``, ``<source>_rank``). Row ``i`` of ``final``
    is user row ``user_rows[i]`` (default: row ``i``). ``new_item_place`` is a column whenever
    ``new_item_places`` is given (new-item places are on), so every chunk of a list has the same schema."""
    top_items = final.items[:, :top_k]
    positions, ranks = np.nonzero(top_items >= 0)
    item_rows = top_items[positions, ranks]
    user_rows = positions if user_rows is None else np.asarray(user_rows, dtype=np.int64)[positions]
    frame = pd.DataFrame(
        {
            USER_ROW: user_rows,
            ITEM: item_rows,
            USER_ID: pd.Series(users.ids[user_rows], dtype="string"),
            ITEM_ID: pd.Series(items.ids[item_rows], dtype="string"),
            "rank": (ranks + 1).astype(np.int32),
            "score": final.scores[:, :top_k][positions, ranks].astype(np.float32),
            "source": pd.Series(origin[positions], dtype="string"),
        }
    )
    if new_item_places is not None:
        frame["new_item_place"] = new_item_places[:, :top_k][positions, ranks]
    if candidates is not None:
        provenance = [SOURCES] + [column for column in candidates.columns if column.endswith("_rank")]
        frame = frame.merge(candidates[[USER_ROW, ITEM, *provenance]], on=[USER_ROW, ITEM], how="left")
        frame[SOURCES] = frame[SOURCES].astype("string")
    return frame.drop(columns=[USER_ROW, ITEM])


@dataclass
class ScoredChunk:
    """One chunk of users' final lists: the published rows, the candidates' feature table (None without
    a ranker context), each source's own lists at the list depth (only when the scorer keeps them, for
    evaluation), the final lists before the cut to ``top_k``, the merged candidates, how many users the
    fallback served and how many list places went to new items. It is an
    :class:`m6rec.evaluation.streamed.EvaluatedChunk`."""

    user_rows: np.ndarray
    recommendations: pd.DataFrame
    features: pd.DataFrame | None
    source_lists: dict[str, Candidates]
    final: Candidates
    candidates: pd.DataFrame | None
    served_by_fallback: int
    new_item_places: int


@dataclass
class ListScorer:
    """Everything fixed across user chunks of the final lists, the same for a training run and a batch:
    the fitted sources over ``matrix`` (their seen items), the selected list (``ranker`` or a source), the
    fallback for users it cannot serve and, with a ranker ``context``, the merged candidates' features and
    the ``ranker`` that orders them on its ``columns``. :meth:`score` turns one chunk of user rows into its
    lists; nothing in it grows with the number of users."""

    sources: dict[str, CandidateSource]
    matrix: InteractionMatrix
    settings: ListSettings
    selected: str
    fallback: CandidateSource
    context: object | None = None
    ranker: object | None = None
    columns: list[str] | None = None
    keep_source_lists: bool = False
    model_name: str = "the model"

    def __post_init__(self) -> None:
        if self.selected == "ranker" and (self.ranker is None or self.context is None):
            raise ValueError("the ranker's lists need the ranker and its features' context")

    @property
    def ranks(self) -> bool:
        return self.selected == "ranker"

    def score(self, user_rows: np.ndarray) -> ScoredChunk:
        """The lists of ``user_rows`` (rows of ``matrix``), in that order."""
        settings, depth = self.settings, self.settings.depth
        width = settings.candidates_per_source if self.context is not None else 0
        lists = {}
        for name, source in self.sources.items():
            own_depth = depth if self.keep_source_lists or (not self.ranks and name == self.selected) else 0
            if max(width, own_depth):
                lists[name] = source.recommend(user_rows, max(width, own_depth))
        candidates, table, places = None, None, None
        if self.context is not None:
            from ranker.features import build_ranker_features

            cut = {name: _cut(found, width) for name, found in lists.items()}
            candidates = merge_candidates(cut, user_rows, seen=self.matrix.matrix)
            table = build_ranker_features(candidates, self.context)
        if self.ranks:
            final, places = self._ranked(table, user_rows, depth)
        else:
            final = _cut(lists[self.selected], depth)
        final, origin = with_fallback(final, self.fallback, user_rows, depth, self.selected)
        frame = recommendation_frame(
            final, origin, candidates, self.matrix.users, self.matrix.items, settings.top_k, places, user_rows
        )
        own = {name: _cut(found, depth) for name, found in lists.items()} if self.keep_source_lists else {}
        return ScoredChunk(
            user_rows,
            frame,
            table,
            own,
            final,
            candidates,
            int((origin != self.selected).sum()),
            0 if places is None else int(places.sum()),
        )

    def _ranked(self, table: pd.DataFrame, user_rows: np.ndarray, depth: int):
        from ranker.lists import rank_with_new_item_slots

        columns = self.columns or list(self.ranker.feature_names_)
        missing = [name for name in columns if name not in table.columns]
        if missing:
            raise ModelNotTrainedError(
                f"{self.model_name}: the ranker needs features this batch cannot build: {', '.join(missing)}",
                hint="the data or the configuration changed since training; retrain (train-ranker flow)",
            )
        slots = self.settings.new_item_slots
        final, places = rank_with_new_item_slots(
            self.ranker,
            table,
            columns,
            user_rows,
            depth,
            slots=slots,
            spacing=self.settings.new_item_slot_spacing,
        )
        return final, places if slots else None


def _cut(lists: Candidates, depth: int) -> Candidates:
    return Candidates(lists.items[:, :depth], lists.scores[:, :depth])
