"""The run folder: every file name in it, and typed reads and writes of what the stages leave there.

One owner for the layout that ``m6rec run`` (training), the batch lists, the report, ``m6rec recommend``,
``m6rec inspect`` and the flows share; nobody else spells these names. ``run.json`` is the run's report
(protocol, counts, timings, trials); ``model.json`` is the model manifest that serving reads: what was
trained, with which configuration (kept whole, with its digest), on which data (a fingerprint of the
dataset's tables), when, and the ranker's feature names.

    run/
      current -> generations/NNNNNN     the published generation (m6rec.generations): each run writes a
      generations/NNNNNN/               new one and publishes it whole; readers follow current, and a
                                        link beside it for each name below (run/model.json, ...)
    a generation:
      recommendations.parquet  metrics.json  test_interactions.parquet  run.json  model.json
      validation_report.json  ranker_features.parquet  report.html  report.png
      ranker/       model.txt, importance.json, ranker.json (ranker.model.LightGBMRanker.save)
      index/        users.parquet, items.parquet (row → raw ID of ranker_features.parquet)
      features/     embedding files (features/fold/: the two-tower model trained on the ranker's fold)
      lists/        the batch lists: recommendations.parquet, ranker_features.parquet, batch.json, features/
      item_features/  a batch's item embeddings when its lists go to a folder of their own
      .checkpoints/   while a generation is staged only: its finished stages (pipelines.checkpoints)
      .parts/         while lists are scored on a Dask cluster only: each partition's part files
                      (pipelines.partitions), committed into the files above once all are there
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from m6rec import __version__
from m6rec.config import RunConfig, load_config
from m6rec.data import contract
from m6rec.data.columns import COLUMNS_FILE
from m6rec.data.contract import ITEM_ID, USER_ID
from m6rec.data.tables import find_table
from m6rec.errors import M6RecError
from m6rec.generations import Generations
from m6rec.io import write_json, write_parquet

RECOMMENDATIONS = "recommendations.parquet"
METRICS = "metrics.json"
HELD_OUT = "test_interactions.parquet"
RUN_REPORT = "run.json"
MODEL_MANIFEST = "model.json"
VALIDATION_REPORT = "validation_report.json"
RANKER_FEATURES = "ranker_features.parquet"
RANKER_DIR = "ranker"
INDEX_DIR = "index"
FEATURES_DIR = "features"
FOLD_DIR = "fold"
LISTS_DIR = "lists"
SOURCES_DIR = "sources"
TWO_TOWER_DIR = "two_tower"
BATCH_REPORT = "batch.json"
REPORT_PAGE = "report.html"
REPORT_SCREENSHOT = "report.png"
PROBLEMS = "problems.json"
EMBEDDINGS_SUMMARY = "embeddings.json"
ITEM_FEATURES_DIR = "item_features"
CHECKPOINTS_DIR = ".checkpoints"
PARTS_DIR = ".parts"
# Beside the generations: the nightly embedding flow's cache entry (flows.policies).
EMBEDDINGS_CACHE = ".m6rec-embeddings-cache.json"
FINAL = "final"
# Every name a run or a batch writes into its folder (what an m6rec from before generations left there).
OUTPUT_NAMES = (
    RECOMMENDATIONS,
    METRICS,
    HELD_OUT,
    RUN_REPORT,
    MODEL_MANIFEST,
    VALIDATION_REPORT,
    RANKER_FEATURES,
    RANKER_DIR,
    INDEX_DIR,
    FEATURES_DIR,
    LISTS_DIR,
    SOURCES_DIR,
    BATCH_REPORT,
    REPORT_PAGE,
    REPORT_SCREENSHOT,
    ITEM_FEATURES_DIR,
)

MANIFEST_FORMAT = "m6rec-model"
MANIFEST_SCHEMA_VERSION = 1
DATA_TABLES = (contract.INTERACTIONS, contract.ITEMS, contract.USERS, contract.KG)


class ModelNotTrainedError(M6RecError):
    """The folder holds no trained model, or one this version cannot serve."""


@dataclass(frozen=True)
class RunFolder:
    """The paths of one run folder (or of its ``lists/`` folder, which has the same names for the same
    things); ``RunFolder(path)`` touches nothing on disk."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @classmethod
    def published(cls, directory: str | Path) -> RunFolder:
        """The published generation of the output folder ``directory`` (the folder itself when it was
        written without generations): resolved once, so a reader sees one generation whole even while
        a run publishes the next."""
        return cls(generations(directory).published_root())

    recommendations = property(lambda self: self.root / RECOMMENDATIONS)
    metrics = property(lambda self: self.root / METRICS)
    held_out = property(lambda self: self.root / HELD_OUT)
    run_report = property(lambda self: self.root / RUN_REPORT)
    model_manifest = property(lambda self: self.root / MODEL_MANIFEST)
    validation_report = property(lambda self: self.root / VALIDATION_REPORT)
    ranker_features = property(lambda self: self.root / RANKER_FEATURES)
    parts_dir = property(lambda self: self.root / PARTS_DIR)
    ranker_dir = property(lambda self: self.root / RANKER_DIR)
    index_dir = property(lambda self: self.root / INDEX_DIR)
    users_index = property(lambda self: self.root / INDEX_DIR / "users.parquet")
    items_index = property(lambda self: self.root / INDEX_DIR / "items.parquet")
    user_histories = property(lambda self: self.root / INDEX_DIR / "user_histories.parquet")
    sources_dir = property(lambda self: self.root / SOURCES_DIR)
    two_tower_dir = property(lambda self: self.root / FEATURES_DIR / TWO_TOWER_DIR)
    features_dir = property(lambda self: self.root / FEATURES_DIR)
    fold_features_dir = property(lambda self: self.root / FEATURES_DIR / FOLD_DIR)
    item_features_dir = property(lambda self: self.root / ITEM_FEATURES_DIR)
    checkpoints_dir = property(lambda self: self.root / CHECKPOINTS_DIR)
    batch_report = property(lambda self: self.root / BATCH_REPORT)
    report_page = property(lambda self: self.root / REPORT_PAGE)
    report_screenshot = property(lambda self: self.root / REPORT_SCREENSHOT)

    def source_dir(self, name: str) -> Path:
        """Where the fitted candidate source ``name`` is saved (``CandidateSource.save``)."""
        return self.sources_dir / name

    @property
    def lists(self) -> RunFolder:
        """The batch lists' folder inside this run folder."""
        return RunFolder(self.root / LISTS_DIR)

    def read_run_report(self) -> dict:
        return _read_json(self.run_report)

    def read_metrics(self) -> dict[str, dict[str, float]]:
        """The test metrics per list (``{}`` when the run had no test set)."""
        return _read_json(self.metrics) if self.metrics.exists() else {}

    def read_recommendations(self, columns: list[str] | None = None) -> pd.DataFrame:
        return pd.read_parquet(self.recommendations, columns=columns)

    def write_recommendations(self, frame: pd.DataFrame, path: Path | None = None) -> None:
        """Write the lists (to ``path``: a staging copy of this folder's file, by default the file itself)."""
        write_parquet(frame, path or self.recommendations, {"m6rec.version": __version__})

    def read_manifest(self) -> ModelManifest:
        return ModelManifest.read(self.model_manifest)

    def has_ranker(self) -> bool:
        return (self.ranker_dir / "model.txt").exists() and self.ranker_features.exists()


