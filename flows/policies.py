"""Retry and cache policies of the flows' tasks.

Only I/O tasks retry, and only on errors that can go away by themselves (a network volume or the Prefect
API briefly unreachable); a bad file or a bad configuration fails at once.

No task result goes through Prefect's result storage (``persist_result=False`` everywhere): a stored
Prefect result names its own serializer, pickle included, so whoever can write that file could run code
in the worker. The one cached step, item embeddings, keeps its cache as a plain JSON file in the output
folder (``OUT/.m6rec-embeddings-cache.json``), keyed on what determines its output (the dataset
directory's files, the embedding configuration, the output folder, the m6rec version) and validated when
read: an entry that is not whole, or that names a file no longer there, is recomputed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from m6rec import __version__
from m6rec.errors import M6RecError
from pipelines.run_folder import EMBEDDINGS_CACHE


def is_transient_io_error(task, task_run, state) -> bool:
    """Prefect ``retry_condition_fn``: retry OS and network errors, never errors in the user's input."""
    error = state.data if isinstance(state.data, BaseException) else None
    if error is None or isinstance(error, M6RecError | FileNotFoundError | NotADirectoryError):
        return False
    import httpx

    if isinstance(error, httpx.HTTPStatusError):
        return error.response.status_code >= 500
    return isinstance(error, OSError | httpx.TransportError | TimeoutError)


IO_RETRIES: dict[str, Any] = {
    "retries": 2,
    "retry_delay_seconds": [10, 60],
    "retry_condition_fn": is_transient_io_error,
}


def dataset_fingerprint(data_dir: str | Path) -> str:
    """SHA-256 over the relative path, size and modification time of every file under ``data_dir``.

    Stat-only, like ``make``: cheap on catalogues with many media files, and any rewrite of a file
    changes it. Hidden files and folders (editor swap files, staging folders) are ignored.
    """
    root = Path(data_dir).resolve()
    digest = hashlib.sha256(str(root).encode())
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = sorted(name for name in subfolders if not name.startswith("."))
        for name in sorted(files):
            if name.startswith("."):
                continue
            path = Path(folder) / name
            stat = path.stat()
            digest.update(f"{path.relative_to(root)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


log = logging.getLogger("m6rec")

_CACHE_FORMAT = "m6rec-embeddings-cache"
_CACHE_VERSION = 1
# The task-result settings of every task and flow: nothing is persisted through Prefect.
NO_PERSISTED_RESULT: dict[str, Any] = {"persist_result": False}


def item_embeddings_key(dataset, out_dir: str | Path, config) -> str:
    """The cache key of the item embeddings: dataset files, embedding configuration, output folder and
    m6rec version (``dataset`` carries its directory and column roles)."""
    identity = {
        "dataset": dataset_fingerprint(dataset.directory),
        "out_dir": str(Path(out_dir).resolve()),
        "config": config.model_dump(mode="json") if hasattr(config, "model_dump") else config,
        "columns": {
            "items": _roles(getattr(dataset, "item_columns", None)),
            "users": _roles(getattr(dataset, "user_columns", None)),
        },
        "m6rec": __version__,
    }
    encoded = json.dumps(identity, sort_keys=True, default=str).encode()
    return f"m6rec-item-embeddings-{hashlib.sha256(encoded).hexdigest()}"


def read_cached_embeddings(out_dir: str | Path, key: str) -> dict | None:
    """The summary the cache of ``out_dir`` holds for ``key``, when the entry is whole and every file it
    names exists; else None (a bad entry or a missing file is logged). Only plain JSON is read."""
    path = Path(out_dir) / EMBEDDINGS_CACHE
    if not path.is_file():
        return None
    try:
        entry = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as error:
        log.warning(
            "%s: unreadable cache entry (%s); computing the embeddings again", path, type(error).__name__
        )
        return None
    problem = _cache_problem(entry)
    if problem:
        log.warning("%s: %s; computing the embeddings again", path, problem)
        return None
    if entry["key"] != key:
        return None
    missing = [name for name in entry["summary"]["files"].values() if not Path(name).exists()]
    if missing:
        log.warning("cached run, but %s no longer exists: computing the embeddings again", missing[0])
        return None
    return entry["summary"]


def write_cached_embeddings(out_dir: str | Path, key: str, summary: dict) -> None:
    from m6rec.io import write_json

    entry = {"format": _CACHE_FORMAT, "version": _CACHE_VERSION, "key": key, "summary": summary}
    write_json(entry, Path(out_dir) / EMBEDDINGS_CACHE)


def _cache_problem(entry: Any) -> str | None:
    """What is wrong with a cache entry read from disk, or None."""
    if not isinstance(entry, dict) or entry.get("format") != _CACHE_FORMAT:
        return "not an m6rec embeddings cache entry"
    if entry.get("version") != _CACHE_VERSION:
        return f"cache entry version {entry.get('version')!r}, this m6rec reads {_CACHE_VERSION}"
    summary = entry.get("summary")
    if not isinstance(entry.get("key"), str) or not isinstance(summary, dict):
        return "cache entry without key or summary"
    files, counts = summary.get("files"), summary.get("counts")
    if not isinstance(files, dict) or not all(isinstance(value, str) for value in files.values()):
        return "cache entry: files is not a mapping of names to paths"
    if not isinstance(counts, dict) or not all(
        isinstance(value, dict) and all(isinstance(number, int) for number in value.values())
        for value in counts.values()
    ):
        return "cache entry: counts is not a mapping of names to integer counts"
    if not isinstance(summary.get("problems"), int):
        return "cache entry: problems is not a count"
    return None


def _roles(resolved) -> dict | None:
    """The resolved column roles of a table, part of what the embeddings depend on."""
    return None if resolved is None else resolved.to_dict()
