"""The embedding Parquet contract and incremental computation on top of it.

Every embedding file has the columns ``<key>`` (raw ``item_id`` or ``user_id`` as string), ``embedding``
(fixed-size list of float32, null where the input could not be encoded), ``content_hash`` (SHA-256 of the
encoder identity and the row's input) and ``problem`` (why the embedding is null, else null). The schema
metadata key ``m6rec`` holds JSON with the encoder name, weights identity, whether real pretrained weights
were used, dimension, creation time and a hash of the whole file's content hashes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from m6rec import __version__
from m6rec.io import atomic_path

METADATA_KEY = b"m6rec"


@dataclass(frozen=True)
class EmbeddingTable:
    """Embeddings of one modality in memory: keys, a [n, dim] float32 matrix, validity and row hashes."""

    key_column: str
    keys: np.ndarray
    vectors: np.ndarray
    valid: np.ndarray
    content_hashes: np.ndarray
    problems: np.ndarray
    metadata: dict

    @property
    def dimension(self) -> int:
        return int(self.vectors.shape[1])

    def lookup(self, keys: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Vectors for ``keys`` (zeros where unknown or null) and a mask of the ones present and valid."""
        positions = pd.Index(self.keys).get_indexer(np.asarray(keys, dtype=object))
        found = positions >= 0
        vectors = np.zeros((len(positions), self.dimension), dtype=np.float32)
        vectors[found] = self.vectors[positions[found]]
        present = np.zeros(len(positions), dtype=bool)
        present[found] = self.valid[positions[found]]
        vectors[~present] = 0.0
        return vectors, present


def content_hash(identity: dict, fingerprint: str | bytes) -> str:
    """SHA-256 over the encoder identity (sorted JSON) and one row's input fingerprint."""
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode())
    digest.update(fingerprint.encode() if isinstance(fingerprint, str) else fingerprint)
    return digest.hexdigest()


