"""Candidate sources that retrieve items by nearest-neighbour search in an embedding space (FAISS).

Both take their vectors as side inputs (:class:`~m6rec.candidates.side_inputs.SideInputs`, loaded once by
the pipeline), or, built standalone, read them from the m6rec embedding Parquet files named in their
parameters; they align them to the training matrix's item and user IDs. Item vectors go into a
:class:`~m6rec.candidates.faiss_index.VectorIndex` — every item with a vector, interactions or not, so
cold items can be reached — and a user's query vector retrieves the nearest items.
"""

from __future__ import annotations

import logging
from abc import abstractmethod
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from m6rec.candidates.faiss_index import (
    RECALL_K,
    RECALL_SAMPLE,
    TARGET_RECALL,
    VectorIndex,
    build_index,
    normalise_rows,
)
from m6rec.candidates.retrieval import VectorRetrieval, search_depth
from m6rec.candidates.side_inputs import SideInputs
from m6rec.data.contract import ITEM_ID, USER_ID
from m6rec.data.interactions import InteractionMatrix
from m6rec.embeddings.profiles import DEFAULT_HALF_LIFE_DAYS, DEFAULT_MAX_HISTORY, ProfileCache
from m6rec.errors import ConfigError

log = logging.getLogger("m6rec")

INDEX_FILE = "index.faiss"


