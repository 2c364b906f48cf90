"""A trained model: its manifest ``model.json`` (what training left for serving), the model as a batch
serves it (a run folder and its manifest), and what of today's configuration a batch may apply to it."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from m6rec import __version__
from m6rec.candidates.registry import source_class
from m6rec.config import RunConfig, config_differences, load_config
from m6rec.io import write_json
from pipelines.run_folder import MODEL_MANIFEST, ModelNotTrainedError, RunFolder

MANIFEST_FORMAT = "m6rec-model"
MANIFEST_SCHEMA_VERSION = 1

log = logging.getLogger("m6rec")


@dataclass(frozen=True)
class ModelManifest:
    """What training left for serving, written as ``model.json`` by ``m6rec run``.

    ``source_params`` are the tuned parameters of every candidate source, ``selected_model`` the list the
    run published (``ranker`` or a source), ``ranker_used`` whether the ranker beat every single source,
    ``ranker_features`` the columns it learned from. ``config`` is the whole configuration the model was
    trained with and ``config_digest`` its SHA-256; ``data_fingerprint`` is
    :func:`m6rec.data.fingerprint.data_fingerprint` (tables by content, media by content hash). ``lists_from_all_interactions`` says whether
    the run's own lists came from every interaction (no test share held out of them), so that a batch on
    the same data would build the same lists. ``saved_sources`` are the sources fitted on all training
    interactions and saved under ``sources/`` for the batch to fold new data into, ``interactions`` how
    many training interactions they saw, ``catalogue_digest`` a digest of the items table and
    ``item_vectors_digest`` one of the item vector files the lists were scored with;
    ``dataset_interactions`` how many interactions the dataset held then, test share included (what a
    batch's growth is counted from).
    """

    trained_at: str
    config: dict
    config_digest: str
    data_fingerprint: str
    source_params: dict[str, dict]
    selected_model: str
    ranker_used: bool
    ranker_features: list[str] = field(default_factory=list)
    lists_from_all_interactions: bool = False
    saved_sources: list[str] = field(default_factory=list)
    interactions: int = 0
    catalogue_digest: str = ""
    item_vectors_digest: str = ""
    dataset_interactions: int = 0
    m6rec_version: str = __version__
    schema_version: int = MANIFEST_SCHEMA_VERSION

    @classmethod
    def create(
        cls,
        *,
        config: RunConfig,
        data_fingerprint: str,
        source_params: dict[str, dict],
        selected_model: str,
        ranker_used: bool,
        ranker_features: list[str],
        lists_from_all_interactions: bool,
        saved_sources: list[str] = (),
        interactions: int = 0,
        catalogue_digest: str = "",
        item_vectors_digest: str = "",
        dataset_interactions: int = 0,
    ) -> ModelManifest:
        dumped = config.model_dump(mode="json")
        return cls(
            trained_at=datetime.now(UTC).isoformat(timespec="seconds"),
            config=dumped,
            config_digest=config_digest(config),
            data_fingerprint=data_fingerprint,
            source_params=source_params,
            selected_model=selected_model,
            ranker_used=ranker_used,
            ranker_features=list(ranker_features),
            lists_from_all_interactions=lists_from_all_interactions,
            saved_sources=list(saved_sources),
            interactions=interactions,
            catalogue_digest=catalogue_digest,
            item_vectors_digest=item_vectors_digest,
            dataset_interactions=dataset_interactions,
        )

    def run_config(self) -> RunConfig:
        """The configuration the model was trained with."""
        return load_config(self.config, MODEL_MANIFEST)

    def write(self, path: Path) -> None:
        write_json({"format": MANIFEST_FORMAT, **asdict(self)}, path)

    @classmethod
    def read(cls, path: Path) -> ModelManifest:
        """Read ``model.json``; a missing, unreadable or newer-schema manifest is a one-line error."""
        path = Path(path)
        if not path.is_file():
            raise ModelNotTrainedError(
                f"{path.parent}: no trained model ({MODEL_MANIFEST} is missing)",
                hint=f"train one first: m6rec run DATA_DIR --out {path.parent} (or the train-ranker flow)",
            )
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise ModelNotTrainedError(f"{path}: cannot read the model manifest ({error})") from None
        if not isinstance(raw, dict) or raw.get("format") != MANIFEST_FORMAT:
            raise ModelNotTrainedError(f"{path}: not an m6rec model manifest")
        version = raw.get("schema_version")
        if version != MANIFEST_SCHEMA_VERSION:
            raise ModelNotTrainedError(
                f"{path}: model manifest schema version {version!r}, this m6rec {__version__} reads version "
                f"{MANIFEST_SCHEMA_VERSION}",
                hint="serve it with the m6rec that trained it, or retrain (m6rec run / train-ranker flow)",
            )
        raw.pop("format")
        try:
            return cls(**raw)
        except TypeError as error:
            raise ModelNotTrainedError(f"{path}: malformed model manifest ({error})") from None


def config_digest(config: RunConfig) -> str:
    """SHA-256 of the configuration's canonical JSON, without what changes no list or model
    (:meth:`RunConfig.result_dump`): equal digests, the same lists from the same data."""
    canonical = json.dumps(config.result_dump(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def inputs_identity(fingerprint: str, config: RunConfig | None = None, **more) -> str:
    """A digest of what a run reads: the dataset (its :func:`m6rec.data.fingerprint.data_fingerprint`),
    the configuration (:func:`config_digest`) and anything else that decides its files (``more``, JSON)."""
    parts = {"data": fingerprint, "config": None if config is None else config_digest(config), **more}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def dataset_identity(data_dir: str | Path, out_dir: str | Path, config: RunConfig, kind: str) -> str:
    """:func:`inputs_identity` of the dataset in ``data_dir`` (its media hashes from ``out_dir``'s store)
    for a writer of ``kind`` with ``config``: what a staged generation of ``out_dir`` belongs to."""
    from m6rec.data.contained import MediaHashes
    from m6rec.data.fingerprint import data_fingerprint
    from pipelines.item_embeddings import media_limits

    hashes = MediaHashes(RunFolder(out_dir).media_hashes)
    fingerprint = data_fingerprint(Path(data_dir), hashes, media_limits(config.embeddings))
    return inputs_identity(fingerprint, config, kind=kind)


@dataclass(frozen=True)
class TrainedModel:
    """A trained run folder and its manifest, as a batch serves it."""

    folder: RunFolder
    manifest: ModelManifest

    @classmethod
    def read(cls, directory: str | Path) -> TrainedModel:
        """The model published in ``directory``; one clear error when it has none, or one this version
        cannot read."""
        return cls.at(RunFolder.published(directory))

    @classmethod
    def at(cls, folder: RunFolder) -> TrainedModel:
        """The model in the run folder ``folder`` itself (a published or a staged generation)."""
        manifest = ModelManifest.read(folder.model_manifest)
        if manifest.ranker_used and not folder.ranker_dir.is_dir():
            raise ModelNotTrainedError(f"{folder.ranker_dir}: the ranker model is missing")
        return cls(folder, manifest)

    @property
    def directory(self) -> Path:
        return self.folder.root

    @property
    def trained_at(self) -> str:
        return self.manifest.trained_at

    @property
    def needs_embeddings(self) -> bool:
        """Whether serving needs the embeddings: the ranker ranks, or the published source reads vectors."""
        side = source_class(self.manifest.selected_model).side_inputs if not self.manifest.ranker_used else ()
        return self.manifest.ranker_used or bool(set(side) - {"kg"})

    def serving_config(self, config: RunConfig | None) -> RunConfig:
        """The configuration the model was trained with; ``config`` (today's) brings only its serving
        settings (:meth:`RunConfig.serving`: list length and depth, new-item places, what a batch redoes,
        where it runs). A ``config`` that differs elsewhere is reported once, naming the keys, and not
        applied."""
        trained = self.manifest.run_config()
        if config is None:
            return trained
        ignored = config_differences(config.with_serving(trained.serving()), trained)
        if ignored:
            log.warning(
                "the configuration differs from the one the model in %s was trained with (%s) in %s; the "
                "lists use the trained one, retrain to apply the change",
                self.directory,
                self.trained_at,
                ", ".join(ignored),
            )
        return trained.with_serving(config.serving())
