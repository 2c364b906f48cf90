"""The stages that training (``pipelines.run``) and serving (``pipelines.batch``) share, composed by both.

Embeddings for a set of training histories, loaded once; the side inputs every candidate source and the
ranker's features take from them; the lists' depth; serving users a source cannot serve; the published
list table; scoring the final lists for a chunk of users (:class:`ListScorer`; :mod:`pipelines.lists`
writes them); and the staged publish of a run or lists folder.
"""

from __future__ import annotations

import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from features.device import resolve_device
from m6rec.candidates import Candidates, CandidateSource
from m6rec.candidates.merge import ITEM, SOURCES, USER_ROW, merge_candidates
from m6rec.candidates.side_inputs import SideInputs
from m6rec.config import ITEM_SPACES, RunConfig
from m6rec.data.contract import ITEM_ID, USER_ID
from m6rec.data.dataset import Dataset
from m6rec.data.interactions import IdIndex, InteractionMatrix
from m6rec.embeddings.profiles import ProfileCache
from m6rec.io import write_json, write_parquet
from pipelines.embeddings import EmbeddingResult
from pipelines.run_folder import ModelManifest, ModelNotTrainedError, RunFolder

log = logging.getLogger("m6rec")


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
    trained_model_dir: Path | None = None,
    cluster=None,
) -> StageEmbeddings:
    """Item embeddings into ``features_dir`` (incrementally), then for each history the collaborative
    model over them and its side inputs; no embeddings when they are not ``needed`` or the ranker or
    every modality is off. The ``fold`` history's two-tower model is trained first; with
    ``embeddings.two_tower.warm_start`` every other history's model starts from it.

    With ``trained_model_dir`` (a batch: the features folder of the training run) the two-tower model
    saved there folds in each history instead of being trained again (trained only when none was saved
    or its content modalities no longer match). On a Dask ``cluster`` the frozen encoders run on its
    workers."""
    if not needed or not config.ranker.enabled or not config.embeddings.modalities:
        bare = {
            name: side_inputs(dataset, None, None, history.profiles) for name, history in histories.items()
        }
        return StageEmbeddings(None, {}, bare, None)
    from pipelines.embeddings import compute_item_embeddings, load_collaborative_model, train_collaborative

    items = compute_item_embeddings(dataset, features_dir, config.embeddings, cluster=cluster)
    if trained_model_dir is not None:
        collaborative = {
            name: _folded_in_collaborative(dataset, items, history, config, trained_model_dir)
            for name, history in histories.items()
        }
        inputs = {
            name: side_inputs(dataset, items, collaborative[name], histories[name].profiles)
            for name in histories
        }
        summary = {**items.summary(), **{name: result.summary() for name, result in collaborative.items()}}
        return StageEmbeddings(items, collaborative, inputs, summary)

    def train(name: str, warm_start=None) -> EmbeddingResult:
        history = histories[name]
        return train_collaborative(
            dataset,
            history.frame,
            items,
            history.features_dir,
            config.embeddings,
            history.profiles,
            warm_start=warm_start,
        )

    if _trains_side_by_side(config, len(histories)):
        with ThreadPoolExecutor(max_workers=len(histories), thread_name_prefix="two-tower") as pool:
            collaborative = dict(zip(histories, pool.map(train, histories), strict=True))
    else:
        # The fold's history is a subset of the full one, and its model never saw the fold's labels, so
        # starting the full model from it leaks nothing into the ranker's fold.
        warm_start = config.embeddings.two_tower.warm_start
        collaborative, fold_model = {}, None
        for name in sorted(histories, key=lambda name: name != "fold"):
            collaborative[name] = train(name, fold_model)
            if name == "fold" and warm_start and "cf_items" in collaborative[name].paths:
                fold_model = load_collaborative_model(
                    histories[name].features_dir, force_cpu=config.embeddings.force_cpu
                )
        collaborative = {name: collaborative[name] for name in histories}
    inputs = {
        name: side_inputs(dataset, items, collaborative[name], histories[name].profiles) for name in histories
    }
    summary = {**items.summary(), **{name: result.summary() for name, result in collaborative.items()}}
    return StageEmbeddings(items, collaborative, inputs, summary)


def _trains_side_by_side(config: RunConfig, histories: int) -> bool:
    """Whether the histories' two-tower models train at the same time, one per core: each trains on one
    CPU thread (``two_tower.cpu_threads`` 1, where extra threads of one training only spin-wait), none
    starts from another's (no ``warm_start``) and there are as many cores. Their weights do not depend
    on it: a training draws from its own seeded generators only."""
    settings = config.embeddings.two_tower
    return (
        histories > 1
        and "cf" in config.embeddings.modalities
        and not settings.warm_start
        and settings.cpu_threads == 1
        and resolve_device(config.embeddings.force_cpu).name == "cpu"
        and (os.cpu_count() or 1) >= histories
    )


