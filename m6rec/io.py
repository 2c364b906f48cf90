"""Writing outputs so that a crash never leaves a half-written file in place of a good one."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

# Staging folders of the m6rec before generations (m6rec.locking sweeps those of killed runs).
STAGING_PREFIX = ".staging-"
# Files being written are ``.<name>.<random><TEMPORARY_SUFFIX>`` beside their target until renamed onto it.
TEMPORARY_SUFFIX = ".tmp"


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it onto ``path`` only if the block succeeds."""
    path = Path(path)
    temporary = _temporary_beside(path)
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def _temporary_beside(path: Path) -> Path:
    """A new empty file ``.<name>.<random>.tmp`` beside ``path`` (its folder created if needed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMPORARY_SUFFIX, dir=path.parent)
    os.close(handle)
    temporary = Path(temporary)
    temporary.chmod(0o666 & ~_current_umask())  # mkstemp creates 0600; outputs get the usual permissions
    return temporary


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_parquet(frame: pd.DataFrame, path: Path, metadata: dict[str, str] | None = None) -> None:
    """Write ``frame`` as Parquet atomically, adding ``metadata`` to the schema metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(frame, preserve_index=False)
    if metadata:
        merged = {**(table.schema.metadata or {}), **{k.encode(): v.encode() for k, v in metadata.items()}}
        table = table.replace_schema_metadata(merged)
    with atomic_path(path) as temporary:
        pq.write_table(table, temporary)


class StreamedParquet:
    """A Parquet file written row group by row group under a temporary name beside ``path`` and moved onto
    ``path`` only when closed after success: a failed or killed writer never leaves a partial file there,
    and never writes into a file another generation shares (``m6rec.generations``)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._writer = None
        self._temporary: Path | None = None

    @property
    def is_open(self) -> bool:
        return self._writer is not None

    def open(self, schema) -> None:
        import pyarrow.parquet as pq

        self._temporary = _temporary_beside(self.path)
        self._writer = pq.ParquetWriter(self._temporary, schema)

    def write(self, table) -> None:
        self._writer.write_table(table)

    def close(self, success: bool) -> None:
        """Close the file; move it onto ``path`` when ``success``, else remove it."""
        if self._writer is None:
            return
        self._writer.close()
        self._writer = None
        if success:
            os.replace(self._temporary, self.path)
        else:
            self._temporary.unlink(missing_ok=True)


def write_json(payload: object, path: Path) -> None:
    """Write ``payload`` as indented JSON atomically."""
    with atomic_path(path) as temporary:
        temporary.write_text(json.dumps(payload, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(value: object) -> object:
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def load_yaml(text: str):
    """YAML ``text`` parsed safely, refusing a key given twice in one mapping (PyYAML keeps the last one
    silently): a ``yaml.YAMLError`` naming the key and its line."""
    import yaml

    class _UniqueKeys(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                if key in seen:
                    raise yaml.YAMLError(f"duplicate key {key!r} (line {key_node.start_mark.line + 1})")
                seen.add(key)
            return super().construct_mapping(node, deep=deep)

    return yaml.load(text, Loader=_UniqueKeys)  # noqa: S506 - a SafeLoader subclass
