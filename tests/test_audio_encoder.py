"""The audio encoder: real recordings, planted pitch categories, bad media and exact incrementality."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import features.audio as audio_module
from features.audio import (
    AUDIO_FEATURE_BLOCKS,
    AUDIO_FEATURE_DIMENSION,
    FLOOR_DB,
    AudioEncoder,
    audio_features,
    standardise_audio_features,
)
from features.base import encode_items
from features.encoders import create_encoder
from m6rec.demo_catalogue import DemoCatalogueSpec, generate_demo_catalogue
from m6rec.embeddings.store import read_embeddings
from m6rec.errors import ConfigError

AUDIO_CLIPS = Path("../shared/data/audio-clips")
SPEECH = ("198-209-0000", "3436-172162-0000", "5703-47212-0000")
MUSIC = (
    "147793__setuniman__sweet-waltz-0i-22mi",
    "442789__lena-orsa__happy-music-pistachio-ice-cream-ragtime",
    "Hungarian_Dance_number_5_-_Allegro_in_F_sharp_minor_(string_orchestra)",
    "Karissa_Hobbs_-_Lets_Go_Fishin",
    "Kevin_MacLeod_-_Vibe_Ace",
)


@pytest.fixture(scope="module")
def real_clips() -> pd.DataFrame:
    """Three LibriSpeech readings and five music recordings from librosa's example data."""
    if not AUDIO_CLIPS.exists():
        pytest.skip("../shared/data/audio-clips is not available")
    names = SPEECH + MUSIC
    return pd.DataFrame(
        {
            "item_id": list(names),
            "audio_path": [str((AUDIO_CLIPS / f"{name}.ogg").resolve()) for name in names],
            "is_speech": [name in SPEECH for name in names],
        }
    )


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory) -> Path:
    """A 24-item demo catalogue: four 1-second clips per category, pitch and pulse set by the category."""
    spec = DemoCatalogueSpec(n_users=12, n_items=24, n_cold_items=0, interactions_per_user=(2, 4))
    return generate_demo_catalogue(tmp_path_factory.mktemp("demo"), spec)


@pytest.fixture(scope="module")
def demo_items(demo_dir) -> pd.DataFrame:
    return pd.read_parquet(demo_dir / "items.parquet")


def _write_wav(path: Path, samples: np.ndarray, sample_rate: int = 22050) -> Path:
    import soundfile

    soundfile.write(path, samples, sample_rate, subtype="PCM_16")
    return path


def _tone(seconds: float, hz: float, sample_rate: int = 22050) -> np.ndarray:
    t = np.arange(round(seconds * sample_rate)) / sample_rate
    return 0.5 * np.sin(2 * np.pi * hz * t)


def _block(features: np.ndarray, name: str) -> np.ndarray:
    """The columns of block ``name`` in raw or standardised feature vectors."""
    offset = 0
    for block in AUDIO_FEATURE_BLOCKS:
        if block.name == name:
            return features[..., offset : offset + block.size]
        offset += block.size
    raise KeyError(name)


def _file_state(path: Path) -> tuple[int, int, bytes]:
    """What rewriting a file changes: its inode (files are replaced atomically), mtime and bytes."""
    stat = path.stat()
    return stat.st_ino, stat.st_mtime_ns, path.read_bytes()


def _distances(vectors: np.ndarray) -> np.ndarray:
    return np.linalg.norm(vectors[:, None, :] - vectors[None, :, :], axis=-1)


def test_layout_adds_up_to_the_documented_dimension():
    assert AUDIO_FEATURE_DIMENSION == 291
    assert sum(block.size for block in AUDIO_FEATURE_BLOCKS) == AUDIO_FEATURE_DIMENSION
    assert AudioEncoder().identity()["dimension"] == AUDIO_FEATURE_DIMENSION
    assert f"{AUDIO_FEATURE_DIMENSION} values" in audio_module.__doc__