class EmbeddingSource(VectorRetrieval):
    """Shared machinery: fit aligns item and query vectors and builds the index; recommend searches it.

    Subclasses implement :meth:`_vectors`. Scores are cosine similarities between the normalised query
    and item vectors; items without a vector and users without a query score -inf (never candidates).

    The index is tuned (:func:`~m6rec.candidates.faiss_index.build_index`) for recall@``search_depth(
    recall_k)`` of at least ``target_recall`` on a sample of the users' query vectors; ``recall_k`` is the
    list length the pipeline asks for (its ``candidates_per_source``, 100 by default).
    """

    state_arrays = ("item_vectors", "indexed_items", "query_vectors", "has_query")
    extra_files = (INDEX_FILE, "index.json")
    refits_to_fold_in = False

    def __init__(
        self,
        *,
        factory: str | None = None,
        exact_below: int = 50_000,
        nprobe: int | None = None,
        seed: int = 0,
        use_gpu: bool | None = None,
        recall_k: int = RECALL_K,
        target_recall: float = TARGET_RECALL,
        **params,
    ):
        super().__init__(
            **params,
            factory=factory,
            exact_below=exact_below,
            nprobe=nprobe,
            seed=seed,
            use_gpu=use_gpu,
            recall_k=recall_k,
            target_recall=target_recall,
        )
        self.index: VectorIndex | None = None

    def fit(self, train: InteractionMatrix, inputs: SideInputs | None = None) -> EmbeddingSource:
        """Align the embeddings (from ``inputs``, else the parameters' files) to ``train``'s IDs and index
        the item vectors; returns self."""
        self._align_vectors(train, inputs)
        return super().fit(train)

    def fold_in(self, train: InteractionMatrix, inputs: SideInputs | None = None) -> EmbeddingSource:
        """Align the item and query vectors to ``train`` again, from today's ``inputs`` (else the
        parameters' files): new items with a vector are indexed, new users with a query are served.

        The saved index is kept when it holds exactly today's indexed items with byte-identical vectors.
        Otherwise it is rebuilt and re-tuned rather than added to: an approximate index's lists were
        trained and its search depth tuned for recall on the old vectors, which added or changed vectors
        no longer guarantee (and changed vectors cannot be replaced in place), while an exact index costs
        no more to rebuild than to add to. A source saved without its item IDs cannot tell, so it
        rebuilds. Returns self.
        """
        self._require_fitted()
        if self.item_ids is None:
            log.info("%s: saved without item IDs, so its index is rebuilt", self.name)
            return self.fit(train, inputs)
        alignment = self._item_alignment(train.items)
        indexed_before = alignment.current_of_learned[self.indexed_items]
        vectors_before = self.item_vectors[self.indexed_items]
        self._align_vectors(train, inputs)
        self._serve_matrix(train)
        unchanged = (
            (indexed_before >= 0).all()
            and np.array_equal(np.sort(indexed_before), self.indexed_items)
            and np.array_equal(self.item_vectors[indexed_before], vectors_before)
        )
        if unchanged:
            self.indexed_items = indexed_before  # the index's rows, in the order they were added
            log.info(
                "%s: kept the saved index of %d item vectors (unchanged)", self.name, len(indexed_before)
            )
        else:
            log.info(
                "%s: rebuilding the index: %d item vectors today, %d in the saved index (%d of them gone "
                "or changed)",
                self.name,
                len(self.indexed_items),
                len(indexed_before),
                _changed_vectors(indexed_before, vectors_before, self.item_vectors, self.indexed_items),
            )
            self._fit(self.seen)
        return self

    def _align_vectors(self, train: InteractionMatrix, inputs: SideInputs | None) -> None:
        """Item and query vectors on ``train``'s columns and rows, normalised; which items are indexed."""
        item_vectors, item_present, query_vectors, has_query = self._vectors(train, inputs)
        if not item_present.any():
            where = self.params.get("embeddings") or "the side inputs"
            raise ConfigError(
                f"{self.name}: none of the {train.n_items} training items has a vector in {where}; "
                "are they item embeddings of this dataset?"
            )
        self.item_vectors = normalise_rows(item_vectors)
        self.indexed_items = np.flatnonzero(item_present).astype(np.int64)
        lazy = isinstance(query_vectors, ProfileQueries)
        self.query_vectors = query_vectors if lazy else normalise_rows(query_vectors)
        self.has_query = np.asarray(has_query, dtype=bool)

    @abstractmethod
    def _vectors(
        self, train: InteractionMatrix, inputs: SideInputs | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(item_vectors [n_items, d], item_present, query_vectors [n_users, d], has_query)``."""

    def _fit(self, matrix: sp.csr_matrix) -> None:
        users = np.flatnonzero(self.has_query)
        rng = np.random.default_rng(self.params["seed"])
        sample = np.sort(rng.choice(users, size=min(RECALL_SAMPLE, len(users)), replace=False))
        self.index = build_index(
            self.item_vectors[self.indexed_items],
            factory=self.params["factory"],
            exact_below=self.params["exact_below"],
            nprobe=self.params["nprobe"],
            seed=self.params["seed"],
            use_gpu=self.params["use_gpu"],
            k=search_depth(self.params["recall_k"]),
            target_recall=self.params["target_recall"],
            queries=self.query_vectors[sample] if len(sample) else None,
        )

    def _search(self, rows: np.ndarray, depth: int) -> np.ndarray:
        return self.index.search(self.query_vectors[rows], depth)[0]

    def _served(self, user_rows: np.ndarray) -> np.ndarray:
        known = (user_rows >= 0) & (user_rows < len(self.has_query))
        served = np.zeros(len(user_rows), dtype=bool)
        served[known] = self.has_query[user_rows[known]]
        if isinstance(self.query_vectors, ProfileQueries):
            served[known] &= self.query_vectors.present(user_rows[known])
        return served

    def _save_extra(self, directory: Path) -> None:
        self.index.save(Path(directory) / INDEX_FILE)

    def _load_extra(self, directory: Path) -> None:
        self.index = VectorIndex.load(Path(directory) / INDEX_FILE, use_gpu=self.params["use_gpu"])


class TwoTowerSource(EmbeddingSource):
    """Retrieval with the two-tower model's exported vectors: the user tower's vector queries the items.

    The vectors are the ``cf_items`` / ``cf_users`` side inputs, or, standalone, the files ``embeddings``
    (``cf_items.parquet``) and ``user_embeddings`` (``cf_users.parquet``). A user without a vector gets
    nothing; one with a vector is served even without training history (the user tower reads attributes
    too).
    """

    name = "two_tower"
    side_inputs = ("cf_items", "cf_users")

    def __init__(self, *, embeddings: str | None = None, user_embeddings: str | None = None, **index_params):
        if (embeddings is None) != (user_embeddings is None):
            raise ConfigError(
                "two_tower reads both files or none: give embeddings and user_embeddings together"
            )
        super().__init__(embeddings=_path(embeddings), user_embeddings=_path(user_embeddings), **index_params)

    def _vectors(
        self, train: InteractionMatrix, inputs: SideInputs | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        if inputs is not None and inputs.provides(self.side_inputs):
            item_table, user_table = inputs.item_vectors["cf_items"], inputs.user_vectors["cf_users"]
        else:
            item_table = _read_table(self.params["embeddings"], ITEM_ID, "embeddings")
            user_table = _read_table(self.params["user_embeddings"], USER_ID, "user_embeddings")
        if item_table.dimension != user_table.dimension:
            raise ConfigError(
                f"two_tower: the item vectors have dimension {item_table.dimension} but the user vectors "
                f"have {user_table.dimension}"
            )
        item_vectors, item_present = item_table.lookup(train.items.ids)
        user_vectors, user_present = user_table.lookup(train.users.ids)
        return item_vectors, item_present, user_vectors, user_present


class ContentSource(EmbeddingSource):
    """Retrieval in a content space (fused, text, image, ...): a user's profile queries the items.

    The space is the ``content`` side input (the fused vectors, else the text vectors) with the users'
    profiles of the history (:class:`m6rec.embeddings.profiles.ProfileCache`), or, standalone, the file
    ``embeddings`` with profiles computed here. A profile is the recency-weighted mean of the content
    vectors of the user's training items (half-life ``half_life_days``, latest ``max_history`` items;
    uniform weights without timestamps); given side inputs, the cache's half-life applies. Items with
    content but no interactions are indexed too, which is how cold items become candidates.
    """

    name = "content"
    side_inputs = ("content",)

    def __init__(
        self,
        *,
        embeddings: str | None = None,
        half_life_days: float | None = DEFAULT_HALF_LIFE_DAYS,
        max_history: int | None = DEFAULT_MAX_HISTORY,
        **index_params,
    ):
        super().__init__(
            embeddings=_path(embeddings),
            half_life_days=half_life_days,
            max_history=max_history,
            **index_params,
        )

    def _vectors(
        self, train: InteractionMatrix, inputs: SideInputs | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        if inputs is not None and inputs.provides(self.side_inputs) and inputs.profiles is not None:
            space = inputs.content_space
            table, profiles = inputs.item_vectors[space], inputs.profiles
            # The pipeline's one configured profile: record what the queries were built with.
            self.params.update(half_life_days=profiles.half_life_days, max_history=profiles.max_history)
            item_vectors, item_present = table.lookup(train.items.ids)
            # Shared with the ranker: each batch of users' profiles is computed when it is searched.
            queries = ProfileQueries(profiles, space, table)
            return item_vectors, item_present, queries, queries.possible(item_present)
        table = _read_table(self.params["embeddings"], ITEM_ID, "embeddings")
        profiles = ProfileCache(
            train, half_life_days=self.params["half_life_days"], max_history=self.params["max_history"]
        )
        item_vectors, item_present = table.lookup(train.items.ids)
        query_vectors, has_query = profiles.aligned("content", table)
        return item_vectors, item_present, query_vectors, has_query


class ProfileQueries:
    """The content source's queries from a shared :class:`ProfileCache`: ``queries[rows]`` are the
    unit-length profiles of those matrix rows, computed when asked (the last rows asked are kept, for
    the search right after the served check), so scoring a million users never holds a million
    profiles. ``np.asarray(queries)`` gives every row's (to save the source)."""

    def __init__(self, profiles: ProfileCache, space: str, table):
        self.profiles, self.space, self.table = profiles, space, table
        self.shape = (profiles.train.n_users, table.dimension)
        self._last = (
            np.empty(0, dtype=np.int64),
            np.empty((0, table.dimension), np.float32),
            np.empty(0, bool),
        )

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows) -> np.ndarray:
        return self._of(np.asarray(rows, dtype=np.int64))[0]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        vectors = normalise_rows(self.profiles.aligned(self.space, self.table)[0])
        return vectors if dtype is None else vectors.astype(dtype)

    def present(self, rows: np.ndarray) -> np.ndarray:
        """Whether each of ``rows`` has a profile (some usable item, not summing to zero)."""
        return self._of(np.asarray(rows, dtype=np.int64))[1]

    def possible(self, item_present: np.ndarray) -> np.ndarray:
        """Per matrix row, whether it has an item with a vector: a profile is possible (cheap, every row)."""
        history = self.profiles.train.matrix.tocsr()
        return (history != 0).astype(np.float32) @ item_present.astype(np.float32) > 0

    def _of(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        known, vectors, present = self._last
        at = np.minimum(np.searchsorted(known, rows), max(len(known) - 1, 0))
        if len(known) == 0 or not np.array_equal(known[at], rows):
            known = np.unique(rows)
            vectors, present = self.profiles.rows(self.space, self.table, known)
            vectors = normalise_rows(vectors)
            self._last = (known, vectors, present)
            at = np.searchsorted(known, rows)
        return vectors[at], present[at]


def _path(path) -> str | None:
    return None if path is None else str(path)


def _read_table(path: str | None, key_column: str, parameter: str):
    """Read an embedding file and check that it is keyed by ``key_column``."""
    from m6rec.embeddings.store import read_embeddings

    if path is None:
        raise ConfigError(f"no {parameter} file and no side inputs to take the vectors from")
    if not Path(path).exists():
        raise ConfigError(f"embedding file {path} not found; run the embedding stage first")
    table = read_embeddings(Path(path))
    if table.key_column != key_column:
        raise ConfigError(f"{path} holds {table.key_column} embeddings, expected {key_column} embeddings")
    return table


def _changed_vectors(
    indexed_before: np.ndarray, vectors_before: np.ndarray, item_vectors: np.ndarray, indexed_now: np.ndarray
) -> int:
    """How many of the saved index's items are no longer indexed or have another vector today."""
    still = (indexed_before >= 0) & np.isin(indexed_before, indexed_now)
    same = np.zeros(len(indexed_before), dtype=bool)
    same[still] = (item_vectors[indexed_before[still]] == vectors_before[still]).all(axis=1)
    return int(np.count_nonzero(~same))
