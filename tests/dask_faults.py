"""A :class:`~pipelines.stages.ListScorer` whose Dask worker process is killed (SIGKILL) when it scores a
chosen user row, for tests/test_dask_lists.py. It lives in a module of its own so that the worker
processes, which import it to unpickle the scorer, find it on their ``sys.path``.

Set in the environment before the cluster starts: ``M6REC_TEST_KILL_USER_ROW`` (the row),
``M6REC_TEST_KILLS`` (how many attempts die) and ``M6REC_TEST_KILL_LOG`` (a file that gets one line
per kill).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np

from pipelines.stages import ListScorer

KILL_USER_ROW = "M6REC_TEST_KILL_USER_ROW"
KILLS = "M6REC_TEST_KILLS"
KILL_LOG = "M6REC_TEST_KILL_LOG"


class KillingListScorer(ListScorer):
    def score(self, user_rows: np.ndarray):
        log = Path(os.environ[KILL_LOG])
        kills = len(log.read_text().splitlines()) if log.exists() else 0
        if _on_a_worker() and int(os.environ[KILL_USER_ROW]) in user_rows and kills < int(os.environ[KILLS]):
            with open(log, "a") as file:
                file.write(f"{os.getpid()}\n")
            os.kill(os.getpid(), signal.SIGKILL)
        return super().score(user_rows)


def _on_a_worker() -> bool:
    from distributed import get_worker

    try:
        get_worker()
    except ValueError:
        return False
    return True
