"""Vector columns: an Arrow list column as a float matrix, and its streaming statistics (``VectorSummary``)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

CONSTANT_STD = 1e-6


@dataclass
class VectorSummary:
    """Statistics of one vector column over its usable vectors (not null, no NaN or infinity).

    ``dimension`` is None when the lists have different lengths (``length_min`` .. ``length_max``); the
    norm and per-dimension fields are None then, or when no vector is usable. Per-dimension statistics are
    the extremes over dimensions of each dimension's mean and standard deviation (population), with the
    index of the dimension where the std is lowest and highest; ``constant_dimensions`` counts dimensions
    whose std is below ``CONSTANT_STD`` times the mean norm (numerically constant).
    """

    column: str
    dimension: int | None
    length_min: int | None
    length_max: int | None
    null_vectors: int
    nan_vectors: int
    zero_vectors: int
    usable_vectors: int
    norm_min: float | None = None
    norm_mean: float | None = None
    norm_max: float | None = None
    dimension_mean_min: float | None = None
    dimension_mean_max: float | None = None
    dimension_std_min: float | None = None
    dimension_std_min_at: int | None = None
    dimension_std_max: float | None = None
    dimension_std_max_at: int | None = None
    constant_dimensions: int | None = None


def _vector_matrix(array) -> tuple[np.ndarray, np.ndarray] | None:
    """An Arrow vector array as a float32 [n, dim] matrix (NaN in null rows and null elements) and its
    validity mask; None when the lists of this array have different lengths."""
    import pyarrow as pa
    import pyarrow.compute as pc

    n = len(array)
    valid = array.is_valid().to_numpy(zero_copy_only=False)
    if pa.types.is_fixed_size_list(array.type):
        dimension = array.type.list_size
        values = array.values.slice(array.offset * dimension, n * dimension)
        matrix = values.to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(n, dimension)
    else:
        lengths = pc.list_value_length(array).to_numpy(zero_copy_only=False)
        present = lengths[valid]
        if present.size and (present != present[0]).any():
            return None
        dimension = int(present[0]) if present.size else 0
        matrix = np.zeros((n, dimension), dtype=np.float32)
        flat = array.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
        matrix[valid] = flat.reshape(-1, dimension) if dimension else flat.reshape(int(valid.sum()), 0)
    if not valid.all():
        matrix = matrix if matrix.flags.writeable else matrix.copy()
        matrix[~valid] = np.nan
    return matrix, valid


class _VectorStats:
    """Streaming statistics of one vector column (norms; per-dimension mean and M2, merged with Chan's
    formula so batches of any size give the same answer as one pass)."""

    def __init__(self, column: str, arrow_type):
        import pyarrow as pa

        self.column = column
        self.dimension: int | None = arrow_type.list_size if pa.types.is_fixed_size_list(arrow_type) else None
        self.ragged = False
        self.length_min: int | None = None
        self.length_max: int | None = None
        self.null_vectors = self.nan_vectors = self.zero_vectors = self.usable = 0
        self.norm_min, self.norm_max, self.norm_sum = math.inf, -math.inf, 0.0
        self.mean: np.ndarray | None = None
        self.m2: np.ndarray | None = None

    def add(self, array) -> tuple[np.ndarray, np.ndarray] | None:
        """Add one batch; return its (matrix, usable-row mask), or None when its lengths are ragged."""
        import pyarrow.compute as pc

        self.null_vectors += array.null_count
        lengths = pc.list_value_length(array).drop_null().to_numpy(zero_copy_only=False)
        if lengths.size:
            low, high = int(lengths.min()), int(lengths.max())
            self.length_min = low if self.length_min is None else min(self.length_min, low)
            self.length_max = high if self.length_max is None else max(self.length_max, high)
        if self.length_min is not None and self.length_min != self.length_max:
            self.ragged = True
        converted = None if self.ragged else _vector_matrix(array)
        if converted is None:
            self.ragged = True
            return None
        matrix, valid = converted
        finite = np.isfinite(matrix).all(axis=1)
        self.nan_vectors += int((valid & ~finite).sum())
        usable = valid & finite
        good = matrix[usable]
        self.zero_vectors += int((~good.any(axis=1)).sum()) if good.shape[1] else len(good)
        if self.dimension is None and valid.any():
            self.dimension = matrix.shape[1]
        if len(good):
            self._merge(good)
        return matrix, usable

    def _merge(self, good: np.ndarray) -> None:
        norms = np.sqrt(np.einsum("ij,ij->i", good, good, dtype=np.float64))
        self.norm_min = min(self.norm_min, float(norms.min()))
        self.norm_max = max(self.norm_max, float(norms.max()))
        self.norm_sum += float(norms.sum())
        count = len(good)
        batch_mean = good.mean(axis=0, dtype=np.float64)
        centred = good.astype(np.float64) - batch_mean  # float64: squares of tiny values must not underflow
        batch_m2 = np.einsum("ij,ij->j", centred, centred)
        if self.mean is None:
            self.mean, self.m2 = batch_mean, batch_m2
        else:
            total = self.usable + count
            delta = batch_mean - self.mean
            self.mean = self.mean + delta * count / total
            self.m2 = self.m2 + batch_m2 + delta**2 * self.usable * count / total
        self.usable += count

    def summary(self) -> VectorSummary:
        summary = VectorSummary(
            column=self.column,
            dimension=None if self.ragged else self.dimension,
            length_min=self.length_min,
            length_max=self.length_max,
            null_vectors=self.null_vectors,
            nan_vectors=self.nan_vectors,
            zero_vectors=self.zero_vectors,
            usable_vectors=self.usable,
        )
        if self.ragged or not self.usable or self.mean is None or not len(self.mean):
            return summary
        std = np.sqrt(self.m2 / self.usable)
        summary.norm_min, summary.norm_max = self.norm_min, self.norm_max
        summary.norm_mean = self.norm_sum / self.usable
        summary.dimension_mean_min, summary.dimension_mean_max = (
            float(self.mean.min()),
            float(self.mean.max()),
        )
        summary.dimension_std_min, summary.dimension_std_min_at = float(std.min()), int(std.argmin())
        summary.dimension_std_max, summary.dimension_std_max_at = float(std.max()), int(std.argmax())
        summary.constant_dimensions = int((std <= CONSTANT_STD * summary.norm_mean).sum())
        return summary
