"""Frozen audio embeddings of items: fixed-size summaries of librosa features of each clip.

Each clip is decoded with libsndfile (``soundfile``), mixed to mono, resampled to ``sample_rate`` and cut
to its first ``max_seconds`` by ``librosa.load``. Frame features (2048-sample FFT, hop 512) are summarised
by their mean and standard deviation over time into a vector of ``AUDIO_FEATURE_DIMENSION`` = 291 values,
laid out as below (offsets in the vector; "mean/std" = mean then std over frames):

=======  ====  =====================  ==================================================================
offset   size  block                  raw value
=======  ====  =====================  ==================================================================
0        64    ``logmel_mean``        64-band mel power in dB re full scale (top 80 dB), mean
64       64    ``logmel_std``         same, std
128      1     ``mfcc0_mean``         MFCC 0 (overall log energy) of that log-mel, mean
129      19    ``mfcc_mean``          MFCC 1-19, mean
148      1     ``mfcc0_std``          MFCC 0, std
149      19    ``mfcc_std``           MFCC 1-19, std
168      20    ``mfcc_delta_mean``    first differences (9-frame Savitzky-Golay) of MFCC 0-19, mean
188      20    ``mfcc_delta_std``     same, std
208      20    ``mfcc_delta2_mean``   second differences of MFCC 0-19, mean
228      20    ``mfcc_delta2_std``    same, std
248      12    ``chroma_mean``        12 pitch classes (C, C#, ... B; tuning fixed at A440), mean
260      12    ``chroma_std``         same, std
272      7     ``contrast_mean``      spectral contrast (dB) of 6 octave bands and the remainder, mean
279      7     ``contrast_std``       same, std
286      1     ``tempo``              global tempo, log2(bpm / 120), bpm clipped to [30, 300]
287      1     ``rms_db_mean``        frame RMS level in dB re full scale, mean
288      1     ``rms_db_std``         same, std
289      1     ``zcr_mean``           zero-crossing rate (crossings per sample), mean
290      1     ``zcr_std``            same, std
=======  ====  =====================  ==================================================================

Standardisation (``standardise=True``, the default) is fixed and data-independent, so that every item's
vector depends on its own clip only and incremental runs stay exact: each block is shifted and scaled by
constants (``AudioFeatureBlock.centre`` / ``scale``: the rounded typical level and spread of that feature,
so that values are of order one), then multiplied by ``1 / sqrt(size of its group)`` so that the six groups
(spectrum, timbre, harmony, texture, rhythm, energy) weigh about the same in Euclidean or cosine
distances however many dimensions each has. The constants belong to ``AUDIO_FEATURE_LAYOUT_VERSION``,
which enters every content hash; changing them recomputes everything. ``standardise=False`` stores
the raw values.

Clips shorter than one analysis frame are zero-padded to one frame; silence gives a finite vector (every
level at the -100 dB floor). Missing, truncated, empty or undecodable files fail only their own item.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pandas as pd

from features.base import EncoderInputs, ItemEncoder, media_inputs
from features.device import runtime_identity
from m6rec.config import MIN_AUDIO_SAMPLE_RATE, AudioSettings
from m6rec.data.contained import MediaLimits
from m6rec.data.contract import AUDIO_PATH
from m6rec.embeddings.store import EncodeResult
from m6rec.errors import ConfigError
from m6rec.progress import progress

AUDIO_FEATURE_LAYOUT_VERSION = "1"

N_FFT = 2048
HOP_LENGTH = 512
N_MELS = 64
N_MFCC = 20
N_CHROMA = 12
N_CONTRAST_BANDS = 6
DELTA_WIDTH = 9
FLOOR_DB = -100.0
TOP_DB = 80.0
MIN_SAMPLE_RATE = MIN_AUDIO_SAMPLE_RATE


@dataclass(frozen=True)
class AudioFeatureBlock:
    """One block of the audio feature vector: its size, group and standardisation constants."""

    name: str
    size: int
    group: str
    centre: float
    scale: float


AUDIO_FEATURE_BLOCKS: tuple[AudioFeatureBlock, ...] = (
    AudioFeatureBlock("logmel_mean", N_MELS, "spectrum", -30.0, 20.0),
    AudioFeatureBlock("logmel_std", N_MELS, "spectrum", 5.0, 5.0),
    AudioFeatureBlock("mfcc0_mean", 1, "timbre", -250.0, 100.0),
    AudioFeatureBlock("mfcc_mean", N_MFCC - 1, "timbre", 0.0, 20.0),
    AudioFeatureBlock("mfcc0_std", 1, "timbre", 10.0, 30.0),
    AudioFeatureBlock("mfcc_std", N_MFCC - 1, "timbre", 5.0, 5.0),
    AudioFeatureBlock("mfcc_delta_mean", N_MFCC, "timbre", 0.0, 0.2),
    AudioFeatureBlock("mfcc_delta_std", N_MFCC, "timbre", 1.0, 1.0),
    AudioFeatureBlock("mfcc_delta2_mean", N_MFCC, "timbre", 0.0, 0.1),
    AudioFeatureBlock("mfcc_delta2_std", N_MFCC, "timbre", 0.5, 0.5),
    AudioFeatureBlock("chroma_mean", N_CHROMA, "harmony", 0.3, 0.2),
    AudioFeatureBlock("chroma_std", N_CHROMA, "harmony", 0.1, 0.1),
    AudioFeatureBlock("contrast_mean", N_CONTRAST_BANDS + 1, "texture", 25.0, 10.0),
    AudioFeatureBlock("contrast_std", N_CONTRAST_BANDS + 1, "texture", 4.0, 2.0),
    AudioFeatureBlock("tempo", 1, "rhythm", 0.0, 0.5),
    AudioFeatureBlock("rms_db_mean", 1, "energy", -25.0, 10.0),
    AudioFeatureBlock("rms_db_std", 1, "energy", 5.0, 5.0),
    AudioFeatureBlock("zcr_mean", 1, "energy", 0.1, 0.1),
    AudioFeatureBlock("zcr_std", 1, "energy", 0.05, 0.05),
)

AUDIO_FEATURE_DIMENSION = sum(block.size for block in AUDIO_FEATURE_BLOCKS)


def _standardisation_constants() -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension centre and multiplier: (x - centre) * multiplier is the standardised value."""
    group_sizes: dict[str, int] = {}
    for block in AUDIO_FEATURE_BLOCKS:
        group_sizes[block.group] = group_sizes.get(block.group, 0) + block.size
    centre = np.concatenate([np.full(block.size, block.centre) for block in AUDIO_FEATURE_BLOCKS])
    multiplier = np.concatenate(
        [
            np.full(block.size, 1.0 / (block.scale * math.sqrt(group_sizes[block.group])))
            for block in AUDIO_FEATURE_BLOCKS
        ]
    )
    return centre, multiplier