def test_real_clips_give_finite_vectors_and_speech_neighbours_speech(real_clips, tmp_path):
    encoder = AudioEncoder(max_seconds=5.0)
    report = encode_items(encoder, real_clips, AUDIO_CLIPS, tmp_path / "audio.parquet")
    table = read_embeddings(tmp_path / "audio.parquet")

    assert (report.total, report.computed, report.failed) == (len(real_clips), len(real_clips), 0)
    assert table.dimension == AUDIO_FEATURE_DIMENSION and table.valid.all()
    assert np.isfinite(table.vectors).all()
    assert list(table.keys) == list(real_clips["item_id"])
    distances = _distances(table.vectors)
    np.fill_diagonal(distances, np.inf)
    speech = real_clips["is_speech"].to_numpy()
    for row in np.flatnonzero(speech):
        assert speech[np.argmin(distances[row])], f"{table.keys[row]}'s nearest clip is music"
    np.fill_diagonal(distances, np.nan)
    within_speech = np.nanmean(distances[np.ix_(speech, speech)])
    speech_to_music = np.nanmean(distances[np.ix_(speech, ~speech)])
    assert within_speech < 0.8 * speech_to_music
    assert table.metadata["encoder"] == "audio" and table.metadata["pretrained"] is False


def test_demo_clips_of_one_category_are_closer_than_across_categories(demo_dir, demo_items):
    encoder = AudioEncoder()
    prepared = encoder.prepare(demo_items, demo_dir)
    result = encoder.encode(prepared.inputs)

    assert result.failures == {}
    category = demo_items.set_index("item_id").loc[prepared.keys, "category"].to_numpy()
    distances = _distances(result.vectors)
    same = category[:, None] == category[None, :]
    off_diagonal = ~np.eye(len(category), dtype=bool)
    assert distances[same & off_diagonal].mean() < 0.7 * distances[~same].mean()
    np.fill_diagonal(distances, np.inf)
    assert (category[distances.argmin(axis=1)] == category).mean() >= 0.9


def test_bad_media_fail_their_own_item_only(demo_dir, real_clips, tmp_path):
    good = shutil.copyfile(demo_dir / "audio" / "item-0001.wav", tmp_path / "good.wav")
    (tmp_path / "truncated.ogg").write_bytes((AUDIO_CLIPS / f"{SPEECH[0]}.ogg").read_bytes()[:200])
    (tmp_path / "notes.wav").write_text("this is a text file, not audio\n")
    _write_wav(tmp_path / "silent.wav", np.zeros(22050))
    _write_wav(tmp_path / "blip.wav", _tone(0.005, 440.0))
    _write_wav(tmp_path / "empty.wav", np.zeros(0))
    items = pd.DataFrame(
        {
            "item_id": [
                "good",
                "missing",
                "truncated",
                "text",
                "silent",
                "blip",
                "empty",
                "no-audio",
                "null-audio",
            ],
            "audio_path": [
                good.name,
                "nowhere.wav",
                "truncated.ogg",
                "notes.wav",
                "silent.wav",
                "blip.wav",
                "empty.wav",
                "",
                None,
            ],
        }
    )
    report = encode_items(AudioEncoder(max_seconds=2.0), items, tmp_path, tmp_path / "audio.parquet")
    table = read_embeddings(tmp_path / "audio.parquet")

    assert list(table.keys) == ["good", "missing", "truncated", "text", "silent", "blip", "empty"]
    valid = dict(zip(table.keys, table.valid, strict=True))
    assert {key for key, ok in valid.items() if ok} == {"good", "silent", "blip"}
    assert np.isfinite(table.vectors).all()
    problems = {row["item_id"]: row["problem"] for row in report.problems}
    assert set(problems) == {"missing", "truncated", "text", "empty"} and report.failed == 4
    assert problems["missing"] == f"missing file {tmp_path / 'nowhere.wav'}"
    for key, name in (("truncated", "truncated.ogg"), ("text", "notes.wav"), ("empty", "empty.wav")):
        assert problems[key].startswith(f"cannot decode {tmp_path / name}")


