"""The run folder: every file name in it, and typed reads and writes of what the stages leave there.

One owner for the layout that ``m6rec run`` (training), the batch lists, the report, ``m6rec recommend``,
``m6rec inspect`` and the flows share; nobody else spells these names. ``run.json`` is the run's report
(protocol, counts, timings, trials); ``model.json`` is the model manifest that serving reads: what was
trained, with which configuration (kept whole, with its digest), on which data (a fingerprint of the
dataset's tables and media), when, and the ranker's feature names.

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

import json
import shutil
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from m6rec.data.contract import ITEM_ID, USER_ID
from m6rec.errors import M6RecError
from m6rec.generations import EVERYTHING, Generations, Stage
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
# Beside the generations: the content hashes of the dataset's media files by their stat
# (m6rec.data.contained.MediaHashes).
MEDIA_HASHES = ".m6rec-media-hashes.json"
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
    features_dir = property(lambda self: self.root / FEATURES_DIR)
    fold_features_dir = property(lambda self: self.root / FEATURES_DIR / FOLD_DIR)
    item_features_dir = property(lambda self: self.root / ITEM_FEATURES_DIR)
    checkpoints_dir = property(lambda self: self.root / CHECKPOINTS_DIR)
    batch_report = property(lambda self: self.root / BATCH_REPORT)
    report_page = property(lambda self: self.root / REPORT_PAGE)
    media_hashes = property(lambda self: self.root / MEDIA_HASHES)
    embeddings_cache = property(lambda self: self.root / EMBEDDINGS_CACHE)

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

    def stage(
        self, kind: str, *, keep: int, identity: str | None = None
    ) -> AbstractContextManager[StagedGeneration]:
        """This output folder's next generation, staged for a writer of ``kind`` (:func:`stage`)."""
        return stage(self.root, kind, keep=keep, identity=identity)

    def has_ranker(self) -> bool:
        return (self.ranker_dir / "model.txt").exists() and self.ranker_features.exists()

    def write_reports(
        self,
        *,
        metrics: dict | None = None,
        held_out: pd.DataFrame | None = None,
        run_report: dict | None = None,
        validation_report: dict | None = None,
        batch_report: dict | None = None,
    ) -> None:
        """Write the reports of a run or lists folder (a staged generation's); what is None (or, for the
        metrics and the held-out pairs they were computed on, empty) is not written."""
        if metrics:
            write_json(metrics, self.metrics)
            write_parquet(held_out[[USER_ID, ITEM_ID]].astype("string").reset_index(drop=True), self.held_out)
        for report, path in (
            (run_report, self.run_report),
            (validation_report, self.validation_report),
            (batch_report, self.batch_report),
        ):
            if report is not None:
                write_json(report, path)


def generations(directory: str | Path) -> Generations:
    """The generations of the output folder ``directory``."""
    return Generations(directory, legacy_names=OUTPUT_NAMES)


@dataclass(frozen=True)
class StagePolicy:
    """What a writer of a kind starts from: the names of the published generation it carries over
    (:data:`m6rec.generations.EVERYTHING` for all), the names it keeps from a run of the same folder
    that did not finish (``resume``), and the files a stage may rewrite and still count as unchanged
    (``unchanged_ignoring``: then a stage that changed nothing else adds no generation)."""

    carry: tuple[str, ...]
    resume: tuple[str, ...] = ()
    unchanged_ignoring: tuple[str, ...] | None = None


_EMBEDDING_REPORTS = (f"{FEATURES_DIR}/{PROBLEMS}", f"{FEATURES_DIR}/{EMBEDDINGS_SUMMARY}")
# The one table of who publishes what: every writer stages its generation through RunFolder.stage.
STAGE_POLICIES: dict[str, StagePolicy] = {
    "training": StagePolicy(carry=(FEATURES_DIR,), resume=(FEATURES_DIR, CHECKPOINTS_DIR)),
    "embeddings": StagePolicy(
        carry=EVERYTHING, resume=(FEATURES_DIR,), unchanged_ignoring=_EMBEDDING_REPORTS
    ),
    "batch": StagePolicy(carry=EVERYTHING, resume=(FEATURES_DIR,)),
    "lists": StagePolicy(carry=EVERYTHING, resume=(ITEM_FEATURES_DIR,)),
    "report": StagePolicy(carry=EVERYTHING),
    "night": StagePolicy(
        carry=EVERYTHING, resume=(FEATURES_DIR, CHECKPOINTS_DIR), unchanged_ignoring=_EMBEDDING_REPORTS
    ),
}


