"""Saving and restoring the process's logging set-up around an in-process command (tests only)."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

from m6rec import log


@contextmanager
def restored_logging() -> Iterator[None]:
    """Undo what an in-process command set up for logging (``m6rec.log.configure_logging``, or Prefect's
    set-up in a flow run, which adds handlers to its own and the ``m6rec`` logger): root handlers and
    level, the handlers, levels and propagation of the loggers involved, warnings routed to logging."""
    root = logging.getLogger()
    names = (log.LOGGER_NAME, *log.QUIET_LIBRARIES, *log.CONSOLE_QUIET_LOGGERS, "prefect.flow_runs")
    loggers = [root, *(logging.getLogger(name) for name in names)]
    saved = [(logger, list(logger.handlers), logger.level, logger.propagate) for logger in loggers]
    showwarning = warnings.showwarning
    try:
        yield
    finally:
        logging.captureWarnings(False)
        warnings.showwarning = showwarning
        for logger, handlers, level, propagate in saved:
            logger.handlers[:] = handlers
            logger.setLevel(level)
            logger.propagate = propagate
