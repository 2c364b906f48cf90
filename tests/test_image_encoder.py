"""The image encoder: checkpoint loading, real photos, bad media, and honesty about missing weights."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.base import encode_items
from features.encoders import create_encoder
from features.image import ImageEncoder
from m6rec.embeddings.store import read_embeddings
from m6rec.errors import ConfigError

GROCERY_ICONIC = Path("../shared/data/grocerystore/dataset/iconic-images-and-descriptions")
TINY_VIT = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 512, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(autouse=True)
def offline_hub(monkeypatch):
    """No download may be attempted, even if huggingface_hub was imported before HF_HUB_OFFLINE was set."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A seeded two-layer ViT CLIP: its config file, its state-dict checkpoint, and the in-memory model."""
    import open_clip
    import torch

    folder = tmp_path_factory.mktemp("tiny-clip")
    config = folder / "m6rec-test-tiny-vit.json"
    config.write_text(json.dumps(TINY_VIT))
    open_clip.add_model_config(config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        model, _, preprocess = open_clip.create_model_and_transforms("m6rec-test-tiny-vit")
    checkpoint = folder / "tiny.pt"
    torch.save(model.state_dict(), checkpoint)
    return config, checkpoint, model.eval(), preprocess


@pytest.fixture(scope="module")
def tiny_encoder(tiny_clip) -> ImageEncoder:
    config, checkpoint, _, _ = tiny_clip
    return ImageEncoder(model=str(config), checkpoint=checkpoint, batch_size=3, num_workers=2, force_cpu=True)


@pytest.fixture(scope="module")
def grocery_images() -> list[Path]:
    if not GROCERY_ICONIC.exists():
        pytest.skip("../shared/data/grocerystore is not available")
    return sorted(GROCERY_ICONIC.glob("**/*.jpg"))[::8][:10]


def _reference_vectors(model, preprocess, paths: list[Path]) -> np.ndarray:
    import torch
    from PIL import Image

    pixels = torch.stack([preprocess(Image.open(path).convert("RGB")) for path in paths])
    with torch.inference_mode():
        return torch.nn.functional.normalize(model.encode_image(pixels), dim=-1).numpy()


def test_checkpoint_round_trip_equals_in_memory_model(tiny_clip, tiny_encoder, grocery_images):
    _, checkpoint, model, preprocess = tiny_clip
    result = tiny_encoder.encode([str(path) for path in grocery_images])

    assert result.failures == {}
    np.testing.assert_allclose(
        result.vectors, _reference_vectors(model, preprocess, grocery_images), atol=1e-5
    )
    metadata = tiny_encoder.metadata()
    assert metadata["pretrained"] is True
    assert metadata["weights"] == "checkpoint:" + hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert metadata["model"] == "m6rec-test-tiny-vit"


def test_real_photos_give_finite_unit_vectors_that_differ(tiny_encoder, grocery_images):
    vectors = tiny_encoder.encode([str(path) for path in grocery_images]).vectors
    assert vectors.shape == (len(grocery_images), 32)
    assert np.isfinite(vectors).all()
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    similarity = vectors @ vectors.T
    assert similarity[~np.eye(len(vectors), dtype=bool)].max() < 0.99999


def test_bad_media_get_null_embeddings_and_problems_while_good_ones_embed(
    tiny_encoder, grocery_images, tmp_path
):
    good = [path.resolve() for path in grocery_images[:4]]
    (tmp_path / "media").mkdir()
    (tmp_path / "media" / "truncated.jpg").write_bytes(good[0].read_bytes()[:100])
    (tmp_path / "media" / "notes.png").write_text("this is not an image\n")
    items = pd.DataFrame(
        {
            "item_id": ["g0", "missing", "g1", "truncated", "g2", "text", "g3", "no-image", "nan-image"],
            "image_path": [
                str(good[0]),
                "media/absent.jpg",
                str(good[1]),
                "media/truncated.jpg",
                str(good[2]),
                "media/notes.png",
                str(good[3]),
                "",
                None,
            ],
        }
    )
    out = tmp_path / "image.parquet"

    report = encode_items(tiny_encoder, items, tmp_path, out)

    assert (report.total, report.computed, report.failed) == (7, 7, 3)
    problems = {row["item_id"]: row["problem"] for row in report.problems}
    assert problems["missing"] == f"missing file {tmp_path / 'media' / 'absent.jpg'}"
    assert problems["truncated"].startswith(f"cannot decode {tmp_path / 'media' / 'truncated.jpg'}: ")
    assert problems["text"].startswith(f"cannot decode {tmp_path / 'media' / 'notes.png'}: ")
    table = read_embeddings(out)
    assert list(table.keys) == ["g0", "missing", "g1", "truncated", "g2", "text", "g3"]
    assert list(table.valid) == [True, False, True, False, True, False, True]
    np.testing.assert_allclose(
        table.vectors[table.valid], tiny_encoder.encode([str(p) for p in good]).vectors, atol=1e-6
    )
    assert encode_items(tiny_encoder, items, tmp_path, out).computed == 0


def test_weights_only_loading_refuses_pickled_objects(tiny_clip, tmp_path):
    import torch

    config, checkpoint, _, _ = tiny_clip
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    state["extra"] = pd.Timestamp("2024-01-01")
    unsafe = tmp_path / "unsafe.pt"
    torch.save(state, unsafe)
    with pytest.raises(ConfigError, match="cannot load image checkpoint"):
        ImageEncoder(model=str(config), checkpoint=unsafe, force_cpu=True)


def test_unavailable_pretrained_weights_raise_a_config_error_without_random_fallback():
    with pytest.raises(
        ConfigError, match="laion2b_s34b_b79k.*checkpoint=.*allow_random_weights=True"
    ) as raised:
        ImageEncoder(
            model="ViT-B-32", pretrained="laion2b_s34b_b79k", force_cpu=True, allow_random_weights=False
        )
    assert "\n" not in str(raised.value)


def test_random_weights_are_only_used_when_allowed_and_say_so(grocery_images, caplog, monkeypatch):
    monkeypatch.setattr("features.image._announced_random_weights", set())
    with caplog.at_level(logging.WARNING, logger="m6rec"):
        encoder = ImageEncoder(
            model="ViT-B-32",
            pretrained="laion2b_s34b_b79k",
            allow_random_weights=True,
            seed=5,
            force_cpu=True,
        )
    assert "RANDOM-INIT weights (seed 5)" in caplog.text
    metadata = encoder.metadata()
    assert metadata["pretrained"] is False
    assert metadata["weights"] == "random-init (seed 5)"
    vectors = encoder.encode([str(path) for path in grocery_images[:2]]).vectors
    assert vectors.shape == (2, 512)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_random_init_is_seeded(tiny_clip, grocery_images):
    config = str(tiny_clip[0])
    paths = [str(path) for path in grocery_images[:3]]
    first, same, other = (
        ImageEncoder(model=config, pretrained=None, allow_random_weights=True, seed=seed, num_workers=0)
        for seed in (1, 1, 2)
    )
    np.testing.assert_array_equal(first.encode(paths).vectors, same.encode(paths).vectors)
    assert not np.allclose(first.encode(paths).vectors, other.encode(paths).vectors)
    assert first.identity() == same.identity() != other.identity()


def test_unknown_architecture_and_missing_checkpoint_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown open_clip model"):
        ImageEncoder(model="ViT-Nope-1", checkpoint=tmp_path / "x.pt")
    with pytest.raises(ConfigError, match="does not exist"):
        ImageEncoder(model="ViT-B-32", checkpoint=tmp_path / "x.pt")


def test_prepare_resolves_relative_paths_and_skips_items_without_pictures(tiny_encoder, tmp_path):
    items = pd.DataFrame(
        {
            "item_id": [1, 2, 3, 4],
            "image_path": pd.array(["a/b.jpg", "", "/abs/c.png", pd.NA], dtype="string"),
        }
    )
    prepared = tiny_encoder.prepare(items, tmp_path)
    assert prepared.keys == ["1", "3"]
    assert prepared.inputs == [str(tmp_path / "a" / "b.jpg"), "/abs/c.png"]
    assert prepared.fingerprints == [f"missing:{tmp_path / 'a' / 'b.jpg'}", "missing:/abs/c.png"]


def test_registry_builds_the_image_encoder(tiny_clip):
    config, checkpoint, _, _ = tiny_clip
    encoder = create_encoder("image", model=str(config), checkpoint=str(checkpoint), force_cpu=True)
    assert isinstance(encoder, ImageEncoder) and encoder.dimension == 32
