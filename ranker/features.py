"""The ranker's feature table: declared features computed for merged candidates, and its Parquet file.

Input is the merged candidate frame (one row per ``user_row``, ``item`` in training-matrix index space,
with ``<source>_score``, ``<source>_rank``, ``n_sources`` and ``sources``) and a :class:`RankerContext`
holding what is computed once per run. Output keeps the candidate rows in order: the two keys, the
passed-through per-source columns, the fixed features of :data:`FEATURES`, then the users' and items'
categorical attributes. Every column is declared: by name in :data:`KEY_COLUMNS` and :data:`FEATURES`,
or by pattern in :data:`FEATURE_FAMILIES`; :func:`check_feature_table` holds a frame to that declaration.

Missing inputs give NaN (a user without a profile, an item without a vector, no timestamps, no KG);
LightGBM treats NaN as missing. Times are unix seconds; ages are in days.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from features.store import EmbeddingTable
from m6rec.data.columns import ResolvedColumns, resolve_columns
from m6rec.data.contract import ITEM_ID, KG_HEAD, KG_TAIL, TIMESTAMP, USER_ID
from m6rec.data.interactions import InteractionMatrix
from m6rec.io import atomic_path

USER_ROW = "user_row"
ITEM = "item"
N_SOURCES = "n_sources"
SOURCES = "sources"
MODALITIES = ("text", "image", "audio", "kg", "fused")
# sim_last_* compares items in the first of these spaces that the context has embeddings for.
SIM_LAST_SPACES = ("fused", "text", "image", "audio", "kg")
SECONDS_PER_DAY = 86_400.0
METADATA_KEY = b"m6rec"
TABLE_KIND = "ranker_features"
TABLE_FORMAT_VERSION = 1
# Pairs of (user, item) vectors are scored through a dense block product when at least 1/16 of the block
# is wanted, otherwise row by row; blocks hold at most this many scores.
_DENSE_WASTE_LIMIT = 16
_BLOCK_SCORES = 1 << 22
_GATHER_ROWS = 16_384


@dataclass(frozen=True)
class FeatureSpec:
    """One declared column: its name, dtype (numpy name or ``category``) and what it means."""

    name: str
    dtype: str
    description: str


@dataclass(frozen=True)
class FeatureFamily:
    """Columns declared by a name pattern, such as one score column per candidate source."""

    pattern: str
    regex: str
    dtype: str
    description: str

    def spec_for(self, name: str) -> FeatureSpec | None:
        """The spec of column ``name`` if it has this family's name pattern, else None."""
        match = re.fullmatch(self.regex, name)
        if match is None:
            return None
        placeholder = self.pattern[self.pattern.index("<") : self.pattern.index(">") + 1]
        return FeatureSpec(name, self.dtype, self.description.replace(placeholder, match.group(1)))


KEY_COLUMNS = [
    FeatureSpec(USER_ROW, "int64", "user row in the training interaction matrix (-1: user without history)"),
    FeatureSpec(ITEM, "int64", "item column in the training interaction matrix"),
]

FEATURES = [
    FeatureSpec(N_SOURCES, "int32", "number of candidate sources that proposed the item to the user"),
    *(
        FeatureSpec(
            f"cos_{modality}",
            "float32",
            f"cosine between the user's {modality} profile and the item's {modality} vector; "
            "NaN when either is missing",
        )
        for modality in MODALITIES
    ),
    FeatureSpec(
        "two_tower_dot",
        "float32",
        "dot product of the two-tower user and item vectors; NaN when either is missing",
    ),
    FeatureSpec("item_pop", "int32", "number of training users who interacted with the item"),
    FeatureSpec(
        "item_pop_share",
        "float32",
        "item_pop over the number of users with training history: the same scale whatever the data size",
    ),
    FeatureSpec(
        "item_pop_recent",
        "float32",
        "number of training users who interacted with the item in the recent window (default 30 days) ending "
        "at the reference time; NaN without timestamps",
    ),
    FeatureSpec(
        "item_age_days",
        "float32",
        "days from the item's first training interaction to the reference time; NaN without timestamps or "
        "training interactions",
    ),
    FeatureSpec("user_activity", "int32", "number of distinct items in the user's training history"),
    FeatureSpec(
        "user_activity_share",
        "float32",
        "user_activity over the mean activity of users with training history: the same scale whatever the "
        "data size",
    ),
    FeatureSpec(
        "user_days_since_last",
        "float32",
        "days from the user's latest training interaction to the reference time; NaN without timestamps or "
        "history",
    ),
    FeatureSpec(
        "sim_last_max",
        "float32",
        "highest cosine between the item and the user's latest history items (default 5) in the fused space, "
        "else the first modality present; NaN when either side lacks vectors",
    ),
    FeatureSpec("sim_last_mean", "float32", "mean of the same cosines as sim_last_max"),
    FeatureSpec(
        "kg_overlap",
        "float32",
        "number of the item's KG neighbours that are the user's history items or their KG neighbours; "
        "NaN without a KG",
    ),
    FeatureSpec(
        "kg_overlap_norm",
        "float32",
        "kg_overlap over the item's number of KG neighbours; NaN without a KG or when the item has none",
    ),
]

