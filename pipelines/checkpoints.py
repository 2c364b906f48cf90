"""Finished stages of a run, kept inside its staged generation so that a re-run after a crash reuses
them instead of doing them again.

Each stage's result is filed under a digest of everything it depends on (the fold's interactions, the
configuration, the embedding files by their content hash, the seed, the m6rec version): a re-run whose
inputs differ in any of these computes the stage again. The checkpoints live in ``.checkpoints/`` of the
staged generation (:mod:`m6rec.generations` keeps that folder when it resumes an unfinished one) and are
removed before the generation is published, so no published generation holds any. They are JSON and
LightGBM text files, never pickles.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

from m6rec import __version__
from m6rec.data.interactions import InteractionMatrix, interaction_digest
from m6rec.embeddings.store import METADATA_KEY
from m6rec.io import write_json
from pipelines.run_folder import RunFolder

log = logging.getLogger("m6rec")


class Checkpoints:
    """The checkpoints of the staged generation ``folder``."""

    def __init__(self, folder: RunFolder):
        self.root = folder.checkpoints_dir

    def read(self, stage: str, digest: str) -> dict | None:
        """The payload ``stage`` left under ``digest``, or None (none, another digest, unreadable)."""
        path = self.root / f"{stage}.json"
        try:
            entry = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(entry, dict) or entry.get("digest") != digest:
            return None
        log.info("resuming: the %s stage finished before with these inputs; reused", stage)
        return entry.get("payload")

    def write(self, stage: str, digest: str, payload: dict) -> None:
        write_json({"digest": digest, "payload": payload}, self.root / f"{stage}.json")

    def directory(self, stage: str) -> Path:
        """A folder for the stage's files (a model), beside its JSON."""
        return self.root / stage

    def clear(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def stage_digest(*parts) -> str:
    """SHA-256 of ``parts``: strings, JSON-ready values and interaction matrices (by structure, values and
    raw IDs), with the m6rec version."""
    digest = hashlib.sha256(__version__.encode())
    for part in parts:
        digest.update(b"\x1e")
        if isinstance(part, InteractionMatrix):
            digest.update(interaction_digest(part).encode())
        else:
            digest.update(json.dumps(part, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def embeddings_digest(features_dir: Path) -> str:
    """The content of every embedding file under ``features_dir``, by the file hash its writer stored in
    the Parquet metadata (the footer only is read); a file without one is hashed whole."""
    import pyarrow.parquet as pq

    digest = hashlib.sha256()
    for path in sorted(Path(features_dir).rglob("*.parquet")) if Path(features_dir).is_dir() else []:
        metadata = pq.read_schema(path).metadata or {}
        try:
            stored = json.loads(metadata.get(METADATA_KEY, b"{}")).get("file_hash")
        except ValueError:
            stored = None
        if not stored:
            stored = hashlib.sha256(path.read_bytes()).hexdigest()
        digest.update(f"{path.relative_to(features_dir)}\0{stored}\n".encode())
    return digest.hexdigest()
