"""Column roles of the items and users tables: what each attribute column holds, declared or inferred.

Every consumer of item and user attributes (the text template, the KG attribute relations, the ranker's
category features, the two-tower user attributes, the media encoders) asks the roles resolved here
instead of guessing from dtypes itself. A role is one of :data:`COLUMN_ROLES`:

- ``text``: free text (titles, descriptions, long or mostly distinct strings),
- ``categorical``: short strings taking few distinct values (multi-valued ``"A|B"`` fields count each
  value), booleans and pandas categoricals,
- ``numeric``: numbers, also numbers written as strings (every CSV column is read as strings),
- ``image_path`` / ``audio_path``: media files (by default the columns of those names),
- ``ignored``: used by no consumer (by default: columns without any value).

Roles come from ``columns.yaml`` in the dataset directory and the run configuration's ``columns``
section (:class:`ColumnRoles`); :func:`resolve_columns` infers the undeclared ones. This module needs
only pydantic at import time, so the configuration can import :class:`ColumnRoles`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

from m6rec.data.contract import AUDIO_PATH, IMAGE_PATH

if TYPE_CHECKING:
    import pandas as pd

Role = Literal["text", "categorical", "numeric", "image_path", "audio_path", "ignored"]
COLUMN_ROLES: tuple[Role, ...] = get_args(Role)
TABLES = ("items", "users")
COLUMNS_FILE = "columns.yaml"

MEDIA_ROLES: dict[str, Role] = {IMAGE_PATH: "image_path", AUDIO_PATH: "audio_path"}
FREE_TEXT_COLUMN_NAMES = frozenset({"title", "name", "description"})
MULTI_VALUE_COLUMN_NAMES = frozenset(
    {"tags", "tag", "genres", "genre", "categories", "keywords", "labels", "styles", "moods", "topics"}
)
MAX_CATEGORY_TEXT_LENGTH = 40


class ColumnRoles(BaseModel):
    """Declared roles per column of the ``items`` and ``users`` tables, e.g.
    ``items: {title: text, genre: categorical}``; the shape of ``columns.yaml`` and of the run
    configuration's ``columns`` section."""

    model_config = ConfigDict(extra="forbid", strict=True)

    items: dict[str, Role] = Field(
        default_factory=dict, description="Item column → role; undeclared columns get the inferred role."
    )
    users: dict[str, Role] = Field(
        default_factory=dict, description="User column → role; undeclared columns get the inferred role."
    )


@dataclass(frozen=True)
class ResolvedColumns:
    """The role of every column of one table (its ID column left out), in table order, and which of them
    were declared rather than inferred."""

    roles: Mapping[str, Role] = field(default_factory=dict)
    declared: tuple[str, ...] = ()

    def role(self, column: str) -> Role | None:
        """The role of ``column``; ``None`` for the ID column and columns the table lacks."""
        return self.roles.get(column)

    def with_role(self, role: Role) -> list[str]:
        """Columns of ``role``, in table order."""
        return [column for column, found in self.roles.items() if found == role]

    @property
    def text(self) -> list[str]:
        return self.with_role("text")

    @property
    def categorical(self) -> list[str]:
        return self.with_role("categorical")

    @property
    def numeric(self) -> list[str]:
        return self.with_role("numeric")

    @property
    def image_path(self) -> list[str]:
        return self.with_role("image_path")

    @property
    def audio_path(self) -> list[str]:
        return self.with_role("audio_path")

    @property
    def ignored(self) -> list[str]:
        return self.with_role("ignored")

    def to_dict(self) -> dict[str, list[str]]:
        """``{role: [columns]}`` for every role, plus ``declared``: the columns whose role was declared."""
        return {**{role: self.with_role(role) for role in COLUMN_ROLES}, "declared": list(self.declared)}


