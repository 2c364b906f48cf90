"""The collaborative embeddings of a history: the two-tower model trained (or folded in) over the frozen
item embeddings, its user and item vectors (and attention-fused item vectors), and the per-space user
profile files, each an embedding Parquet file in the history's features folder."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from m6rec.config import EmbeddingConfig
from m6rec.data.contract import USER_ID
from m6rec.data.dataset import Dataset
from m6rec.data.interactions import interaction_digest
from m6rec.embeddings.profiles import ProfileCache
from m6rec.embeddings.store import EmbeddingTable
from m6rec.modalities import ITEM_SPACES
from pipelines.run_folder import (
    TWO_TOWER_DIR,
)

if TYPE_CHECKING:
    from features.two_tower import ExportedEmbeddings, TwoTowerModel


from pipelines.item_embeddings import EmbeddingResult, interaction_matrix, timed

log = logging.getLogger("m6rec")


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
        timed(
            result,
            "cf",
            lambda: _train_two_tower(dataset, train, content, out_dir, config, result, warm_start),
        )
    if profile_files:
        spaces = {**content, **{name: result.table(name) for name in ITEM_SPACES if name in result.paths}}
        timed(result, "profiles", lambda: _write_profiles(profiles, spaces, out_dir, result))
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
        timed(result, "cf", lambda: _fold_in_two_tower(dataset, train, content, model, out_dir, result))
    if profile_files:
        spaces = {**content, **{name: result.table(name) for name in ITEM_SPACES if name in result.paths}}
        timed(result, "profiles", lambda: _write_profiles(profiles, spaces, out_dir, result))
    return result


def load_collaborative_model(out_dir: Path, *, force_cpu: bool = False) -> TwoTowerModel | None:
    """The two-tower model :func:`train_collaborative` saved in ``out_dir`` (None when it saved none)."""
    from features.two_tower import CONFIG_FILE, TwoTowerModel

    directory = Path(out_dir) / TWO_TOWER_DIR
    if not (directory / CONFIG_FILE).exists():
        return None
    return TwoTowerModel.load(directory, force_cpu=force_cpu)


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
        interaction_matrix(dataset, train),
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
    folded = model.fold_in(
        interaction_matrix(dataset, train), content, users=dataset.users, interactions=train
    )
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
