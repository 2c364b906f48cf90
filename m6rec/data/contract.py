"""The dataset directory contract: which files a dataset directory holds and their columns.

A dataset directory holds ``interactions.{csv,parquet}`` and, optionally, ``items``, ``users``,
``kg`` and ``test`` tables in either format. IDs may be integers or strings; they are read as
strings so that raw IDs round-trip exactly into every output.
"""

from __future__ import annotations

from dataclasses import dataclass

TABLE_SUFFIXES = (".parquet", ".csv")

USER_ID = "user_id"
ITEM_ID = "item_id"
WEIGHT = "weight"
TIMESTAMP = "timestamp"
WEIGHT_ALIASES = ("rating", "weight", "play_count", "playcount", "count")

IMAGE_PATH = "image_path"
AUDIO_PATH = "audio_path"

KG_HEAD = "head"
KG_RELATION = "relation"
KG_TAIL = "tail"


@dataclass(frozen=True)
class TableSpec:
    """One table of the contract: its file stem, required columns and whether it may be absent."""

    stem: str
    required_columns: tuple[str, ...]
    optional: bool
    id_columns: tuple[str, ...]


INTERACTIONS = TableSpec("interactions", (USER_ID, ITEM_ID), optional=False, id_columns=(USER_ID, ITEM_ID))
TEST = TableSpec("test", (USER_ID, ITEM_ID), optional=True, id_columns=(USER_ID, ITEM_ID))
ITEMS = TableSpec("items", (ITEM_ID,), optional=True, id_columns=(ITEM_ID,))
USERS = TableSpec("users", (USER_ID,), optional=True, id_columns=(USER_ID,))
KG = TableSpec(
    "kg", (KG_HEAD, KG_RELATION, KG_TAIL), optional=True, id_columns=(KG_HEAD, KG_RELATION, KG_TAIL)
)

ALL_TABLES = (INTERACTIONS, TEST, ITEMS, USERS, KG)
