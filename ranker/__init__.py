"""Second stage: ranker features over merged candidates and the LightGBM ranker that scores them."""

from ranker.features import (
    FEATURE_FAMILIES,
    FEATURES,
    KEY_COLUMNS,
    FeatureSpec,
    RankerContext,
    build_ranker_features,
    check_feature_table,
    feature_columns,
    read_feature_table,
    write_feature_table,
)
from ranker.model import LightGBMRanker

__all__ = [
    "FEATURES",
    "FEATURE_FAMILIES",
    "KEY_COLUMNS",
    "FeatureSpec",
    "LightGBMRanker",
    "RankerContext",
    "build_ranker_features",
    "check_feature_table",
    "feature_columns",
    "read_feature_table",
    "write_feature_table",
]
