"""Writing outputs so that a crash never leaves a half-written file in place of a good one."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

# The folders publish_staged writes into before publishing (m6rec.locking sweeps those of killed runs).
STAGING_PREFIX = ".staging-"


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    temporary = Path(temporary)
    temporary.chmod(0o666 & ~_current_umask())  # mkstemp creates 0600; outputs get the usual permissions
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


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


def publish_staged(out_dir: Path, write: Callable[[Path], None]) -> list[str]:
    """Let ``write`` fill a staging folder inside ``out_dir``, then move each file it wrote into ``out_dir``.

    Nothing in ``out_dir`` changes unless ``write`` succeeds, so a failed run keeps the last good outputs.
    A folder it wrote replaces the folder of that name whole (moved aside, then removed). Returns the
    names of the files and folders published.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=out_dir))
    try:
        write(staging)
        names = sorted(path.name for path in staging.iterdir())
        for name in names:
            target = out_dir / name
            if (staging / name).is_dir() and target.is_dir():
                target.replace(staging / f".replaced-{name}")
            (staging / name).replace(target)
        return names
    finally:
        shutil.rmtree(staging, ignore_errors=True)
