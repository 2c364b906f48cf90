"""The ranker's feature table: declared features computed for merged candidates, and its Parquet file.

Input is the merged candidate frame (one row per ``user_row``, ``item`` in training-matrix index space,
with ``<source>_score``, ``<source>_rank``, ``n_sources`` and ``sources``) and a :class:`RankerContext`
holding what is computed once per run. Output keeps the candidate rows in order: the two keys, the
passed-through per-source columns, the fixed features of :data:`FEATURES`, then the users' and items'
categorical attributes. Every column is declared: by name in :data:`KEY_COLUMNS` and :data:`FEATURES`,
or by pattern in :data:`FEATURE_FAMILIES`; :func:`check_feature_table` holds a frame to that declaration.

Missing inputs give NaN (a user without a profile, an item without a vector, no timestamps, no KG);
LightGBM treats NaN as missing. Times are unix seconds; ages are in days.

Modules, each importing only those above it: ``schema`` (the declared columns and the table's file),
``context`` (:class:`RankerContext`, the side inputs), ``builder`` (:func:`build_ranker_features`).
"""

from ranker.features.builder import build_ranker_features
from ranker.features.context import SIM_LAST_SPACES, RankerContext
from ranker.features.schema import (
    FEATURE_FAMILIES,
    FEATURES,
    ITEM,
    ITEM_SPACES,
    KEY_COLUMNS,
    METADATA_KEY,
    N_SOURCES,
    SECONDS_PER_DAY,
    SOURCES,
    TABLE_FORMAT_VERSION,
    TABLE_KIND,
    USER_ROW,
    FeatureFamily,
    FeatureSpec,
    FeatureTableWriter,
    check_feature_table,
    feature_columns,
    feature_specs,
    read_feature_table,
    write_feature_table,
)

__all__ = [
    "FeatureTableWriter",
    "FEATURES",
    "FEATURE_FAMILIES",
    "ITEM",
    "KEY_COLUMNS",
    "METADATA_KEY",
    "ITEM_SPACES",
    "N_SOURCES",
    "SECONDS_PER_DAY",
    "SIM_LAST_SPACES",
    "SOURCES",
    "TABLE_FORMAT_VERSION",
    "TABLE_KIND",
    "USER_ROW",
    "FeatureFamily",
    "FeatureSpec",
    "RankerContext",
    "build_ranker_features",
    "check_feature_table",
    "feature_columns",
    "feature_specs",
    "read_feature_table",
    "write_feature_table",
]
