"""The modality table: every kind of item vector m6rec knows, one row each.

Read by the configuration (``embeddings.modalities`` and its help), the CLI help, the embedding stage
(which modalities a frozen encoder computes, which items column it reads) and the ranker's features (the
item spaces). Adding an encoder: a row here, its settings section in :class:`m6rec.config.EmbeddingConfig`
named like the row, and its :class:`features.base.ItemEncoder` subclass (``docs/architecture.md``).
Imports nothing heavy, so ``m6rec --help`` stays instant.
"""

from __future__ import annotations

from dataclasses import dataclass

from m6rec.data.contract import AUDIO_PATH, IMAGE_PATH


@dataclass(frozen=True)
class Modality:
    """One row of the modality table: its name (also the name of its ``embeddings`` settings section and
    of its encoder in ``features.encoders``), whether a frozen item encoder computes it (``encoded``),
    the items column its encoder reads (``media_column``: a path, by role; None for text and learned
    vectors), and whether its vectors are an item space (profiles, similarity features, fusion)."""

    name: str
    encoded: bool
    media_column: str | None
    item_space: bool
    description: str


# The one table of modalities: the configuration, the CLI help, the embedding stage and the ranker's
# features read it. A new encoder is a row here (with its settings section below) and its encoder class.
MODALITY_TABLE = (
    Modality("text", True, None, True, "item text, a transformers encoder"),
    Modality("image", True, IMAGE_PATH, True, "item pictures, open_clip"),
    Modality("audio", True, AUDIO_PATH, True, "item recordings, librosa summary features"),
    Modality("kg", False, None, True, "knowledge-graph embeddings, pykeen"),
    Modality("cf", False, None, False, "the two-tower collaborative model"),
)
MODALITIES = tuple(modality.name for modality in MODALITY_TABLE)
ENCODED_MODALITIES = tuple(modality.name for modality in MODALITY_TABLE if modality.encoded)
MEDIA_COLUMNS = {modality.name: modality.media_column for modality in MODALITY_TABLE if modality.media_column}
# Every item vector space: the modalities' that are one, and their fusion.
ITEM_SPACES = (*(modality.name for modality in MODALITY_TABLE if modality.item_space), "fused")
