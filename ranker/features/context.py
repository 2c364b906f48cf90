"""The ranker's side inputs: :class:`RankerContext`, what the features are computed from besides the
candidates, and the per-user and per-item arrays it derives from them once per run."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property

import numpy as np
import pandas as pd
import scipy.sparse as sp

from m6rec.data.columns import ResolvedColumns, resolve_columns
from m6rec.data.contract import ITEM_ID, KG_HEAD, KG_TAIL, USER_ID
from m6rec.data.interactions import InteractionMatrix
from m6rec.embeddings.profiles import DEFAULT_HALF_LIFE_DAYS, DEFAULT_MAX_HISTORY, ProfileCache, history_pairs
from m6rec.embeddings.store import EmbeddingTable
from m6rec.vectors import unit_rows
from ranker.features.schema import _DECLARED, ITEM_SPACES, SECONDS_PER_DAY

# sim_last_* compares items in the first of these spaces that the context has embeddings for.
SIM_LAST_SPACES = ("fused", "text", "image", "audio", "kg")


@dataclass
class RankerContext:
    """Everything the ranker features need besides the candidates; derived arrays are computed once.

    Args:
        train: the interactions features are computed from (for training the ranker, those before the
            labels). Its ``timestamps`` (CSR of unix seconds per pair, NaN where unknown; read with
            ``getattr``, so a matrix without them works) enable the time features; without them they are
            NaN and "latest" falls back to item order.
        item_embeddings: modality name (``text``, ``image``, ``audio``, ``kg``, ``fused``; others are
            ignored) to item embeddings keyed by raw ``item_id``.
        user_profiles: modality to user vectors, either ``[n_users, dim]`` aligned with the training
            matrix rows (zero rows: no profile) or an embedding table keyed by raw ``user_id``. A modality
            with item embeddings but no given profile gets one from the training history: the
            recency-weighted mean of :func:`m6rec.embeddings.profiles.user_profiles`, from ``profiles``
            (the cache of this history that the pipeline shares with the content candidate source, so
            each profile is computed once) or else computed here with ``profile_half_life_days`` and
            ``profile_max_history``.
        two_tower_user_vectors, two_tower_item_vectors: the two-tower model's vectors, as arrays aligned
            with matrix rows / columns or as embedding tables keyed by raw ID; optional.
        items, users: attribute tables keyed by ``item_id`` / ``user_id``; their ``categorical`` columns
            (at most ``max_category_levels`` values, not all distinct) become ``item_<column>`` /
            ``user_<column>`` category features.
        item_columns, user_columns: the roles of those tables' columns (``Dataset.item_columns`` /
            ``Dataset.user_columns``); inferred from the tables when ``None``.
        kg: knowledge-graph triples (``head``, ``relation``, ``tail``) whose nodes include raw item IDs.
        reference_time: "now" for the time features (unix seconds or a datetime); default the latest
            training timestamp.
        recent_days: length of the ``item_pop_recent`` window.
        last_items: how many of the user's latest history items ``sim_last_*`` compares with.
    """

    train: InteractionMatrix
    item_embeddings: Mapping[str, EmbeddingTable] = field(default_factory=dict)
    user_profiles: Mapping[str, np.ndarray | EmbeddingTable] = field(default_factory=dict)
    two_tower_user_vectors: np.ndarray | EmbeddingTable | None = None
    two_tower_item_vectors: np.ndarray | EmbeddingTable | None = None
    items: pd.DataFrame | None = None
    users: pd.DataFrame | None = None
    item_columns: ResolvedColumns | None = None
    user_columns: ResolvedColumns | None = None
    kg: pd.DataFrame | None = None
    reference_time: float | datetime | None = None
    recent_days: float = 30.0
    last_items: int = 5
    profiles: ProfileCache | None = None
    profile_half_life_days: float | None = DEFAULT_HALF_LIFE_DAYS
    profile_max_history: int | None = DEFAULT_MAX_HISTORY
    max_category_levels: int = 50

    def __post_init__(self) -> None:
        if self.recent_days <= 0:
            raise ValueError(f"recent_days must be positive, got {self.recent_days}")
        if self.last_items < 1:
            raise ValueError(f"last_items must be at least 1, got {self.last_items}")
        for modality, profile in self.user_profiles.items():
            if isinstance(profile, np.ndarray) and (profile.ndim != 2 or len(profile) != self.train.n_users):
                raise ValueError(
                    f"user_profiles[{modality!r}] has shape {profile.shape}; expected "
                    f"({self.train.n_users}, dim) aligned with the training matrix rows"
                )

    @property
    def user_ids(self) -> np.ndarray:
        return self.train.users.ids

    @property
    def item_ids(self) -> np.ndarray:
        return self.train.items.ids

    @cached_property
    def history(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Training pairs ``(user rows, item columns, unix seconds or None)``, row-major."""
        return history_pairs(self.train)

    @cached_property
    def reference_seconds(self) -> float | None:
        """The reference time in unix seconds; None when neither given nor derivable from timestamps."""
        if self.reference_time is not None:
            if isinstance(self.reference_time, datetime):
                return pd.Timestamp(self.reference_time).timestamp()
            return float(self.reference_time)
        times = self.history[2]
        return None if times is None else float(np.nanmax(times))

    @cached_property
    def item_vectors(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Modality to (L2-normalised item vectors aligned with matrix columns, present mask)."""
        return {
            modality: _unit(*self.item_embeddings[modality].lookup(self.item_ids))
            for modality in ITEM_SPACES
            if modality in self.item_embeddings
        }

    @cached_property
    def _profile_cache(self) -> ProfileCache:
        return self.profiles or ProfileCache(
            self.train, half_life_days=self.profile_half_life_days, max_history=self.profile_max_history
        )

    @cached_property
    def _given_profiles(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """The ``user_profiles`` given, L2-normalised and aligned with the matrix rows."""
        return {
            modality: _unit(*_aligned(given, self.user_ids))
            for modality, given in self.user_profiles.items()
            if modality in self.item_embeddings
        }

    def user_profile_rows(self, modality: str, user_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(L2-normalised profiles, present mask) of the matrix rows ``user_rows`` in ``modality``: the
        given ``user_profiles``, else computed from the history for these rows (a chunk's users, so a
        million users' profiles are never held at once)."""
        user_rows = np.asarray(user_rows, dtype=np.int64)
        if modality in self._given_profiles:
            vectors, present = self._given_profiles[modality]
            return vectors[user_rows], present[user_rows]
        vectors, _ = self._profile_cache.rows(modality, self.item_embeddings[modality], user_rows)
        return _unit(vectors, np.linalg.norm(vectors, axis=1) > 0)

    @cached_property
    def two_tower(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
        """(user vectors, user present, item vectors, item present), or None without two-tower vectors."""
        if self.two_tower_user_vectors is None or self.two_tower_item_vectors is None:
            return None
        users, user_present = _aligned(self.two_tower_user_vectors, self.user_ids)
        items, item_present = _aligned(self.two_tower_item_vectors, self.item_ids)
        if users.shape[1] != items.shape[1]:
            raise ValueError(
                f"two-tower user vectors have {users.shape[1]} dimensions, item vectors {items.shape[1]}"
            )
        return users, user_present, items, item_present

    @cached_property
    def time_features(self) -> dict[str, np.ndarray] | None:
        """Per item ``recent_pop`` and ``first_seen``, per user ``last_seen`` (unix s); None without times."""
        rows, cols, times = self.history
        reference = self.reference_seconds
        if times is None or reference is None:
            return None
        stamped = np.isfinite(times)
        window_start = reference - self.recent_days * SECONDS_PER_DAY
        recent = stamped & (times > window_start) & (times <= reference)
        first_seen = np.full(self.train.n_items, np.nan)
        np.fmin.at(first_seen, cols[stamped], times[stamped])
        last_seen = np.full(self.train.n_users, np.nan)
        np.fmax.at(last_seen, rows[stamped], times[stamped])
        return {
            "recent_pop": np.bincount(cols[recent], minlength=self.train.n_items).astype(np.float32),
            "first_seen": first_seen,
            "last_seen": last_seen,
        }

    @cached_property
    def latest_space(self) -> str | None:
        """The item space of ``sim_last_*`` (the first of :data:`SIM_LAST_SPACES` there is), or None."""
        return next((name for name in SIM_LAST_SPACES if name in self.item_vectors), None)

    def latest_items(self, user_rows: np.ndarray) -> np.ndarray | None:
        """``[len(user_rows), last_items]`` item columns of those matrix rows' latest history items, latest
        first, -1 padded, for ``sim_last_*`` (None without a :attr:`latest_space`); computed for these rows
        only, so a chunk of users costs its own history.

        Only history items with a vector in the space count. Latest is by timestamp (a pair without one
        counts as the user's latest, as in the profiles); without timestamps, by item column, which
        follows first appearance in the interaction data.
        """
        if self.latest_space is None:
            return None
        rows, cols, times = history_pairs(self.train, user_rows)
        usable = self.item_vectors[self.latest_space][1][cols]
        rows, cols = rows[usable], cols[usable]
        recency = cols.astype(np.float64) if times is None else np.nan_to_num(times[usable], nan=np.inf)
        order = np.lexsort((-cols, -recency, rows))
        rows, cols = rows[order], cols[order]
        place = np.arange(len(rows)) - np.searchsorted(rows, rows, side="left")
        keep = place < self.last_items
        latest = np.full((len(user_rows), self.last_items), -1, dtype=np.int64)
        latest[rows[keep], place[keep]] = cols[keep]
        return latest

    @cached_property
    def kg_neighbours(self) -> tuple[sp.csr_matrix, np.ndarray, int] | None:
        """(item × node neighbour incidence, sorted user-node keys ``row * n_nodes + node``, n_nodes).

        A user's nodes are the history items themselves (when they are KG nodes) and their neighbours.
        """
        if self.kg is None or len(self.kg) == 0:
            return None
        heads = self.kg[KG_HEAD].astype(str).to_numpy(dtype=object)
        tails = self.kg[KG_TAIL].astype(str).to_numpy(dtype=object)
        nodes = pd.Index(pd.unique(np.concatenate([heads, tails])))
        head_nodes, tail_nodes = nodes.get_indexer(heads), nodes.get_indexer(tails)
        head_items, tail_items = self.train.items.positions(heads), self.train.items.positions(tails)
        item_side = np.concatenate([head_items, tail_items])
        node_side = np.concatenate([tail_nodes, head_nodes])
        linked = (item_side >= 0) & np.tile(head_nodes != tail_nodes, 2)  # self-loops are no neighbours
        n_items, n_nodes = self.train.n_items, len(nodes)
        neighbours = _binary(item_side[linked], node_side[linked], (n_items, n_nodes))
        item_nodes = nodes.get_indexer(self.item_ids.astype(str))
        in_kg = np.flatnonzero(item_nodes >= 0)
        itself = _binary(in_kg, item_nodes[in_kg], (n_items, n_nodes))
        history = self.train.matrix.tocsr().astype(np.float32)
        user_nodes = (history @ (neighbours + itself)).tocsr()
        user_nodes.sum_duplicates()
        user_nodes.eliminate_zeros()
        user_rows = np.repeat(np.arange(user_nodes.shape[0], dtype=np.int64), np.diff(user_nodes.indptr))
        keys = np.sort(user_rows * n_nodes + user_nodes.indices)
        return neighbours, keys, n_nodes

    @cached_property
    def categorical_attributes(self) -> list[tuple[str, np.ndarray, pd.Index, str]]:
        """(feature name, codes aligned with users or items (-1: none), levels, ``"user"``/``"item"``)."""
        reserved = set(_DECLARED)
        return [
            *_categorical_attributes(
                self.users,
                USER_ID,
                self.user_columns,
                self.user_ids,
                "user",
                self.max_category_levels,
                reserved,
            ),
            *_categorical_attributes(
                self.items,
                ITEM_ID,
                self.item_columns,
                self.item_ids,
                "item",
                self.max_category_levels,
                reserved,
            ),
        ]


def _unit(vectors: np.ndarray, present: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows scaled to unit length; rows of zero length (or not present) are zero and not present. The
    profiles are usually unit length already and are then shared, not copied (1.5 GB at a million users)."""
    return unit_rows(vectors, present)


def _aligned(vectors: np.ndarray | EmbeddingTable, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vectors aligned with ``ids`` and their present mask (zero vectors count as absent).

    ``vectors`` is a table keyed by raw ID or an array already aligned with ``ids``.
    """
    if isinstance(vectors, EmbeddingTable):
        vectors, present = vectors.lookup(ids)
    else:
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or len(vectors) != len(ids):
            raise ValueError(f"vectors of shape {vectors.shape} are not aligned with {len(ids)} IDs")
        present = np.ones(len(vectors), dtype=bool)
    return vectors, present & (np.linalg.norm(vectors, axis=1) > 0)


def _binary(rows: np.ndarray, cols: np.ndarray, shape: tuple[int, int]) -> sp.csr_matrix:
    matrix = sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=shape)
    matrix.sum_duplicates()
    matrix.data[:] = 1.0
    return matrix


def _categorical_attributes(
    table: pd.DataFrame | None,
    key: str,
    columns: ResolvedColumns | None,
    ids: np.ndarray,
    side: str,
    max_levels: int,
    reserved: set[str],
) -> list[tuple[str, np.ndarray, pd.Index, str]]:
    """The ``categorical`` columns of ``table`` (roles from ``columns``, inferred when ``None``) that take at
    most ``max_levels`` values, not all distinct, as codes aligned with ``ids`` and sorted levels."""
    if table is None or key not in table.columns:
        return []
    roles = columns if columns is not None else resolve_columns(table, key)
    table = table.drop_duplicates(subset=key, keep="first")
    positions = pd.Index(table[key].astype(str).to_numpy(dtype=object)).get_indexer(
        np.asarray(ids, dtype=object)
    )
    attributes = []
    for column in roles.categorical:
        name = f"{side}_{column}"
        if column not in table.columns or name in reserved:
            continue
        raw = table[column].to_numpy(dtype=object)
        filled = pd.notna(raw)
        if not filled.any():
            continue
        labels = np.full(len(raw), None, dtype=object)
        labels[filled] = raw[filled].astype(str)
        levels = pd.Index(np.unique(labels[filled].astype(str)))
        if len(levels) > max_levels or (len(levels) == filled.sum() and len(levels) > 1):
            continue
        value_codes = levels.get_indexer(labels)
        codes = np.where(positions >= 0, value_codes[np.maximum(positions, 0)], -1)
        attributes.append((name, codes.astype(np.int64), levels, side))
    return attributes