def test_second_run_recomputes_nothing_and_a_changed_file_alone(demo_dir, demo_items, tmp_path):
    dataset = tmp_path / "dataset"
    (dataset / "audio").mkdir(parents=True)
    items = demo_items.head(6).copy()
    for path in items["audio_path"]:
        (dataset / path).write_bytes((demo_dir / path).read_bytes())
    out = tmp_path / "audio.parquet"
    encoder = AudioEncoder(max_seconds=1.0)

    first = encode_items(encoder, items, dataset, out)
    before = read_embeddings(out)
    second = encode_items(encoder, items, dataset, out)
    assert (first.computed, second.computed, second.reused) == (6, 0, 6)
    np.testing.assert_array_equal(read_embeddings(out).vectors, before.vectors)

    changed = items["audio_path"].iloc[2]
    _write_wav(dataset / changed, _tone(1.0, 1000.0, 16000), 16000)
    third = encode_items(encoder, items, dataset, out)
    after = read_embeddings(out)
    assert (third.computed, third.reused) == (1, 5)
    moved = ~np.all(after.vectors == before.vectors, axis=1)
    assert list(after.keys[moved]) == [items["item_id"].iloc[2]]

    raw = encode_items(AudioEncoder(max_seconds=1.0, standardise=False), items, dataset, out)
    assert raw.computed == 6
    np.testing.assert_allclose(
        standardise_audio_features(read_embeddings(out).vectors), after.vectors, atol=1e-4
    )


def test_nothing_changed_analyses_no_clip_and_leaves_the_file_as_it_is(
    demo_dir, demo_items, tmp_path, monkeypatch
):
    items = demo_items.head(4)
    out = tmp_path / "audio.parquet"
    encode_items(AudioEncoder(max_seconds=1.0), items, demo_dir, out)
    written = _file_state(out)

    def no_analysis(self, inputs):
        raise AssertionError(f"analysed {inputs}")

    monkeypatch.setattr(AudioEncoder, "encode", no_analysis)
    report = encode_items(AudioEncoder(max_seconds=1.0), items, demo_dir, out)

    assert (report.total, report.computed, report.reused, report.failed) == (4, 0, 4, 0)
    assert _file_state(out) == written


def test_an_unchanged_embedding_stage_rewrites_no_file_and_one_clip_only_what_depends_on_it(
    demo_dir, tmp_path
):
    """Audio and KG embeddings, their fusion and the user profiles over them: a second run on the same
    catalogue leaves every file as it is; a changed clip rewrites the audio file and what is built on it."""
    from m6rec.config import EmbeddingConfig
    from m6rec.data.dataset import load_dataset
    from pipelines.embeddings import compute_embeddings

    catalogue = shutil.copytree(demo_dir, tmp_path / "catalogue")
    out = tmp_path / "out"
    features = out / "features"
    config = EmbeddingConfig(
        modalities=["audio", "kg"],
        audio={"max_seconds": 1.0},
        kg={"epochs": 2, "dimension": 8},
        force_cpu=True,
    )

    def states() -> dict[str, tuple]:
        return {path.name: _file_state(path) for path in sorted(features.glob("*.parquet"))}

    first = compute_embeddings(load_dataset(catalogue), out, config)
    written = states()
    second = compute_embeddings(load_dataset(catalogue), out, config)

    assert sorted(written) == [
        f"{name}.parquet" for name in ("audio", "fused", "kg", "profile_audio", "profile_fused", "profile_kg")
    ]
    assert states() == written
    n_items = first.counts["fused"]["total"]
    assert first.counts["fused"]["computed"] == n_items
    for name in ("audio", "kg", "fused"):
        assert (second.counts[name]["computed"], second.counts[name]["reused"]) == (0, n_items), name

    items = pd.read_parquet(catalogue / "items.parquet")
    _write_wav(catalogue / items["audio_path"].iloc[0], _tone(1.0, 1000.0, 16000), 16000)
    third = compute_embeddings(load_dataset(catalogue), out, config)

    rewritten = {name for name, state in states().items() if state != written[name]}
    assert rewritten == {"audio.parquet", "fused.parquet", "profile_audio.parquet", "profile_fused.parquet"}
    assert (third.counts["audio"]["computed"], third.counts["fused"]["computed"]) == (1, n_items)


def test_batch_equals_one_by_one_and_threads_equal_serial(demo_dir, demo_items):
    paths = [str(demo_dir / path) for path in demo_items["audio_path"].head(5)]
    threaded = AudioEncoder(num_workers=2).encode(paths).vectors
    serial = AudioEncoder(num_workers=0).encode(paths).vectors
    one_by_one = np.concatenate([AudioEncoder(num_workers=2).encode([path]).vectors for path in paths])
    np.testing.assert_array_equal(threaded, serial)
    np.testing.assert_array_equal(threaded, one_by_one)


