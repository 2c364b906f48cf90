"""List scoring: one chunk of user rows in, their final lists (and the candidates' features) out.

The same for a training run and a batch. :class:`ListScorer` holds what is fixed across chunks (the
fitted sources, the ranker and its features' context, the fallback) and :class:`ListSettings`, the few
numbers that shape a list; on a cluster it is what every worker receives, so it carries no configuration.
:mod:`pipelines.lists` writes what it scores.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from m6rec.candidates import Candidates, CandidateSource
from m6rec.candidates.merge import ITEM, SOURCES, USER_ROW, merge_candidates
from m6rec.config import RunConfig
from m6rec.data.contract import ITEM_ID, USER_ID
from m6rec.data.interactions import IdIndex, InteractionMatrix
from pipelines.run_folder import ModelNotTrainedError

log = logging.getLogger("m6rec")


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
    def of(cls, config: RunConfig, n_items: int | None = None) -> ListSettings:
        """The list settings of ``config``; the depth is enough for the evaluation's largest cut-off, and
        neither it nor the candidates per source exceed the ``n_items`` of the catalogue (said once)."""
        ranker = config.ranker
        depth = max(config.candidate_depth, config.top_k, *config.k_values)
        width = ranker.candidates_per_source
        if n_items is not None and max(depth, width) > n_items:
            log.info(
                "lists: depth %d and %d candidates per source capped at the catalogue's %d items",
                depth,
                width,
                n_items,
            )
            depth, width = min(depth, n_items), min(width, n_items)
        return cls(
            top_k=config.top_k,
            depth=depth,
            user_chunk=config.user_chunk,
            candidates_per_source=width,
            feature_table=ranker.feature_table,
            new_item_slots=ranker.new_item_slots,
            new_item_slot_spacing=ranker.new_item_slot_spacing,
        )


@dataclass(frozen=True)
class FilledLists:
    """The final lists of a chunk with every user's list filled to ``top_k`` where the catalogue allows:
    ``origin`` is the source behind each place; ``served_by_fallback`` users got the fallback's list
    whole (the selected one had none for them), ``topped_up`` users had a shorter list completed from the
    fallback, and ``short`` users still have fewer than ``top_k`` items (nothing left to recommend)."""

    lists: Candidates
    origin: np.ndarray
    served_by_fallback: int
    topped_up: int
    short: int


def with_fallback(
    lists: Candidates, fallback: CandidateSource, user_rows: np.ndarray, depth: int, name: str, top_k: int
) -> FilledLists:
    """``lists`` (from the source ``name``) with the users it cannot serve served by ``fallback`` (with its
    scores), and the lists shorter than ``top_k`` completed from it: items not already in the list, after
    them, with a NaN score (the model gave them none)."""
    items, scores = lists.items.copy(), lists.scores.copy()
    origin = np.full(items.shape, name, dtype=object)
    found = (items[:, : min(top_k, items.shape[1])] >= 0).sum(axis=1)
    needing = np.flatnonzero(found < min(top_k, items.shape[1]))
    if len(needing):
        backup = fallback.recommend(user_rows[needing], depth)
        for row, backup_items in zip(needing, backup.items, strict=True):
            present = set(items[row][items[row] >= 0].tolist())
            free = np.flatnonzero(items[row] < 0)
            fresh = [item for item in backup_items if item >= 0 and item not in present]
            for place, item in zip(free, fresh, strict=False):
                # The model gave these places no score, and the fallback's are on another scale.
                items[row, place], scores[row, place], origin[row, place] = item, np.nan, fallback.name
    after = (items[:, : min(top_k, items.shape[1])] >= 0).sum(axis=1)
    return FilledLists(
        Candidates(items, scores),
        origin,
        served_by_fallback=int(((found == 0) & (after > 0)).sum()),
        topped_up=int(((found > 0) & (after > found)).sum()),
        short=int((after < top_k).sum()),
    )


def recommendation_frame(
    final: Candidates,
    origin: np.ndarray,
    candidates: pd.DataFrame | None,
    users: IdIndex,
    items: IdIndex,
    top_k: int,
    new_item_places: np.ndarray | None = None,
    user_rows: np.ndarray | None = None,
    list_sources: tuple[str, ...] = (),
) -> pd.DataFrame:
    """The published lists: ``user_id``, ``item_id`` (raw IDs), ``rank``, ``score``, ``source`` (the source
    behind the place: ``origin``, one per place), ``sources`` (every source that proposed the item) and
    ``<source>_rank`` per candidate source (with no candidates: the one list that served, ranked as it
    ranked; ``list_sources`` name the columns every chunk has). Row ``i`` of ``final`` is user row ``user_rows[i]`` (default: row ``i``). ``new_item_place``
    is a column whenever ``new_item_places`` is given (new-item places are on), so every chunk of a list
    has the same schema (:data:`m6rec.io`'s list writer keeps it whole across chunks)."""
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
            "source": pd.Series(origin[positions, ranks], dtype="string"),
        }
    )
    if new_item_places is not None:
        frame["new_item_place"] = new_item_places[:, :top_k][positions, ranks]
    if candidates is not None:
        provenance = [SOURCES] + [column for column in candidates.columns if column.endswith("_rank")]
        frame = frame.merge(candidates[[USER_ROW, ITEM, *provenance]], on=[USER_ROW, ITEM], how="left")
        frame[SOURCES] = frame[SOURCES].astype("string").fillna(frame["source"])
    else:
        frame[SOURCES] = frame["source"]
        for source in sorted({*list_sources, *set(origin[positions, ranks].tolist())}):
            ranked = frame["source"] == source
            frame[f"{source}_rank"] = pd.Series(np.where(ranked, frame["rank"], np.nan), dtype="float32")
    return frame.drop(columns=[USER_ROW, ITEM])


