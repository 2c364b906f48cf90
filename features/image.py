"""Frozen image embeddings of items with an open_clip vision tower, L2-normalised.

Weights come from a local ``checkpoint`` (a state dict file, loaded by open_clip with
``torch.load(weights_only=True)`` or safetensors) or from an open_clip ``pretrained`` tag. When the tag
cannot be loaded (no internet, no cache) the encoder warns loudly, uses a seeded random initialisation
of the architecture and records ``"pretrained": false`` in the output metadata; with
``allow_random_weights=False`` that is an error instead.

Images are decoded in ``DataLoader`` workers. A missing, truncated or undecodable file fails only its own
item (null embedding, a problem naming the file); the rest of the batch is embedded.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from features.base import EncoderInputs, ItemEncoder, media_inputs
from features.device import resolve_device
from m6rec.config import ImageSettings
from m6rec.data.contract import IMAGE_PATH
from m6rec.embeddings.store import EncodeResult
from m6rec.errors import ConfigError
from m6rec.log import held_back
from m6rec.progress import progress_bar, quiet_model_loading

logger = logging.getLogger("m6rec")
# open_clip's own lines about what our warning (or error) already says, with the reason.
OPEN_CLIP_DOWNLOAD_FAILED = "Failed to download weights for tag"
OPEN_CLIP_RANDOM_INIT = "No pretrained weights loaded for model"
# Warnings already given in this process: one per distinct message, however many encoders are built.
_announced_random_weights: set[str] = set()


class ImageEncoder(ItemEncoder):
    """Item picture → CLIP image embedding with open_clip (default ViT-B-32, LAION-2B weights).

    ``model`` is an open_clip architecture name or the path of an open_clip model config JSON (registered
    under its file stem). ``checkpoint`` (a local state dict) takes precedence over ``pretrained`` (a tag).
    """

    modality = "image"

    def __init__(
        self,
        *,
        model: str = ImageSettings().model,
        pretrained: str | None = ImageSettings().pretrained,
        checkpoint: str | Path | None = None,
        batch_size: int = ImageSettings().batch_size,
        num_workers: int = ImageSettings().num_workers,
        force_cpu: bool = False,
        allow_random_weights: bool = ImageSettings().allow_random_weights,
        seed: int = ImageSettings().seed,
    ):
        if batch_size < 1 or num_workers < 0:
            raise ConfigError(
                f"image encoder needs batch_size >= 1 and num_workers >= 0, got {batch_size}, {num_workers}"
            )
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.device = resolve_device(force_cpu)
        with quiet_model_loading():
            self.architecture, self._architecture_digest, self.dimension = _resolve_architecture(model)
            self._model, self._preprocess, self._weights, self.pretrained = _load_weights(
                self.architecture, pretrained, checkpoint, allow_random_weights, seed
            )
        self._model = self._model.to(self.device.name).eval()

    @property
    def weights(self) -> str:
        """Source: ``checkpoint:<sha256>``, ``open_clip:<model>/<tag>`` or ``random-init (seed N)``."""
        return self._weights

    def identity(self) -> dict:
        """Architecture, weights and preprocessing: all that fixes the output for a given file."""
        identity = {
            "encoder": self.modality,
            "model": self.architecture,
            "weights": self._weights,
            "preprocess": dict(getattr(self._model.visual, "preprocess_cfg", {})),
            "normalized": True,
        }
        if self._architecture_digest:
            identity["architecture_sha256"] = self._architecture_digest
        return identity

    def metadata(self) -> dict:
        return {**super().metadata(), "pretrained": self.pretrained}

    def prepare(self, items: pd.DataFrame, dataset_dir: Path) -> EncoderInputs:
        """Items with a non-empty ``image_path`` (relative to ``dataset_dir`` or absolute), by file hash."""
        return media_inputs(items, dataset_dir, IMAGE_PATH)

    def encode(self, inputs: list) -> EncodeResult:
        """Unit-norm image embeddings of the files ``inputs``; unreadable files fail with a reason."""
        import torch
        from torch.utils.data import DataLoader

        vectors = np.zeros((len(inputs), self.dimension), dtype=np.float32)
        failures: dict[int, str] = {}
        loader = DataLoader(
            ImageFiles([str(path) for path in inputs], self._preprocess),
            batch_size=self.batch_size,
            num_workers=self._workers(len(inputs)),
            collate_fn=collate_decoded_images,
            pin_memory=self.device.is_cuda,
        )
        with (
            torch.inference_mode(),
            progress_bar(total=len(inputs), desc="encoding images", unit="image") as bar,
        ):
            for positions, pixels, batch_failures in loader:
                bar.update(len(positions) + len(batch_failures))
                failures.update(batch_failures)
                if pixels is None:
                    continue
                with self.device.autocast():
                    features = self._model.encode_image(pixels.to(self.device.name, non_blocking=True))
                features = torch.nn.functional.normalize(features.to(torch.float32), p=2, dim=-1)
                vectors[positions] = features.cpu().numpy()
        return EncodeResult(vectors, failures)

    def _workers(self, n_inputs: int) -> int:
        """Decoding workers: as configured on a GPU; on the CPU only with cores to spare, since the
        model's own threads already use every core and extra processes would only contend with them."""
        import os

        batches = -(-n_inputs // self.batch_size)
        if self.device.is_cuda:
            return min(self.num_workers, batches)
        spare = (os.cpu_count() or 1) // 4
        return min(self.num_workers, batches, spare)


class ImageFiles:
    """A map-style dataset of image files: ``(position, pixels, None)`` or ``(position, None, reason)``."""

    def __init__(self, paths: list[str], preprocess):
        self.paths = paths
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, position: int):
        from PIL import Image

        path = self.paths[position]
        try:
            with Image.open(path) as image:
                pixels = self.preprocess(image.convert("RGB"))
        except FileNotFoundError:
            return position, None, f"missing file {path}"
        except Exception as error:  # any decoder error fails this image only
            return position, None, f"cannot decode {path}: {type(error).__name__}: {error}"
        return position, pixels, None


