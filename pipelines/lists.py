"""The final lists and their feature table, written chunk by chunk of users: in this process, or on a
Dask cluster by partitions of users (:func:`write_lists` picks).

On a cluster each partition is one task: on a worker it scores its users ``user_chunk`` at a time, as
in-process, into part files of its own under a name no other attempt uses
(``.parts/lists-00003-<token>.parquet``, written under a temporary name and moved into place when
complete). A task whose worker died is run again by the scheduler under a new name, so a half-written or
orphaned part is never read: the driver reads only the parts of the attempts whose results it received.
Only once every partition's result is in are the parts copied, row group by row group and in partition
order, into the staged list file and feature table, so those equal the in-process ones; the part files
then go. The scorer (sources, ranker, feature context) and the test set are sent to every worker once
(``scatter(..., broadcast=True)``): each worker holds a copy, as the in-process run holds one.
"""

from __future__ import annotations

import logging
import shutil
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from m6rec import __version__
from m6rec.candidates.merge import ITEM, USER_ROW
from m6rec.cluster import Executor, PartitionFailed
from m6rec.data.contract import USER_ID
from m6rec.evaluation.streamed import CountedMetrics, StreamedEvaluation
from m6rec.io import StreamedParquet
from m6rec.progress import progress_bar
from pipelines.run_folder import RunFolder
from pipelines.scoring import ListScorer, ScoredChunk

log = logging.getLogger("m6rec")


@dataclass
class WrittenLists:
    """What :func:`write_lists` wrote: list rows, feature-table rows, users served by the fallback whole,
    list places given to new items, users kept from earlier lists, users whose list was topped up from
    the fallback, and lists still shorter than ``top_k`` (the catalogue has no more for those users)."""

    rows: int = 0
    feature_rows: int = 0
    served_by_fallback: int = 0
    new_item_places: int = 0
    carried_users: int = 0
    topped_up_users: int = 0
    short_lists: int = 0


@dataclass(frozen=True)
class ListRows:
    """Rows for the list file and the feature table (either may be None) and the counts they carry."""

    lists: pd.DataFrame | None = None
    features: pd.DataFrame | None = None
    served_by_fallback: int = 0
    new_item_places: int = 0
    topped_up_users: int = 0
    short_lists: int = 0


def write_lists(
    scorer: ListScorer,
    staged: RunFolder,
    user_rows: np.ndarray,
    evaluation: StreamedEvaluation | None = None,
    carried=None,
    *,
    executor: Executor | None = None,
) -> WrittenLists:
    """Score ``user_rows`` chunk by chunk (``config.user_chunk`` users) into ``staged``'s list file and,
    with a ranker context, its feature table (``config.ranker.feature_table`` says which rows), one
    Parquet row group per chunk; ``evaluation.add(chunk)`` sees every :class:`ScoredChunk`.
    ``carried`` (frames of earlier list rows, of users not scored now) are appended after them.

    On a remote ``executor`` the chunks are scored by partitions of users on its workers
    (:func:`scored_on_cluster`): the same rows in the same order. In-process they stream straight into
    the files, without part files."""
    if executor is None or not executor.remote:
        scored = scored_chunks(scorer, user_rows, evaluation)
    else:
        scored = scored_on_cluster(executor, scorer, user_rows, staged.parts_dir, evaluation)
    return write_rows(scored, staged.recommendations, staged.ranker_features, carried)


def log_short_lists(written: WrittenLists, top_k: int) -> None:
    """Say how many lists the fallback completed, and how many stay short (the catalogue is exhausted)."""
    if written.topped_up_users:
        log.info(
            "lists: %d users' lists topped up to %d items from the fallback", written.topped_up_users, top_k
        )
    if written.short_lists:
        log.warning(
            "lists: %d users have fewer than %d items: nothing more in the catalogue to recommend them",
            written.short_lists,
            top_k,
        )


