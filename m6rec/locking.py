"""One run at a time per output folder: an advisory lock that names its holder and dies with it.

The lock is ``fcntl.flock`` on ``<folder>/.m6rec.lock``, so the kernel releases it when the holding
process ends in any way, SIGKILL included: a lock left by a killed run is simply free again, and the
holder it names (PID, start time, host, command) is reported as taken over. While held, the folder's
abandoned ``.staging-*`` folders (from runs killed while writing) are swept: no one else can be writing
them. ``flock`` is reliable on local disks; on network file systems it may not be.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from m6rec.errors import ConfigError, M6RecError
from m6rec.io import STAGING_PREFIX

log = logging.getLogger("m6rec")

LOCK_FILE = ".m6rec.lock"
# How long a run waits for the folder's holder when the caller does not say (seconds; default 0: fail).
WAIT_ENV = "M6REC_LOCK_WAIT_SECONDS"
_POLL_SECONDS = 0.5

# Folders this process holds (resolved path -> depth): a stage that locks the folder its run already
# holds goes through, since flock would make a process wait for itself.
_held: dict[Path, int] = {}
_held_guard = threading.Lock()


class FolderInUseError(M6RecError):
    """Another run holds the output folder."""


@contextmanager
def folder_lock(directory: str | Path, *, wait_seconds: float | None = None) -> Iterator[None]:
    """Hold ``directory``'s lock for the block (created if needed).

    A second run into the same folder waits up to ``wait_seconds`` (default: ``$M6REC_LOCK_WAIT_SECONDS``,
    else 0) for the holder to finish, then raises :class:`FolderInUseError` naming it. Re-entrant within
    one process.
    """
    if wait_seconds is None:
        wait_seconds = _wait_from_environment()
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise M6RecError(
            f"{directory}: not a folder (a file of that name is in the way); choose another --out"
        )
    directory.mkdir(parents=True, exist_ok=True)
    key = directory.resolve()
    with _held_guard:
        if key in _held:
            _held[key] += 1
            reentered = True
        else:
            reentered = False
    if reentered:
        try:
            yield
        finally:
            with _held_guard:
                _held[key] -= 1
        return

    handle = open(directory / LOCK_FILE, "a+")  # noqa: SIM115 - held open for the whole block
    try:
        _acquire(handle, directory, wait_seconds)
        stale = _holder(handle)
        if stale:
            log.warning(
                "%s: took over the lock of a run that ended without releasing it (%s)", directory, stale
            )
        _write_holder(handle)
        _sweep_staging(directory)
        with _held_guard:
            _held[key] = 1
        try:
            yield
        finally:
            with _held_guard:
                _held.pop(key, None)
            handle.seek(0)
            handle.truncate()  # a released lock names no holder
            handle.flush()
            fcntl.flock(handle, fcntl.LOCK_UN)
    finally:
        handle.close()


def _wait_from_environment() -> float:
    text = os.environ.get(WAIT_ENV, "").strip()
    try:
        seconds = float(text) if text else 0.0
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:
        raise ConfigError(f"{WAIT_ENV}={text!r}: expected a number of seconds, 0 or more")
    return seconds


def _acquire(handle, directory: Path, wait_seconds: float) -> None:
    deadline = time.monotonic() + max(wait_seconds, 0.0)
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                waited = f" after waiting {wait_seconds:g} s" if wait_seconds > 0 else ""
                raise FolderInUseError(
                    f"{directory}: another m6rec run is writing this folder ({_holder(handle) or 'holder unknown'})"
                    f"{waited}",
                    hint="wait for it to finish, stop it, or write to another folder",
                ) from None
            time.sleep(min(_POLL_SECONDS, max(deadline - time.monotonic(), 0.0)))


def _holder(handle) -> str:
    """The holder the lock file names, in words ('' when it names none)."""
    handle.seek(0)
    text = handle.read().strip()
    if not text:
        return ""
    try:
        holder = json.loads(text)
        return f"PID {holder['pid']} on {holder['host']} since {holder['started_at']}: {holder['command']}"
    except (ValueError, KeyError, TypeError):
        return f"unreadable holder record {text[:80]!r}"


def _write_holder(handle) -> None:
    record = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:300],
    }
    handle.seek(0)
    handle.truncate()
    handle.write(json.dumps(record) + "\n")
    handle.flush()
    os.fsync(handle.fileno())


def _sweep_staging(directory: Path) -> None:
    """Remove the staging folders of earlier runs that were killed while writing (this one holds the lock,
    so no one is writing them)."""
    abandoned = [path for path in directory.glob(f"{STAGING_PREFIX}*") if path.is_dir()]
    for path in abandoned:
        shutil.rmtree(path, ignore_errors=True)
    if abandoned:
        log.warning(
            "%s: removed %d staging folder(s) left by runs that did not finish: %s",
            directory,
            len(abandoned),
            ", ".join(sorted(path.name for path in abandoned)),
        )
