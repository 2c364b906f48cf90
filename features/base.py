"""The encoder contract: items in, one Parquet embedding file out (see ``features/store.py``).

An encoder says which items carry its modality and what its input is (``prepare``), turns a batch of
inputs into vectors (``encode``), and names itself (``identity``) so that content hashes change when the
model or its options do. ``encode_items`` runs it incrementally. An encoder knows its identity from the
moment it is built and loads its model only on the first ``encode``, so a run where nothing changed
loads no model and rewrites no file.
"""

from __future__ import annotations

import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import pandas as pd

from m6rec.data.contained import MediaLimits
from m6rec.embeddings.store import EncodeResult, IncrementalReport, embed_incrementally

if TYPE_CHECKING:
    from m6rec.cluster import Executor

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
    def prepare(
        self, items: pd.DataFrame, dataset_dir: Path, limits: MediaLimits | None = None
    ) -> EncoderInputs:
        """Select the items that carry this modality and build their inputs and fingerprints (media
        encoders read files only as ``limits`` allow: :func:`media_inputs`)."""

    @abstractmethod
    def encode(self, inputs: list) -> EncodeResult:
        """Vectors for a batch of inputs; failed positions get a reason instead of raising."""


@dataclass(frozen=True)
class RejectedInput:
    """An item's input that is never handed to the encoder (a media path the run may not read), with why;
    the item gets a null embedding and this reason as its problem."""

    reason: str


def media_inputs(
    items: pd.DataFrame, dataset_dir: Path, column: str, limits: MediaLimits | None = None
) -> EncoderInputs:
    """Items with a non-empty media path in ``column``, relative to ``dataset_dir``, with the resolved
    paths as inputs and the files' streamed hashes as fingerprints. A path that lands outside the dataset
    folder (and ``limits.extra_roots``), is not a regular file, is missing, too large or too slow to read
    becomes a :class:`RejectedInput` (:mod:`m6rec.data.contained`); nothing else opens it."""
    from m6rec.data.contained import RejectedPath, contained_path
    from m6rec.data.contract import ITEM_ID

    limits = limits or MediaLimits()
    if column not in items.columns:
        return EncoderInputs(keys=[], inputs=[], fingerprints=[])
    keys, inputs, fingerprints = [], [], []
    for key, raw in zip(items[ITEM_ID].astype(str), items[column].tolist(), strict=True):
        if raw is None or (not isinstance(raw, str) and pd.isna(raw)) or not str(raw).strip():
            continue
        keys.append(key)
        try:
            path = contained_path(Path(dataset_dir), str(raw), limits.extra_roots)
            fingerprints.append(limits.fingerprint(path))
            inputs.append(str(path))
        except RejectedPath as rejected:
            inputs.append(RejectedInput(str(rejected)))
            fingerprints.append(f"rejected:{rejected}")
    return EncoderInputs(keys=keys, inputs=inputs, fingerprints=fingerprints)


def encode_items(
    encoder: ItemEncoder,
    items: pd.DataFrame,
    dataset_dir: Path,
    out_path: Path,
    limits: MediaLimits | None = None,
    *,
    executor: Executor | None = None,
) -> IncrementalReport:
    """Embed ``items`` with ``encoder`` into ``out_path``, recomputing only new or changed items.

    The encoder's ``encode`` (and so its model load) runs only when some item is new or changed; when
    ``out_path`` already holds exactly these items, fingerprints and encoder identity, it is not rewritten.
    On a remote ``executor`` (:mod:`m6rec.cluster`) the items to encode go to its workers
    ``executor.partition_items`` at a time (each worker loads the model once; this process does not load
    it): the same vectors, within float tolerance, since a batch's padding can differ.
    """

    def encode(inputs: list) -> EncodeResult:
        if executor is None or not executor.remote:
            return _encode_accepted(encoder, inputs)
        return _encode_on_cluster(executor, encoder, inputs, executor.partition_items)

    prepared = encoder.prepare(items, Path(dataset_dir), limits)
    return embed_incrementally(
        out_path,
        modality=encoder.modality,
        key_column="item_id",
        keys=prepared.keys,
        fingerprints=prepared.fingerprints,
        inputs=prepared.inputs,
        identity=encoder.identity(),
        metadata=encoder.metadata(),
        encode=encode,
    )


def _encode_on_cluster(executor: Executor, encoder: ItemEncoder, inputs: list, size: int) -> EncodeResult:
    """:func:`_encode_accepted` by partitions of ``size`` inputs on ``executor``'s workers, put back in
    order (a partition of rejected inputs only comes back without columns)."""
    if not inputs:
        return EncodeResult(np.zeros((0, 0), dtype=np.float32))
    parts = executor.map(
        _encode_accepted,
        encoder,
        [(inputs[start : start + size],) for start in range(0, len(inputs), size)],
        f"{encoder.modality} embeddings",
        key=f"m6rec-{encoder.modality}-{uuid.uuid4().hex[:12]}",
    )
    width = max(part.vectors.shape[1] for part in parts)
    vectors = np.zeros((len(inputs), width), dtype=np.float32)
    failures = {}
    for index, part in enumerate(parts):
        offset = index * size
        if part.vectors.shape[1]:
            vectors[offset : offset + len(part.vectors)] = part.vectors
        failures.update({offset + position: reason for position, reason in part.failures.items()})
    return EncodeResult(vectors, failures)


def _encode_accepted(encoder: ItemEncoder, inputs: list) -> EncodeResult:
    """``encoder.encode`` on the inputs that are not :class:`RejectedInput`; those fail with their reason."""
    accepted = [position for position, value in enumerate(inputs) if not isinstance(value, RejectedInput)]
    failures = {
        position: value.reason for position, value in enumerate(inputs) if isinstance(value, RejectedInput)
    }
    if len(accepted) == len(inputs):
        return encoder.encode(inputs)
    if not accepted:
        return EncodeResult(np.zeros((len(inputs), 0), dtype=np.float32), failures)
    result = encoder.encode([inputs[position] for position in accepted])
    vectors = np.zeros((len(inputs), result.vectors.shape[1]), dtype=np.float32)
    vectors[accepted] = result.vectors
    failures.update({accepted[index]: reason for index, reason in result.failures.items()})
    return EncodeResult(vectors, failures)
