"""Row normalisation of vector arrays that may hold a million users: no temporary the size of the array,
and no copy at all when the rows already are unit length."""

from __future__ import annotations

import numpy as np

# Rows whose L2 norm is this close to 1 count as normalised already (float32 rounding of a normalisation).
UNIT_NORM_TOLERANCE = 1e-6
# Rows whose norms are computed at once: bounds the float64 temporary to about 200 MB at 384 dimensions.
NORM_CHUNK_ROWS = 65_536


def row_norms(vectors: np.ndarray) -> np.ndarray:
    """The L2 norm of each row of a 2-d array (float32), in chunks of rows."""
    norms = np.empty(len(vectors), dtype=np.float32)
    for start in range(0, len(vectors), NORM_CHUNK_ROWS):
        chunk = np.asarray(vectors[start : start + NORM_CHUNK_ROWS], dtype=np.float64)
        norms[start : start + len(chunk)] = np.sqrt(np.einsum("ij,ij->i", chunk, chunk))
    return norms


def unit_rows(vectors, present: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(unit, present)``: contiguous float32 rows scaled to unit L2 norm, zero where a row has zero norm
    or is not ``present`` (then not present either). ``vectors`` itself is returned, not a copy, when it
    already is such an array; treat the result as read-only."""
    given = vectors
    vectors = np.asarray(vectors, dtype=np.float32, order="C")
    vectors = vectors.reshape(1, -1) if vectors.ndim == 1 else vectors
    norms = row_norms(vectors)
    keep = norms > 0
    if present is not None:
        keep &= np.asarray(present, dtype=bool)
    already = vectors is given and np.all(np.abs(norms[keep] - 1) <= UNIT_NORM_TOLERANCE)
    if already and (keep.all() or not norms[~keep].any()):
        return vectors, keep
    unit = vectors.copy() if np.shares_memory(vectors, given) else vectors
    for start in range(0, len(unit), NORM_CHUNK_ROWS):
        rows = slice(start, start + NORM_CHUNK_ROWS)
        block = unit[rows]  # a view: scaled in place
        block /= np.where(keep[rows], norms[rows], 1.0)[:, None]
        block[~keep[rows]] = 0.0
    return unit, keep
