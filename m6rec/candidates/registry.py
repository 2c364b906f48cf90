"""The candidate-source registry: every source class by name, the built-in ones included, and loading a
saved source.

Sources register themselves by subclassing :class:`m6rec.candidates.base.CandidateSource` with a
``name``; this module imports the built-in ones, so the base class never imports its implementations.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from m6rec.candidates import (  # noqa: F401 - imported to register the built-in sources
    ease,
    embedding_sources,
    ials,
    itemknn,
    kg_neighbours,
    popularity,
    sequential,
    trend,
)
from m6rec.candidates.base import _REGISTRY, CandidateSource, _unflatten
from m6rec.errors import ConfigError


def source_class(name: str) -> type[CandidateSource]:
    """The registered class of candidate source ``name``."""
    if name not in _REGISTRY:
        raise ConfigError(f"unknown candidate source {name!r}; known: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def create_source(name: str, **params) -> CandidateSource:
    """Instantiate a registered candidate source by name."""
    cls = source_class(name)
    try:
        return cls(**params)
    except TypeError as error:
        raise ConfigError(f"candidate source {name!r}: {error}") from None


def registered_sources() -> list[str]:
    """Names of every registered candidate source."""
    return sorted(_REGISTRY)


def load_source(directory: Path) -> CandidateSource:
    """Rebuild a fitted source saved with :meth:`CandidateSource.save`.

    A folder saved before sources recorded their item IDs still loads and serves its training matrix;
    folding new data into it raises :class:`~m6rec.candidates.base.FoldInError`.
    """
    directory = Path(directory)
    meta = json.loads((directory / "source.json").read_text())
    source = create_source(meta["name"], **meta["params"])
    with np.load(directory / "arrays.npz", allow_pickle=False) as arrays:
        stored = dict(arrays)
    for name in (*source.state_arrays, "seen"):
        setattr(source, name, _unflatten(name, stored))
    source.n_items = meta["n_items"]
    source.item_ids = stored.get("item_ids")
    source.learned_items = stored.get("learned_items", np.ones(source.n_items, dtype=bool))
    source._load_extra(directory)
    return source
