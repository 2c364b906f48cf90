"""``m6rec inspect``: statistics, neighbours, ID filter and sample on files whose right answer is known.

The embedding file holds hand-chosen 3-d vectors: cosines to ``a`` are 0.6 (``b`` and ``g``, an exact tie,
since ``g`` is twice ``b``, that the earlier row wins), 0 (``c``) and -1 (``d``); ``e`` is null with a recorded
problem, ``f`` is all zeros and ``h`` has a NaN, so those three are problem rows and never neighbours.
"""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from m6rec import cli
from m6rec.embeddings.store import write_embeddings
from m6rec.errors import DataError
from pipelines.inspect import inspect_parquet
from pipelines.inspect import reading as inspect_module

KEYS = ["a", "b", "c", "d", "e", "f", "g", "h"]
VECTORS = np.array(
    [
        [1.0, 0.0, 0.0],
        [0.6, 0.8, 0.0],
        [0.0, 2.0, 0.0],
        [-3.0, 0.0, 0.0],
        [9.0, 9.0, 9.0],  # masked: e is null
        [0.0, 0.0, 0.0],
        [1.2, 1.6, 0.0],
        [np.nan, 1.0, 0.0],
    ],
    dtype=np.float32,
)
VALID = np.array([True, True, True, True, False, True, True, True])
USABLE = [0, 1, 2, 3, 5, 6]  # not null, no NaN
PROBLEMS = [None, None, None, None, "image missing: e.jpg", None, None, None]


@pytest.fixture
def embeddings_path(tmp_path):
    path = tmp_path / "features" / "image.parquet"
    write_embeddings(
        path,
        "item_id",
        KEYS,
        VECTORS,
        valid=VALID,
        problems=PROBLEMS,
        metadata={"encoder": "test-encoder", "weights": "hand-made", "pretrained": False},
    )
    return path


def test_schema_metadata_and_null_counts(embeddings_path):
    result = inspect_parquet(embeddings_path, sample=0)
    assert result.rows == 8 and result.row_groups == 1
    assert result.size_bytes == embeddings_path.stat().st_size
    assert [(c.name, c.nulls) for c in result.columns] == [
        ("item_id", 0),
        ("embedding", 1),
        ("content_hash", 8),
        ("problem", 7),
    ]
    assert result.columns[1].type == "fixed_size_list<element: float>[3]"
    declared = result.metadata["m6rec"]
    assert (declared["encoder"], declared["weights"], declared["pretrained"]) == (
        "test-encoder",
        "hand-made",
        False,
    )
    assert (declared["dimension"], declared["rows"]) == (3, 8)
    assert (result.id_column, result.distinct_ids) == ("item_id", 8)
    assert result.warnings == []


def test_vector_statistics(embeddings_path):
    (vectors,) = inspect_parquet(embeddings_path, sample=0).vectors
    assert (vectors.column, vectors.dimension) == ("embedding", 3)
    assert (vectors.null_vectors, vectors.nan_vectors, vectors.zero_vectors, vectors.usable_vectors) == (
        1,
        1,
        1,
        6,
    )
    # usable norms: 1, 1, 2, 3, 0, 2
    assert (vectors.norm_min, vectors.norm_mean, vectors.norm_max) == pytest.approx((0.0, 1.5, 3.0))
    usable = VECTORS[USABLE].astype(np.float64)
    assert vectors.dimension_mean_min == pytest.approx(usable.mean(axis=0).min())
    assert vectors.dimension_mean_max == pytest.approx(4.4 / 6)
    assert vectors.dimension_std_max == pytest.approx(usable.std(axis=0).max())
    assert vectors.dimension_std_min == pytest.approx(0.0, abs=1e-12) and vectors.dimension_std_min_at == 2
    assert vectors.constant_dimensions == 1


def test_statistics_do_not_depend_on_batch_size(embeddings_path, monkeypatch):
    whole = inspect_parquet(embeddings_path, sample=8, neighbours_of="a", k=2)
    monkeypatch.setattr(inspect_module, "BATCH_ROWS", 3)
    batched = inspect_parquet(embeddings_path, sample=8, neighbours_of="a", k=2)
    whole_dict, batched_dict = whole.to_dict(), batched.to_dict()
    assert whole_dict["vectors"][0] == pytest.approx(batched_dict["vectors"][0])
    for field in ("columns", "problem_rows", "problem_examples", "sample", "neighbours", "distinct_ids"):
        assert whole_dict[field] == batched_dict[field], field


def test_problem_rows(embeddings_path):
    result = inspect_parquet(embeddings_path, sample=0)
    assert result.problem_rows == 3
    assert [(p.row, p.id, p.problem) for p in result.problem_examples] == [
        (4, "e", "image missing: e.jpg"),
        (5, "f", "embedding: vector is all zeros"),
        (7, "h", "embedding: vector has NaN or infinity"),
    ]