def scored_chunks(
    scorer: ListScorer, user_rows: np.ndarray, evaluation: StreamedEvaluation | None = None
) -> Iterator[ListRows]:
    """The list and feature-table rows of ``user_rows``, ``settings.user_chunk`` users at a time (a bar,
    or off a terminal a heartbeat line, counts the users scored)."""
    settings = scorer.settings
    kept = settings.feature_table
    with progress_bar(total=len(user_rows), desc="lists", unit="user") as bar:
        for start in range(0, len(user_rows), settings.user_chunk):
            rows = np.asarray(user_rows[start : start + settings.user_chunk], dtype=np.int64)
            chunk = scorer.score(rows)
            bar.update(len(rows))
            if evaluation is not None:
                evaluation.add(chunk)
            features = None
            if chunk.features is not None and kept != "none":
                features = chunk.features if kept == "all" else _listed_rows(chunk, settings.top_k)
            yield ListRows(
                chunk.recommendations,
                features,
                chunk.served_by_fallback,
                chunk.new_item_places,
                chunk.topped_up,
                chunk.short_lists,
            )


def write_rows(
    scored: Iterable[ListRows], lists_path: Path, features_path: Path, carried=None
) -> WrittenLists:
    """Write ``scored`` into the list file and the feature table (removed when it gets no row), then the
    ``carried`` list frames; each file appears only once all of it is written."""
    from ranker.features import FeatureTableWriter

    written = WrittenLists()
    with ListWriter(lists_path) as lists, FeatureTableWriter(features_path) as table:
        for rows in scored:
            if rows.lists is not None:
                lists.write(rows.lists)
            if rows.features is not None:
                table.write(rows.features)
            written.served_by_fallback += rows.served_by_fallback
            written.new_item_places += rows.new_item_places
            written.topped_up_users += rows.topped_up_users
            written.short_lists += rows.short_lists
        for frame in carried or ():
            lists.write(frame)
            written.carried_users += int(frame[USER_ID].nunique())
        written.rows, written.feature_rows = lists.rows, table.rows
    if written.feature_rows == 0:
        Path(features_path).unlink(missing_ok=True)
    return written


def _listed_rows(chunk: ScoredChunk, top_k: int) -> pd.DataFrame:
    """The feature rows of the candidates that made the published (top-``top_k``) lists."""
    listed = chunk.final.items[:, :top_k]
    users = np.repeat(chunk.user_rows, listed.shape[1])
    listed_keys = users[listed.ravel() >= 0] * (1 << 32) + listed.ravel()[listed.ravel() >= 0]
    features = chunk.features
    keys = features[USER_ROW].to_numpy(np.int64) * (1 << 32) + features[ITEM].to_numpy(np.int64)
    return features[np.isin(keys, listed_keys)]


