"""What a run may read: files inside the dataset folder (or an extra root the configuration names in
``allow_outside_paths``), regular files only, of bounded size, hashed in a stream with a deadline.

A media path such as ``image_path`` is resolved against the dataset folder, symlinks included, before
anything opens it: an absolute path, ``..``, ``~`` or a link that lands outside is refused, and so is a
folder, a FIFO or a device (which would hang a run or fill its memory). Each refusal is a reason that the
caller records for that one item (a null embedding and a line in ``problems.json``); a table that is not
contained is a one-line error.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path

from m6rec.io import write_json

_HASHES_FORMAT = "m6rec-media-hashes"

BLOCK_BYTES = 1 << 20


class RejectedPath(Exception):
    """A path the run may not read; ``str()`` is the reason."""


@dataclass(frozen=True)
class MediaLimits:
    """``extra_roots``: folders besides the dataset's that paths may resolve into; ``max_bytes`` and
    ``read_timeout_seconds`` bound each media file's hashing (and so its reading)."""

    extra_roots: tuple[Path, ...] = ()
    max_bytes: int = 1 << 30
    read_timeout_seconds: float = 60.0
    hashes: MediaHashes | None = field(default=None, compare=False)

    def fingerprint(self, path: Path) -> str:
        """The content hash of the contained file ``path``: from ``hashes`` (its stored hash while the
        file's stat is unchanged) or streamed (:func:`streamed_fingerprint`)."""
        if self.hashes is not None:
            return self.hashes.digest(path, self)
        return streamed_fingerprint(path, self)


def contained_path(directory: Path, raw: str, extra_roots: tuple[Path, ...] = ()) -> Path:
    """``raw`` (relative to ``directory``) resolved, when it lands inside ``directory`` or one of
    ``extra_roots`` and is a regular file; else :class:`RejectedPath` with the reason."""
    text = str(raw).strip()
    candidate = Path(text)
    if text.startswith("~"):
        raise RejectedPath(f"{text}: a home-relative path; media paths are relative to the dataset folder")
    if not candidate.is_absolute():
        candidate = Path(directory) / candidate
    resolved = Path(os.path.realpath(candidate))
    roots = [Path(os.path.realpath(root)) for root in (directory, *extra_roots)]
    if not any(resolved == root or resolved.is_relative_to(root) for root in roots):
        raise RejectedPath(
            f"{text}: outside the dataset folder (resolves to {resolved}); name its folder in "
            "allow_outside_paths to allow it"
        )
    try:
        mode = resolved.stat().st_mode
    except FileNotFoundError:
        raise RejectedPath(f"missing file {candidate}") from None
    except OSError as error:
        raise RejectedPath(f"cannot read {candidate}: {error.strerror}") from None
    if not stat.S_ISREG(mode):
        raise RejectedPath(f"{text}: not a regular file ({_kind(mode)})")
    return resolved


def streamed_fingerprint(path: Path, limits: MediaLimits) -> str:
    """``sha256:<hex>`` of the file, read block by block; :class:`RejectedPath` past ``max_bytes`` or
    when reading it takes longer than ``read_timeout_seconds``."""
    digest, size = hashlib.sha256(), 0
    deadline = time.monotonic() + limits.read_timeout_seconds
    try:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(BLOCK_BYTES), b""):
                size += len(block)
                if size > limits.max_bytes:
                    raise RejectedPath(
                        f"{path}: larger than the {limits.max_bytes:,}-byte limit for media files"
                    )
                if time.monotonic() > deadline:
                    raise RejectedPath(f"{path}: reading took over {limits.read_timeout_seconds:g} s")
                digest.update(block)
    except OSError as error:
        raise RejectedPath(f"cannot read {path}: {error.strerror}") from None
    return "sha256:" + digest.hexdigest()


class MediaHashes:
    """Content hashes of media files by their stat; ``path`` is where they are kept (None: in memory only)."""

    def __init__(self, path: Path | None = None):
        self.path = None if path is None else Path(path)
        self._entries: dict[str, list] = {}
        self._changed = False
        if self.path is not None and self.path.is_file():
            try:
                stored = json.loads(self.path.read_text())
            except (OSError, ValueError):
                stored = {}
            if isinstance(stored, dict) and stored.get("format") == _HASHES_FORMAT:
                self._entries = dict(stored.get("files") or {})

    def digest(self, path: Path, limits: MediaLimits) -> str:
        """``sha256:<hex>`` of ``path`` (a resolved, contained file): the stored one while its stat is
        unchanged, else streamed now; :class:`m6rec.data.RejectedPath` as when streaming."""
        status = os.stat(path)
        key, seen = str(path), [status.st_size, status.st_mtime_ns, status.st_ino]
        entry = self._entries.get(key)
        if entry is not None and entry[:3] == seen:
            return entry[3]
        if status.st_size > limits.max_bytes:
            raise RejectedPath(f"{path}: larger than the {limits.max_bytes:,}-byte limit for media files")
        digest = streamed_fingerprint(path, limits)
        self._entries[key] = [*seen, digest]
        self._changed = True
        return digest

    def save(self) -> None:
        """Keep the hashes for the next run (only when some were added)."""
        if self.path is not None and self._changed:
            write_json({"format": _HASHES_FORMAT, "files": self._entries}, self.path)
            self._changed = False


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a file"