def resolve_columns(
    table: pd.DataFrame | None, id_column: str, declared: Mapping[str, Role] | None = None
) -> ResolvedColumns:
    """The role of every column of ``table`` except ``id_column``: its declared role, else the inferred one.

    ``declared`` maps column names to roles; a name ``table`` lacks raises ``ValueError`` (the dataset
    loader reports it with the file first). A missing table has no columns.
    """
    declared = dict(declared or {})
    if table is None:
        if declared:
            raise ValueError(f"roles declared for column(s) {', '.join(declared)} of a missing table")
        return ResolvedColumns()
    unknown = [column for column in declared if column not in table.columns or column == id_column]
    if unknown:
        raise ValueError(f"roles declared for column(s) {', '.join(unknown)} that the table lacks")
    roles = {
        str(column): declared.get(column) or infer_role(table[column], str(column))
        for column in table.columns
        if column != id_column
    }
    return ResolvedColumns(roles, tuple(column for column in roles if column in declared))


def infer_role(column: pd.Series, name: str) -> Role:
    """The role of an undeclared column, from its name and values.

    ``image_path`` / ``audio_path`` by name; no value at all: ``ignored``; booleans and pandas categoricals:
    ``categorical``; numbers, and strings that all parse as numbers: ``numeric``; other strings are
    ``text`` when named ``title``, ``name`` or ``description``, when their values average at least
    :data:`MAX_CATEGORY_TEXT_LENGTH` characters, or when they take more than half as many distinct values as
    they have values (after splitting multi-valued fields, see :func:`value_separator`), else
    ``categorical``; single words, one distinct per row (codes such as ASINs or SKUs), are ``ignored``.
    Anything else (lists, mixed objects) is ``text``.
    """
    import pandas as pd

    if name in MEDIA_ROLES:
        return MEDIA_ROLES[name]
    dtype = column.dtype
    if isinstance(dtype, pd.CategoricalDtype) or pd.api.types.is_bool_dtype(dtype):
        return "categorical" if column.notna().any() else "ignored"
    if pd.api.types.is_numeric_dtype(dtype) or pd.api.types.is_datetime64_any_dtype(dtype):
        return "numeric" if column.notna().any() else "ignored"
    kind = pd.api.types.infer_dtype(column, skipna=True)
    if kind == "boolean":
        return "categorical"
    if kind == "empty":
        return "ignored"
    if kind != "string":
        return "text"
    present = column.dropna().astype(str).str.strip()
    present = present[present != ""]
    if present.empty:
        return "ignored"
    if pd.to_numeric(present, errors="coerce").notna().all():
        return "numeric"
    if name in FREE_TEXT_COLUMN_NAMES or present.str.len().mean() >= MAX_CATEGORY_TEXT_LENGTH:
        return "text"
    values = split_values(present, value_separator(name, present))
    if values.nunique() <= max(2, len(values) // 2):
        return "categorical"
    if present.is_unique and not present.str.contains(r"\s", regex=True).any():
        return "ignored"  # a code per row (an ASIN, a SKU): neither words to read nor a category to share
    return "text"


def value_separator(name: str, values: pd.Series) -> str | None:
    """How a multi-valued field separates its values: ``"|"`` when values use it, ``", "`` in list-like
    columns (``tags``, ``genres``, ... :data:`MULTI_VALUE_COLUMN_NAMES`), else ``None`` (one value)."""
    if values.str.contains("|", regex=False).any():
        return "|"
    if name.lower() in MULTI_VALUE_COLUMN_NAMES and values.str.contains(", ", regex=False).any():
        return ", "
    return None


def split_values(values: pd.Series, separator: str | None) -> pd.Series:
    """The non-empty single values of string ``values`` split on ``separator`` (unchanged when ``None``)."""
    if separator is None:
        return values
    split = values.str.split(separator, regex=False).explode().astype(str).str.strip()
    return split[split != ""]


def distinct_values(column: pd.Series, name: str) -> int:
    """How many distinct single values a column takes (multi-valued fields split, empty values left out)."""
    present = column.dropna().astype(str).str.strip()
    present = present[present != ""]
    return int(split_values(present, value_separator(name, present)).nunique())