def write_embeddings(
    path: Path,
    key_column: str,
    keys: Sequence[str],
    vectors: np.ndarray,
    *,
    valid: np.ndarray | None = None,
    content_hashes: Sequence[str] | None = None,
    problems: Sequence[str | None] | None = None,
    metadata: dict,
) -> None:
    """Write an embedding file atomically, with the declared schema and metadata.

    ``metadata`` must hold at least ``encoder`` and ``weights``; ``dimension``, ``created_at``,
    ``m6rec_version``, ``rows`` and ``file_hash`` are added here.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    for required in ("encoder", "weights"):
        if required not in metadata:
            raise ValueError(f"embedding metadata needs {required!r}")
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, dimension = vectors.shape
    keys = [str(key) for key in keys]
    if len(keys) != n:
        raise ValueError(f"{len(keys)} keys for {n} vectors")
    valid = np.ones(n, dtype=bool) if valid is None else np.asarray(valid, dtype=bool)
    hashes = list(content_hashes) if content_hashes is not None else [None] * n
    problems = list(problems) if problems is not None else [None] * n
    flat = pa.array(vectors.reshape(-1), type=pa.float32())
    embedding = pa.FixedSizeListArray.from_arrays(flat, dimension, mask=pa.array(~valid))
    digest = hashlib.sha256("".join(h or "" for h in hashes).encode())
    digest.update(memoryview(vectors).cast("B"))  # no copy: 1.5 GB for a million 384-d profiles
    file_hash = digest.hexdigest()
    full_metadata = {
        **metadata,
        "dimension": dimension,
        "rows": n,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "m6rec_version": __version__,
        "file_hash": file_hash,
    }
    table = pa.table(
        {
            key_column: pa.array(keys, type=pa.string()),
            "embedding": embedding,
            "content_hash": pa.array(hashes, type=pa.string()),
            "problem": pa.array(problems, type=pa.string()),
        }
    ).replace_schema_metadata({METADATA_KEY: json.dumps(full_metadata, default=str).encode()})
    with atomic_path(path) as temporary:
        pq.write_table(table, temporary)


def read_embeddings(path: Path) -> EmbeddingTable:
    """Read and check an embedding file written by :func:`write_embeddings`."""
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    raw = (table.schema.metadata or {}).get(METADATA_KEY)
    if raw is None:
        raise ValueError(
            f"{path}: not an m6rec embedding file (no '{METADATA_KEY.decode()}' schema metadata)"
        )
    metadata = json.loads(raw)
    key_column = table.schema.names[0]
    column = table.column("embedding").combine_chunks()
    dimension = column.type.list_size
    if dimension != metadata["dimension"]:
        raise ValueError(
            f"{path}: embedding size {dimension} differs from metadata dimension {metadata['dimension']}"
        )
    valid = column.is_valid().to_numpy(zero_copy_only=False)
    vectors = (
        column.values.to_numpy(zero_copy_only=False).reshape(-1, dimension).astype(np.float32, copy=True)
    )
    vectors[~valid] = 0.0
    return EmbeddingTable(
        key_column=key_column,
        keys=np.asarray(table.column(key_column).to_pylist(), dtype=object),
        vectors=vectors,
        valid=valid,
        content_hashes=np.asarray(table.column("content_hash").to_pylist(), dtype=object),
        problems=np.asarray(table.column("problem").to_pylist(), dtype=object),
        metadata=metadata,
    )


@dataclass
class EncodeResult:
    """What an encoder returns for a batch of inputs: vectors and, per failed position, the reason."""

    vectors: np.ndarray
    failures: dict[int, str] = field(default_factory=dict)


@dataclass
class IncrementalReport:
    """Counts of an incremental embedding pass, and the problems (item, reason) it met."""

    modality: str
    total: int
    computed: int
    reused: int
    failed: int
    problems: list[dict] = field(default_factory=list)


def embed_incrementally(
    path: Path,
    *,
    modality: str,
    key_column: str,
    keys: Sequence[str],
    fingerprints: Sequence[str],
    inputs: Sequence,
    identity: dict,
    metadata: dict,
    encode: Callable[[list], EncodeResult],
) -> IncrementalReport:
    """Embed only rows whose content hash is not already in ``path``; reuse the rest; write the new file.

    ``identity`` (encoder name, weights, options) enters every content hash, so changing the model
    recomputes everything. Rows the encoder cannot handle get a null embedding and a problem entry.
    ``encode`` is called only when some row needs it. When ``path`` already holds exactly these keys with
    these content hashes and ``metadata``, it is left as it is (neither its bytes nor its modification time
    change) and the report counts every row as reused.
    """
    keys = [str(key) for key in keys]
    hashes = [content_hash(identity, fingerprint) for fingerprint in fingerprints]
    previous_table = _previous_table(path)
    previous = _rows_by_hash(previous_table)
    todo = [position for position, h in enumerate(hashes) if h not in previous]
    if not todo and _is_current(previous_table, keys, hashes, metadata):
        problem_rows = [
            {"modality": modality, key_column: key, "problem": problem}
            for key, ok, problem in zip(keys, previous_table.valid, previous_table.problems, strict=True)
            if not ok
        ]
        return IncrementalReport(modality, len(keys), 0, len(keys), len(problem_rows), problem_rows)
    new_vectors: np.ndarray | None = None
    failures: dict[int, str] = {}
    if todo:
        result = encode([inputs[position] for position in todo])
        new_vectors = np.asarray(result.vectors, dtype=np.float32)
        failures = {todo[index]: reason for index, reason in result.failures.items()}
    dimension = new_vectors.shape[1] if new_vectors is not None else _previous_dimension(previous)
    vectors = np.zeros((len(keys), dimension), dtype=np.float32)
    valid = np.ones(len(keys), dtype=bool)
    problems: list[str | None] = [None] * len(keys)
    for position, h in enumerate(hashes):
        if h in previous:
            vector, problem = previous[h]
            if vector is None:
                valid[position], problems[position] = False, problem
            else:
                vectors[position] = vector
    for index, position in enumerate(todo):
        if position in failures:
            valid[position], problems[position] = False, failures[position]
        else:
            vectors[position] = new_vectors[index]
    write_embeddings(
        path,
        key_column,
        keys,
        vectors,
        valid=valid,
        content_hashes=hashes,
        problems=problems,
        metadata=metadata,
    )
    problem_rows = [
        {"modality": modality, key_column: keys[position], "problem": problems[position]}
        for position in np.flatnonzero(~valid)
    ]
    return IncrementalReport(
        modality, len(keys), len(todo), len(keys) - len(todo), int((~valid).sum()), problem_rows
    )


def current_file_problems(path: Path, keys: Sequence[str], metadata: dict) -> list[str | None] | None:
    """The per-row problems (None where the row has a vector) of the embedding file at ``path`` when it
    holds exactly ``keys``, in this order, and every entry of ``metadata`` as written; else ``None``.

    Only the schema metadata and the key and problem columns are read, so deciding that a derived file
    (fusion, profiles) needs no rewrite costs far less than rewriting it.
    """
    import pyarrow.parquet as pq

    if not Path(path).exists():
        return None
    try:
        schema = pq.read_schema(path)
        stored = json.loads((schema.metadata or {})[METADATA_KEY])
        if not _metadata_matches(stored, metadata):
            return None
        key_column = schema.names[0]
        table = pq.read_table(path, columns=[key_column, "problem"])
        if table.column(key_column).to_pylist() != [str(key) for key in keys]:
            return None
        return table.column("problem").to_pylist()
    except Exception:  # an unreadable file is rewritten, never trusted
        return None


def _metadata_matches(stored: dict, metadata: dict) -> bool:
    """Whether the metadata read from a file (``stored``) holds every entry of ``metadata`` as
    :func:`write_embeddings` would write it (through JSON, so tuples compare equal to lists)."""
    wanted = json.loads(json.dumps(metadata, default=str))
    return all(key in stored and stored[key] == value for key, value in wanted.items())


def _is_current(table: EmbeddingTable | None, keys: list[str], hashes: list[str], metadata: dict) -> bool:
    """Whether ``table`` already holds ``keys`` with ``hashes``, in order, and ``metadata``."""
    return (
        table is not None
        and list(table.keys) == keys
        and list(table.content_hashes) == hashes
        and _metadata_matches(table.metadata, metadata)
    )


def _previous_table(path: Path) -> EmbeddingTable | None:
    if not Path(path).exists():
        return None
    try:
        return read_embeddings(path)
    except Exception:  # an unreadable previous file is recomputed, never trusted
        return None


def _rows_by_hash(table: EmbeddingTable | None) -> dict[str, tuple[np.ndarray | None, str | None]]:
    if table is None:
        return {}
    return {
        h: (table.vectors[i] if table.valid[i] else None, table.problems[i])
        for i, h in enumerate(table.content_hashes)
        if h is not None
    }


def _previous_dimension(previous: dict) -> int:
    for vector, _ in previous.values():
        if vector is not None:
            return len(vector)
    return 1