def test_nearest_neighbours_by_cosine(embeddings_path):
    found = inspect_parquet(embeddings_path, sample=0, neighbours_of="a", k=3).neighbours
    assert (found.id_column, found.id, found.vector_column, found.k) == ("item_id", "a", "embedding", 3)
    assert [(n.id, n.row) for n in found.neighbours] == [("b", 1), ("g", 6), ("c", 2)]
    assert [n.similarity for n in found.neighbours] == pytest.approx([0.6, 0.6, 0.0], abs=1e-6)
    everything = inspect_parquet(embeddings_path, sample=0, neighbours_of="c", k=10).neighbours.neighbours
    assert [n.id for n in everything] == ["b", "g", "a", "d"]
    assert [n.similarity for n in everything] == pytest.approx([0.8, 0.8, 0.0, 0.0], abs=1e-6)


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("zzz", "item_id 'zzz' not found"),
        ("e", "item_id 'e': its embedding vector is null or has NaN (problem: image missing: e.jpg)"),
        ("h", "item_id 'h': its embedding vector is null or has NaN"),
        ("f", "item_id 'f': its embedding vector is all zeros"),
    ],
)
def test_neighbours_of_an_unusable_id_name_file_and_id(embeddings_path, query, message):
    with pytest.raises(DataError) as error:
        inspect_parquet(embeddings_path, neighbours_of=query)
    assert str(error.value).startswith(f"{embeddings_path}: {message}")


def test_neighbours_need_a_vector_column(tmp_path):
    path = tmp_path / "recommendations.parquet"
    pq.write_table(pa.table({"user_id": ["u1"], "item_id": ["i1"]}), path)
    with pytest.raises(DataError, match="no vector column"):
        inspect_parquet(path, neighbours_of="u1")


def test_filter_by_id_and_id_column(tmp_path):
    path = tmp_path / "recommendations.parquet"
    table = {
        "user_id": ["u1", "u2", "u1", "u3", "u1"],
        "item_id": ["i1", "i1", "i2", "i9", "i3"],
        "rank": pa.array([1, 1, 2, 1, 3], type=pa.int32()),
    }
    pq.write_table(pa.table(table), path)
    matches = inspect_parquet(path, id_value="u1").id_matches
    assert (matches.column, matches.value, matches.total) == ("user_id", "u1", 3)
    assert [(row.row, row.values["item_id"], row.values["rank"]) for row in matches.rows] == [
        (0, "i1", 1),
        (2, "i2", 2),
        (4, "i3", 3),
    ]
    by_item = inspect_parquet(path, id_value="i1", id_column="item_id").id_matches
    assert [row.values["user_id"] for row in by_item.rows] == ["u1", "u2"]
    by_rank = inspect_parquet(path, id_value="1", id_column="rank").id_matches
    assert by_rank.total == 3
    assert inspect_parquet(path, id_value="nobody").id_matches.total == 0


def test_sample_rows_are_rows_of_the_file(embeddings_path):
    result = inspect_parquet(embeddings_path, sample=3)
    positions = [row.row for row in result.sample]
    assert len(positions) == 3 and positions == sorted(set(positions))
    for row in result.sample:
        assert row.values["item_id"] == KEYS[row.row]
    assert [row.row for row in inspect_parquet(embeddings_path, sample=100).sample] == list(range(8))
    assert inspect_parquet(embeddings_path, sample=0).sample == []
    assert [row.row for row in inspect_parquet(embeddings_path, sample=3).sample] == positions


def test_any_parquet_file_float_nans_ragged_lists_and_metadata(tmp_path):
    path = tmp_path / "table.parquet"
    table = pa.table(
        {
            "score": pa.array([1.0, math.nan, None], type=pa.float64()),
            "count": pa.array([1, None, 3], type=pa.int64()),
            "ragged": pa.array([[1.0, 2.0], [3.0, 4.0, 5.0], None], type=pa.list_(pa.float32())),
            "uniform": pa.array([[3.0, 4.0], [0.0, 1.0], [0.0, 0.0]], type=pa.large_list(pa.float64())),
        }
    ).replace_schema_metadata({"note": "plain text", "config": '{"k": [1, 2]}', "broken": "{not json"})
    pq.write_table(table, path)
    result = inspect_parquet(path, sample=0)
    assert [(c.name, c.nulls, c.nans) for c in result.columns] == [
        ("score", 1, 1),
        ("count", 1, None),
        ("ragged", 1, None),
        ("uniform", 0, None),
    ]
    assert result.metadata == {"note": "plain text", "config": {"k": [1, 2]}, "broken": "{not json"}
    assert result.id_column is None and result.distinct_ids is None
    ragged, uniform = result.vectors
    assert (ragged.dimension, ragged.length_min, ragged.length_max, ragged.norm_min) == (None, 2, 3, None)
    assert (uniform.dimension, uniform.zero_vectors) == (2, 1)
    assert (uniform.norm_min, uniform.norm_max) == pytest.approx((0.0, 5.0))
    with pytest.raises(DataError, match="'ragged' holds lists of different lengths"):
        inspect_parquet(path, id_column="count", neighbours_of="1", vector_column="ragged")
    with pytest.raises(DataError, match="no ID column"):
        inspect_parquet(path, id_value="1")