_CENTRE, _MULTIPLIER = _standardisation_constants()


def standardise_audio_features(raw: np.ndarray) -> np.ndarray:
    """Map raw feature vectors (``[..., AUDIO_FEATURE_DIMENSION]``) to the standardised scale, as float32."""
    raw = np.asarray(raw, dtype=np.float64)
    if raw.shape[-1] != AUDIO_FEATURE_DIMENSION:
        raise ValueError(f"expected {AUDIO_FEATURE_DIMENSION} audio features, got {raw.shape[-1]}")
    return ((raw - _CENTRE) * _MULTIPLIER).astype(np.float32)


def audio_features(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    """Raw feature vector (layout in the module docstring) of a mono clip ``samples`` at ``sample_rate`` Hz.

    Raises ``ValueError`` for a clip without samples.
    """
    import librosa

    samples = np.asarray(samples, dtype=np.float32)
    if samples.ndim != 1 or samples.size == 0:
        raise ValueError("empty audio: no samples decoded")
    if samples.size < N_FFT:
        samples = np.pad(samples, (0, N_FFT - samples.size))
    magnitude = np.abs(librosa.stft(samples, n_fft=N_FFT, hop_length=HOP_LENGTH))
    power = magnitude**2
    mel = librosa.feature.melspectrogram(S=power, sr=sample_rate, n_mels=N_MELS, fmax=sample_rate / 2)
    log_mel = librosa.power_to_db(mel, ref=1.0, amin=10 ** (FLOOR_DB / 10), top_db=TOP_DB)
    mfcc = librosa.feature.mfcc(S=log_mel, n_mfcc=N_MFCC)
    delta = librosa.feature.delta(mfcc, width=DELTA_WIDTH, order=1, mode="nearest")
    delta2 = librosa.feature.delta(mfcc, width=DELTA_WIDTH, order=2, mode="nearest")
    chroma = librosa.feature.chroma_stft(S=power, sr=sample_rate, n_fft=N_FFT, tuning=0.0, n_chroma=N_CHROMA)
    # librosa needs every band's lower edge, up to fmin * 2**(n_bands - 1), below Nyquist.
    contrast_fmin = min(200.0, 0.9 * sample_rate / 2**N_CONTRAST_BANDS)
    contrast = librosa.feature.spectral_contrast(
        S=magnitude, sr=sample_rate, n_fft=N_FFT, fmin=contrast_fmin, n_bands=N_CONTRAST_BANDS
    )
    onset_envelope = librosa.onset.onset_strength(S=log_mel, sr=sample_rate, hop_length=HOP_LENGTH)
    bpm = float(np.atleast_1d(librosa.feature.tempo(onset_envelope=onset_envelope, sr=sample_rate))[0])
    tempo = math.log2(min(max(bpm, 30.0), 300.0) / 120.0) if math.isfinite(bpm) else 0.0
    rms = librosa.feature.rms(S=magnitude, frame_length=N_FFT)[0]
    rms_db = 20.0 * np.log10(np.maximum(rms, 10 ** (FLOOR_DB / 20)))
    zcr = librosa.feature.zero_crossing_rate(samples, frame_length=N_FFT, hop_length=HOP_LENGTH)[0]
    mfcc_mean, mfcc_std = mfcc.mean(axis=1), mfcc.std(axis=1)
    parts = (
        log_mel.mean(axis=1),
        log_mel.std(axis=1),
        mfcc_mean[:1],
        mfcc_mean[1:],
        mfcc_std[:1],
        mfcc_std[1:],
        delta.mean(axis=1),
        delta.std(axis=1),
        delta2.mean(axis=1),
        delta2.std(axis=1),
        chroma.mean(axis=1),
        chroma.std(axis=1),
        contrast.mean(axis=1),
        contrast.std(axis=1),
        [tempo],
        [rms_db.mean()],
        [rms_db.std()],
        [zcr.mean()],
        [zcr.std()],
    )
    return np.concatenate([np.asarray(part, dtype=np.float64).ravel() for part in parts])


def load_clip(path: str | Path, sample_rate: int, max_seconds: float) -> np.ndarray:
    """Mono float32 samples of the first ``max_seconds`` of the file at ``path``, at ``sample_rate`` Hz."""
    import librosa
    import soundfile

    # Opening with libsndfile first keeps librosa off its deprecated audioread fallback for bad files.
    with soundfile.SoundFile(str(path)) as sound:
        samples, _ = librosa.load(sound, sr=sample_rate, mono=True, duration=max_seconds)
    return samples


def clip_features(path: str, sample_rate: int, max_seconds: float) -> tuple[np.ndarray | None, str | None]:
    """Raw features of one file, or ``(None, reason)`` when it is missing, empty or cannot be decoded."""
    if not Path(path).is_file():
        return None, f"missing file {path}"
    try:
        samples = load_clip(path, sample_rate, max_seconds)
    except Exception as error:  # any decoder error fails this clip only
        return None, f"cannot decode {path}: {type(error).__name__}: {error}"
    if samples.size == 0:
        return None, f"cannot decode {path}: no audio samples"
    if not np.all(np.isfinite(samples)):
        return None, f"cannot decode {path}: non-finite samples"
    try:
        features = audio_features(samples, sample_rate)
    except Exception as error:  # an analysis failure fails this clip only, never the batch
        return None, f"cannot analyse {path}: {type(error).__name__}: {error}"
    if not np.all(np.isfinite(features)):
        return None, f"non-finite audio features for {path}"
    return features, None


class AudioEncoder(ItemEncoder):
    """Item clip → standardised librosa feature summary (``AUDIO_FEATURE_DIMENSION`` values), on the CPU.

    Clips are decoded and analysed in a thread pool of ``num_workers`` threads: libsndfile, soxr and the
    FFTs and matrix products that dominate the feature extraction release the GIL, so threads overlap
    almost as well as processes without paying a process's start-up (importing librosa and compiling its
    numba kernels takes seconds per process). ``force_cpu`` is accepted for a uniform encoder interface;
    librosa always runs on the CPU.
    """

    modality = "audio"

    def __init__(
        self,
        *,
        sample_rate: int = AudioSettings().sample_rate,
        max_seconds: float = AudioSettings().max_seconds,
        standardise: bool = AudioSettings().standardise,
        num_workers: int = AudioSettings().num_workers,
        force_cpu: bool = False,
    ):
        if not isinstance(sample_rate, int) or sample_rate < MIN_SAMPLE_RATE:
            raise ConfigError(
                f"audio: sample_rate must be an integer >= {MIN_SAMPLE_RATE} Hz, got {sample_rate!r}"
            )
        if not max_seconds > 0:
            raise ConfigError(f"audio: max_seconds must be positive, got {max_seconds!r}")
        if num_workers < 0:
            raise ConfigError(f"audio: num_workers must be >= 0, got {num_workers!r}")
        self.sample_rate = sample_rate
        self.max_seconds = float(max_seconds)
        self.standardise = bool(standardise)
        self.num_workers = num_workers
        self.dimension = AUDIO_FEATURE_DIMENSION

    def identity(self) -> dict:
        """Feature layout, its standardisation and the analysis settings: all that fixes a clip's vector."""
        return {
            "encoder": self.modality,
            "model": "librosa-features",
            "weights": f"librosa-{version('librosa')}/layout-{AUDIO_FEATURE_LAYOUT_VERSION}",
            "pretrained": False,
            "layout_version": AUDIO_FEATURE_LAYOUT_VERSION,
            "sample_rate": self.sample_rate,
            "max_seconds": self.max_seconds,
            "standardise": self.standardise,
            "dimension": self.dimension,
            "runtime": runtime_identity(None, ("librosa", "numpy", "scipy", "soundfile")),
        }

    def metadata(self) -> dict:
        blocks = [{"name": block.name, "size": block.size} for block in AUDIO_FEATURE_BLOCKS]
        return {**super().metadata(), "blocks": blocks}

    def prepare(
        self, items: pd.DataFrame, dataset_dir: Path, limits: MediaLimits | None = None
    ) -> EncoderInputs:
        """Items with a non-empty ``audio_path`` inside ``dataset_dir``, by file hash (:func:`media_inputs`)."""
        return media_inputs(items, dataset_dir, AUDIO_PATH, limits)

    def encode(self, inputs: list) -> EncodeResult:
        """Feature vectors of the audio files ``inputs``; unreadable files fail with a reason."""
        vectors = np.zeros((len(inputs), self.dimension), dtype=np.float32)
        failures: dict[int, str] = {}

        def analyse(path) -> tuple[np.ndarray | None, str | None]:
            return clip_features(str(path), self.sample_rate, self.max_seconds)

        shown = {"desc": "encoding audio", "total": len(inputs), "unit": "clip"}
        if self.num_workers <= 1 or len(inputs) <= 1:
            outcomes = [analyse(path) for path in progress(inputs, **shown)]
        else:
            with ThreadPoolExecutor(max_workers=min(self.num_workers, len(inputs))) as pool:
                outcomes = list(progress(pool.map(analyse, inputs), **shown))
        for position, (features, reason) in enumerate(outcomes):
            if features is None:
                failures[position] = reason
            else:
                vectors[position] = standardise_audio_features(features) if self.standardise else features
        return EncodeResult(vectors, failures)