FEATURE_FAMILIES = [
    FeatureFamily(
        "<source>_score",
        r"(.+)_score",
        "float32",
        "score candidate source <source> gave the item; NaN when it did not propose it",
    ),
    FeatureFamily(
        "<source>_rank",
        r"(.+)_rank",
        "float32",
        "rank candidate source <source> gave the item (best first); NaN when it did not propose it",
    ),
    FeatureFamily(
        "<source>_score_z",
        r"(.+)_score_z",
        "float32",
        "score of candidate source <source> standardised over the candidates it proposed to the user "
        "(minus their mean, over their standard deviation; 0 when that is 0); NaN when it did not propose "
        "the item",
    ),
    FeatureFamily(
        "user_<attribute>", r"user_(.+)", "category", "the user's categorical attribute <attribute>"
    ),
    FeatureFamily(
        "item_<attribute>", r"item_(.+)", "category", "the item's categorical attribute <attribute>"
    ),
]

_DECLARED = {spec.name: spec for spec in (*KEY_COLUMNS, *FEATURES)}
_SOURCE_COLUMN = re.compile(r"(.+)_(score|rank)")


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
            recency-weighted mean of :func:`features.profiles.user_profiles` (``profile_half_life_days``,
            ``profile_max_history``), the same profile the embedding candidate sources query with.
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
    profile_half_life_days: float | None = 30.0
    profile_max_history: int | None = 200
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
        matrix = self.train.matrix.tocsr()
        rows = np.repeat(np.arange(matrix.shape[0], dtype=np.int64), np.diff(matrix.indptr))
        cols = matrix.indices.astype(np.int64)
        timestamps = getattr(self.train, "timestamps", None)
        if timestamps is None:
            return rows, cols, None
        stamped = sp.coo_matrix(timestamps)
        keys = stamped.row.astype(np.int64) * matrix.shape[1] + stamped.col
        order = np.argsort(keys, kind="stable")
        keys, values = keys[order], stamped.data.astype(np.float64)[order]
        times = np.full(len(rows), np.nan)
        if len(keys):
            wanted = rows * matrix.shape[1] + cols
            found = np.minimum(np.searchsorted(keys, wanted), len(keys) - 1)
            hit = keys[found] == wanted
            times[hit] = values[found[hit]]
        return rows, cols, times if np.isfinite(times).any() else None

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
            for modality in MODALITIES
            if modality in self.item_embeddings
        }

    @cached_property
    def user_vectors(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Modality to (L2-normalised user profiles aligned with matrix rows, present mask)."""
        from features.profiles import user_profiles

        profiles = {}
        for modality in self.item_vectors:
            given = self.user_profiles.get(modality)
            if given is not None:
                profiles[modality] = _unit(*_aligned(given, self.user_ids))
                continue
            rows, cols, times = self.history
            frame = pd.DataFrame({USER_ID: self.user_ids[rows], ITEM_ID: self.item_ids[cols]})
            if times is not None:
                frame[TIMESTAMP] = times
            user_ids, vectors, present = user_profiles(
                frame,
                self.item_embeddings[modality],
                half_life_days=self.profile_half_life_days,
                max_history=self.profile_max_history,
            )
            aligned = np.zeros((self.train.n_users, vectors.shape[1]), dtype=np.float32)
            aligned[self.train.users.positions(user_ids)] = np.where(present[:, None], vectors, 0.0)
            profiles[modality] = _unit(aligned, np.linalg.norm(aligned, axis=1) > 0)
        return profiles

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
    def latest_items(self) -> tuple[str, np.ndarray] | None:
        """(space, ``[n_users, last_items]`` item columns, latest first, -1 padded) for ``sim_last_*``.

        Only history items with a vector in the space count. Latest is by timestamp (a pair without one
        counts as the user's latest, as in the profiles); without timestamps, by item column, which
        follows first appearance in the interaction data.
        """
        space = next((name for name in SIM_LAST_SPACES if name in self.item_vectors), None)
        if space is None:
            return None
        rows, cols, times = self.history
        usable = self.item_vectors[space][1][cols]
        rows, cols = rows[usable], cols[usable]
        recency = cols.astype(np.float64) if times is None else np.nan_to_num(times[usable], nan=np.inf)
        order = np.lexsort((-cols, -recency, rows))
        rows, cols = rows[order], cols[order]
        place = np.arange(len(rows)) - np.searchsorted(rows, rows, side="left")
        keep = place < self.last_items
        latest = np.full((self.train.n_users, self.last_items), -1, dtype=np.int64)
        latest[rows[keep], place[keep]] = cols[keep]
        return space, latest

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


def build_ranker_features(candidates: pd.DataFrame, context: RankerContext) -> pd.DataFrame:
    """The declared feature table of ``candidates`` (same rows, same order, fresh index).

    Args:
        candidates: merged candidates with integer ``user_row`` and ``item`` (training-matrix index space),
            any ``<source>_score`` / ``<source>_rank`` columns, and ``n_sources`` (counted from the rank
            columns when absent); ``sources`` and other columns are dropped. A ``user_row`` outside the
            matrix is a user without history.
        context: the run's :class:`RankerContext`.

    Returns:
        Keys, per-source columns (float32, sorted by source), each ``<source>_score_z``, :data:`FEATURES`,
        then ``user_*`` and ``item_*`` category columns; it passes :func:`check_feature_table`.
    """
    user_rows, items = _keys(candidates, context.train)
    known_user = (user_rows >= 0) & (user_rows < context.train.n_users)
    users = np.where(known_user, user_rows, 0)
    columns: dict[str, np.ndarray | pd.Categorical] = {USER_ROW: user_rows, ITEM: items}
    source_columns = _source_columns(candidates)
    for name in source_columns:
        columns[name] = _as_float32(candidates[name], name)
    for name in source_columns:
        if name.endswith("_score"):
            columns[f"{name}_z"] = _within_user_z(columns[name], user_rows)
    columns[N_SOURCES] = _n_sources(candidates, source_columns)

    for modality in MODALITIES:
        columns[f"cos_{modality}"] = _cosine(context, modality, users, known_user, items)
    columns["two_tower_dot"] = _two_tower_dot(context, users, known_user, items)

    columns["item_pop"] = context.train.item_popularity().astype(np.int32)[items]
    activity = context.train.user_activity()
    active_users = max(int((activity > 0).sum()), 1)
    columns["item_pop_share"] = (columns["item_pop"] / active_users).astype(np.float32)
    times = context.time_features
    reference = context.reference_seconds
    nan_rows = np.full(len(items), np.nan, dtype=np.float32)
    if times is None:
        columns["item_pop_recent"] = nan_rows
        columns["item_age_days"] = nan_rows.copy()
    else:
        columns["item_pop_recent"] = times["recent_pop"][items]
        columns["item_age_days"] = ((reference - times["first_seen"][items]) / SECONDS_PER_DAY).astype(
            np.float32
        )
    columns["user_activity"] = np.where(known_user, activity[users], 0).astype(np.int32)
    mean_activity = float(activity[activity > 0].mean()) if (activity > 0).any() else 1.0
    columns["user_activity_share"] = (columns["user_activity"] / mean_activity).astype(np.float32)
    if times is None:
        columns["user_days_since_last"] = nan_rows.copy()
    else:
        last_seen = np.where(known_user, times["last_seen"][users], np.nan)
        columns["user_days_since_last"] = ((reference - last_seen) / SECONDS_PER_DAY).astype(np.float32)

    columns["sim_last_max"], columns["sim_last_mean"] = _similarity_to_latest(
        context, users, known_user, items
    )
    columns["kg_overlap"], columns["kg_overlap_norm"] = _kg_overlap(context, users, known_user, items)

    for name, codes, levels, side in context.categorical_attributes:
        row_codes = np.where(known_user, codes[users], -1) if side == "user" else codes[items]
        columns[name] = pd.Categorical.from_codes(row_codes, categories=levels)
    return pd.DataFrame(columns)


def feature_columns(frame: pd.DataFrame) -> list[str]:
    """The columns of a feature table that the ranker learns from: every column but the keys."""
    keys = {spec.name for spec in KEY_COLUMNS}
    return [str(column) for column in frame.columns if column not in keys]


def feature_specs(frame: pd.DataFrame) -> list[FeatureSpec]:
    """The declared spec of each column of ``frame``, in column order; ValueError on an undeclared column."""
    specs = []
    for column in frame.columns:
        name = str(column)
        if name in _DECLARED:
            specs.append(_DECLARED[name])
            continue
        matching = [spec for family in FEATURE_FAMILIES if (spec := family.spec_for(name)) is not None]
        if not matching:
            patterns = ", ".join(family.pattern for family in FEATURE_FAMILIES)
            raise ValueError(f"column {name!r} is not a declared ranker feature (nor one of {patterns})")
        fitting = [spec for spec in matching if _has_dtype(frame[column], spec.dtype)]
        specs.append((fitting or matching)[0])
    return specs


def check_feature_table(frame: pd.DataFrame) -> list[FeatureSpec]:
    """Check ``frame`` against the declaration: every key and feature present, every dtype as declared.

    Returns the specs of its columns; raises ValueError naming the first offending column.
    """
    for spec in (*KEY_COLUMNS, *FEATURES):
        if spec.name not in frame.columns:
            raise ValueError(f"feature table lacks column {spec.name!r} ({spec.description})")
    if frame.columns.duplicated().any():
        raise ValueError(
            f"feature table repeats column(s) {sorted(set(frame.columns[frame.columns.duplicated()]))}"
        )
    specs = feature_specs(frame)
    for spec in specs:
        if not _has_dtype(frame[spec.name], spec.dtype):
            raise ValueError(
                f"column {spec.name!r} has dtype {frame[spec.name].dtype}, declared {spec.dtype}"
            )
    return specs


def write_feature_table(frame: pd.DataFrame, path: Path) -> None:
    """Write a checked feature table as Parquet, atomically.

    The schema metadata key ``m6rec`` holds JSON with the table kind, format version and every column's
    spec (name, dtype, description); each field also carries its description in its own metadata.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    specs = check_feature_table(frame)
    table = pa.Table.from_pandas(frame, preserve_index=False)
    fields = [
        table.schema.field(spec.name).with_metadata({b"description": spec.description.encode()})
        for spec in specs
    ]
    declaration = {
        "kind": TABLE_KIND,
        "format_version": TABLE_FORMAT_VERSION,
        "rows": len(frame),
        "columns": [asdict(spec) for spec in specs],
    }
    metadata = {**(table.schema.metadata or {}), METADATA_KEY: json.dumps(declaration).encode()}
    table = pa.Table.from_arrays(table.columns, schema=pa.schema(fields, metadata=metadata))
    with atomic_path(path) as temporary:
        pq.write_table(table, temporary)


def read_feature_table(path: Path) -> pd.DataFrame:
    """Read a feature table written by :func:`write_feature_table` and check it against the declaration."""
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    raw = (table.schema.metadata or {}).get(METADATA_KEY)
    if raw is None or json.loads(raw).get("kind") != TABLE_KIND:
        raise ValueError(f"{path}: not an m6rec ranker feature table (no '{METADATA_KEY.decode()}' metadata)")
    frame = table.to_pandas()
    check_feature_table(frame)
    return frame


def _keys(candidates: pd.DataFrame, train: InteractionMatrix) -> tuple[np.ndarray, np.ndarray]:
    for name in (USER_ROW, ITEM):
        if name not in candidates.columns:
            raise ValueError(f"candidates lack column {name!r}")
        if not pd.api.types.is_integer_dtype(candidates[name].dtype):
            raise ValueError(f"candidates column {name!r} must be integer, got {candidates[name].dtype}")
    user_rows = candidates[USER_ROW].to_numpy(dtype=np.int64)
    items = candidates[ITEM].to_numpy(dtype=np.int64)
    outside = (items < 0) | (items >= train.n_items)
    if outside.any():
        raise ValueError(
            f"candidates column {ITEM!r} holds {int(items[np.argmax(outside)])}, outside the "
            f"{train.n_items} items of the training matrix"
        )
    return user_rows, items


def _source_columns(candidates: pd.DataFrame) -> list[str]:
    names = [
        str(column)
        for column in candidates.columns
        if column not in (USER_ROW, ITEM, N_SOURCES, SOURCES) and _SOURCE_COLUMN.fullmatch(str(column))
    ]
    return sorted(names, key=lambda name: (_SOURCE_COLUMN.fullmatch(name).group(1), name.endswith("_rank")))


def _as_float32(column: pd.Series, name: str) -> np.ndarray:
    if not (pd.api.types.is_numeric_dtype(column.dtype) or pd.api.types.is_bool_dtype(column.dtype)):
        raise ValueError(f"candidates column {name!r} must be numeric, got {column.dtype}")
    return column.to_numpy(dtype=np.float32, na_value=np.nan)


def _within_user_z(scores: np.ndarray, user_rows: np.ndarray) -> np.ndarray:
    """Each score minus the mean of its user's scores, over their (population) standard deviation.

    Missing scores stay NaN and do not count; a user whose scores are all equal gets 0.
    """
    result = np.full(len(scores), np.nan, dtype=np.float32)
    present = ~np.isnan(scores)
    if not present.any():
        return result
    _, group = np.unique(user_rows[present], return_inverse=True)
    values = scores[present].astype(np.float64)
    count = np.bincount(group)
    mean = np.bincount(group, weights=values) / count
    centred = values - mean[group]
    spread = np.sqrt(np.bincount(group, weights=centred**2) / count)[group]
    result[present] = np.divide(centred, spread, out=np.zeros_like(centred), where=spread > 0)
    return result


def _n_sources(candidates: pd.DataFrame, source_columns: list[str]) -> np.ndarray:
    if N_SOURCES in candidates.columns:
        counts = candidates[N_SOURCES]
        if counts.isna().any():
            raise ValueError(f"candidates column {N_SOURCES!r} has missing values")
        return counts.to_numpy(dtype=np.int32)
    ranks = [name for name in source_columns if name.endswith("_rank")] or source_columns
    return candidates[ranks].notna().sum(axis=1).to_numpy(dtype=np.int32)


def _cosine(
    context: RankerContext, modality: str, users: np.ndarray, known_user: np.ndarray, items: np.ndarray
) -> np.ndarray:
    result = np.full(len(items), np.nan, dtype=np.float32)
    if modality not in context.item_vectors:
        return result
    item_vectors, item_present = context.item_vectors[modality]
    user_vectors, user_present = context.user_vectors[modality]
    if user_vectors.shape[1] != item_vectors.shape[1]:
        raise ValueError(
            f"{modality} user profiles have {user_vectors.shape[1]} dimensions, "
            f"item vectors {item_vectors.shape[1]}"
        )
    scored = np.flatnonzero(known_user & user_present[users] & item_present[items])
    result[scored] = _pair_dots(user_vectors, item_vectors, users[scored], items[scored])
    return result


def _two_tower_dot(
    context: RankerContext, users: np.ndarray, known_user: np.ndarray, items: np.ndarray
) -> np.ndarray:
    result = np.full(len(items), np.nan, dtype=np.float32)
    if context.two_tower is None:
        return result
    user_vectors, user_present, item_vectors, item_present = context.two_tower
    scored = np.flatnonzero(known_user & user_present[users] & item_present[items])
    result[scored] = _pair_dots(user_vectors, item_vectors, users[scored], items[scored])
    return result


def _similarity_to_latest(
    context: RankerContext, users: np.ndarray, known_user: np.ndarray, items: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    nan_rows = np.full(len(items), np.nan, dtype=np.float32)
    if context.latest_items is None:
        return nan_rows, nan_rows.copy()
    space, latest = context.latest_items
    vectors, present = context.item_vectors[space]
    history = np.where(known_user[:, None], latest[users], -1)
    history[~present[items]] = -1
    rows, slots = np.nonzero(history >= 0)
    similarities = np.full(history.shape, np.nan, dtype=np.float32)
    similarities[rows, slots] = _pair_dots(vectors, vectors, history[rows, slots], items[rows])
    counted = np.isfinite(similarities)
    count = counted.sum(axis=1)
    highest = np.where(counted, similarities, -np.inf).max(axis=1)
    total = np.where(counted, similarities, 0.0).sum(axis=1)
    highest = np.where(count > 0, highest, np.nan).astype(np.float32)
    mean = np.divide(total, count, out=np.full(len(items), np.nan, dtype=np.float32), where=count > 0)
    return highest, mean.astype(np.float32)


def _kg_overlap(
    context: RankerContext, users: np.ndarray, known_user: np.ndarray, items: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    if context.kg_neighbours is None:
        nan_rows = np.full(len(items), np.nan, dtype=np.float32)
        return nan_rows, nan_rows.copy()
    neighbours, user_keys, n_nodes = context.kg_neighbours
    sizes = np.diff(neighbours.indptr)[items]
    row_of_pair = np.repeat(np.arange(len(items)), sizes)
    offsets = np.arange(int(sizes.sum())) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    nodes = neighbours.indices[np.repeat(neighbours.indptr[items], sizes) + offsets].astype(np.int64)
    keys = users[row_of_pair] * n_nodes + nodes
    found = np.searchsorted(user_keys, keys)
    hit = found < len(user_keys)
    hit[hit] = user_keys[found[hit]] == keys[hit]
    hit &= known_user[row_of_pair]
    overlap = np.bincount(row_of_pair, weights=hit, minlength=len(items)).astype(np.float32)
    norm = np.divide(overlap, sizes, out=np.full(len(items), np.nan, dtype=np.float32), where=sizes > 0)
    return overlap, norm.astype(np.float32)


def _pair_dots(
    left: np.ndarray, right: np.ndarray, left_rows: np.ndarray, right_rows: np.ndarray
) -> np.ndarray:
    """``left[left_rows[p]] · right[right_rows[p]]`` for every pair ``p``, as float32.

    When the distinct left rows times all right rows are not much more than the pairs wanted (the usual
    case: a few hundred candidates per user over a catalogue of thousands), blocks of the dense product
    are computed and the pairs picked out; otherwise the pairs are gathered row by row.
    """
    out = np.empty(len(left_rows), dtype=np.float32)
    if len(left_rows) == 0:
        return out
    distinct = np.flatnonzero(np.bincount(left_rows, minlength=len(left)))
    if len(distinct) * len(right) <= _DENSE_WASTE_LIMIT * len(left_rows):
        slot = np.zeros(len(left), dtype=np.int64)
        slot[distinct] = np.arange(len(distinct))
        inverse = slot[left_rows]
        block = max(1, _BLOCK_SCORES // max(len(right), 1))
        right_t = np.ascontiguousarray(right.T)
        if len(distinct) <= block:
            out[:] = (left[distinct] @ right_t)[inverse, right_rows]
            return out
        order = np.argsort(inverse // block, kind="stable")
        block_starts = np.searchsorted(inverse[order] // block, np.arange(0, len(distinct) // block + 2))
        for number, start in enumerate(range(0, len(distinct), block)):
            chosen = order[block_starts[number] : block_starts[number + 1]]
            scores = left[distinct[start : start + block]] @ right_t
            out[chosen] = scores[inverse[chosen] - start, right_rows[chosen]]
        return out
    for start in range(0, len(left_rows), _GATHER_ROWS):
        stop = start + _GATHER_ROWS
        out[start:stop] = np.einsum("ij,ij->i", left[left_rows[start:stop]], right[right_rows[start:stop]])
    return out


def _unit(vectors: np.ndarray, present: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows scaled to unit length; rows of zero length (or not present) are zero and not present."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1)
    present = np.asarray(present, dtype=bool) & (norms > 0)
    unit = np.zeros_like(vectors)
    unit[present] = vectors[present] / norms[present, None]
    return unit, present


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


def _has_dtype(column: pd.Series, dtype: str) -> bool:
    if dtype == "category":
        return isinstance(column.dtype, pd.CategoricalDtype)
    return not isinstance(column.dtype, pd.CategoricalDtype) and column.dtype == np.dtype(dtype)
