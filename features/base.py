"""The encoder contract: items in, one Parquet embedding file out (see ``features/store.py``).

An encoder says which items carry its modality and what its input is (``prepare``), turns a batch of
inputs into vectors (``encode``), and names itself (``identity``) so that content hashes change when the
model or its options do. ``encode_items`` runs it incrementally. An encoder knows its identity from the
moment it is built and loads its model only on the first ``encode``, so a run where nothing changed
loads no model and rewrites no file.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pandas as pd

from m6rec.embeddings.store import EncodeResult, IncrementalReport, embed_incrementally

_ENCODERS: dict[str, type[ItemEncoder]] = {}


@dataclass(frozen=True)
class EncoderInputs:
    """Per item that carries the modality: its raw ID, the encoder input and a fingerprint of that input."""

    keys: list[str]
    inputs: list
    fingerprints: list[str]


class ItemEncoder(ABC):
    """Base class of the frozen item encoders (text, image, audio)."""

    modality: ClassVar[str]

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if getattr(cls, "modality", None):
            _ENCODERS[cls.modality] = cls

    @abstractmethod
    def identity(self) -> dict:
        """Everything that determines the output for a given input: encoder name, weights, options.

        Known without loading the model (``encode`` loads it), so deciding that nothing needs encoding
        costs no model load."""

    def metadata(self) -> dict:
        """Schema metadata of the output file; at least ``encoder`` and ``weights``, plus ``pretrained``."""
        return {**self.identity(), "modality": self.modality}

    @abstractmethod
    def prepare(self, items: pd.DataFrame, dataset_dir: Path) -> EncoderInputs:
        """Select the items that carry this modality and build their inputs and fingerprints."""

    @abstractmethod
    def encode(self, inputs: list) -> EncodeResult:
        """Vectors for a batch of inputs; failed positions get a reason instead of raising."""


def media_inputs(items: pd.DataFrame, dataset_dir: Path, column: str) -> EncoderInputs:
    """Items with a non-empty media path in ``column`` (relative to ``dataset_dir`` or absolute), with the
    resolved paths as inputs and the files' hashes as fingerprints."""
    from m6rec.data.contract import ITEM_ID
    from m6rec.embeddings.store import file_fingerprint

    if column not in items.columns:
        return EncoderInputs(keys=[], inputs=[], fingerprints=[])
    keys, paths = [], []
    for key, raw in zip(items[ITEM_ID].astype(str), items[column].tolist(), strict=True):
        if raw is None or (not isinstance(raw, str) and pd.isna(raw)) or not str(raw).strip():
            continue
        path = Path(str(raw).strip()).expanduser()
        keys.append(key)
        paths.append(str(path if path.is_absolute() else Path(dataset_dir) / path))
    return EncoderInputs(keys=keys, inputs=paths, fingerprints=[file_fingerprint(Path(p)) for p in paths])


def encode_items(
    encoder: ItemEncoder, items: pd.DataFrame, dataset_dir: Path, out_path: Path
) -> IncrementalReport:
    """Embed ``items`` with ``encoder`` into ``out_path``, recomputing only new or changed items.

    The encoder's ``encode`` (and so its model load) runs only when some item is new or changed; when
    ``out_path`` already holds exactly these items, fingerprints and encoder identity, it is not rewritten.
    """
    prepared = encoder.prepare(items, Path(dataset_dir))
    return embed_incrementally(
        out_path,
        modality=encoder.modality,
        key_column="item_id",
        keys=prepared.keys,
        fingerprints=prepared.fingerprints,
        inputs=prepared.inputs,
        identity=encoder.identity(),
        metadata=encoder.metadata(),
        encode=encoder.encode,
    )
