"""Typed run configuration, loaded from YAML with errors that name the bad key."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from m6rec.errors import ConfigError

DEFAULT_SEARCH_SPACES: dict[str, dict[str, list]] = {
    "popularity": {},
    "itemknn": {"neighbours": [20, 50, 100, 200, 400]},
    "ease": {"l2": [50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0]},
    "ials": {"factors": [32, 64, 128], "regularization": [3.0, 10.0, 30.0], "alpha": [1.0]},
}


@dataclass
class BaselineConfig:
    """Which baselines run, and how each one's hyperparameters are chosen on a validation fold.

    ``search_spaces[model]`` maps a parameter to the values tried (the grid); ``params[model]`` fixes
    parameters outright. The model with the best validation NDCG@``selection_k`` makes the final list.
    """

    models: list[str] = field(default_factory=lambda: ["popularity", "itemknn", "ease", "ials"])
    search_spaces: dict[str, dict[str, list]] = field(default_factory=lambda: dict(DEFAULT_SEARCH_SPACES))
    params: dict[str, dict] = field(default_factory=dict)
    validation_ratio: float = 0.1
    selection_k: int = 10


@dataclass
class RunConfig:
    """Configuration of ``m6rec run``.

    ``split`` holds out a test set from ``interactions`` (``random:0.25``, ``temporal:0.2``,
    ``leave-last-out:1``, ``cutoff:<time>``); ``none`` trains on everything. A ``test`` file in the
    dataset directory takes precedence over ``split``.
    """

    split: str = "none"
    seed: int = 42
    top_k: int = 10
    k_values: list[int] = field(default_factory=lambda: [10, 20])
    candidate_depth: int = 100
    skip_invalid_rows: bool = False
    baselines: BaselineConfig = field(default_factory=BaselineConfig)

    @classmethod
    def from_yaml(cls, path: str | Path) -> RunConfig:
        """Read a YAML file whose keys mirror this dataclass."""
        import yaml

        path = Path(path)
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as error:
            raise ConfigError(f"{path}: cannot read config: {error}") from None
        return from_mapping(cls, raw, str(path))


def from_mapping(cls, raw: dict, where: str):
    """Build dataclass ``cls`` from ``raw``, naming any unknown key or wrongly typed value."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(raw).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values = {}
    for key, value in raw.items():
        if key not in fields:
            raise ConfigError(f"{where}: unknown key {key!r}; known keys: {', '.join(fields)}")
        default = getattr(cls(), key)
        if dataclasses.is_dataclass(default):
            values[key] = from_mapping(type(default), value, f"{where}: {key}")
        elif default is not None and not _same_kind(default, value):
            raise ConfigError(f"{where}: {key} must be {type(default).__name__}, got {value!r}")
        else:
            values[key] = value
    return cls(**values)


def _same_kind(default, value) -> bool:
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, type(default))
