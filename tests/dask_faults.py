"""List scorers whose Dask worker process is killed (SIGKILL), or whose task raises, when they score a
chosen user row, for tests/test_dask.py. They live in a module of their own so that the worker
processes, which import it to unpickle the scorer, find it on their ``sys.path``.

Set in the environment before the cluster starts: ``M6REC_TEST_KILL_USER_ROW`` (the row),
``M6REC_TEST_KILLS`` (how many attempts die or raise) and ``M6REC_TEST_KILL_LOG`` (a file that gets
one line per fault).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np

from pipelines.scoring import ListScorer

KILL_USER_ROW = "M6REC_TEST_KILL_USER_ROW"
KILLS = "M6REC_TEST_KILLS"
KILL_LOG = "M6REC_TEST_KILL_LOG"


class KillingListScorer(ListScorer):
    def score(self, user_rows: np.ndarray):
        if _fault_due(user_rows):
            os.kill(os.getpid(), signal.SIGKILL)
        return super().score(user_rows)


class RaisingListScorer(ListScorer):
    """Raises instead of dying: the task fails, its worker lives on."""

    def score(self, user_rows: np.ndarray):
        if _fault_due(user_rows):
            raise RuntimeError(f"a test fault in the chunk of user row {os.environ[KILL_USER_ROW]}")
        return super().score(user_rows)


def _fault_due(user_rows: np.ndarray) -> bool:
    """On a worker, in the chosen row's chunk, while fewer than the asked faults are logged: logs one."""
    log = Path(os.environ[KILL_LOG])
    faults = len(log.read_text().splitlines()) if log.exists() else 0
    if _on_a_worker() and int(os.environ[KILL_USER_ROW]) in user_rows and faults < int(os.environ[KILLS]):
        with open(log, "a") as file:
            file.write(f"{os.getpid()}\n")
        return True
    return False


def _on_a_worker() -> bool:
    from distributed import get_worker

    try:
        get_worker()
    except ValueError:
        return False
    return True