def _folded_in_collaborative(dataset, items, history: History, config: RunConfig, trained_model_dir: Path):
    """The collaborative files of ``history`` from the two-tower model saved in ``trained_model_dir``;
    trained anew when there is none or it cannot serve today's content modalities. No profile files: a
    batch computes the profiles of the users it scores, chunk by chunk, and the training run's files
    hold every user's (a million users' profiles are gigabytes per space, most of them unchanged)."""
    from pipelines.embeddings import fold_in_collaborative, load_collaborative_model, train_collaborative

    settings = config.embeddings
    model = load_collaborative_model(trained_model_dir, force_cpu=settings.force_cpu)
    if model is not None:
        try:
            return fold_in_collaborative(
                dataset,
                history.frame,
                items,
                model,
                history.features_dir,
                settings,
                history.profiles,
                profile_files=False,
            )
        except ValueError as error:
            log.warning(
                "two-tower model in %s cannot fold in (%s); training it again", trained_model_dir, error
            )
    elif "cf" in settings.modalities:
        log.warning("no two-tower model saved in %s; training it again", trained_model_dir)
    return train_collaborative(
        dataset, history.frame, items, history.features_dir, settings, history.profiles, profile_files=False
    )


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
class ScoredChunk:
    """One chunk of users' final lists: the published rows, the candidates' feature table (None without
    a ranker context), each source's own lists at the list depth (only when the scorer keeps them, for
    evaluation), the final lists before the cut to ``top_k``, the merged candidates, how many users the
    fallback served and how many list places went to new items."""

    user_rows: np.ndarray
    recommendations: pd.DataFrame
    features: pd.DataFrame | None
    source_lists: dict[str, Candidates]
    final: Candidates
    candidates: pd.DataFrame | None
    served_by_fallback: int
    new_item_places: int


@dataclass
class ListScorer:
    """Everything fixed across user chunks of the final lists, the same for a training run and a batch:
    the fitted sources over ``matrix`` (their seen items), the selected list (``ranker`` or a source), the
    fallback for users it cannot serve and, with a ranker ``context``, the merged candidates' features and
    the ``ranker`` that orders them on its ``columns``. :meth:`score` turns one chunk of user rows into its
    lists; nothing in it grows with the number of users."""

    sources: dict[str, CandidateSource]
    matrix: InteractionMatrix
    config: RunConfig
    selected: str
    fallback: CandidateSource
    context: object | None = None
    ranker: object | None = None
    columns: list[str] | None = None
    keep_source_lists: bool = False
    model_name: str = "the model"

    def __post_init__(self) -> None:
        if self.selected == "ranker" and (self.ranker is None or self.context is None):
            raise ValueError("the ranker's lists need the ranker and its features' context")

    @property
    def ranks(self) -> bool:
        return self.selected == "ranker"

    def score(self, user_rows: np.ndarray) -> ScoredChunk:
        config, depth = self.config, list_depth(self.config)
        width = config.ranker.candidates_per_source if self.context is not None else 0
        lists = {}
        for name, source in self.sources.items():
            own_depth = depth if self.keep_source_lists or (not self.ranks and name == self.selected) else 0
            if max(width, own_depth):
                lists[name] = source.recommend(user_rows, max(width, own_depth))
        candidates, table, places = None, None, None
        if self.context is not None:
            from ranker.features import build_ranker_features

            cut = {
                name: Candidates(found.items[:, :width], found.scores[:, :width])
                for name, found in lists.items()
            }
            candidates = merge_candidates(cut, user_rows, seen=self.matrix.matrix)
            table = build_ranker_features(candidates, self.context)
        if self.ranks:
            final, places = self._ranked(table, user_rows, depth)
        else:
            chosen = lists[self.selected]
            final = Candidates(chosen.items[:, :depth], chosen.scores[:, :depth])
        final, origin = with_fallback(final, self.fallback, user_rows, depth, self.selected)
        frame = recommendation_frame(
            final, origin, candidates, self.matrix.users, self.matrix.items, config.top_k, places, user_rows
        )
        own = (
            {
                name: Candidates(found.items[:, :depth], found.scores[:, :depth])
                for name, found in lists.items()
            }
            if self.keep_source_lists
            else {}
        )
        return ScoredChunk(
            user_rows,
            frame,
            table,
            own,
            final,
            candidates,
            int((origin != self.selected).sum()),
            0 if places is None else int(places.sum()),
        )

    def _ranked(self, table: pd.DataFrame, user_rows: np.ndarray, depth: int):
        from ranker.lists import rank_final_lists

        columns = self.columns or list(self.ranker.feature_names_)
        missing = [name for name in columns if name not in table.columns]
        if missing:
            raise ModelNotTrainedError(
                f"{self.model_name}: the ranker needs features this batch cannot build: {', '.join(missing)}",
                hint="the data or the configuration changed since training; retrain (train-ranker flow)",
            )
        final, places = rank_final_lists(self.ranker, table, columns, user_rows, depth, self.config.ranker)
        return final, places if self.config.ranker.new_item_slots else None


def write_outputs(
    staged: RunFolder,
    *,
    metrics: dict | None = None,
    held_out: pd.DataFrame | None = None,
    run_report: dict | None = None,
    validation_report: dict | None = None,
    batch_report: dict | None = None,
    manifest: ModelManifest | None = None,
) -> None:
    """Write the reports of a run or lists folder into its staging copy ``staged``; what is None (or,
    for the metrics and the held-out pairs they were computed on, empty) is not written."""
    if metrics:
        write_json(metrics, staged.metrics)
        write_parquet(held_out[[USER_ID, ITEM_ID]].astype("string").reset_index(drop=True), staged.held_out)
    for report, path in (
        (run_report, staged.run_report),
        (validation_report, staged.validation_report),
        (batch_report, staged.batch_report),
    ):
        if report is not None:
            write_json(report, path)
    if manifest is not None:
        manifest.write(staged.model_manifest)
