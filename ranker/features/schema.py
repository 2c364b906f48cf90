"""The declared schema of the ranker's feature table: its key and feature columns with their dtypes and
meanings, the check that holds a frame to that declaration, and the table's Parquet file (write and read)."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from m6rec.io import StreamedParquet
from m6rec.modalities import ITEM_SPACES

USER_ROW = "user_row"
ITEM = "item"
N_SOURCES = "n_sources"
SOURCES = "sources"

SECONDS_PER_DAY = 86_400.0
METADATA_KEY = b"m6rec"
TABLE_KIND = "ranker_features"
TABLE_FORMAT_VERSION = 1


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
        for modality in ITEM_SPACES
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
    with FeatureTableWriter(path, rows=len(frame)) as writer:
        writer.write(frame)


class FeatureTableWriter:
    """Write a feature table chunk by chunk (one Parquet row group each) with its declaration in the
    schema metadata; ``rows`` is declared when known up front (streamed tables leave it out). The file
    appears only when every chunk is written (:class:`m6rec.io.StreamedParquet`)."""

    def __init__(self, path: Path, *, rows: int | None = None):
        self.path = Path(path)
        self.declared_rows = rows
        self._file = StreamedParquet(self.path)
        self.rows = 0

    def write(self, frame: pd.DataFrame) -> None:
        import pyarrow as pa

        specs = check_feature_table(frame)
        table = pa.Table.from_pandas(frame, preserve_index=False)
        if not self._file.is_open:
            fields = [
                table.schema.field(spec.name).with_metadata({b"description": spec.description.encode()})
                for spec in specs
            ]
            declaration = {
                "kind": TABLE_KIND,
                "format_version": TABLE_FORMAT_VERSION,
                "rows": self.declared_rows,
                "columns": [asdict(spec) for spec in specs],
            }
            metadata = {**(table.schema.metadata or {}), METADATA_KEY: json.dumps(declaration).encode()}
            self._schema = pa.schema(fields, metadata=metadata)
            self._file.open(self._schema)
        self._file.write(pa.Table.from_arrays(table.columns, schema=self._schema))
        self.rows += len(frame)

    def __enter__(self) -> FeatureTableWriter:
        return self

    def __exit__(self, error_type, *exc) -> None:
        self._file.close(success=error_type is None)


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


def _has_dtype(column: pd.Series, dtype: str) -> bool:
    if dtype == "category":
        return isinstance(column.dtype, pd.CategoricalDtype)
    return not isinstance(column.dtype, pd.CategoricalDtype) and column.dtype == np.dtype(dtype)