def test_warnings_when_the_data_disagrees_with_the_metadata(tmp_path):
    path = tmp_path / "text.parquet"
    write_embeddings(
        path,
        "item_id",
        ["a", "a", "b"],
        np.array([[3.0, 4.0], [1.0, 0.0], [0.0, 1.0]]),
        metadata={"encoder": "text", "weights": "w", "normalized": True},
    )
    assert inspect_parquet(path).warnings == [
        "metadata says normalized, but embedding norms range 1 .. 5",
        "1 duplicate or null item_id values in an embedding file",
    ]


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (None, "no such file or directory"),
        (b"", "file is empty, not a Parquet file"),
        (b"user_id,item_id\n1,2\n", "not a Parquet file (no Parquet magic bytes at its end)"),
    ],
    ids=["missing", "empty", "csv"],
)
def test_unreadable_files_name_the_file(tmp_path, content, problem):
    path = tmp_path / "recommendations.parquet"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DataError) as error:
        inspect_parquet(path)
    assert str(error.value) == f"{path}: {problem}"


def test_damaged_data_names_the_file(tmp_path):
    path = tmp_path / "interactions.parquet"
    pq.write_table(pa.table({"item_id": [f"item-{i}" for i in range(5000)]}), path)
    damaged = bytearray(path.read_bytes())
    damaged[100:20_000] = bytes(19_900)  # the data pages; the footer at the end stays readable
    path.write_bytes(bytes(damaged))
    with pytest.raises(DataError, match=f"^{re.escape(str(path))}: cannot read the data: "):
        inspect_parquet(path)


def test_text_report(embeddings_path):
    text = inspect_parquet(embeddings_path, sample=2, id_value="b", neighbours_of="a", k=2).render_text()
    assert text.startswith(f"{embeddings_path}\n")
    assert "8 rows, 1 row group" in text
    assert "    encoder: test-encoder\n" in text
    assert "vector column embedding: dimension 3\n" in text
    assert "  6 usable, 1 null, 1 with NaN or infinity, 1 all zeros\n" in text
    assert "  norm min 0  mean 1.5  max 3\n" in text
    assert "rows with problems: 3\n  row 4 e: image missing: e.jpg\n" in text
    assert "sample: 2 rows drawn at random (seed 0), in file order\n" in text
    assert "rows with item_id = 'b': 1\n  #1  item_id=b  embedding=[0.6, 0.8, 0] (dim 3, norm 1)" in text
    assert text.endswith(
        "nearest neighbours of item_id 'a' by cosine on embedding (k=2)\n"
        "    1. b  0.6000  (row 1)\n"
        "    2. g  0.6000  (row 6)\n"
    )


def strict_json(text: str) -> dict:
    def refuse(constant: str):
        raise AssertionError(f"not standard JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def test_cli_json(embeddings_path):
    result = CliRunner().invoke(
        cli.app, ["inspect", str(embeddings_path), "--json", "--sample", "8", "--neighbours", "a", "--k", "2"]
    )
    assert result.exit_code == 0, result.output
    report = strict_json(result.output)
    assert report["path"] == str(embeddings_path)
    assert report["rows"] == 8
    assert report["metadata"]["m6rec"]["encoder"] == "test-encoder"
    assert [n["id"] for n in report["neighbours"]["neighbours"]] == ["b", "g"]
    assert len(report["sample"]) == 8
    assert report["sample"][7]["values"]["embedding"] == [None, 1.0, 0.0]
    assert report["sample"][4]["values"]["embedding"] is None
    assert report["vectors"][0]["norm_mean"] == pytest.approx(1.5)


def test_cli_text_with_id_filter(embeddings_path):
    result = CliRunner().invoke(cli.app, ["inspect", str(embeddings_path), "--id", "e"])
    assert result.exit_code == 0, result.output
    assert "rows with item_id = 'e': 1\n  #4  item_id=e  embedding=null" in result.output
    assert "sample:" not in result.output  # with --id the sample defaults to none
    default = CliRunner().invoke(cli.app, ["inspect", str(embeddings_path)])
    assert "sample: 5 rows drawn at random" in default.output


def test_cli_user_errors_are_one_line(embeddings_path, tmp_path, monkeypatch, capsys, m6rec_main):
    code, out, err = m6rec_main("inspect", embeddings_path, "--neighbours", "zzz")
    assert (code, out) == (2, "")
    assert err.splitlines() == [f"error: {embeddings_path}: item_id 'zzz' not found"]
    code, _, err = m6rec_main("inspect", embeddings_path, "--id", "a", "--id-column", "key")
    assert code == 2
    assert err.splitlines() == [
        f"error: {embeddings_path}: no column 'key' (columns: item_id, embedding, content_hash, problem)"
    ]
    code, _, err = m6rec_main("inspect", tmp_path / "features")
    assert code == 2
    assert err.splitlines() == [
        f"error: {tmp_path / 'features'}: is a directory; give one Parquet file",
        f"hint: Parquet files here: {embeddings_path}",
    ]