@dataclass(frozen=True)
class _ListsCheck:
    lists: RunFolder
    users: int
    top_k: int


class StagedGeneration:
    """The next generation of an output folder while it is written: ``folder`` (the staged files),
    ``public`` (the folder as readers see it) and ``kind``. Writers say what it must hold before it is
    published (:meth:`expect_lists`, :meth:`expect`); :meth:`join` lets a writer of another kind
    write into it (one night, one generation)."""

    def __init__(self, stage: Stage, public: RunFolder, kind: str):
        self._stage, self.public, self.kind = stage, public, kind
        self.folder = RunFolder(stage.path)
        self.writers = [kind]
        self._lists: dict[Path, _ListsCheck] = {}
        self._checks: list[Callable[[], object]] = []
        self.published: list[Callable[[], None]] = []

    def join(self, kind: str) -> None:
        """A writer of ``kind`` writes into this generation from here on: what its policy does not carry
        over from the published generation goes (a training starts from the item embeddings only), as in
        a generation of its own; what it writes is published with the rest."""
        carry = STAGE_POLICIES[kind].carry
        if carry != EVERYTHING:
            kept = {*carry, CHECKPOINTS_DIR}
            for entry in self.folder.root.iterdir():
                if entry.name not in kept:
                    shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
            self._lists.clear()
            self._checks.clear()
        self.writers.append(kind)

    def expect_lists(self, lists: RunFolder, *, users: int, top_k: int) -> None:
        """Refuse to publish unless ``lists`` (a folder in this generation) holds the lists of exactly
        ``users`` users with ranks 1 to at most ``top_k``."""
        self._lists[lists.root] = _ListsCheck(lists, users, top_k)

    def expect(self, check: Callable[[], object]) -> None:
        """Refuse to publish when ``check`` raises (a model manifest that does not read back, say)."""
        self._checks.append(check)

    def on_published(self, action: Callable[[], None]) -> None:
        """Run ``action`` once the generation is published (or found unchanged), never before."""
        self.published.append(action)

    def discard(self) -> None:
        """Publish nothing: the block found nothing to change."""
        self._stage.discard()

    @property
    def discarded(self) -> bool:
        return self._stage.discarded

    def validate(self, _: Path) -> None:
        for check in self._lists.values():
            check_lists(check.lists, check.users, check.top_k)
        for check in self._checks:
            check()


def stage(
    directory: str | Path, kind: str, *, keep: int, identity: str | None = None
) -> AbstractContextManager[StagedGeneration]:
    """The one door to publish through (also :meth:`RunFolder.stage`): lock the output folder
    ``directory`` (:func:`m6rec.locking.folder_lock`: a second writer fails at once, naming the first),
    stage its next generation by the policy of ``kind`` (:data:`STAGE_POLICIES`), and publish it when the
    block succeeds and what the writers expect holds, keeping ``keep`` generations. ``identity`` (a
    digest of the run's dataset and configuration) lets only a run with the same inputs resume what a
    killed one left; another one starts afresh and the log says so."""
    return _staged(Path(directory), kind, keep, identity)


@contextmanager
def _staged(directory: Path, kind: str, keep: int, identity: str | None) -> Iterator[StagedGeneration]:
    from m6rec.locking import folder_lock

    policy = STAGE_POLICIES[kind]
    with folder_lock(directory):
        staged_generation = None

        def validate(path: Path) -> None:
            staged_generation.validate(path)

        with generations(directory).staged(
            kind=kind,
            carry=policy.carry,
            resume=policy.resume,
            keep=keep,
            validate=validate,
            unchanged_ignoring=policy.unchanged_ignoring,
            identity=identity,
        ) as staged:
            staged_generation = StagedGeneration(staged, RunFolder(directory), kind)
            yield staged_generation
    for action in staged_generation.published:
        action()


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


def _read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())
