"""The stages that training (``pipelines.run``) and serving (``pipelines.batch``) share, composed by both.

Embeddings for a set of training histories, loaded once; the side inputs every candidate source and the
ranker's features take from them; the lists' depth; serving users a source cannot serve; the published
list table; and the staged publish of a run or lists folder.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from m6rec import __version__
from m6rec.candidates import Candidates, CandidateSource
from m6rec.candidates.merge import ITEM, SOURCES, USER_ROW
from m6rec.candidates.side_inputs import SideInputs
from m6rec.config import ITEM_SPACES, RunConfig
from m6rec.data.contract import ITEM_ID, USER_ID
from m6rec.data.dataset import Dataset
from m6rec.data.interactions import IdIndex, InteractionMatrix
from m6rec.embeddings.profiles import ProfileCache
from m6rec.io import publish_staged, write_json, write_parquet
from pipelines.embeddings import EmbeddingResult
from pipelines.run_folder import ModelManifest, RunFolder


class StageClock:
    """Seconds and peak resident memory per stage, lap by lap.

    Where Linux lets a process reset its peak (``/proc/self/clear_refs``), ``peak_rss_mib[stage]`` is the
    stage's own peak; elsewhere it is the process's peak so far (``getrusage``), which only grows.
    """

    def __init__(self):
        self.timings: dict[str, float] = {}
        self.peak_rss_mib: dict[str, float] = {}
        self.per_stage_peaks = _reset_peak_rss()
        self._last = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.timings[stage] = round(now - self._last, 3)
        self.peak_rss_mib[stage] = round(_peak_rss_mib(), 1)
        if self.per_stage_peaks:
            _reset_peak_rss()
        self._last = time.perf_counter()

    def report(self) -> dict:
        """What ``run.json`` / ``batch.json`` record: seconds and peak memory per stage."""
        kind = "per stage" if self.per_stage_peaks else "process peak so far"
        return {"timings_seconds": self.timings, "peak_rss_mib": self.peak_rss_mib, "peak_rss_kind": kind}


def _reset_peak_rss() -> bool:
    """Reset the process's peak RSS (Linux ``clear_refs`` 5); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _peak_rss_mib() -> float:
    """The peak resident set size since the last reset (``VmHWM``), else the process's peak, in MiB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def list_depth(config: RunConfig) -> int:
    """How many items every list (a source's, the ranker's, the published one) holds before it is cut to
    ``top_k``: enough for the evaluation's largest cut-off and the candidate depth."""
    return max(config.candidate_depth, config.top_k, *config.k_values)


@dataclass
class History:
    """One training history the embeddings are learned from: its interactions (as a frame and as a
    matrix over the run's users and items), where its collaborative files go, and its profiles."""

    frame: pd.DataFrame
    matrix: InteractionMatrix
    features_dir: Path
    profiles: ProfileCache = field(init=False)
    half_life_days: float | None = None

    def __post_init__(self) -> None:
        self.profiles = ProfileCache(self.matrix, half_life_days=self.half_life_days)


@dataclass
class StageEmbeddings:
    """The item embeddings (once) and, per history, the collaborative embeddings and the side inputs.
    Without embeddings ``items`` and ``summary`` are None and the side inputs hold the dataset's
    knowledge graph and the profiles' cache only."""

    items: EmbeddingResult | None
    collaborative: dict[str, EmbeddingResult]
    inputs: dict[str, SideInputs]
    summary: dict | None


