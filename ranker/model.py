"""The second-stage ranker: an sklearn-shaped wrapper of LightGBM that saves itself as data.

``LightGBMRanker`` trains ``lightgbm.train`` on a feature DataFrame. Pandas ``category`` columns are native
LightGBM categorical features; their levels are recorded at fit time and every later frame (eval sets,
prediction, a loaded model) is encoded against those recorded levels, so a value keeps its code whatever
categories the frame at hand happens to carry. Values outside the recorded levels count as missing.

A saved ranker is a directory of ``model.txt`` (LightGBM's text model, truncated to the best iteration,
feature names included), ``importance.json`` and ``ranker.json`` (hyperparameters, best iteration,
features and categorical levels). Loading reads only those files; nothing is pickled.
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from m6rec.config import RankerParams, check_lightgbm_params
from m6rec.io import atomic_path, write_json

OBJECTIVES = ("lambdarank", "binary")
MODEL_FILE = "model.txt"
IMPORTANCE_FILE = "importance.json"
RANKER_FILE = "ranker.json"
RANKER_FORMAT = "m6rec-lightgbm-ranker"
RANKER_FORMAT_VERSION = 1
# LightGBM's default label_gain has 31 entries, so lambdarank labels must lie in 0..30.
MAX_LAMBDARANK_LABEL = 30
# Candidate rows scored at once: the float32 copy LightGBM reads is 4 bytes × features × this.
PREDICT_ROWS = 1 << 20
_FORBIDDEN_NAME_CHARACTERS = set(' \t\n",:[]{}')
_DEFAULTS = RankerParams()


class LightGBMRanker:
    """LightGBM ranker (``lambdarank``) or pointwise classifier (``binary``) over a feature DataFrame.

    Hyperparameters are keyword-only and named as in LightGBM's sklearn API; ``eval_at`` are the NDCG
    cut-offs reported on eval sets (the first one drives early stopping), ``early_stopping_rounds``
    (``None`` or 0 to disable) applies only when ``fit`` gets an ``eval_set``. ``monotone`` maps
    shell-style feature-name patterns to a direction (1: the score may only rise with the feature, -1:
    only fall, 0: free); the first pattern a feature matches applies, unmatched features are free.
    ``lightgbm_params`` are any other LightGBM parameters, by their LightGBM names or aliases (checked by
    :func:`m6rec.config.check_lightgbm_params`). The defaults are those of :class:`m6rec.config.RankerParams`.
    """

    def __init__(
        self,
        *,
        objective: str = _DEFAULTS.objective,
        n_estimators: int = _DEFAULTS.n_estimators,
        learning_rate: float = _DEFAULTS.learning_rate,
        num_leaves: int = _DEFAULTS.num_leaves,
        min_child_samples: int = _DEFAULTS.min_child_samples,
        feature_fraction: float = _DEFAULTS.feature_fraction,
        bagging_fraction: float = _DEFAULTS.bagging_fraction,
        bagging_freq: int = _DEFAULTS.bagging_freq,
        lambdarank_truncation_level: int = _DEFAULTS.lambdarank_truncation_level,
        eval_at: Sequence[int] = tuple(_DEFAULTS.eval_at),
        early_stopping_rounds: int | None = _DEFAULTS.early_stopping_rounds,
        monotone: Mapping[str, int] | None = None,
        seed: int = 0,
        n_jobs: int = _DEFAULTS.n_jobs,
        verbose: int = _DEFAULTS.verbose,
        lightgbm_params: Mapping[str, object] | None = None,
    ):
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
        if n_estimators < 1:
            raise ValueError(f"n_estimators must be at least 1, got {n_estimators}")
        eval_at = tuple(int(k) for k in eval_at)
        if not eval_at or min(eval_at) < 1:
            raise ValueError(f"eval_at must hold positive cut-offs, got {eval_at}")
        self.objective = objective
        self.n_estimators = int(n_estimators)
        self.learning_rate = float(learning_rate)
        self.num_leaves = int(num_leaves)
        self.min_child_samples = int(min_child_samples)
        self.feature_fraction = float(feature_fraction)
        self.bagging_fraction = float(bagging_fraction)
        self.bagging_freq = int(bagging_freq)
        self.lambdarank_truncation_level = int(lambdarank_truncation_level)
        self.eval_at = eval_at
        self.early_stopping_rounds = early_stopping_rounds
        self.monotone = _check_monotone(monotone)
        self.seed = int(seed)
        self.n_jobs = int(n_jobs)
        self.verbose = int(verbose)
        self.lightgbm_params = dict(check_lightgbm_params(dict(lightgbm_params or {}), ("lightgbm_params",)))
        self.booster_ = None
        self.best_iteration_: int | None = None
        self.feature_names_: list[str] | None = None
        self.categorical_levels_: dict[str, list] = {}
        self.evals_result_: dict = {}

    def get_params(self) -> dict:
        """The hyperparameters, as passed to the constructor (JSON-ready)."""
        return {
            "objective": self.objective,
            "n_estimators": self.n_estimators,
            "learning_rate": self.learning_rate,
            "num_leaves": self.num_leaves,
            "min_child_samples": self.min_child_samples,
            "feature_fraction": self.feature_fraction,
            "bagging_fraction": self.bagging_fraction,
            "bagging_freq": self.bagging_freq,
            "lambdarank_truncation_level": self.lambdarank_truncation_level,
            "eval_at": list(self.eval_at),
            "early_stopping_rounds": self.early_stopping_rounds,
            "monotone": dict(self.monotone),
            "seed": self.seed,
            "n_jobs": self.n_jobs,
            "verbose": self.verbose,
            "lightgbm_params": dict(self.lightgbm_params),
        }

    def fit(
        self,
        X: pd.DataFrame,
        y,
        *,
        group=None,
        eval_set=None,
        eval_group=None,
    ) -> LightGBMRanker:
        """Train on the feature frame ``X`` with labels ``y``; returns self.

        Args:
            X: one row per (query, candidate); numeric, bool and pandas ``category`` columns, every column
                a feature. For ``lambdarank`` the rows of a query must be contiguous.
            y: relevance labels; integers 0..30 for ``lambdarank``, 0/1 for ``binary``.
            group: query sizes in row order (LightGBM's ``group``), summing to ``len(X)``. Required for
                ``lambdarank``; ignored for ``binary``.
            eval_set: ``(X_eval, y_eval)`` or a list of such pairs, scored every round; the first one
                drives early stopping.
            eval_group: the query sizes of ``eval_set`` (a list of them when ``eval_set`` is a list).
        """
        import lightgbm as lgb

        if not isinstance(X, pd.DataFrame):
            raise TypeError(f"X must be a pandas DataFrame, got {type(X).__name__}")
        features = [str(column) for column in X.columns]
        _check_feature_names(features)
        labels = self._labels(y, len(X), "y")
        train_group = self._group(group, len(X), "group")
        eval_pairs, eval_groups = self._eval_sets(eval_set, eval_group)

        self.feature_names_ = features
        self.categorical_levels_ = {
            name: _levels(X[name], name)
            for name in features
            if isinstance(X[name].dtype, pd.CategoricalDtype)
        }
        categorical = list(self.categorical_levels_)
        params = self._lightgbm_params()
        directions = self.monotone_directions(features)
        if any(directions):
            params["monotone_constraints"] = directions
            params["monotone_constraints_method"] = "intermediate"
        train_set = lgb.Dataset(
            self._matrix(X),
            label=labels,
            group=train_group,
            feature_name=features,
            categorical_feature=categorical,
            params=params,
            free_raw_data=True,
        )
        valid_sets, valid_names = [], []
        for index, ((eval_X, eval_y), eval_sizes) in enumerate(zip(eval_pairs, eval_groups, strict=True)):
            valid_sets.append(
                lgb.Dataset(
                    self._matrix(eval_X),
                    label=self._labels(eval_y, len(eval_X), f"eval_set[{index}] labels"),
                    group=eval_sizes,
                    feature_name=features,
                    categorical_feature=categorical,
                    reference=train_set,
                    params=params,
                )
            )
            valid_names.append(f"eval_{index}")
        self.evals_result_ = {}
        callbacks = [lgb.record_evaluation(self.evals_result_)]
        if valid_sets and self.early_stopping_rounds:
            callbacks.append(
                lgb.early_stopping(self.early_stopping_rounds, first_metric_only=True, verbose=False)
            )
        booster = lgb.train(
            params,
            train_set,
            num_boost_round=self.n_estimators,
            valid_sets=valid_sets or None,
            valid_names=valid_names or None,
            callbacks=callbacks,
        )
        self.booster_ = booster
        self.best_iteration_ = int(booster.best_iteration) or int(booster.current_iteration())
        return self

    def monotone_directions(self, features: list[str]) -> list[int]:
        """Per feature, the direction of its first matching ``monotone`` pattern (0 when none matches)."""
        return [
            next(
                (
                    direction
                    for pattern, direction in self.monotone.items()
                    if fnmatch.fnmatchcase(name, pattern)
                ),
                0,
            )
            for name in features
        ]

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        """Scores (float64, higher is better) for the rows of ``X``; columns are picked by feature name.

        Rows are scored :data:`PREDICT_ROWS` at a time, so the float32 copy LightGBM reads stays small
        beside a chunk of millions of candidate rows (each row's score depends on that row alone)."""
        self._require_fitted()
        scores = np.empty(len(X), dtype=np.float64)
        for start in range(0, len(X), PREDICT_ROWS):
            rows = X.iloc[start : start + PREDICT_ROWS]
            scores[start : start + len(rows)] = self.booster_.predict(
                self._matrix(rows), num_iteration=self.best_iteration_
            )
        return scores

    def contributions(self, X: pd.DataFrame) -> pd.DataFrame:
        """Per row, each feature's additive contribution to the score (TreeSHAP), plus ``bias``."""
        self._require_fitted()
        values = self.booster_.predict(self._matrix(X), num_iteration=self.best_iteration_, pred_contrib=True)
        return pd.DataFrame(np.asarray(values), columns=[*self.feature_names_, "bias"], index=X.index)

    def feature_importance(self) -> pd.DataFrame:
        """``feature``, total ``gain`` and ``split`` count per feature up to the best iteration, by gain."""
        self._require_fitted()
        gain = self.booster_.feature_importance("gain", iteration=self.best_iteration_)
        split = self.booster_.feature_importance("split", iteration=self.best_iteration_)
        frame = pd.DataFrame(
            {
                "feature": pd.Series(self.feature_names_, dtype=object),
                "gain": np.asarray(gain, dtype=np.float64),
                "split": np.asarray(split, dtype=np.int64),
            }
        )
        return frame.sort_values(["gain", "split"], ascending=False, kind="stable").reset_index(drop=True)

    def save(self, directory: Path) -> None:
        """Write ``model.txt``, ``importance.json`` and ``ranker.json`` into ``directory``."""
        import lightgbm as lgb

        self._require_fitted()
        directory = Path(directory)
        with atomic_path(directory / MODEL_FILE) as temporary:
            self.booster_.save_model(temporary, num_iteration=self.best_iteration_)
        write_json(self.feature_importance().to_dict(orient="records"), directory / IMPORTANCE_FILE)
        write_json(
            {
                "format": RANKER_FORMAT,
                "format_version": RANKER_FORMAT_VERSION,
                "lightgbm_version": lgb.__version__,
                "params": self.get_params(),
                "best_iteration": self.best_iteration_,
                "features": self.feature_names_,
                "categorical_levels": self.categorical_levels_,
            },
            directory / RANKER_FILE,
        )

    @classmethod
    def load(cls, directory: Path) -> LightGBMRanker:
        """Rebuild a ranker written by :meth:`save`; it predicts exactly what the saved one did."""
        import lightgbm as lgb

        directory = Path(directory)
        meta = json.loads((directory / RANKER_FILE).read_text())
        if meta.get("format") != RANKER_FORMAT:
            raise ValueError(
                f"{directory / RANKER_FILE}: not an m6rec LightGBM ranker (format {meta.get('format')!r})"
            )
        if meta.get("format_version", 0) > RANKER_FORMAT_VERSION:
            raise ValueError(
                f"{directory / RANKER_FILE}: format version {meta['format_version']} is newer than this code "
                f"reads ({RANKER_FORMAT_VERSION})"
            )
        ranker = cls(**meta["params"])
        ranker.booster_ = lgb.Booster(model_file=str(directory / MODEL_FILE))
        ranker.best_iteration_ = int(meta["best_iteration"])
        ranker.feature_names_ = list(meta["features"])
        ranker.categorical_levels_ = {
            name: list(levels) for name, levels in meta["categorical_levels"].items()
        }
        if ranker.booster_.feature_name() != ranker.feature_names_:
            raise ValueError(
                f"{directory}: {MODEL_FILE} has features {ranker.booster_.feature_name()}, "
                f"{RANKER_FILE} lists {ranker.feature_names_}"
            )
        return ranker

    def _lightgbm_params(self) -> dict:
        params = {
            "objective": self.objective,
            "learning_rate": self.learning_rate,
            "num_leaves": self.num_leaves,
            "min_data_in_leaf": self.min_child_samples,
            "feature_fraction": self.feature_fraction,
            "bagging_fraction": self.bagging_fraction,
            "bagging_freq": self.bagging_freq,
            "seed": self.seed,
            "num_threads": self.n_jobs,
            "verbose": self.verbose,
            "deterministic": True,
            "force_row_wise": True,
            **self.lightgbm_params,
        }
        if self.objective == "lambdarank":
            params.update(
                metric="ndcg",
                eval_at=list(self.eval_at),
                lambdarank_truncation_level=self.lambdarank_truncation_level,
            )
        else:
            params["metric"] = "binary_logloss"
        return params

    def _labels(self, y, n_rows: int, what: str) -> np.ndarray:
        labels = np.asarray(y, dtype=np.float64).ravel()
        if len(labels) != n_rows:
            raise ValueError(f"{what} has {len(labels)} labels for {n_rows} rows")
        if not np.isfinite(labels).all():
            raise ValueError(f"{what} holds NaN or infinite labels")
        if self.objective == "lambdarank":
            if (
                (labels < 0).any()
                or (labels > MAX_LAMBDARANK_LABEL).any()
                or (labels != np.round(labels)).any()
            ):
                raise ValueError(
                    f"{what}: lambdarank needs integer relevance labels in 0..{MAX_LAMBDARANK_LABEL}"
                )
        elif not np.isin(labels, (0.0, 1.0)).all():
            raise ValueError(f"{what}: the binary objective needs 0/1 labels")
        return labels

    def _group(self, group, n_rows: int, what: str) -> np.ndarray | None:
        if self.objective != "lambdarank":
            return None
        if group is None:
            raise ValueError(
                f"objective 'lambdarank' needs {what}: the number of rows of each query, in row order "
                f"(summing to {n_rows}); pass {what}=..., or use objective='binary'"
            )
        sizes = np.asarray(group).ravel()
        if sizes.size == 0 or not np.issubdtype(sizes.dtype, np.number) or (sizes != np.round(sizes)).any():
            raise ValueError(f"{what} must be a non-empty sequence of whole query sizes")
        sizes = sizes.astype(np.int64)
        if (sizes < 1).any():
            raise ValueError(f"{what} holds a query size below 1 (at position {int(np.argmax(sizes < 1))})")
        if int(sizes.sum()) != n_rows:
            raise ValueError(f"{what} sums to {int(sizes.sum())} but there are {n_rows} rows")
        return sizes

    def _eval_sets(self, eval_set, eval_group) -> tuple[list[tuple], list]:
        if eval_set is None:
            return [], []
        single = isinstance(eval_set, tuple) and len(eval_set) == 2 and isinstance(eval_set[0], pd.DataFrame)
        pairs = [eval_set] if single else list(eval_set)
        if self.objective != "lambdarank":
            return pairs, [None] * len(pairs)
        if eval_group is None:
            raise ValueError(
                "objective 'lambdarank' needs eval_group (the query sizes of eval_set) with eval_set"
            )
        groups = [eval_group] if single else list(eval_group)
        if len(groups) != len(pairs):
            raise ValueError(f"eval_group has {len(groups)} entries for {len(pairs)} eval sets")
        return pairs, [
            self._group(sizes, len(pair[0]), f"eval_group[{index}]")
            for index, (pair, sizes) in enumerate(zip(pairs, groups, strict=True))
        ]

    def _matrix(self, X: pd.DataFrame) -> np.ndarray:
        """``X`` as float32 [rows, features] in feature order, categories as codes of the recorded levels."""
        if not isinstance(X, pd.DataFrame):
            raise TypeError(f"X must be a pandas DataFrame, got {type(X).__name__}")
        missing = [name for name in self.feature_names_ if name not in X.columns]
        if missing:
            raise ValueError(f"X lacks the feature column(s) {missing}")
        matrix = np.empty((len(X), len(self.feature_names_)), dtype=np.float32)
        for position, name in enumerate(self.feature_names_):
            column = X[name]
            if name in self.categorical_levels_:
                matrix[:, position] = _category_codes(column, self.categorical_levels_[name])
            elif pd.api.types.is_bool_dtype(column.dtype) or pd.api.types.is_numeric_dtype(column.dtype):
                matrix[:, position] = column.to_numpy(dtype=np.float32, na_value=np.nan)
            else:
                raise ValueError(
                    f"feature column {name!r} has dtype {column.dtype}; the ranker takes numeric, bool and "
                    f"pandas category columns"
                )
        return matrix

    def _require_fitted(self) -> None:
        if self.booster_ is None:
            raise RuntimeError("LightGBMRanker is not fitted; call fit() first")

    def __repr__(self) -> str:
        return f"LightGBMRanker(objective={self.objective!r}, n_estimators={self.n_estimators})"


def _check_monotone(monotone: Mapping[str, int] | None) -> dict[str, int]:
    monotone = dict(monotone or {})
    for pattern, direction in monotone.items():
        if not isinstance(pattern, str) or direction not in (-1, 0, 1) or isinstance(direction, bool):
            raise ValueError(
                f"monotone maps feature-name patterns to -1, 0 or 1, got {pattern!r}: {direction!r}"
            )
    return {pattern: int(direction) for pattern, direction in monotone.items()}


def _check_feature_names(features: list[str]) -> None:
    if len(set(features)) != len(features):
        repeated = sorted({name for name in features if features.count(name) > 1})
        raise ValueError(f"X has repeated column names {repeated}")
    for name in features:
        if not name or _FORBIDDEN_NAME_CHARACTERS & set(name):
            raise ValueError(f'feature name {name!r} is empty or has whitespace or one of {{}}[]",: in it')


def _levels(column: pd.Series, name: str) -> list:
    """The categories of a category column as JSON-ready Python values."""
    levels = column.cat.categories.tolist()
    try:
        json.dumps(levels)
    except TypeError:
        raise ValueError(f"category column {name!r} has levels that cannot be saved as JSON") from None
    return levels


def _category_codes(column: pd.Series, levels: list) -> np.ndarray:
    """Position of each value in ``levels`` as float32; NaN for missing values and values not in it."""
    lookup = pd.Index(levels, dtype=object)
    if isinstance(column.dtype, pd.CategoricalDtype):
        mapping = lookup.get_indexer(column.cat.categories.astype(object))
        codes = np.append(mapping, -1)[column.cat.codes.to_numpy()]  # code -1 (missing) picks the final -1
    else:
        codes = lookup.get_indexer(column.to_numpy(dtype=object))
    codes = codes.astype(np.float32)
    codes[codes < 0] = np.nan
    return codes
