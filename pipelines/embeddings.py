"""The nightly embedding stage: frozen content encoders, KG embeddings, the two-tower model, fusion and
user profiles, each written as an embedding Parquet file under ``OUT_DIR/features/``.

Content encoders run incrementally (only new or changed items are embedded); the KG and two-tower
models are retrained only when their inputs change. One bad media file gives its item a null embedding
and a line in ``problems.json``; it never stops the run.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from m6rec.config import ENCODED_MODALITIES, ITEM_SPACES, EmbeddingConfig
from m6rec.data.columns import MEDIA_ROLES
from m6rec.data.contained import MediaLimits
from m6rec.data.contract import AUDIO_PATH, IMAGE_PATH, ITEM_ID, USER_ID
from m6rec.data.dataset import Dataset
from m6rec.data.interactions import IdIndex, InteractionMatrix, interaction_digest
from m6rec.embeddings.profiles import ProfileCache
from m6rec.embeddings.store import EmbeddingTable
from m6rec.errors import ConfigError
from m6rec.generations import DEFAULT_KEEP, EVERYTHING
from m6rec.io import write_json
from m6rec.locking import folder_lock
from pipelines.run_folder import (
    EMBEDDINGS_SUMMARY,
    FEATURES_DIR,
    PROBLEMS,
    TWO_TOWER_DIR,
    RunFolder,
    generations,
)

if TYPE_CHECKING:
    from features.two_tower import ExportedEmbeddings, TwoTowerModel

log = logging.getLogger("m6rec")

REQUIRED_COLUMN = {"image": IMAGE_PATH, "audio": AUDIO_PATH}


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

    def summary(self) -> dict:
        return {
            "files": {name: str(path) for name, path in self.paths.items()},
            "counts": self.counts,
            "problems": len(self.problems),
            "timings_seconds": self.timings,
        }


def compute_embeddings(
    dataset: Dataset,
    out_dir: Path,
    config: EmbeddingConfig | None = None,
    *,
    train: pd.DataFrame | None = None,
    items_only: bool = False,
    keep: int = DEFAULT_KEEP,
    cluster=None,
) -> EmbeddingResult:
    """Bring every configured embedding of ``dataset`` up to date in ``out_dir/features``: the item
    embeddings, then (unless ``items_only``) the collaborative model and user profiles learned from
    ``train`` (default: all interactions).

    The files are written into a new generation of ``out_dir`` that starts from the published one's
    (:mod:`m6rec.generations`; ``keep`` generations are kept) and is published when all are written; when
    nothing changed, no generation is added. Holds ``out_dir``'s lock (:func:`m6rec.locking.folder_lock`).
    The paths in the result are ``out_dir``'s (``out_dir/features/...``, which follow the published
    generation). On a Dask ``cluster`` the frozen encoders run on its workers
    (:func:`features.base.encode_items`)."""
    config = config or EmbeddingConfig()
    train = dataset.interactions if train is None else train
    reports = (f"{FEATURES_DIR}/{PROBLEMS}", f"{FEATURES_DIR}/{EMBEDDINGS_SUMMARY}")
    with (
        folder_lock(out_dir),
        generations(out_dir).staged(
            kind="embeddings",
            carry=EVERYTHING,
            resume=(FEATURES_DIR,),
            keep=keep,
            unchanged_ignoring=reports,
        ) as stage,
    ):
        features_dir = RunFolder(stage.path).features_dir
        result = compute_item_embeddings(dataset, features_dir, config, cluster=cluster)
        if not items_only:
            profiles = ProfileCache(_matrix(dataset, train), half_life_days=config.profile_half_life_days)
            result.merge(train_collaborative(dataset, train, result, features_dir, config, profiles))
        write_json(result.problems, features_dir / PROBLEMS)
        write_json(result.summary(), features_dir / EMBEDDINGS_SUMMARY)
    result.relocate(features_dir, RunFolder(out_dir).features_dir)
    return result


def compute_item_embeddings(
    dataset: Dataset, features_dir: Path, config: EmbeddingConfig, *, cluster=None
) -> EmbeddingResult:
    """Frozen item embeddings that do not depend on interactions: text, image, audio and KG, and their
    weighted concatenation ``fused.parquet`` (unless fusion is learned by the two-tower model), brought
    up to date in ``features_dir`` (a folder of the generation the caller stages); the frozen encoders
    on the workers of a Dask ``cluster`` when there is one."""
    return _item_embeddings(dataset, Path(features_dir), config, cluster)


def _item_embeddings(
    dataset: Dataset, features_dir: Path, config: EmbeddingConfig, cluster
) -> EmbeddingResult:
    result = EmbeddingResult(features_dir)
    for modality in ENCODED_MODALITIES:
        if modality in config.modalities and _has_modality(dataset, modality):
            _timed(
                result,
                modality,
                lambda m=modality: _encode_content(dataset, m, features_dir, config, result, cluster),
            )
    if "kg" in config.modalities:
        _timed(result, "kg", lambda: _train_kg(dataset, features_dir, config, result))
    content = result.content_tables()
    learned_fusion = "cf" in config.modalities and config.fusion.mode == "attention"
    if content and not learned_fusion:
        _timed(result, "fused", lambda: _concat_fusion(dataset, content, features_dir, config, result))
    return result


def train_collaborative(
    dataset: Dataset,
    train: pd.DataFrame,
    items: EmbeddingResult,
    out_dir: Path,
    config: EmbeddingConfig,
    profiles: ProfileCache,
    *,
    warm_start: TwoTowerModel | None = None,
    profile_files: bool = True,
) -> EmbeddingResult:
    """Two-tower vectors (and attention-fused vectors) learned from ``train`` over the frozen item
    embeddings in ``items``, plus per-space user profiles (from ``profiles``, the cache of the same
    history, which later stages reuse; not with ``profile_files`` False), written to ``out_dir``; the
    trained model is saved in ``out_dir/two_tower`` (:func:`load_collaborative_model` reads it back).

    ``warm_start``: a model trained on a subset of ``train`` (the ranker fold's model for the full
    history) that the training starts from, for a short schedule (see ``TwoTowerSettings``)."""
    out_dir = Path(out_dir)
    result = EmbeddingResult(out_dir)
    content = items.content_tables()
    if "cf" in config.modalities and train is not None and len(train):
        _timed(
            result,
            "cf",
            lambda: _train_two_tower(dataset, train, content, out_dir, config, result, warm_start),
        )
    if profile_files:
        spaces = {**content, **{name: result.table(name) for name in ITEM_SPACES if name in result.paths}}
        _timed(result, "profiles", lambda: _write_profiles(profiles, spaces, out_dir, result))
    return result


def fold_in_collaborative(
    dataset: Dataset,
    train: pd.DataFrame,
    items: EmbeddingResult,
    model: TwoTowerModel,
    out_dir: Path,
    config: EmbeddingConfig,
    profiles: ProfileCache,
    *,
    profile_files: bool = True,
) -> EmbeddingResult:
    """The files of :func:`train_collaborative` for the current catalogue and histories, from a trained
    ``model`` without training (:meth:`TwoTowerModel.fold_in`): known items and users keep their ID
    vectors, new items are served through the content tower, every user through its history in
    ``train`` (and attributes). A file whose vectors would come out the same is not rewritten. The
    profile files only with ``profile_files``.

    Raises ``ValueError`` when the content modalities in ``items`` are not those the model was trained
    with (retrain then)."""
    out_dir = Path(out_dir)
    result = EmbeddingResult(out_dir)
    content = items.content_tables()
    if "cf" in config.modalities and train is not None and len(train):
        _timed(result, "cf", lambda: _fold_in_two_tower(dataset, train, content, model, out_dir, result))
    if profile_files:
        spaces = {**content, **{name: result.table(name) for name in ITEM_SPACES if name in result.paths}}
        _timed(result, "profiles", lambda: _write_profiles(profiles, spaces, out_dir, result))
    return result


def load_collaborative_model(out_dir: Path, *, force_cpu: bool = False) -> TwoTowerModel | None:
    """The two-tower model :func:`train_collaborative` saved in ``out_dir`` (None when it saved none)."""
    from features.two_tower import CONFIG_FILE, TwoTowerModel

    directory = Path(out_dir) / TWO_TOWER_DIR
    if not (directory / CONFIG_FILE).exists():
        return None
    return TwoTowerModel.load(directory, force_cpu=force_cpu)


def _encode_content(
    dataset: Dataset, modality: str, features_dir: Path, config: EmbeddingConfig, result, cluster=None
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
    limits = MediaLimits(
        extra_roots=dataset.allowed_roots,
        max_bytes=int(config.media_max_mb * (1 << 20)),
        read_timeout_seconds=config.media_read_timeout_seconds,
    )
    report = encode_items(
        encoder, _encoder_items(dataset, modality), dataset.directory, path, limits, cluster=cluster
    )
    _record(result, modality, path, report)


def _train_kg(dataset: Dataset, features_dir: Path, config: EmbeddingConfig, result) -> None:
    from features.kg import KGConfig, build_kg_triples, train_kg_embeddings

    triples = build_kg_triples(dataset.kg, dataset.items, config.kg.attribute_columns, dataset.item_columns)
    if triples.empty:
        log.info("kg: no knowledge-graph triples and no categorical item attributes; skipped")
        return
    kg_config = KGConfig(**config.kg.model_dump(), force_cpu=config.force_cpu)
    path = features_dir / "kg.parquet"
    report = train_kg_embeddings(triples, _catalogue(dataset).ids, path, kg_config)
    _record(result, "kg", path, report)


def _train_two_tower(
    dataset: Dataset,
    train: pd.DataFrame,
    content: dict,
    features_dir: Path,
    config: EmbeddingConfig,
    result: EmbeddingResult,
    warm_start: TwoTowerModel | None = None,
) -> None:
    from features.two_tower import TwoTowerConfig, train_two_tower

    two_tower_config = TwoTowerConfig(
        **config.two_tower.model_dump(), fusion=config.fusion, force_cpu=config.force_cpu
    )
    try:
        saved = load_collaborative_model(features_dir, force_cpu=config.force_cpu)
    except Exception as error:  # an unreadable earlier model is only not reused
        log.warning("two-tower: the saved model in %s is unreadable (%s); training anew", features_dir, error)
        saved = None
    model = train_two_tower(
        _matrix(dataset, train),
        content,
        two_tower_config,
        users=dataset.users,
        user_columns=dataset.user_columns,
        interactions=train,
        warm_start=warm_start,
        reuse=saved,
    )
    if model is not saved:
        model.save(features_dir / TWO_TOWER_DIR)
    _record_two_tower(result, model.export(features_dir))


def _fold_in_two_tower(
    dataset: Dataset,
    train: pd.DataFrame,
    content: dict,
    model: TwoTowerModel,
    features_dir: Path,
    result: EmbeddingResult,
) -> None:
    folded = model.fold_in(_matrix(dataset, train), content, users=dataset.users, interactions=train)
    _record_two_tower(result, folded.export(features_dir))


def _record_two_tower(result: EmbeddingResult, exported: ExportedEmbeddings) -> None:
    """Paths and counts of the two-tower files; a file left as it was counts its rows as reused."""
    for name, side in (("cf_items", "items"), ("cf_users", "users"), ("fused", "fused")):
        path = getattr(exported, side)
        if path is None:
            continue
        result.paths[name] = path
        table = result.table(name)
        computed = len(table.keys) if side in exported.written else 0
        result.counts[name] = {
            "total": len(table.keys),
            "computed": computed,
            "reused": len(table.keys) - computed,
            "failed": int((~table.valid).sum()),
        }


def _concat_fusion(
    dataset: Dataset, content: dict, features_dir: Path, config: EmbeddingConfig, result
) -> None:
    """``fused.parquet``: the weighted concatenation of the content blocks, rewritten only when an input
    file (by its hash), the modality weights or the catalogue changed."""
    from features.fusion import concat_fusion
    from m6rec.embeddings.store import current_file_problems, write_embeddings

    item_ids = _catalogue(dataset).ids
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


def _write_profiles(
    profiles: ProfileCache, spaces: dict[str, EmbeddingTable], out_dir: Path, result: EmbeddingResult
) -> None:
    """``profile_<space>.parquet`` per item vector space: every user's profile over the cache's history.

    A file whose users, item vectors (by file hash), history (by a hash of its pairs) and profile settings
    are those of this run is left as it is, and its profiles are not computed here."""
    from m6rec.embeddings.store import current_file_problems, write_embeddings

    user_ids = profiles.train.users.ids.astype(str)
    history = interaction_digest(profiles.train)
    for space in ITEM_SPACES:
        if space not in spaces:
            continue
        table = spaces[space]
        path = out_dir / f"profile_{space}.parquet"
        result.paths[f"profile_{space}"] = path
        metadata = {
            "encoder": f"profile:{table.metadata.get('encoder')}",
            "weights": table.metadata.get("file_hash", ""),
            "pretrained": table.metadata.get("pretrained", True),
            "half_life_days": profiles.half_life_days,
            "max_history": profiles.max_history,
            "history": history,
        }
        if current_file_problems(path, user_ids, metadata) is not None:
            continue
        vectors, present = profiles.every_row(space, table)
        write_embeddings(path, USER_ID, user_ids, vectors, valid=present, metadata=metadata)
        del vectors, present


def _matrix(dataset: Dataset, train: pd.DataFrame) -> InteractionMatrix:
    """``train`` as a matrix over its users (and the dataset's) and the whole catalogue."""
    users = IdIndex.from_values(train[USER_ID], None if dataset.users is None else dataset.users[USER_ID])
    return InteractionMatrix.from_frame(train, users, _catalogue(dataset))


def _record(result: EmbeddingResult, name: str, path: Path, report) -> None:
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


def _timed(result: EmbeddingResult, stage: str, work) -> None:
    started = time.perf_counter()
    work()
    result.timings[stage] = round(time.perf_counter() - started, 3)


def _has_modality(dataset: Dataset, modality: str) -> bool:
    if dataset.items is None:
        return False
    if modality not in REQUIRED_COLUMN:
        return True
    column = _media_column(dataset, modality)
    return column is not None and dataset.items[column].fillna("").astype(str).str.strip().ne("").any()


def _media_column(dataset: Dataset, modality: str) -> str | None:
    """The items column whose role is ``image_path`` / ``audio_path``, by default the column of that name."""
    found = dataset.item_columns.with_role(MEDIA_ROLES[REQUIRED_COLUMN[modality]])
    return found[0] if found else None


def _encoder_items(dataset: Dataset, modality: str) -> pd.DataFrame:
    """The items as the encoder of ``modality`` reads them: the media column of its role under the
    contract's name (``image_path``, ``audio_path``), whichever column the dataset declared."""
    if modality not in REQUIRED_COLUMN:
        return dataset.items
    name, column = REQUIRED_COLUMN[modality], _media_column(dataset, modality)
    if column == name:
        return dataset.items
    items = dataset.items.drop(columns=[name], errors="ignore")
    return items.rename(columns={column: name}) if column is not None else items


def _catalogue(dataset: Dataset) -> IdIndex:
    return IdIndex.from_values(
        None if dataset.items is None else dataset.items[ITEM_ID],
        dataset.interactions[ITEM_ID],
        None if dataset.test is None else dataset.test[ITEM_ID],
    )
