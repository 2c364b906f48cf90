"""Retry and cache policies of the flows' tasks.

Only I/O tasks retry, and only on errors that can go away by themselves (a network volume or the Prefect
API briefly unreachable); a bad file or a bad configuration fails at once. The one cached task, item
embeddings, is keyed on what determines its output: the dataset directory's files, the embedding
configuration and the features folder it writes.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from m6rec import __version__
from m6rec.errors import M6RecError


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


def item_embeddings_cache_key(context, parameters: dict[str, Any]) -> str:
    """Prefect ``cache_key_fn`` of the item embedding task: dataset files, embedding configuration,
    output folder and m6rec version. The task's ``dataset`` parameter carries its directory."""
    config = parameters["config"]
    identity = {
        "dataset": dataset_fingerprint(parameters["dataset"].directory),
        "out_dir": str(Path(parameters["out_dir"]).resolve()),
        "config": config.model_dump(mode="json") if hasattr(config, "model_dump") else config,
        "columns": {
            "items": _roles(getattr(parameters["dataset"], "item_columns", None)),
            "users": _roles(getattr(parameters["dataset"], "user_columns", None)),
        },
        "m6rec": __version__,
    }
    encoded = json.dumps(identity, sort_keys=True, default=str).encode()
    return f"m6rec-item-embeddings-{hashlib.sha256(encoded).hexdigest()}"


def _roles(resolved) -> dict | None:
    """The resolved column roles of a table, part of what the embeddings depend on."""
    return None if resolved is None else resolved.to_dict()