class ListWriter:
    """Write the published lists chunk by chunk, one Parquet row group each (the file appears only when
    every chunk is written: :class:`m6rec.io.StreamedParquet`)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._file = StreamedParquet(self.path)
        self.rows = 0

    def write(self, frame: pd.DataFrame) -> None:
        import pyarrow as pa

        if self._file.is_open and list(frame.columns) != self._schema.names:
            frame = frame.reindex(columns=self._schema.names)  # earlier rows of a source since dropped
        table = pa.Table.from_pandas(frame, preserve_index=False)
        if not self._file.is_open:
            metadata = {**(table.schema.metadata or {}), b"m6rec.version": __version__.encode()}
            self._schema = table.schema.with_metadata(metadata)
            self._file.open(self._schema)
        self._file.write(table.cast(self._schema))
        self.rows += len(frame)

    def __enter__(self) -> ListWriter:
        return self

    def __exit__(self, error_type, *exc) -> None:
        self._file.close(success=error_type is None)


@dataclass(frozen=True)
class _Shared:
    """What every partition reads: the scorer and, when the run evaluates, the test set."""

    scorer: ListScorer
    evaluation: StreamedEvaluation | None


@dataclass(frozen=True)
class _Part:
    """One partition's part files (the feature table's None when it got no row), what it wrote and
    what it counted for the evaluation."""

    index: int
    lists: Path
    features: Path | None
    written: WrittenLists
    counted: CountedMetrics | None


def scored_on_cluster(
    executor: Executor,
    scorer: ListScorer,
    user_rows: np.ndarray,
    parts_dir: Path,
    evaluation: StreamedEvaluation | None = None,
) -> Iterator[ListRows]:
    """The rows :func:`scored_chunks` gives for ``user_rows``, scored on ``executor``'s workers in
    partitions of at most ``executor.partition_users`` users (two per worker at least, where there are
    users enough); ``evaluation`` counts every partition's chunks. Raises
    :class:`m6rec.cluster.PartitionFailed` when a partition's workers kept dying
    (``distributed.scheduler.allowed-failures``)."""
    workers = executor.workers
    # At least two partitions per worker where the users allow it, so no worker idles at the end.
    size = max(min(executor.partition_users, -(-len(user_rows) // (2 * workers))), 1)
    partitions = [user_rows[start : start + size] for start in range(0, len(user_rows), size)]
    if not partitions:
        return
    run = uuid.uuid4().hex[:12]
    parts_dir = Path(parts_dir)
    shutil.rmtree(parts_dir, ignore_errors=True)  # an earlier attempt's, in a resumed generation
    run_dir = parts_dir / run
    run_dir.mkdir(parents=True)
    try:
        log.info(
            "lists: %d users in %d partitions on %d Dask workers", len(user_rows), len(partitions), workers
        )
        parts = executor.map(
            _score_partition,
            _Shared(scorer, evaluation),
            [(rows, run_dir, index) for index, rows in enumerate(partitions)],
            "lists",
            key=f"m6rec-lists-{run}",
        )
        for part in parts:
            missing = [
                path for path in (part.lists, part.features) if path is not None and not path.is_file()
            ]
            if missing:
                raise PartitionFailed(
                    f"lists: partition {part.index + 1} reported {missing[0]}, which is missing"
                )
            if evaluation is not None:
                evaluation.merge(part.counted)
        for part in parts:
            yield ListRows(None, None, **_counts(part))
        # The parts' row groups, regrouped by the chunks of user_chunk users the in-process run writes:
        # the committed files are those bytes, wherever the partitions ran.
        chunk = scorer.settings.user_chunk
        by_id = pd.Index(pd.Series(scorer.matrix.users.ids[user_rows]).astype(str))
        by_row = pd.Index(np.asarray(user_rows, dtype=np.int64))
        for frame in _in_chunks(
            [part.lists for part in parts], lambda f: by_id.get_indexer(f[USER_ID].astype(str)) // chunk
        ):
            yield ListRows(lists=frame)
        features = [part.features for part in parts if part.features is not None]
        for frame in _in_chunks(
            features, lambda f: by_row.get_indexer(f[USER_ROW].to_numpy(np.int64)) // chunk
        ):
            yield ListRows(features=frame)
    finally:
        shutil.rmtree(parts_dir, ignore_errors=True)


def _score_partition(shared: _Shared, user_rows: np.ndarray, parts_dir: Path, index: int) -> _Part:
    """On a worker: one partition's lists and feature rows into part files of this attempt's own name
    in the run's ``parts_dir``; nothing when that is gone (the run ended: a task the scheduler had
    cancelled, or an orphan of a lost worker)."""
    if not parts_dir.is_dir():
        raise RuntimeError(f"{parts_dir}: the run that asked for partition {index + 1} has ended")
    attempt = uuid.uuid4().hex[:12]
    lists = parts_dir / f"lists-{index:05d}-{attempt}.parquet"
    features = parts_dir / f"features-{index:05d}-{attempt}.parquet"
    partial = None if shared.evaluation is None else shared.evaluation.empty()
    written = write_rows(scored_chunks(shared.scorer, user_rows, partial), lists, features)
    return _Part(
        index,
        lists,
        features if written.feature_rows else None,
        written,
        None if partial is None else partial.counted(),
    )


def _counts(part: _Part) -> dict[str, int]:
    written = part.written
    return {
        "served_by_fallback": written.served_by_fallback,
        "new_item_places": written.new_item_places,
        "topped_up_users": written.topped_up_users,
        "short_lists": written.short_lists,
    }


def _in_chunks(paths: list[Path], chunk_of) -> Iterator[pd.DataFrame]:
    """The rows of the part files ``paths`` in order, one frame per chunk (``chunk_of(frame)``: each row's
    chunk number, rising through the files)."""
    import pyarrow.parquet as pq

    pending, current = [], None
    for path in paths:
        file = pq.ParquetFile(path)
        for group in range(file.num_row_groups):
            frame = file.read_row_group(group).to_pandas()
            chunks = np.asarray(chunk_of(frame))
            starts = np.flatnonzero(np.r_[True, chunks[1:] != chunks[:-1]]) if len(chunks) else []
            for begin, end in zip(starts, [*starts[1:], len(chunks)], strict=True):
                if current is not None and chunks[begin] != current:
                    yield pd.concat(pending, ignore_index=True)
                    pending = []
                current = chunks[begin]
                pending.append(frame.iloc[begin:end])
    if pending:
        yield pd.concat(pending, ignore_index=True)