@dataclass
class ScoredChunk:
    """One chunk of users' final lists: the published rows, the candidates' feature table (None without
    a ranker context), each source's own lists at the list depth (only when the scorer keeps them, for
    evaluation), the final lists before the cut to ``top_k``, the merged candidates, how many users the
    fallback served whole, how many list places went to new items, how many users' lists were topped up
    from the fallback and how many are still shorter than ``top_k``. It is an
    :class:`m6rec.evaluation.streamed.EvaluatedChunk`."""

    user_rows: np.ndarray
    recommendations: pd.DataFrame
    features: pd.DataFrame | None
    source_lists: dict[str, Candidates]
    final: Candidates
    candidates: pd.DataFrame | None
    served_by_fallback: int
    new_item_places: int
    topped_up: int = 0
    short_lists: int = 0


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
    # Sources the ranker learned from that cannot serve tonight: their features read as "not proposed".
    absent_sources: tuple[str, ...] = ()

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
        served = with_fallback(final, self.fallback, user_rows, depth, self.selected, settings.top_k)
        final = served.lists
        frame = recommendation_frame(
            final,
            served.origin,
            candidates,
            self.matrix.users,
            self.matrix.items,
            settings.top_k,
            places,
            user_rows,
        )
        own = {name: _cut(found, depth) for name, found in lists.items()} if self.keep_source_lists else {}
        return ScoredChunk(
            user_rows,
            frame,
            table,
            own,
            final,
            candidates,
            served.served_by_fallback,
            0 if places is None else int(places.sum()),
            served.topped_up,
            served.short,
        )

    def _ranked(self, table: pd.DataFrame, user_rows: np.ndarray, depth: int):
        from ranker.lists import rank_with_new_item_slots

        columns = self.columns or list(self.ranker.feature_names_)
        absent = {
            f"{source}_{kind}" for source in self.absent_sources for kind in ("rank", "score", "score_z")
        }
        unproposed = [name for name in columns if name not in table.columns and name in absent]
        if unproposed:
            table = table.assign(**{name: np.float32(np.nan) for name in unproposed})
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
