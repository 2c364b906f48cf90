"""Converting public datasets from their official distributions into m6rec dataset directories.

``prepare_dataset("movielens-100k", Path("data/ml-100k"), source=Path("ml-100k.zip"))`` reads the raw
files (a folder, the official zip, or a download of it when ``source`` is None), writes the contract tables
as Parquet with string IDs, and a ``dataset.json`` saying where they came from and under which terms.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import pyarrow as pa

from m6rec import __version__
from m6rec.data import contract
from m6rec.data.prepare import lastfm, movielens
from m6rec.data.prepare.sources import (
    DatasetSourceError,
    RawFiles,
    fetch_kgcn_music,
    open_raw_files,
    resolve_raw_files,
    write_atomically,
)
from m6rec.errors import ConfigError

__all__ = [
    "PREPARERS",
    "DatasetSourceError",
    "PreparedDataset",
    "fetch_kgcn_music",
    "prepare_dataset",
    "prepare_lastfm_hetrec",
    "prepare_movielens_100k",
]

DATASET_JSON = "dataset.json"


@dataclass(frozen=True)
class PreparedDataset:
    """A dataset directory just written: the dataset's name, where, and the rows of each table."""

    name: str
    out_dir: Path
    row_counts: dict[str, int] = field(default_factory=dict)


def prepare_movielens_100k(
    out_dir: Path, *, source: Path | None = None, kgcn: Path | None = None, cache_dir: Path | None = None
) -> PreparedDataset:
    """Write MovieLens 100K into ``out_dir``: ratings, movies, users, and a genre/decade graph.

    ``source`` is a folder or the official zip; when None the zip is downloaded into ``cache_dir``.
    ``kgcn`` is accepted for a uniform signature and must be None.
    """
    if kgcn is not None:
        raise ConfigError(f"a KGCN graph applies to {lastfm.NAME} only, not to {movielens.NAME}")
    raw = resolve_raw_files(source, url=movielens.URL, anchor=movielens.ANCHOR, cache_dir=cache_dir)
    return _write_dataset(
        movielens.NAME,
        Path(out_dir),
        movielens.read_tables(raw),
        _provenance(raw, source, movielens.URL) | {"licence": movielens.LICENCE},
    )


def prepare_lastfm_hetrec(
    out_dir: Path, *, source: Path | None = None, kgcn: Path | None = None, cache_dir: Path | None = None
) -> PreparedDataset:
    """Write Last.FM HetRec 2011 into ``out_dir``: play counts, artists with top tags, users' friend
    counts, and a tag graph joined with KGCN's graph when ``kgcn`` (a folder or zip holding ``kg.txt`` and
    ``item_index2entity_id.txt``; see :func:`fetch_kgcn_music`) is given.

    ``source`` is a folder or the official zip; when None the zip is downloaded into ``cache_dir``.
    """
    raw = resolve_raw_files(source, url=lastfm.URL, anchor=lastfm.ANCHOR, cache_dir=cache_dir)
    kgcn_files = open_raw_files(kgcn, lastfm.KGCN_ANCHOR) if kgcn is not None else None
    provenance = _provenance(raw, source, lastfm.URL) | {"licence": lastfm.LICENCE}
    if kgcn_files is not None:
        provenance["kgcn_source"] = kgcn_files.describe()
    return _write_dataset(lastfm.NAME, Path(out_dir), lastfm.read_tables(raw, kgcn=kgcn_files), provenance)


PREPARERS: dict[str, Callable[..., PreparedDataset]] = {
    movielens.NAME: prepare_movielens_100k,
    lastfm.NAME: prepare_lastfm_hetrec,
}


def prepare_dataset(
    name: str,
    out_dir: Path,
    *,
    source: Path | None = None,
    kgcn: Path | None = None,
    cache_dir: Path | None = None,
) -> PreparedDataset:
    """Prepare the public dataset ``name`` (a key of :data:`PREPARERS`) as a dataset directory ``out_dir``.

    ``source``: a folder holding the raw files (directly or in one subfolder) or the official zip; when
    None the official zip is downloaded into ``cache_dir`` (default ``~/.cache/m6rec/downloads``).
    ``kgcn``: KGCN's music graph folder (``lastfm-hetrec`` only). Contract tables already in ``out_dir``
    that this dataset does not have (a ``test`` table, CSV twins) are removed.

    Raises ``ValueError`` for an unknown ``name`` and :class:`DatasetSourceError` for missing or
    unreadable raw files or a failed download.
    """
    if name not in PREPARERS:
        raise ConfigError(f"unknown dataset '{name}'; known datasets: {', '.join(sorted(PREPARERS))}")
    return PREPARERS[name](out_dir, source=source, kgcn=kgcn, cache_dir=cache_dir)


def _provenance(raw: RawFiles, source: Path | None, url: str) -> dict[str, str]:
    if source is None:
        return {"source": url, "downloaded_to": raw.describe()}
    return {"source": raw.describe()}


def _write_dataset(
    name: str, out_dir: Path, tables: dict[str, pa.Table], provenance: dict
) -> PreparedDataset:
    import pyarrow.parquet as pq

    out_dir.mkdir(parents=True, exist_ok=True)
    written = set()
    for stem, table in tables.items():
        path = out_dir / f"{stem}.parquet"
        write_atomically(path, partial(pq.write_table, _with_contract_types(table)))
        written.add(path.name)
    for spec in contract.ALL_TABLES:
        for suffix in contract.TABLE_SUFFIXES:
            stale = out_dir / f"{spec.stem}{suffix}"
            if stale.name not in written:
                stale.unlink(missing_ok=True)
    row_counts = {stem: table.num_rows for stem, table in tables.items()}
    description = {"name": name, **provenance, "rows": row_counts, "prepared_by": f"m6rec {__version__}"}
    text = json.dumps(description, indent=2, ensure_ascii=False) + "\n"
    write_atomically(out_dir / DATASET_JSON, lambda temporary: temporary.write_text(text, encoding="utf-8"))
    return PreparedDataset(name=name, out_dir=out_dir, row_counts=row_counts)


def _with_contract_types(table: pa.Table) -> pa.Table:
    """``table`` with text as ``string`` (not ``large_string``), integers as int64, floats as float64."""
    fields = []
    for column in table.schema:
        if pa.types.is_large_string(column.type) or pa.types.is_string_view(column.type):
            column = column.with_type(pa.string())
        elif pa.types.is_integer(column.type):
            column = column.with_type(pa.int64())
        elif pa.types.is_floating(column.type):
            column = column.with_type(pa.float64())
        fields.append(column)
    return table.cast(pa.schema(fields, metadata=table.schema.metadata))