def compute_stage_embeddings(
    dataset: Dataset,
    features_dir: Path,
    config: RunConfig,
    histories: dict[str, History],
    *,
    needed: bool = True,
) -> StageEmbeddings:
    """Item embeddings into ``features_dir`` (incrementally), then for each history the collaborative
    model over them and its side inputs; no embeddings when they are not ``needed`` or the ranker or
    every modality is off."""
    if not needed or not config.ranker.enabled or not config.embeddings.modalities:
        bare = {
            name: side_inputs(dataset, None, None, history.profiles) for name, history in histories.items()
        }
        return StageEmbeddings(None, {}, bare, None)
    from pipelines.embeddings import compute_item_embeddings, train_collaborative

    items = compute_item_embeddings(dataset, features_dir, config.embeddings)
    collaborative = {
        name: train_collaborative(
            dataset, history.frame, items, history.features_dir, config.embeddings, history.profiles
        )
        for name, history in histories.items()
    }
    inputs = {
        name: side_inputs(dataset, items, collaborative[name], histories[name].profiles) for name in histories
    }
    summary = {**items.summary(), **{name: result.summary() for name, result in collaborative.items()}}
    return StageEmbeddings(items, collaborative, inputs, summary)


def side_inputs(
    dataset: Dataset,
    items: EmbeddingResult | None,
    collaborative: EmbeddingResult | None,
    profiles: ProfileCache | None,
) -> SideInputs:
    """The loaded side inputs of one history: the item spaces (a learned fusion of ``collaborative``
    replaces the concatenated one), the two-tower vectors, the dataset's knowledge graph, the profiles."""
    item_vectors = dict(items.content_tables()) if items is not None else {}
    user_vectors = {}
    if collaborative is not None:
        item_vectors.update(
            {name: collaborative.table(name) for name in ("fused", "cf_items") if name in collaborative.paths}
        )
        if "cf_users" in collaborative.paths:
            user_vectors["cf_users"] = collaborative.table("cf_users")
    return SideInputs(item_vectors=item_vectors, user_vectors=user_vectors, kg=dataset.kg, profiles=profiles)


def ranker_context(dataset: Dataset, matrix: InteractionMatrix, inputs: SideInputs | None):
    """The ranker features' context over ``matrix`` with the side inputs of the same history."""
    from ranker.features import RankerContext

    inputs = inputs or SideInputs()
    return RankerContext(
        train=matrix,
        item_embeddings={
            space: table for space, table in inputs.item_vectors.items() if space in ITEM_SPACES
        },
        two_tower_user_vectors=inputs.user_vectors.get("cf_users"),
        two_tower_item_vectors=inputs.item_vectors.get("cf_items"),
        profiles=inputs.profiles,
        items=dataset.items,
        users=dataset.users,
        item_columns=dataset.item_columns,
        user_columns=dataset.user_columns,
        kg=dataset.kg,
    )


def with_fallback(
    lists: Candidates, fallback: CandidateSource, user_rows: np.ndarray, depth: int, name: str
) -> tuple[Candidates, np.ndarray]:
    """``lists`` with users it cannot serve (empty list) served by ``fallback``; returns the lists and the
    name of the source behind each user's list."""
    items, scores = lists.items.copy(), lists.scores.copy()
    origin = np.full(len(user_rows), name, dtype=object)
    unserved = items[:, 0] < 0
    if unserved.any():
        backup = fallback.recommend(user_rows[unserved], depth)
        width = min(depth, items.shape[1])
        items[unserved], scores[unserved] = -1, -np.inf
        items[unserved, :width], scores[unserved, :width] = backup.items[:, :width], backup.scores[:, :width]
        origin[unserved] = fallback.name
    return Candidates(items, scores), origin


