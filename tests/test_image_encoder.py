"""The image encoder: checkpoint loading, real photos, bad media, and honesty about missing weights."""

from __future__ import annotations

import hashlib
import os
from importlib.metadata import version

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import features.image as image_module
from features.base import RejectedInput, encode_items, media_inputs
from features.encoders import create_encoder
from features.image import ImageEncoder
from m6rec.data.contained import MediaLimits
from m6rec.embeddings.store import EncodeResult, embed_incrementally, read_embeddings
from m6rec.errors import ConfigError

GROCERY_ICONIC = Path("../shared/data/grocerystore/dataset/iconic-images-and-descriptions")
TINY_VIT = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 512, "width": 32, "heads": 2, "layers": 1},
}
# The identity the encoder had before it built its network lazily (captured from that code, which built
# the random-init ViT-B-32 and read ``model.visual.preprocess_cfg``): files it wrote must stay valid.
EAGER_VIT_B_32_RANDOM_IDENTITY = {
    "encoder": "image",
    "model": "ViT-B-32",
    "normalized": True,
    "preprocess": {
        "fill_color": 0,
        "interpolation": "bicubic",
        "mean": [0.48145466, 0.4578275, 0.40821073],
        "mode": "RGB",
        "resize_mode": "shortest",
        "size": [224, 224],
        "std": [0.26862954, 0.26130258, 0.27577711],
    },
    "weights": "random-init (seed 0)",
    "batching": "fixed-shape:64",
    "runtime": {
        "device": "cpu",
        "precision": "float32",
        **{name: version(name) for name in ("torch", "torchvision", "open_clip_torch", "pillow")},
    },
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


@pytest.fixture
def network_builds(monkeypatch) -> list[str]:
    """The weights (``WeightsSource.identity``) of every network ``features.image`` builds from now on."""
    builds, build = [], image_module._build_model

    def counting(architecture, source):
        builds.append(source.identity)
        return build(architecture, source)

    monkeypatch.setattr(image_module, "_build_model", counting)
    return builds


def _write_pictures(folder: Path, count: int, seed: int = 0) -> list[Path]:
    """``count`` small PNGs of seeded noise (``picture-<n>.png``) in ``folder``."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = [folder / f"picture-{index}.png" for index in range(count)]
    for path in paths:
        Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(path)
    return paths


def _file_state(path: Path) -> tuple[int, int, bytes]:
    """What rewriting a file changes: its inode (files are replaced atomically), mtime and bytes."""
    stat = path.stat()
    return stat.st_ino, stat.st_mtime_ns, path.read_bytes()


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

    limits = MediaLimits(extra_roots=(GROCERY_ICONIC,))
    report = encode_items(tiny_encoder, items, tmp_path, out, limits)

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
    assert encode_items(tiny_encoder, items, tmp_path, out, limits).computed == 0


def test_weights_only_loading_refuses_pickled_objects(tiny_clip, tmp_path):
    import torch

    config, checkpoint, _, _ = tiny_clip
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    state["extra"] = pd.Timestamp("2024-01-01")
    unsafe = tmp_path / "unsafe.pt"
    torch.save(state, unsafe)
    encoder = ImageEncoder(model=str(config), checkpoint=unsafe, force_cpu=True)  # hashed, not loaded
    assert encoder.weights == "checkpoint:" + hashlib.sha256(unsafe.read_bytes()).hexdigest()
    with pytest.raises(ConfigError, match="cannot load image checkpoint"):
        encoder.encode([])


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
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "b.jpg").write_bytes(b"not decoded here")
    prepared = tiny_encoder.prepare(items, tmp_path)
    assert prepared.keys == ["1", "3"]
    assert prepared.inputs[0] == str(tmp_path / "a" / "b.jpg")
    assert prepared.fingerprints[0] == "sha256:" + hashlib.sha256(b"not decoded here").hexdigest()
    assert isinstance(prepared.inputs[1], RejectedInput)
    assert prepared.inputs[1].reason.startswith("/abs/c.png: outside the dataset folder")


def test_registry_builds_the_image_encoder(tiny_clip):
    config, checkpoint, _, _ = tiny_clip
    encoder = create_encoder("image", model=str(config), checkpoint=str(checkpoint), force_cpu=True)
    assert isinstance(encoder, ImageEncoder) and encoder.dimension == 32


def test_nothing_changed_builds_no_network_and_leaves_the_file_as_it_is(tiny_clip, network_builds, tmp_path):
    config, checkpoint, _, _ = tiny_clip
    paths = _write_pictures(tmp_path / "pictures", 4)
    items = pd.DataFrame({"item_id": ["a", "b", "c", "d"], "image_path": [str(path) for path in paths]})
    out = tmp_path / "image.parquet"

    def nightly_encoder() -> ImageEncoder:
        return ImageEncoder(model=str(config), checkpoint=checkpoint, num_workers=0, force_cpu=True)

    assert encode_items(nightly_encoder(), items, tmp_path, out).computed == 4
    assert len(network_builds) == 1
    written, before = _file_state(out), read_embeddings(out)

    unchanged = nightly_encoder()
    report = encode_items(unchanged, items, tmp_path, out)
    assert (report.total, report.computed, report.reused, report.failed) == (4, 0, 4, 0)
    assert len(network_builds) == 1 and unchanged._model is None
    assert _file_state(out) == written

    _write_pictures(tmp_path / "other", 1, seed=1)[0].replace(paths[2])
    report = encode_items(unchanged, items, tmp_path, out)
    assert (report.computed, report.reused) == (1, 3)
    assert len(network_builds) == 2
    after = read_embeddings(out)
    moved = ~np.all(after.vectors == before.vectors, axis=1)
    assert list(after.keys[moved]) == ["c"]


def test_weights_and_preprocessing_known_before_building_are_the_built_networks(tiny_clip, monkeypatch):
    """The identity comes from configs (no network), and is what the built model says, for each source:
    checkpoint, pretrained tag (here a tag registered for the tiny ViT) and random init."""
    import open_clip.pretrained

    config, checkpoint, reference, _ = tiny_clip
    tag = {
        "file": str(checkpoint),
        "mean": (0.5, 0.5, 0.5),
        "std": (0.25, 0.25, 0.25),
        "resize_mode": "squash",
    }
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, "m6rec-test-tiny-vit", {"local": tag})
    sources = {
        "checkpoint": {"checkpoint": checkpoint},
        "tag": {"pretrained": "local", "allow_random_weights": False},
        "random": {"pretrained": None, "allow_random_weights": True, "seed": 4},
    }
    for kind, options in sources.items():
        encoder = ImageEncoder(model=str(config), num_workers=0, force_cpu=True, **options)
        before = encoder.identity()
        assert encoder._model is None
        encoder.encode([])
        assert encoder.identity() == before
        assert before["preprocess"] == dict(encoder._model.visual.preprocess_cfg), kind
    assert before["preprocess"] == dict(reference.visual.preprocess_cfg)
    tagged = ImageEncoder(model=str(config), pretrained="local", force_cpu=True).metadata()
    assert (tagged["weights"], tagged["pretrained"]) == ("open_clip:m6rec-test-tiny-vit/local", True)
    assert (tagged["preprocess"]["mean"], tagged["preprocess"]["resize_mode"]) == ((0.5, 0.5, 0.5), "squash")


def test_a_file_written_while_encoders_built_their_network_at_once_is_reused(network_builds, tmp_path):
    paths = _write_pictures(tmp_path / "pictures", 3)
    items = pd.DataFrame({"item_id": ["a", "b", "c"], "image_path": [str(path) for path in paths]})
    prepared = media_inputs(items, tmp_path, "image_path")
    out = tmp_path / "image.parquet"
    embed_incrementally(
        out,
        modality="image",
        key_column="item_id",
        keys=prepared.keys,
        fingerprints=prepared.fingerprints,
        inputs=prepared.inputs,
        identity=EAGER_VIT_B_32_RANDOM_IDENTITY,
        metadata={**EAGER_VIT_B_32_RANDOM_IDENTITY, "modality": "image", "pretrained": False},
        encode=lambda inputs: EncodeResult(np.eye(len(inputs), 512, dtype=np.float32)),
    )
    written = _file_state(out)

    encoder = ImageEncoder(
        model="ViT-B-32", pretrained="laion2b_s34b_b79k", allow_random_weights=True, seed=0, force_cpu=True
    )
    report = encode_items(encoder, items, tmp_path, out)

    assert (report.computed, report.reused) == (0, 3)
    assert network_builds == [] and _file_state(out) == written


def test_vectors_from_another_device_precision_or_library_version_are_not_reused(tiny_encoder, monkeypatch):
    from features.device import Device
    from m6rec.embeddings.store import content_hash

    cpu = tiny_encoder.identity()
    monkeypatch.setattr(tiny_encoder, "device", Device("cuda", "bfloat16"))
    gpu = tiny_encoder.identity()
    assert (cpu["runtime"]["device"], gpu["runtime"]["device"]) == ("cpu", "cuda")
    assert (cpu["runtime"]["precision"], gpu["runtime"]["precision"]) == ("float32", "bfloat16")
    assert {key: value for key, value in gpu.items() if key != "runtime"} == {
        key: value for key, value in cpu.items() if key != "runtime"
    }
    assert content_hash(cpu, "sha256:same-file") != content_hash(gpu, "sha256:same-file")
    assert cpu["runtime"]["open_clip_torch"] == version("open_clip_torch")


def test_an_images_vector_does_not_depend_on_what_else_is_encoded_with_it(tiny_encoder, grocery_images):
    """Every batch runs filled to batch_size: bitwise the same vector alone and among other images."""
    paths = [str(path) for path in grocery_images[:5]]
    alone = tiny_encoder.encode([paths[0]]).vectors[0]
    among = tiny_encoder.encode([*paths[1:3], paths[0], *paths[3:]]).vectors[2]
    assert np.array_equal(alone, among)
