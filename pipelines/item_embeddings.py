"""Item embeddings: the frozen content encoders (text, image, audio), the KG embeddings and their
concatenated fusion, each an embedding Parquet file in a features folder, and :class:`EmbeddingResult`,
what every embedding step returns.

Content encoders run incrementally (only new or changed items are embedded); the KG model is retrained
only when its triples change. One bad media file gives its item a null embedding and a line in
``problems.json``; it never stops the run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from m6rec.config import EmbeddingConfig
from m6rec.data.columns import MEDIA_ROLES
from m6rec.data.contained import MediaLimits
from m6rec.data.contract import ITEM_ID, USER_ID
from m6rec.data.dataset import Dataset
from m6rec.data.interactions import IdIndex, InteractionMatrix
from m6rec.embeddings.store import METADATA_KEY, EmbeddingTable
from m6rec.errors import ConfigError
from m6rec.modalities import ENCODED_MODALITIES, ITEM_SPACES, MEDIA_COLUMNS

if TYPE_CHECKING:
    from m6rec.cluster import Executor


log = logging.getLogger("m6rec")


@dataclass
class EmbeddingResult:
    """Paths of the embedding files written, per-stage counts (total, computed, reused, failed), and the
    tables themselves: :meth:`table` reads each file once and keeps it for every later stage."""

    features_dir: Path
    paths: dict[str, Path] = field(default_factory=dict)
    counts: dict[str, dict] = field(default_factory=dict)
    problems: list[dict] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    tables: dict[str, EmbeddingTable] = field(default_factory=dict, repr=False)
    cached: bool = False  # the embeddings cache answered: nothing was computed

    def merge(self, other: EmbeddingResult) -> None:
        """Add the files, counts, problems, timings and loaded tables of ``other``."""
        self.paths.update(other.paths)
        self.counts.update(other.counts)
        self.problems.extend(other.problems)
        self.timings.update(other.timings)
        self.tables.update(other.tables)

    def table(self, name: str) -> EmbeddingTable:
        """The embedding table ``name`` (read from its file the first time only)."""
        if name not in self.tables:
            from m6rec.embeddings.store import read_embeddings

            self.tables[name] = read_embeddings(self.paths[name])
        return self.tables[name]

    def content_tables(self) -> dict[str, EmbeddingTable]:
        """The item vector spaces a two-tower model or a ranker reads: text, image, audio, kg, fused."""
        return {name: self.table(name) for name in ITEM_SPACES if name in self.paths}

    def relocate(self, old: Path, new: Path) -> None:
        """Point the paths under ``old`` at the same names under ``new``."""
        self.features_dir = Path(new) / Path(self.features_dir).relative_to(old)
        self.paths = {name: Path(new) / Path(path).relative_to(old) for name, path in self.paths.items()}

    def headline(self, problem_examples: int = 20) -> dict:
        """What the flows show of the run, JSON-ready: :meth:`summary` with the features folder, the
        first ``problem_examples`` problems and whether the cache answered."""
        return {
            "features_dir": str(self.features_dir),
            **self.summary(),
            "problem_examples": self.problems[:problem_examples],
            "cached": self.cached,
        }

    def summary(self) -> dict:
        return {
            "files": {name: str(path) for name, path in self.paths.items()},
            "counts": self.counts,
            "problems": len(self.problems),
            "timings_seconds": self.timings,
        }


def compute_item_embeddings(
    dataset: Dataset, features_dir: Path, config: EmbeddingConfig, *, executor: Executor | None = None
) -> EmbeddingResult:
    """Frozen item embeddings that do not depend on interactions: text, image, audio and KG, and their
    weighted concatenation ``fused.parquet`` (unless fusion is learned by the two-tower model), brought
    up to date in ``features_dir`` (a folder of the generation the caller stages); the frozen encoders
    on the workers of a remote ``executor`` when there is one."""
    features_dir = Path(features_dir)
    result = EmbeddingResult(features_dir)
    for modality in ENCODED_MODALITIES:
        if modality in config.modalities and _has_modality(dataset, modality):
            timed(
                result,
                modality,
                lambda m=modality: _encode_content(dataset, m, features_dir, config, result, executor),
            )
    if "kg" in config.modalities:
        timed(result, "kg", lambda: _train_kg(dataset, features_dir, config, result))
    content = result.content_tables()
    learned_fusion = "cf" in config.modalities and config.fusion.mode == "attention"
    if content and not learned_fusion:
        timed(result, "fused", lambda: _concat_fusion(dataset, content, features_dir, config, result))
    return result


def _encode_content(
    dataset: Dataset, modality: str, features_dir: Path, config: EmbeddingConfig, result, executor=None
) -> None:
    from features.base import encode_items
    from features.encoders import create_encoder

    params = {**getattr(config, modality).model_dump(), "force_cpu": config.force_cpu}
    if modality == "text":
        params["item_columns"] = dataset.item_columns
    try:
        encoder = create_encoder(modality, **params)
    except TypeError as error:
        raise ConfigError(f"embeddings: {modality}: {error}") from None
    path = features_dir / f"{modality}.parquet"
    limits = media_limits(config, dataset.allowed_roots, dataset.media_hashes)
    report = encode_items(
        encoder, _encoder_items(dataset, modality), dataset.directory, path, limits, executor=executor
    )
    record_report(result, modality, path, report)


def _train_kg(dataset: Dataset, features_dir: Path, config: EmbeddingConfig, result) -> None:
    from features.kg import KGConfig, build_kg_triples, train_kg_embeddings

    triples = build_kg_triples(dataset.kg, dataset.items, config.kg.attribute_columns, dataset.item_columns)
    if triples.empty:
        log.info("kg: no knowledge-graph triples and no categorical item attributes; skipped")
        return
    kg_config = KGConfig(**config.kg.model_dump(), force_cpu=config.force_cpu)
    path = features_dir / "kg.parquet"
    report = train_kg_embeddings(triples, catalogue_index(dataset).ids, path, kg_config)
    record_report(result, "kg", path, report)


def _concat_fusion(
    dataset: Dataset, content: dict, features_dir: Path, config: EmbeddingConfig, result
) -> None:
    """``fused.parquet``: the weighted concatenation of the content blocks, rewritten only when an input
    file (by its hash), the modality weights or the catalogue changed."""
    from features.fusion import concat_fusion
    from m6rec.embeddings.store import current_file_problems, write_embeddings

    item_ids = catalogue_index(dataset).ids
    path = features_dir / "fused.parquet"
    metadata = {
        "encoder": "concat-fusion",
        "weights": ",".join(
            f"{name}:{content[name].metadata.get('file_hash', '')[:12]}" for name in sorted(content)
        ),
        "pretrained": all(table.metadata.get("pretrained", True) for table in content.values()),
        "modalities": sorted(content),
        "modality_weights": config.fusion.weights,
    }
    result.paths["fused"] = path
    stored_problems = current_file_problems(path, item_ids, metadata)
    if stored_problems is not None:
        failed = sum(problem is not None for problem in stored_problems)
        result.counts["fused"] = {
            "total": len(item_ids),
            "computed": 0,
            "reused": len(item_ids),
            "failed": failed,
        }
        return
    vectors, present = concat_fusion(content, item_ids, config.fusion.weights)
    problems = [None if found else "no content block" for found in present]
    write_embeddings(path, ITEM_ID, item_ids, vectors, valid=present, problems=problems, metadata=metadata)
    result.counts["fused"] = {
        "total": len(item_ids),
        "computed": len(item_ids),
        "reused": 0,
        "failed": int((~present).sum()),
    }


def interaction_matrix(dataset: Dataset, train: pd.DataFrame) -> InteractionMatrix:
    """``train`` as a matrix over its users (and the dataset's) and the whole catalogue."""
    users = IdIndex.from_values(train[USER_ID], None if dataset.users is None else dataset.users[USER_ID])
    return InteractionMatrix.from_frame(train, users, catalogue_index(dataset))


def record_report(result: EmbeddingResult, name: str, path: Path, report) -> None:
    result.paths[name] = path
    result.counts[name] = {
        "total": report.total,
        "computed": report.computed,
        "reused": report.reused,
        "failed": report.failed,
    }
    result.problems.extend(report.problems)
    log.info(
        "%s: %d items, %d computed, %d reused, %d without embedding",
        name,
        report.total,
        report.computed,
        report.reused,
        report.failed,
    )
    if report.total and report.failed * 2 > report.total:
        reasons = Counter(str(problem.get("problem", problem)) for problem in report.problems)
        reason = reasons.most_common(1)[0][0] if reasons else "unknown"
        log.warning(
            "%s: %d of %d items have no vector (most often: %s); what needs them steps aside",
            name,
            report.failed,
            report.total,
            reason,
        )


def timed(result: EmbeddingResult, stage: str, work) -> None:
    started = time.perf_counter()
    work()
    result.timings[stage] = round(time.perf_counter() - started, 3)


def _has_modality(dataset: Dataset, modality: str) -> bool:
    if dataset.items is None:
        return False
    if modality not in MEDIA_COLUMNS:
        return True
    column = _media_column(dataset, modality)
    return column is not None and dataset.items[column].fillna("").astype(str).str.strip().ne("").any()


def _media_column(dataset: Dataset, modality: str) -> str | None:
    """The items column whose role is ``image_path`` / ``audio_path``, by default the column of that name."""
    found = dataset.item_columns.with_role(MEDIA_ROLES[MEDIA_COLUMNS[modality]])
    return found[0] if found else None


def _encoder_items(dataset: Dataset, modality: str) -> pd.DataFrame:
    """The items as the encoder of ``modality`` reads them: the media column of its role under the
    contract's name (``image_path``, ``audio_path``), whichever column the dataset declared."""
    if modality not in MEDIA_COLUMNS:
        return dataset.items
    name, column = MEDIA_COLUMNS[modality], _media_column(dataset, modality)
    if column == name:
        return dataset.items
    items = dataset.items.drop(columns=[name], errors="ignore")
    return items.rename(columns={column: name}) if column is not None else items


def catalogue_index(dataset: Dataset) -> IdIndex:
    return IdIndex.from_values(
        None if dataset.items is None else dataset.items[ITEM_ID],
        dataset.interactions[ITEM_ID],
        None if dataset.test is None else dataset.test[ITEM_ID],
    )


def item_vectors_digest(features_dir: Path) -> str:
    """A digest of the item vector files in ``features_dir`` (text, image, audio, kg, fused) by the
    content hash their writer stored (footers only are read): equal digests, the same item vectors."""
    import pyarrow.parquet as pq

    digest = hashlib.sha256()
    for space in ITEM_SPACES:
        path = Path(features_dir) / f"{space}.parquet"
        if path.is_file():
            stored = json.loads((pq.read_schema(path).metadata or {}).get(METADATA_KEY, b"{}"))
            digest.update(f"{space}\0{stored.get('file_hash', '')}\n".encode())
    return digest.hexdigest()


def media_limits(config: EmbeddingConfig, extra_roots: tuple = (), hashes=None) -> MediaLimits:
    """What the encoders may read of a media file, by ``config`` (size, read time), where the files
    may lie besides the dataset folder and the store of their content hashes."""
    return MediaLimits(
        extra_roots=tuple(extra_roots),
        max_bytes=int(config.media_max_mb * (1 << 20)),
        read_timeout_seconds=config.media_read_timeout_seconds,
        hashes=hashes,
    )
