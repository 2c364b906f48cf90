"""The one answer to "did the data change?": a dataset folder's tables by content and its media files by
their content hash, which is kept with each file's stat so that an unchanged file is never read again.

:class:`m6rec.data.contained.MediaHashes` is the store of those hashes (``OUT/.m6rec-media-hashes.json``, beside the output
folder's generations: it holds facts about the dataset's files, not outputs). A file whose size,
modification time and inode are those stored keeps its stored hash; any other is streamed once
(:func:`m6rec.data.contained.streamed_fingerprint`, within the media limits) and stored. The encoders
take their inputs' fingerprints from the same store, so a night reads every media file at most once,
and a night when nothing changed reads none.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

from m6rec.data import contained
from m6rec.data.columns import COLUMNS_FILE
from m6rec.data.contract import ALL_TABLES, INTERACTIONS, ITEMS, KG, USERS
from m6rec.data.tables import find_table

# The tables the lists depend on (a test file only evaluates them).
DATA_TABLES = (INTERACTIONS, ITEMS, USERS, KG)


def data_fingerprint(
    data_dir: Path,
    hashes: contained.MediaHashes | None = None,
    limits: contained.MediaLimits | None = None,
) -> str:
    """SHA-256 over the dataset's tables (names and bytes), ``columns.yaml`` and every other file in
    the folder (its media: relative path and content hash from ``hashes``); hidden files and folders
    are left out. Equal fingerprints, the same data."""
    data_dir = Path(data_dir)
    hashes = hashes or contained.MediaHashes()
    limits = limits or contained.MediaLimits()
    digest = hashlib.sha256()
    tables = [find_table(data_dir, table) for table in DATA_TABLES]
    tables.append(data_dir / COLUMNS_FILE if (data_dir / COLUMNS_FILE).is_file() else None)
    tables = [path for path in tables if path is not None]
    for path in tables:
        digest.update(f"{path.name}\0".encode())
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    every_table = [find_table(data_dir, table) for table in ALL_TABLES]  # the test file is no media
    skipped = {path.resolve() for path in [*tables, *every_table] if path is not None}
    for path in _media_files(data_dir):
        if path.resolve() in skipped:
            continue
        try:
            content = hashes.digest(path.resolve(), limits)
        except contained.RejectedPath as rejected:
            content = f"rejected:{rejected}"
        digest.update(f"{path.relative_to(data_dir)}\0{content}\n".encode())
    hashes.save()
    return digest.hexdigest()


def _media_files(data_dir: Path) -> Iterator[Path]:
    """Every regular file under ``data_dir`` but hidden ones, in a fixed order."""
    for folder, subfolders, files in os.walk(data_dir):
        subfolders[:] = sorted(name for name in subfolders if not name.startswith("."))
        for name in sorted(files):
            path = Path(folder) / name
            if not name.startswith(".") and path.is_file():
                yield path
