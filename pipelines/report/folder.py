"""What the report reads from a finished run folder: ``_Run`` (its run report and test metrics, its scored
recommendations and the item embedding tables the run already holds) and the JSON readers."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from m6rec.errors import M6RecError
from m6rec.evaluation.streamed import FINAL
from pipelines.run_folder import RECOMMENDATIONS

if TYPE_CHECKING:
    from m6rec.embeddings.store import EmbeddingTable


@dataclass
class _Run:
    """A finished run folder: its ``run.json`` and ``metrics.json`` (empty without a test set), and the item
    embedding tables the run already holds in memory, by name (``item_vectors``; empty: read the files)."""

    directory: Path
    summary: dict
    metrics: dict[str, dict[str, float]]
    problems: list[str]
    item_vectors: Mapping[str, EmbeddingTable] = field(default_factory=dict)

    @cached_property
    def recommendations(self) -> pd.DataFrame | None:
        """``rank``, ``score``, ``source`` of the recommended items with a finite score; None if absent."""
        path = self.directory / RECOMMENDATIONS
        if not path.exists():
            return None
        frame = pd.read_parquet(path, columns=["rank", "score", "source"])
        return frame[np.isfinite(frame["score"].to_numpy(dtype=float))]

    @property
    def selected(self) -> str:
        return str(self.summary.get("selected_model", "?"))

    def final_label(self) -> str:
        return f"{FINAL} ({self.selected})"


def _read_json(path: Path) -> dict:
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise M6RecError(f"{path}: not valid JSON ({error})") from error
    if not isinstance(payload, dict):
        raise M6RecError(f"{path}: expected a JSON object, found {type(payload).__name__}")
    return payload


def _read_metrics(path: Path) -> dict[str, dict[str, float]]:
    if not path.exists():
        return {}
    return {name: values for name, values in _read_json(path).items() if isinstance(values, dict)}
