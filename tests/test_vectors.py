"""Row normalisation that neither copies unit rows nor builds temporaries the size of the array."""

from __future__ import annotations

import numpy as np
import pytest

from m6rec import vectors as vectors_module
from m6rec.vectors import unit_rows


@pytest.mark.parametrize("chunk_rows", [65_536, 2], ids=["one-chunk", "chunks-of-2"])
def test_rows_become_unit_length_and_zero_nan_or_absent_rows_zero_and_absent(chunk_rows, monkeypatch):
    monkeypatch.setattr(vectors_module, "NORM_CHUNK_ROWS", chunk_rows)
    vectors = np.array([[3.0, 4.0], [0.0, 0.0], [np.nan, 1.0], [0.0, 2.0], [6.0, 8.0]], dtype=np.float32)

    unit, present = unit_rows(vectors, np.array([True, True, True, True, False]))

    np.testing.assert_allclose(unit, [[0.6, 0.8], [0, 0], [0, 0], [0, 1], [0, 0]], rtol=1e-6)
    assert present.tolist() == [True, False, False, True, False]
    assert vectors[0, 0] == 3.0, "the input is left as it was"


def test_rows_already_unit_length_are_returned_without_a_copy():
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((50, 8)).astype(np.float32)
    vectors[7] = 0.0
    unit, present = unit_rows(vectors)

    again, present_again = unit_rows(unit, present)

    assert again is unit and present_again.tolist() == present.tolist()
    assert not present[7] and present.sum() == 49
    np.testing.assert_allclose(np.linalg.norm(again[present], axis=1), 1.0, rtol=1e-6)


def test_other_dtypes_and_one_vector_give_a_float32_matrix():
    unit, present = unit_rows([0.0, 5.0])

    assert unit.dtype == np.float32 and unit.shape == (1, 2) and present.tolist() == [True]
    np.testing.assert_allclose(unit, [[0.0, 1.0]])
