"""The embedding stage as one entry (``m6rec embed``, the nightly-embeddings flow): every configured
embedding of a dataset brought up to date in ``OUT_DIR/features/`` (:mod:`pipelines.item_embeddings`,
:mod:`pipelines.collaborative`), answered from its cache when nothing it depends on changed.

The cache is a plain JSON file beside the output folder's generations (``OUT/.m6rec-embeddings-cache.json``,
no Prefect result storage), keyed on what determines the files: the dataset
(:func:`m6rec.data.fingerprint.data_fingerprint`: tables by content, media files by their content hash,
read only when their stat changed), the embedding configuration and column roles, the output folder and
the m6rec version. It is written only once the generation it describes is published, and validated when
read: an entry that is not whole, or that names a file no longer there, is recomputed.
"""

from __future__ import annotations

import hashlib
import json
import logging
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from m6rec import __version__
from m6rec.config import EmbeddingConfig
from m6rec.data.contained import MediaHashes
from m6rec.data.dataset import Dataset
from m6rec.data.fingerprint import data_fingerprint
from m6rec.embeddings.profiles import ProfileCache
from m6rec.generations import DEFAULT_KEEP
from m6rec.io import write_json
from pipelines.collaborative import train_collaborative
from pipelines.item_embeddings import (
    EmbeddingResult,
    compute_item_embeddings,
    interaction_matrix,
    media_limits,
)
from pipelines.run_folder import EMBEDDINGS_SUMMARY, PROBLEMS, RunFolder, StagedGeneration

if TYPE_CHECKING:
    from m6rec.cluster import Executor

log = logging.getLogger("m6rec")

_CACHE_FORMAT = "m6rec-embeddings-cache"
_CACHE_VERSION = 2


def compute_embeddings(
    dataset: Dataset,
    out_dir: Path,
    config: EmbeddingConfig | None = None,
    *,
    train: pd.DataFrame | None = None,
    items_only: bool = False,
    keep: int = DEFAULT_KEEP,
    executor: Executor | None = None,
    stage: StagedGeneration | None = None,
) -> EmbeddingResult:
    """Bring every configured embedding of ``dataset`` up to date in ``out_dir/features``: the item
    embeddings, then (unless ``items_only``) the collaborative model and user profiles learned from
    ``train`` (default: all interactions).

    When the dataset, the configuration and the output folder are those of the last run and its files
    are all there, the cache answers (``result.cached``) and no model is loaded. Else the files are
    written into a new generation of ``out_dir`` (:meth:`RunFolder.stage`; ``keep`` kept), or into
    ``stage`` (the nightly flow's) when given; when nothing changed, no generation is added. The paths in
    the result are ``out_dir``'s (``out_dir/features/...``, which follow the published generation). On a
    remote ``executor`` the frozen encoders run on its workers (:func:`features.base.encode_items`)."""
    config = config or EmbeddingConfig()
    public = RunFolder(out_dir)
    hashes = dataset.media_hashes or MediaHashes(public.media_hashes)
    dataset = replace(dataset, media_hashes=hashes)
    key = None if train is not None else embeddings_key(dataset, out_dir, config, items_only)
    cached = None if key is None else read_cached_embeddings(public.embeddings_cache, key)
    if cached is not None:
        log.info("embeddings: dataset and configuration unchanged since the last run; taken from the cache")
        return _cached_result(cached, public)
    train = dataset.interactions if train is None else train
    with ExitStack() as stack:
        if stage is None:
            stage = stack.enter_context(public.stage("embeddings", keep=keep, identity=key))
        else:
            stage.join("embeddings")
        features_dir = stage.folder.features_dir
        result = compute_item_embeddings(dataset, features_dir, config, executor=executor)
        if not items_only:
            profiles = ProfileCache(
                interaction_matrix(dataset, train), half_life_days=config.profile_half_life_days
            )
            result.merge(train_collaborative(dataset, train, result, features_dir, config, profiles))
        write_json(result.problems, features_dir / PROBLEMS)
        write_json(result.summary(), features_dir / EMBEDDINGS_SUMMARY)
        hashes.save()
        result.relocate(features_dir, public.features_dir)
        if key is not None:
            summary = result.summary()
            stage.on_published(lambda: write_cached_embeddings(public.embeddings_cache, key, summary))
    return result


