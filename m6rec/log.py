"""The console log: a level prefix on every line, m6rec's own lines at INFO, third-party chatter held back.

:func:`configure_logging` sets up the ``m6rec`` command: records go to stderr as ``LEVEL logger: message``
(every line of a multi-line message or traceback carries the prefix), the ``m6rec`` logger writes INFO
(DEBUG with ``verbose``), every other library only WARNING and above, and Python warnings become log
records. :func:`quiet_third_party_loggers` is the part that also holds where the process's logging belongs
to someone else (Prefect's flow runs, pytest): the libraries in ``QUIET_LIBRARIES`` log WARNING and above.

Per-epoch and per-batch lines go through :func:`m6rec.progress.step_log_level`: INFO where progress bars
are shown, DEBUG otherwise. A library message that m6rec's own message replaces is dropped with
:func:`held_back`.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator

LOGGER_NAME = "m6rec"
# Libraries that log progress or loader details at INFO (faiss's "Loading faiss with AVX2 support",
# pykeen's "Inferred unique=False for Embedding()", the Prefect client's one line per HTTP request).
QUIET_LIBRARIES = (
    "class_resolver",
    "distributed",
    "faiss",
    "filelock",
    "fsspec",
    "httpcore",
    "httpx",
    "huggingface_hub",
    "implicit",
    "lightgbm",
    "matplotlib",
    "numba",
    "open_clip",
    "PIL",
    "pykeen",
    "sentence_transformers",
    "torch",
    "torch_max_mem",
    "transformers",
    "urllib3",
)
# Loggers whose INFO records reach the Prefect API but stay off the console unless verbose: the local
# API's start and stop notices and one "Finished in state Completed()" per task run.
CONSOLE_QUIET_LOGGERS = ("prefect", "prefect.task_runs")


class LevelPrefixFormatter(logging.Formatter):
    """``LEVEL logger: message`` on every line of the record, its traceback included.

    Records of Prefect's run loggers name their flow (``INFO flow nightly: ...``) or task run instead of
    the logger, which is what Prefect's own console shows.
    """

    def __init__(self) -> None:
        super().__init__("%(message)s")

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"{record.levelname} {_source(record)}: "
        return "\n".join(prefix + line for line in super().format(record).splitlines() or [""])


class _ConsoleQuiet(logging.Filter):
    """Keeps records below WARNING off the console handler where they come from ``QUIET_LIBRARIES``
    (whatever level a library set on its own logger when imported: pykeen sets INFO) and, unless
    ``verbose``, from ``CONSOLE_QUIET_LOGGERS``."""

    def __init__(self, verbose: bool):
        super().__init__()
        self.quiet_names = () if verbose else CONSOLE_QUIET_LOGGERS

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            return True
        return record.name.partition(".")[0] not in QUIET_LIBRARIES and record.name not in self.quiet_names


class ConsoleHandler(logging.StreamHandler):
    """The handler :func:`configure_logging` installs: it writes to whatever ``sys.stderr`` is when a
    record arrives (not the stream of the moment it was made, which a test's capture may have closed since).
    Its class name has no leading underscore, which is what tells Prefect's logging set-up to leave the root
    logger's configuration alone."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        """Ignored: the stream is always the current ``sys.stderr``."""


class _HeldBack(logging.Filter):
    def __init__(self, prefixes: tuple[str, ...]):
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefixes)


def configure_logging(verbose: bool = False) -> None:
    """Log to stderr with a level prefix on every line: m6rec at INFO (DEBUG with ``verbose``), other
    libraries at WARNING, Python warnings as WARNING records of ``py.warnings``.

    Replaces handlers of the root logger that write to the console (a previous call's, Prefect's) with
    one that writes to the current ``sys.stderr``; other handlers (files, pytest's capture) stay. Calling
    it again, e.g. with ``verbose=True`` once the command line is parsed, reconfigures in place.
    """
    root = logging.getLogger()
    consoles = (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__)
    for handler in list(root.handlers):
        if (
            isinstance(handler, ConsoleHandler)
            or type(handler).__name__ == "PrefectConsoleHandler"  # Prefect's, on the root logger
            or (isinstance(handler, logging.StreamHandler) and getattr(handler, "stream", None) in consoles)
        ):
            root.removeHandler(handler)
    console = ConsoleHandler()
    console.setFormatter(LevelPrefixFormatter())
    console.addFilter(_ConsoleQuiet(verbose))
    root.addHandler(console)
    root.setLevel(logging.WARNING)
    logging.getLogger(LOGGER_NAME).setLevel(logging.DEBUG if verbose else logging.INFO)
    quiet_third_party_loggers()
    logging.captureWarnings(True)


def quiet_third_party_loggers() -> None:
    """Set the loggers of ``QUIET_LIBRARIES`` to WARNING: their INFO lines stay out of every log (the
    console, pytest's capture, Prefect's) even where the root logger lets INFO through. A library that
    sets its logger's level when imported (pykeen) needs this again after its import."""
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(logging.WARNING)


@contextlib.contextmanager
def held_back(*prefixes: str) -> Iterator[None]:
    """Drop records logged directly on the root logger (``logging.error(...)``, as open_clip does) whose
    message starts with one of ``prefixes`` while the block runs: library lines that the caller's own
    message replaces. Other records, and every record of named loggers, pass."""
    root = logging.getLogger()
    held = _HeldBack(prefixes)
    root.addFilter(held)
    try:
        yield
    finally:
        root.removeFilter(held)


def _source(record: logging.LogRecord) -> str:
    if getattr(record, "task_run_name", None):
        return f"task {record.task_run_name}"
    if getattr(record, "flow_name", None):
        return f"flow {record.flow_name}"
    return record.name
