"""Retry and cache policies of the flows' tasks.

Only I/O tasks retry, and only on errors that can go away by themselves (a network volume or the Prefect
API briefly unreachable); a bad file or a bad configuration fails at once.

No task result goes through Prefect's result storage (``persist_result=False`` everywhere): a stored
Prefect result names its own serializer, pickle included, so whoever can write that file could run code
in the worker. The one cached step, item embeddings, keeps its cache as a plain JSON file in the output
folder, kept by the embedding stage itself (:mod:`pipelines.embeddings`), so ``m6rec embed`` has it too.
"""

from __future__ import annotations

from typing import Any

from prefect.cache_policies import NONE

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

# The task-result settings of every task and flow: nothing is persisted through Prefect.
NO_PERSISTED_RESULT: dict[str, Any] = {"persist_result": False}
# Tasks that take the night's staged generation or its executor: live objects, never cached or hashed.
NOT_CACHED: dict[str, Any] = {"cache_policy": NONE}