def embeddings_key(dataset: Dataset, out_dir: str | Path, config: EmbeddingConfig, items_only: bool) -> str:
    """The cache key of the embeddings of ``dataset`` into ``out_dir`` with ``config``."""
    identity = {
        "dataset": data_fingerprint(dataset.directory, dataset.media_hashes, media_limits(config)),
        "out_dir": str(Path(out_dir).resolve()),
        "config": config.model_dump(mode="json"),
        "items_only": items_only,
        "columns": {
            "items": _roles(dataset.item_columns),
            "users": _roles(dataset.user_columns),
        },
        "m6rec": __version__,
    }
    encoded = json.dumps(identity, sort_keys=True, default=str).encode()
    return f"m6rec-embeddings-{hashlib.sha256(encoded).hexdigest()}"


def read_cached_embeddings(path: Path, key: str) -> dict | None:
    """The summary the cache file ``path`` holds for ``key``, when the entry is whole and every file it
    names exists; else None (a bad entry or a missing file is logged). Only plain JSON is read."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        entry = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as error:
        log.warning(
            "%s: unreadable cache entry (%s); computing the embeddings again", path, type(error).__name__
        )
        return None
    problem = _cache_problem(entry)
    if problem:
        log.warning("%s: %s; computing the embeddings again", path, problem)
        return None
    if entry["key"] != key:
        return None
    missing = [name for name in entry["summary"]["files"].values() if not Path(name).exists()]
    if missing:
        log.warning("cached run, but %s no longer exists: computing the embeddings again", missing[0])
        return None
    return entry["summary"]


def write_cached_embeddings(path: Path, key: str, summary: dict) -> None:
    """File ``summary`` (:meth:`EmbeddingResult.summary`) under ``key`` in the cache file ``path``."""
    write_json(
        {"format": _CACHE_FORMAT, "version": _CACHE_VERSION, "key": key, "summary": summary}, Path(path)
    )


def _cached_result(summary: dict, public: RunFolder) -> EmbeddingResult:
    """The result of a run the cache answered: the files of the last run, nothing computed."""
    problems_file = public.features_dir / PROBLEMS
    problems = json.loads(problems_file.read_text()) if problems_file.is_file() else []
    counts = {
        name: {
            "total": count["total"],
            "computed": 0,
            "reused": count["total"] - count.get("failed", 0),
            "failed": count.get("failed", 0),
        }
        for name, count in summary["counts"].items()
    }
    return EmbeddingResult(
        public.features_dir,
        paths={name: Path(path) for name, path in summary["files"].items()},
        counts=counts,
        problems=problems,
        timings=summary.get("timings_seconds", {}),
        cached=True,
    )


def _cache_problem(entry: Any) -> str | None:
    """What is wrong with a cache entry read from disk, or None."""
    if not isinstance(entry, dict) or entry.get("format") != _CACHE_FORMAT:
        return "not an m6rec embeddings cache entry"
    if entry.get("version") != _CACHE_VERSION:
        return f"cache entry version {entry.get('version')!r}, this m6rec reads {_CACHE_VERSION}"
    summary = entry.get("summary")
    if not isinstance(entry.get("key"), str) or not isinstance(summary, dict):
        return "cache entry without key or summary"
    files, counts = summary.get("files"), summary.get("counts")
    if not isinstance(files, dict) or not all(isinstance(value, str) for value in files.values()):
        return "cache entry: files is not a mapping of names to paths"
    if not isinstance(counts, dict) or not all(
        isinstance(value, dict) and all(isinstance(number, int) for number in value.values())
        for value in counts.values()
    ):
        return "cache entry: counts is not a mapping of names to integer counts"
    if not isinstance(summary.get("problems"), int):
        return "cache entry: problems is not a count"
    return None


def _roles(resolved) -> dict | None:
    """The resolved column roles of a table, part of what the embeddings depend on."""
    return None if resolved is None else resolved.to_dict()