def test_max_seconds_caps_the_clip(tmp_path):
    head = _tone(1.0, 330.0)
    longer = np.concatenate([head, np.random.default_rng(0).normal(0.0, 0.3, 22050)])
    encoder = AudioEncoder(max_seconds=1.0)
    capped = encoder.encode([str(_write_wav(tmp_path / "long.wav", longer))]).vectors
    alone = encoder.encode([str(_write_wav(tmp_path / "head.wav", head))]).vectors
    whole = AudioEncoder(max_seconds=2.0).encode([str(tmp_path / "long.wav")]).vectors
    # The capped clip's samples are the head's, bit for bit, so the same computation gives the same bytes.
    np.testing.assert_array_equal(capped, alone)
    assert not np.allclose(whole, alone, atol=1e-3)


def test_resampling_keeps_a_tone_where_it_is(tmp_path):
    """A 440 Hz tone recorded at 16 kHz and at 22.05 kHz has the same spectrum, timbre, pitch and level."""
    low_rate = str(_write_wav(tmp_path / "a16k.wav", _tone(1.0, 440.0, 16000), 16000))
    high_rate = str(_write_wav(tmp_path / "a22k.wav", _tone(1.0, 440.0, 22050), 22050))
    raw = AudioEncoder(standardise=False).encode([low_rate, high_rate]).vectors

    assert _block(raw, "chroma_mean").argmax(axis=1).tolist() == [9, 9]  # pitch class A
    assert len(set(_block(raw, "logmel_mean").argmax(axis=1).tolist())) == 1
    # Spectral contrast is left out: the 16 kHz recording has nothing above 8 kHz.
    for block in ("logmel_mean", "mfcc0_mean", "mfcc_mean", "chroma_mean", "rms_db_mean", "zcr_mean"):
        scale = next(b.scale for b in AUDIO_FEATURE_BLOCKS if b.name == block)
        np.testing.assert_allclose(*_block(raw, block), atol=0.05 * scale, err_msg=block)


def test_short_and_silent_clips_give_finite_features():
    features = audio_features(np.full(10, 0.1, dtype=np.float32), 22050)
    assert features.shape == (AUDIO_FEATURE_DIMENSION,) and np.isfinite(features).all()
    silence = audio_features(np.zeros(22050, dtype=np.float32), 22050)
    assert np.isfinite(silence).all()
    # The floor goes through a float32 log10 (librosa.power_to_db, numpy): -100.0000076 is as right as -100.
    assert _block(silence, "logmel_mean").shape == (64,)
    np.testing.assert_allclose(_block(silence, "logmel_mean"), FLOOR_DB, rtol=1e-6)
    np.testing.assert_allclose(_block(silence, "rms_db_mean"), [FLOOR_DB], rtol=1e-6)
    np.testing.assert_allclose(_block(silence, "zcr_mean"), [0.0], atol=1e-12)
    with pytest.raises(ValueError, match="no samples"):
        audio_features(np.zeros(0, dtype=np.float32), 22050)


def test_identity_follows_every_output_setting_and_registry_builds_it():
    base = AudioEncoder().identity()
    for change in ({"sample_rate": 16000}, {"max_seconds": 10.0}, {"standardise": False}):
        assert AudioEncoder(**change).identity() != base
    assert AudioEncoder(num_workers=4, force_cpu=True).identity() == base
    assert base["layout_version"] and base["weights"].startswith("librosa-")
    assert isinstance(create_encoder("audio", max_seconds=3.0), AudioEncoder)


@pytest.mark.parametrize(
    "settings", [{"sample_rate": 100}, {"sample_rate": 22050.5}, {"max_seconds": 0}, {"num_workers": -1}]
)
def test_bad_settings_are_config_errors(settings):
    with pytest.raises(ConfigError, match="audio:"):
        AudioEncoder(**settings)


def test_items_without_an_audio_column_are_not_audio_items(tmp_path):
    prepared = AudioEncoder().prepare(pd.DataFrame({"item_id": ["a", "b"]}), tmp_path)
    assert prepared.keys == [] and prepared.inputs == []