def collate_decoded_images(batch: list[tuple]):
    """Stack the decoded images of a batch; return (positions, pixels or None, {position: reason})."""
    import torch

    positions = [position for position, pixels, _ in batch if pixels is not None]
    failures = {position: reason for position, pixels, reason in batch if pixels is None}
    pixels = torch.stack([pixels for _, pixels, _ in batch if pixels is not None]) if positions else None
    return positions, pixels, failures


def _resolve_architecture(model: str) -> tuple[str, str | None, int]:
    """(open_clip name, digest of a custom config file or None, embedding dimension)."""
    import open_clip

    path = Path(model).expanduser()
    digest = None
    if path.suffix == ".json" and path.is_file():
        open_clip.add_model_config(path)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        model = path.stem
    config = open_clip.get_model_config(model)
    if config is None:
        raise ConfigError(
            f"unknown open_clip model {model!r}; "
            "use a name from open_clip.list_models() or the path of a model config .json"
        )
    return model, digest, int(config["embed_dim"])


def _load_weights(
    architecture: str, pretrained: str | None, checkpoint, allow_random_weights: bool, seed: int
):
    """(model, eval preprocess, weights identity, whether the weights are real) for the chosen source."""
    import open_clip

    if checkpoint is not None:
        path = Path(checkpoint).expanduser()
        if not path.is_file():
            raise ConfigError(f"image checkpoint {path} does not exist")
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(
                architecture, pretrained=str(path), weights_only=True, pretrained_text=False
            )
        except Exception as error:
            raise ConfigError(
                f"cannot load image checkpoint {path} into {architecture}: {_first_line(error)}"
            ) from None
        return model, preprocess, f"checkpoint:{hashlib.sha256(path.read_bytes()).hexdigest()}", True
    if pretrained:
        try:
            with held_back(OPEN_CLIP_DOWNLOAD_FAILED):
                model, _, preprocess = open_clip.create_model_and_transforms(
                    architecture, pretrained=pretrained, weights_only=True
                )
            return model, preprocess, f"open_clip:{architecture}/{pretrained}", True
        except Exception as error:
            reason = f"cannot load open_clip weights {pretrained!r} for {architecture}: {_first_line(error)}"
    else:
        reason = f"no pretrained weights requested for {architecture}"
    if not allow_random_weights:
        raise ConfigError(
            f"{reason}; pass checkpoint=<local state-dict file> (e.g. open_clip_pytorch_model.bin), "
            "or allow_random_weights=True to embed with untrained weights"
        )
    _announce_random_weights(
        f"image encoder uses RANDOM-INIT weights (seed {seed}) for {architecture}: {reason}. "
        "Its embeddings carry no learned visual meaning."
    )
    import torch

    with torch.random.fork_rng(devices=[]), held_back(OPEN_CLIP_RANDOM_INIT):
        torch.manual_seed(seed)
        model, _, preprocess = open_clip.create_model_and_transforms(
            architecture, pretrained=None, pretrained_image=False, pretrained_text=False
        )
    return model, preprocess, f"random-init (seed {seed})", False


def _announce_random_weights(message: str) -> None:
    """A WARNING of the ``m6rec`` logger the first time this process builds an encoder with these random
    weights for this reason; DEBUG after that (a run builds the encoder once per stage that reads images)."""
    if message in _announced_random_weights:
        logger.debug(message)
        return
    _announced_random_weights.add(message)
    logger.warning(message)


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    line = text.splitlines()[0] if text else type(error).__name__
    return line if len(line) <= 240 else line[:237] + "..."
