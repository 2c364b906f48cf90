"""Progress of the long stages: bars for encoding, training, index building and candidate scoring, and the
stage clock (:class:`StageClock`: seconds and peak memory per stage, what ``run.json`` records).

Bars are written to stderr and shown only when stderr is a terminal. The environment variable
``M6REC_PROGRESS`` overrides that: ``1`` always shows them, ``0`` never does. When they are off nothing
is written and a wrapped loop runs as it would without them. While a bar is shown, records of the root
logger's console handler are printed above it (tqdm's ``logging_redirect_tqdm``), so log lines and bars
do not overwrite each other; finished bars are erased.

Third-party loaders follow the same rule inside :func:`quiet_model_loading`, and so do the log lines of
each epoch or batch of a stage: :func:`step_log_level`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Protocol, TypeVar

from m6rec.errors import ConfigError

PROGRESS_ENV = "M6REC_PROGRESS"
_FORCED_ON = frozenset({"1", "true", "yes", "on"})
_FORCED_OFF = frozenset({"0", "false", "no", "off"})
_CHATTY_LIBRARIES = ("open_clip",)

T = TypeVar("T")


class ProgressBar(Protocol):
    """What a stage may do with the bar of :func:`progress_bar`: advance it by ``n`` units."""

    def update(self, n: int = 1) -> object: ...


HEARTBEAT_SECONDS = 30.0


class Heartbeat:
    """The bar of a stage when bars are off (a log file, Prefect): ``update`` counts, and at most every
    :data:`HEARTBEAT_SECONDS` one INFO line says how many ``unit``s of ``total`` are done."""

    def __init__(self, *, desc: str, total: int | None, unit: str, every: float = HEARTBEAT_SECONDS):
        self.desc, self.total, self.unit, self.every = desc, total, unit, every
        self.done = 0
        self._started = self._last = time.monotonic()

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if now - self._last >= self.every:
            self._last = now
            of = f" of {self.total}" if self.total else ""
            logging.getLogger("m6rec").info(
                "%s: %d%s %ss done (%.0f s)", self.desc, self.done, of, self.unit, now - self._started
            )


def _with_heartbeat(iterable: Iterable[T], *, desc: str, total: int | None, unit: str) -> Iterator[T]:
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)
    beat = Heartbeat(desc=desc, total=total, unit=unit)
    for element in iterable:
        yield element
        beat.update()


def progress_enabled() -> bool:
    """Whether bars are shown: ``M6REC_PROGRESS`` (1/0, true/false, yes/no, on/off) if set, else whether
    stderr is a terminal. Raises ``ConfigError`` for any other value of the variable."""
    setting = os.environ.get(PROGRESS_ENV, "").strip().lower()
    if setting in _FORCED_ON:
        return True
    if setting in _FORCED_OFF:
        return False
    if setting:
        raise ConfigError(
            f"{PROGRESS_ENV}={os.environ[PROGRESS_ENV]!r} is not understood: "
            "use 1 to always show progress bars, 0 to never show them, or leave it unset"
        )
    isatty = getattr(sys.stderr, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


def step_log_level() -> int:
    """The level of per-epoch and per-batch log lines: INFO where bars are shown (:func:`progress_enabled`),
    DEBUG otherwise, so that a log written to a file or to Prefect holds one summary line per stage."""
    return logging.INFO if progress_enabled() else logging.DEBUG


def progress(
    iterable: Iterable[T], *, desc: str, total: int | None = None, unit: str = "item"
) -> Iterator[T]:
    """Iterate over ``iterable`` unchanged, with a bar labelled ``desc`` counting ``unit``s when shown.

    ``total`` is the expected number of elements (default ``len(iterable)`` where it has one). When
    progress is off there is no bar: a :class:`Heartbeat` log line at most every
    :data:`HEARTBEAT_SECONDS` says how far the stage got (nothing for a stage shorter than that).
    """
    if not progress_enabled():
        return _with_heartbeat(iterable, desc=desc, total=total, unit=unit)
    return _iterate_with_bar(iterable, desc=desc, total=total, unit=unit)


@contextlib.contextmanager
def progress_bar(*, total: int | None, desc: str, unit: str = "item") -> Iterator[ProgressBar]:
    """A bar labelled ``desc`` for a stage that reports its own progress with ``bar.update(n)``.

    ``total`` is the number of ``unit``s the stage will report (``None``: unknown, the bar only counts).
    When progress is off the bar is a :class:`Heartbeat`: a log line at most every
    :data:`HEARTBEAT_SECONDS`, so a run off a terminal is never silent for long.
    """
    if not progress_enabled():
        yield Heartbeat(desc=desc, total=total, unit=unit)
        return
    with _log_lines_above_bars(), _new_bar(total=total, desc=desc, unit=unit) as bar:
        yield bar


@contextlib.contextmanager
def quiet_model_loading() -> Iterator[None]:
    """Hold back transformers' (and huggingface_hub's) progress bars and open_clip's INFO messages while
    a model loads, unless progress bars are shown. Warnings and errors always get through."""
    if progress_enabled():
        yield
        return
    chatter = _LibraryChatter(_CHATTY_LIBRARIES)
    root = logging.getLogger()
    root.addFilter(chatter)
    restore_transformers_bars = _hide_transformers_bars()
    try:
        yield
    finally:
        restore_transformers_bars()
        root.removeFilter(chatter)


def _iterate_with_bar(iterable: Iterable[T], *, desc: str, total: int | None, unit: str) -> Iterator[T]:
    with _log_lines_above_bars(), _new_bar(iterable=iterable, total=total, desc=desc, unit=unit) as bar:
        yield from bar


def _new_bar(**options):
    from tqdm import tqdm

    return tqdm(**options, file=sys.stderr, leave=False, dynamic_ncols=True, disable=False)


def _log_lines_above_bars() -> contextlib.AbstractContextManager:
    """Route the root logger's console output through tqdm while a bar is open; a no-op without one.

    tqdm's redirect adds a console handler even where there was none, which would print records that
    would otherwise go nowhere, so it is used only when the root logger already writes to the console.
    """
    from tqdm.contrib.logging import logging_redirect_tqdm

    consoles = (sys.stdout, sys.stderr)
    writes_to_console = any(
        isinstance(handler, logging.StreamHandler) and getattr(handler, "stream", None) in consoles
        for handler in logging.getLogger().handlers
    )
    return logging_redirect_tqdm() if writes_to_console else contextlib.nullcontext()


class _LibraryChatter(logging.Filter):
    """Drops records below WARNING that the given packages log on the root logger (``logging.info``)."""

    def __init__(self, packages: tuple[str, ...]):
        super().__init__()
        self.markers = tuple(f"{os.sep}{package}{os.sep}" for package in packages)

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or not any(m in record.pathname for m in self.markers)


def _hide_transformers_bars() -> Callable[[], None]:
    """Turn transformers' bars off (which also turns off huggingface_hub's); return how to undo that."""
    try:
        from transformers.utils import logging as transformers_logging
    except ImportError:
        return lambda: None
    if not transformers_logging.is_progress_bar_enabled():
        return lambda: None
    # Either call warns when HF_HUB_DISABLE_PROGRESS_BARS pins the hub's setting; transformers' own
    # switch still flips, which is all we need.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        transformers_logging.disable_progress_bar()

    def restore() -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            transformers_logging.enable_progress_bar()

    return restore


class StageClock:
    """Seconds and peak resident memory per stage, lap by lap.

    Where Linux lets a process reset its peak (``/proc/self/clear_refs``), ``peak_rss_mib[stage]`` is the
    stage's own peak; elsewhere it is the process's peak so far (``getrusage``), which only grows.
    """

    def __init__(self):
        self.timings: dict[str, float] = {}
        self.peak_rss_mib: dict[str, float] = {}
        self.per_stage_peaks = _reset_peak_rss()
        self._last = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.timings[stage] = round(now - self._last, 3)
        self.peak_rss_mib[stage] = round(_peak_rss_mib(), 1)
        if self.per_stage_peaks:
            _reset_peak_rss()
        self._last = time.perf_counter()

    def report(self) -> dict:
        """What ``run.json`` / ``batch.json`` record: seconds and peak memory per stage."""
        kind = "per stage" if self.per_stage_peaks else "process peak so far"
        return {"timings_seconds": self.timings, "peak_rss_mib": self.peak_rss_mib, "peak_rss_kind": kind}


def _reset_peak_rss() -> bool:
    """Reset the process's peak RSS (Linux ``clear_refs`` 5); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _peak_rss_mib() -> float:
    """The peak resident set size since the last reset (``VmHWM``), else the process's peak, in MiB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