@dataclass(frozen=True)
class ModelManifest:
    """What training left for serving, written as ``model.json`` by ``m6rec run``.

    ``source_params`` are the tuned parameters of every candidate source, ``selected_model`` the list the
    run published (``ranker`` or a source), ``ranker_used`` whether the ranker beat every single source,
    ``ranker_features`` the columns it learned from. ``config`` is the whole configuration the model was
    trained with and ``config_digest`` its SHA-256; ``data_fingerprint`` is a SHA-256 over the dataset's
    tables (interactions, items, users, kg, columns.yaml). ``lists_from_all_interactions`` says whether
    the run's own lists came from every interaction (no test share held out of them), so that a batch on
    the same data would build the same lists. ``saved_sources`` are the sources fitted on all training
    interactions and saved under ``sources/`` for the batch to fold new data into, ``interactions`` how
    many training interactions they saw and ``catalogue_digest`` a digest of the items table.
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
    m6rec_version: str = __version__
    schema_version: int = MANIFEST_SCHEMA_VERSION

    @classmethod
    def create(
        cls,
        *,
        config: RunConfig,
        data_dir: Path,
        source_params: dict[str, dict],
        selected_model: str,
        ranker_used: bool,
        ranker_features: list[str],
        lists_from_all_interactions: bool,
        saved_sources: list[str] = (),
        interactions: int = 0,
        catalogue_digest: str = "",
    ) -> ModelManifest:
        dumped = config.model_dump(mode="json")
        return cls(
            trained_at=datetime.now(UTC).isoformat(timespec="seconds"),
            config=dumped,
            config_digest=config_digest(config),
            data_fingerprint=data_fingerprint(data_dir),
            source_params=source_params,
            selected_model=selected_model,
            ranker_used=ranker_used,
            ranker_features=list(ranker_features),
            lists_from_all_interactions=lists_from_all_interactions,
            saved_sources=list(saved_sources),
            interactions=interactions,
            catalogue_digest=catalogue_digest,
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


def generations(directory: str | Path) -> Generations:
    """The generations of the output folder ``directory``."""
    return Generations(directory, legacy_names=OUTPUT_NAMES)


def check_lists(folder: RunFolder, users: int, top_k: int) -> None:
    """Refuse to publish lists that are not whole: the list file must have the list columns, ranks from 1
    to at most ``top_k`` and exactly ``users`` distinct users."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    path = folder.recommendations
    if not path.is_file():
        raise M6RecError(f"{path}: the lists were not written; nothing published")
    parquet = pq.ParquetFile(path)
    missing = {USER_ID, ITEM_ID, "rank", "score"} - set(parquet.schema_arrow.names)
    if missing:
        raise M6RecError(f"{path}: the lists lack the column(s) {sorted(missing)}; nothing published")
    table = parquet.read(columns=[USER_ID, "rank"])
    found = pc.count_distinct(table.column(USER_ID)).as_py()
    ranks = pc.min_max(table.column("rank")).as_py() if len(table) else {"min": 1, "max": 1}
    if found != users or ranks["min"] < 1 or ranks["max"] > top_k:
        raise M6RecError(
            f"{path}: the lists cover {found} users (expected {users}) with ranks {ranks['min']}.."
            f"{ranks['max']} (expected 1..{top_k}); nothing published"
        )


def config_digest(config: RunConfig) -> str:
    """SHA-256 of the configuration's canonical JSON: equal digests, equal configurations. Where the
    stages run (``dask``) is left out: it changes no result."""
    canonical = json.dumps(
        config.model_dump(mode="json", exclude={"dask"}), sort_keys=True, separators=(",", ":")
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def data_fingerprint(data_dir: Path) -> str:
    """SHA-256 over the names and bytes of the dataset's tables (media files are fingerprinted per item
    by the encoders, not here)."""
    digest = hashlib.sha256()
    data_dir = Path(data_dir)
    paths = [find_table(data_dir, table) for table in DATA_TABLES]
    paths.append(data_dir / COLUMNS_FILE if (data_dir / COLUMNS_FILE).is_file() else None)
    for path in paths:
        if path is None:
            continue
        digest.update(f"{path.name}\0".encode())
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())
