"""Generations of an output folder: every run writes a new, complete folder, then one atomic switch
publishes it.

    out/
      current -> generations/000007     the published generation (a symlink, replaced by one rename)
      generations/000005/ 000006/ 000007/
      recommendations.parquet -> current/recommendations.parquet   (one such link per published name)

A run stages ``generations/<next>/``; it starts from hard links to the files of the published generation
that it carries over (``carry``), so what it does not change costs neither time nor disk, and every
output is written under a temporary name and renamed (``m6rec.io``), which replaces the link and never
touches the file the older generations share. Once the run has written and validated everything,
``generation.json`` marks the folder complete and ``current`` is switched to it: a reader that follows
``current`` (or the links beside it) sees either the old generation whole or the new one whole. The
newest ``keep`` generations are kept (and always the published one); ``rollback`` points ``current`` back.

A folder without ``generation.json`` belongs to a run that failed or was killed. The next run resumes
from it: it keeps the names listed in ``resume`` (caches whose files carry their own content
fingerprints, such as the embeddings) and starts everything else from the published generation again.

The caller holds the folder's lock (:func:`m6rec.locking.folder_lock`) for all of this.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from m6rec.errors import M6RecError
from m6rec.io import TEMPORARY_SUFFIX, write_json

log = logging.getLogger("m6rec")

GENERATIONS_DIR = "generations"
CURRENT = "current"
MARKER = "generation.json"
# In a staged generation only: whose run it is (its inputs' identity), so only that run resumes it.
STAGE_IDENTITY = ".stage-identity"
DEFAULT_KEEP = 3
# ``carry`` value: every name of the published generation.
EVERYTHING = ("*",)
_NAME = re.compile(r"^\d{6}$")


class GenerationError(M6RecError):
    """A generation cannot be published or rolled back to."""


@dataclass(frozen=True)
class Generation:
    """One complete generation: its folder and what ``generation.json`` says about it."""

    path: Path
    info: dict

    @property
    def name(self) -> str:
        return self.path.name


class Generations:
    """The generations of the output folder ``root``. ``legacy_names``: the outputs an m6rec from before
    generations wrote straight into ``root``; the first run adopts them as generation ``000000``."""

    def __init__(self, root: str | Path, *, legacy_names: Iterable[str] = ()):
        self.root = Path(root)
        self.folder = self.root / GENERATIONS_DIR
        self.legacy_names = tuple(legacy_names)

    def current(self) -> Path | None:
        """The published generation's folder, or None when nothing was published through generations."""
        link = self.root / CURRENT
        if not link.is_symlink():
            return None
        target = self.root / os.readlink(link)
        return target if target.is_dir() else None

    def published_root(self) -> Path:
        """Where readers read: the published generation, or ``root`` itself for a folder written without
        generations (by an older m6rec, or by hand)."""
        return self.current() or self.root

    def complete(self) -> list[Generation]:
        """The complete generations, oldest first."""
        found = []
        for path in sorted(self.folder.glob("[0-9]" * 6)) if self.folder.is_dir() else []:
            marker = path / MARKER
            if _NAME.match(path.name) and marker.is_file():
                try:
                    found.append(Generation(path, json.loads(marker.read_text())))
                except ValueError:
                    continue
        return found

    @contextmanager
    def staged(
        self,
        *,
        kind: str,
        carry: Iterable[str] = (),
        resume: Iterable[str] = (),
        keep: int = DEFAULT_KEEP,
        validate: Callable[[Path], None] | None = None,
        unchanged_ignoring: Iterable[str] | None = None,
        identity: str | None = None,
    ) -> Iterator[Stage]:
        """Stage the next generation and publish it when the block succeeds (after ``validate`` of its
        folder, which raises to refuse it). The block may :meth:`Stage.discard` it instead (nothing to
        publish). ``carry``: names of the published generation the stage starts from (hard links;
        :data:`EVERYTHING` for all); ``resume``: names kept from a run that did not finish. With
        ``unchanged_ignoring`` (paths relative to the generation), a stage that holds exactly the
        published generation's files apart from those is discarded: a run that changed nothing adds no
        generation (and so pushes none out). ``identity`` (a digest of the run's inputs: its dataset and
        configuration) gates resuming: an unfinished generation staged under another identity is
        discarded, not resumed, and the log says so."""
        self._adopt_legacy()
        stage = Stage(self._prepare(tuple(carry), tuple(resume), identity))
        yield stage
        (stage.path / STAGE_IDENTITY).unlink(missing_ok=True)
        if unchanged_ignoring is not None and self._same_files(stage.path, set(unchanged_ignoring)):
            log.info("%s: nothing changed; generation %s stays published", self.root, self.current().name)
            stage.discard()
        if stage.discarded:
            shutil.rmtree(stage.path, ignore_errors=True)
            return
        if validate is not None:
            validate(stage.path)
        self._commit(stage.path, kind)
        self._prune(keep)

    def rollback(self, to: str | None = None) -> Generation:
        """Point ``current`` at generation ``to`` (default: the newest complete one older than the
        published one) and return it."""
        complete = {generation.name: generation for generation in self.complete()}
        current = self.current()
        if to is None:
            older = [name for name in complete if current is None or name < current.name]
            if not older:
                raise GenerationError(
                    f"{self.root}: no generation older than the published one to roll back to"
                )
            to = older[-1]
        if to not in complete:
            raise GenerationError(
                f"{self.root}: no complete generation {to!r} (there are: {', '.join(complete) or 'none'})"
            )
        self._point(complete[to].path)
        log.info("%s: rolled back to generation %s", self.root, to)
        return complete[to]

    # --- staging ---------------------------------------------------------------------------------------

    def _prepare(self, carry: tuple[str, ...], resume: tuple[str, ...], identity: str | None = None) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        complete = {generation.name for generation in self.complete()}
        unfinished = sorted(
            path for path in self.folder.iterdir() if path.is_dir() and path.name not in complete
        )
        for path in unfinished[:-1]:
            shutil.rmtree(path, ignore_errors=True)
        if unfinished:
            stage = unfinished[-1]
            if not self._resumable(stage, identity):
                resume = ()
            kept = sorted(entry.name for entry in stage.iterdir() if entry.name in resume)
            for entry in stage.iterdir():
                if entry.name not in kept:
                    _remove(entry)
            for partial in stage.rglob(f".*{TEMPORARY_SUFFIX}"):
                partial.unlink()  # a file the killed run was writing
            if kept:
                log.info(
                    "%s: resuming the run that did not finish (generation %s): reusing %s; what it "
                    "reuses is checked against today's inputs by content",
                    self.root,
                    stage.name,
                    ", ".join(f"{name}/" if (stage / name).is_dir() else name for name in kept),
                )
        else:
            numbers = [int(path.name) for path in self.folder.iterdir() if _NAME.match(path.name)]
            stage = self.folder / f"{max(numbers, default=0) + 1:06d}"
            stage.mkdir()
        if identity is not None:
            (stage / STAGE_IDENTITY).write_text(identity)
        base = self.current()
        if base is not None:
            names = [entry.name for entry in base.iterdir() if entry.name != MARKER]
            for name in names if carry == EVERYTHING else [name for name in carry if name in names]:
                if not (stage / name).exists():
                    link_tree(base / name, stage / name)
        return stage

    def _resumable(self, stage: Path, identity: str | None) -> bool:
        """Whether the unfinished generation ``stage`` belongs to a run with ``identity`` (always, when
        the run states none); when not, the log says it is discarded."""
        if identity is None:
            return True
        found = stage / STAGE_IDENTITY
        if found.is_file() and found.read_text() == identity:
            return True
        if any(entry.name != STAGE_IDENTITY for entry in stage.iterdir()):
            log.warning(
                "%s: the run that did not finish (generation %s) had another dataset or configuration; "
                "its files are discarded, not resumed",
                self.root,
                stage.name,
            )
        return False

    def _same_files(self, stage: Path, ignoring: set[str]) -> bool:
        """Whether ``stage`` holds the published generation's files (the same inodes) and no others."""
        current = self.current()
        if current is None:
            return False

        def files(root: Path) -> dict[str, tuple[int, int]]:
            found = {}
            for path in root.rglob("*"):
                relative = path.relative_to(root).as_posix()
                if path.is_file() and relative not in ignoring and relative != MARKER:
                    status = path.stat()
                    found[relative] = (status.st_dev, status.st_ino)
            return found

        return files(stage) == files(current)

    def _commit(self, stage: Path, kind: str) -> None:
        current = self.current()
        info = {
            "generation": stage.name,
            "kind": kind,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "previous": None if current is None else current.name,
            "pid": os.getpid(),
        }
        write_json(info, stage / MARKER)
        _fsync_tree(stage)
        self._point(stage)
        log.info("%s: published generation %s (%s)", self.root, stage.name, kind)

    def _point(self, generation: Path) -> None:
        """Switch ``current`` to ``generation`` with one rename, then bring the links beside it up to date."""
        link = self.root / CURRENT
        if link.exists() and not link.is_symlink():
            raise GenerationError(
                f"{link}: a folder, not the link m6rec publishes through (was the output folder copied "
                "following links?); copy output folders with their links kept (cp -a)"
            )
        temporary = self.root / f".{CURRENT}.{os.getpid()}.tmp"
        temporary.unlink(missing_ok=True)
        temporary.symlink_to(Path(GENERATIONS_DIR) / generation.name)
        os.replace(temporary, link)
        _fsync_dir(self.root)
        self._link_names(generation)

    def _link_names(self, generation: Path) -> None:
        """``root/<name> -> current/<name>`` for every name of the published generation; links to names
        it no longer has are removed. A real file of that name (not a link) is never replaced."""
        names = {entry.name for entry in generation.iterdir()}
        for entry in self.root.iterdir():
            if entry.is_symlink() and _into_current(entry) and entry.name not in names:
                entry.unlink()
        for name in names:
            entry = self.root / name
            if entry.is_symlink() or not entry.exists():
                if entry.is_symlink() and _into_current(entry):
                    continue
                temporary = self.root / f".{name}.{os.getpid()}.link"
                temporary.unlink(missing_ok=True)
                temporary.symlink_to(Path(CURRENT) / name)
                os.replace(temporary, entry)

    def _prune(self, keep: int) -> None:
        current = self.current()
        complete = self.complete()
        for generation in complete[: max(len(complete) - max(keep, 1), 0)]:
            if current is None or generation.path != current:
                shutil.rmtree(generation.path, ignore_errors=True)

    def _adopt_legacy(self) -> None:
        """Move the outputs an older m6rec wrote straight into ``root`` into generation ``000000`` and
        publish it, so that the first run with generations starts from them (and can roll back to them).
        Idempotent: a run killed while moving them moves the rest next time."""
        if self.current() is not None:
            return
        legacy = [
            self.root / name
            for name in self.legacy_names
            if (self.root / name).exists() and not (self.root / name).is_symlink()
        ]
        if not legacy:
            return
        target = self.folder / "000000"
        target.mkdir(parents=True, exist_ok=True)
        for path in legacy:
            path.replace(target / path.name)
        log.info(
            "%s: the outputs written before generations (%s) are now generation 000000",
            self.root,
            ", ".join(sorted(path.name for path in legacy)),
        )
        self._commit(target, "adopted")


@dataclass
class Stage:
    """The generation being written: its folder, and whether the run decided there is nothing to publish."""

    path: Path
    discarded: bool = False

    def discard(self) -> None:
        self.discarded = True


def _into_current(link: Path) -> bool:
    target = Path(os.readlink(link))
    return bool(target.parts) and target.parts[0] == CURRENT


def link_tree(source: Path, target: Path) -> None:
    """``target`` as hard links to the file ``source`` or the files under it (copies where the file
    system has none): what a generation shares with another costs no disk, and neither writes into the
    other's files (every output is written under a temporary name and renamed)."""
    if source.is_dir():
        shutil.copytree(source, target, copy_function=_link_or_copy, symlinks=True)
    else:
        _link_or_copy(source, target)


def _link_or_copy(source: str | Path, target: str | Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def _fsync_tree(root: Path) -> None:
    """Flush the generation's files and folders to disk before the switch points at them."""
    for directory, _, files in os.walk(root):
        for name in files:
            with open(os.path.join(directory, name), "rb") as handle:
                os.fsync(handle.fileno())
        _fsync_dir(Path(directory))


def _fsync_dir(path: Path) -> None:
    handle = os.open(path, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)