def recommendation_frame(
    final: Candidates,
    origin: np.ndarray,
    candidates: pd.DataFrame | None,
    users: IdIndex,
    items: IdIndex,
    top_k: int,
    new_item_places: np.ndarray | None = None,
    user_rows: np.ndarray | None = None,
) -> pd.DataFrame:
    """The published lists: ``user_id``, ``item_id`` (raw IDs), ``rank``, ``score``, ``source``, and with
    candidates each source that proposed the item (``sources``, ``<source>_rank``). Row ``i`` of ``final``
    is user row ``user_rows[i]`` (default: row ``i``). ``new_item_place`` is a column whenever
    ``new_item_places`` is given (new-item places are on), so every chunk of a list has the same schema."""
    top_items = final.items[:, :top_k]
    positions, ranks = np.nonzero(top_items >= 0)
    item_rows = top_items[positions, ranks]
    user_rows = positions if user_rows is None else np.asarray(user_rows, dtype=np.int64)[positions]
    frame = pd.DataFrame(
        {
            USER_ROW: user_rows,
            ITEM: item_rows,
            USER_ID: pd.Series(users.ids[user_rows], dtype="string"),
            ITEM_ID: pd.Series(items.ids[item_rows], dtype="string"),
            "rank": (ranks + 1).astype(np.int32),
            "score": final.scores[:, :top_k][positions, ranks].astype(np.float32),
            "source": pd.Series(origin[positions], dtype="string"),
        }
    )
    if new_item_places is not None:
        frame["new_item_place"] = new_item_places[:, :top_k][positions, ranks]
    if candidates is not None:
        provenance = [SOURCES] + [column for column in candidates.columns if column.endswith("_rank")]
        frame = frame.merge(candidates[[USER_ROW, ITEM, *provenance]], on=[USER_ROW, ITEM], how="left")
        frame[SOURCES] = frame[SOURCES].astype("string")
    return frame.drop(columns=[USER_ROW, ITEM])


@dataclass
class Outputs:
    """What one publish writes into a run (or lists) folder; what is None is not written, and a run's
    metrics and held-out pairs are removed when it has none."""

    recommendations: pd.DataFrame
    ranker_features: pd.DataFrame | None = None
    metrics: dict | None = None
    held_out: pd.DataFrame | None = None
    run_report: dict | None = None
    validation_report: dict | None = None
    batch_report: dict | None = None
    manifest: ModelManifest | None = None


def user_chunks(n_users: int, size: int):
    """Consecutive user rows, ``size`` at a time."""
    for start in range(0, n_users, size):
        yield np.arange(start, min(start + size, n_users), dtype=np.int64)


class ListWriter:
    """Write the published lists chunk by chunk, one Parquet row group each (inside a staging folder)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._writer = None
        self.rows = 0

    def write(self, frame: pd.DataFrame) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pandas(frame, preserve_index=False)
        if self._writer is None:
            metadata = {**(table.schema.metadata or {}), b"m6rec.version": __version__.encode()}
            self._schema = table.schema.with_metadata(metadata)
            self._writer = pq.ParquetWriter(self.path, self._schema)
        self._writer.write_table(table.cast(self._schema))
        self.rows += len(frame)

    def __enter__(self) -> ListWriter:
        return self

    def __exit__(self, *exc) -> None:
        if self._writer is not None:
            self._writer.close()


def publish(folder: RunFolder, outputs: Outputs) -> None:
    """Write ``outputs`` into a staging folder, then move each file into ``folder`` (atomic per file)."""

    def write(staging: Path) -> None:
        staged = RunFolder(staging)
        staged.write_recommendations(outputs.recommendations)
        if outputs.ranker_features is not None:
            from ranker.features import write_feature_table

            write_feature_table(outputs.ranker_features, staged.ranker_features)
        if outputs.metrics:
            write_json(outputs.metrics, staged.metrics)
            held_out = outputs.held_out[[USER_ID, ITEM_ID]].astype("string").reset_index(drop=True)
            write_parquet(held_out, staged.held_out)
        for report, path in (
            (outputs.run_report, staged.run_report),
            (outputs.validation_report, staged.validation_report),
            (outputs.batch_report, staged.batch_report),
        ):
            if report is not None:
                write_json(report, path)
        if outputs.manifest is not None:
            outputs.manifest.write(staged.model_manifest)

    publish_staged(folder.root, write)
    if outputs.run_report is not None and not outputs.metrics:
        folder.metrics.unlink(missing_ok=True)
        folder.held_out.unlink(missing_ok=True)
