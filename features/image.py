"""Frozen image embeddings of items with an open_clip vision tower, L2-normalised.

Weights come from a local ``checkpoint`` (a state dict file, loaded by open_clip with
``torch.load(weights_only=True)`` or safetensors) or from an open_clip ``pretrained`` tag. When the tag's
weights cannot be had (no internet, no cache) the encoder warns loudly, uses a seeded random
initialisation of the architecture and records ``"pretrained": false`` in the output metadata; with
``allow_random_weights=False`` that is an error instead.

Which weights to use is decided when the encoder is built, without building the network: the checkpoint
is hashed, the tag's file is looked up (fetched when it can be), and the preprocessing the built model
will carry is derived from the architecture and tag configs as open_clip does. The network itself is
built on the first ``encode``, so a run with nothing new to embed never builds it.

Images are decoded in ``DataLoader`` workers. A missing, truncated or undecodable file fails only its own
item (null embedding, a problem naming the file); the rest of the batch is embedded.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from features.base import EncoderInputs, ItemEncoder, media_inputs
from features.device import resolve_device, runtime_identity
from m6rec.config import ImageSettings
from m6rec.data.contained import MediaLimits
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
    The weights (and the random-init fallback, with its warning) are decided at construction; the network
    is built by the first :meth:`encode`. A checkpoint that cannot be loaded fails there.
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
            # A custom architecture travels with the encoder, so a worker process that never saw the
            # config file (a Dask worker on another machine) can build the network too.
            self._architecture_config = _custom_config(self.architecture, self._architecture_digest)
            self._source = _resolve_weights(
                self.architecture, pretrained, checkpoint, allow_random_weights, seed
            )
        self.pretrained = self._source.pretrained
        self._model = self._preprocess = None

    @property
    def weights(self) -> str:
        """Source: ``checkpoint:<sha256>``, ``open_clip:<model>/<tag>`` or ``random-init (seed N)``."""
        return self._source.identity

    def identity(self) -> dict:
        """Architecture, weights and preprocessing: all that fixes the output for a given file."""
        identity = {
            "encoder": self.modality,
            "model": self.architecture,
            "weights": self._source.identity,
            "preprocess": dict(self._source.preprocess),
            "normalized": True,
            "batching": f"fixed-shape:{self.batch_size}",
            "runtime": runtime_identity(self.device, ("torch", "torchvision", "open_clip_torch", "pillow")),
        }
        if self._architecture_digest:
            identity["architecture_sha256"] = self._architecture_digest
        return identity

    def metadata(self) -> dict:
        return {**super().metadata(), "pretrained": self.pretrained}

    def prepare(
        self, items: pd.DataFrame, dataset_dir: Path, limits: MediaLimits | None = None
    ) -> EncoderInputs:
        """Items with a non-empty ``image_path`` inside ``dataset_dir``, by file hash (:func:`media_inputs`)."""
        return media_inputs(items, dataset_dir, IMAGE_PATH, limits)

    def encode(self, inputs: list) -> EncodeResult:
        """Unit-norm image embeddings of the files ``inputs``; unreadable files fail with a reason."""
        import torch
        from torch.utils.data import DataLoader

        model, preprocess = self._load()
        vectors = np.zeros((len(inputs), self.dimension), dtype=np.float32)
        failures: dict[int, str] = {}
        loader = DataLoader(
            ImageFiles([str(path) for path in inputs], preprocess),
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
                # Every batch runs with exactly batch_size images (zeros fill it), so an image's vector
                # does not depend on what else is encoded with it.
                filled = torch.cat(
                    [pixels, pixels.new_zeros((self.batch_size - len(pixels), *pixels.shape[1:]))]
                )
                with self.device.autocast():
                    features = model.encode_image(filled.to(self.device.name, non_blocking=True))
                features = torch.nn.functional.normalize(
                    features[: len(positions)].to(torch.float32), p=2, dim=-1
                )
                vectors[positions] = features.cpu().numpy()
        return EncodeResult(vectors, failures)

    def _load(self):
        """(model on the device, eval preprocess), built from the weights chosen at construction on the
        first call."""
        if self._model is None:
            _register_architecture(self.architecture, self._architecture_config)
            with quiet_model_loading():
                model, self._preprocess = _build_model(self.architecture, self._source)
            self._model = model.to(self.device.name).eval()
        return self._model, self._preprocess

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


def _custom_config(architecture: str, digest: str | None) -> dict | None:
    """The open_clip config of a custom architecture (one read from a config file), else None."""
    import open_clip

    return open_clip.get_model_config(architecture) if digest is not None else None


def _register_architecture(architecture: str, config: dict | None) -> None:
    """Make a custom architecture known to this process's open_clip (through its public
    ``add_model_config``, from a file in a temporary folder), unless it already is."""
    import json
    import tempfile

    import open_clip

    if config is None or open_clip.get_model_config(architecture) is not None:
        return
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"{architecture}.json"
        path.write_text(json.dumps(config))
        open_clip.add_model_config(path)


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


@dataclass(frozen=True)
class WeightsSource:
    """The image weights an encoder uses, decided without building the network.

    ``kind`` is ``checkpoint`` (``location``: a state-dict file), ``tag`` (``location``: an open_clip
    pretrained tag whose file is at hand) or ``random`` (seeded init with ``seed``). ``identity`` is the
    ``weights`` entry of the output metadata; ``preprocess`` the preprocessing config open_clip gives the
    built model (``model.visual.preprocess_cfg``), which enters the encoder identity.
    """

    kind: str
    location: str | None
    identity: str
    pretrained: bool
    preprocess: dict
    seed: int = 0


def _resolve_weights(
    architecture: str, pretrained: str | None, checkpoint, allow_random_weights: bool, seed: int
) -> WeightsSource:
    """The weights for the chosen source: a checkpoint, a tag whose file can be had, or else (when
    allowed, with a warning) a seeded random init."""
    if checkpoint is not None:
        path = Path(checkpoint).expanduser()
        if not path.is_file():
            raise ConfigError(f"image checkpoint {path} does not exist")
        return WeightsSource(
            "checkpoint",
            str(path),
            f"checkpoint:{_file_sha256(path)}",
            True,
            _preprocess_config(architecture),
        )
    if pretrained:
        try:
            tag_config = _fetch_pretrained(architecture, pretrained)
            return WeightsSource(
                "tag",
                pretrained,
                f"open_clip:{architecture}/{pretrained}",
                True,
                _preprocess_config(architecture, tag_config),
            )
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
    return WeightsSource(
        "random", None, f"random-init (seed {seed})", False, _preprocess_config(architecture), seed
    )


def _fetch_pretrained(architecture: str, tag: str) -> dict:
    """The open_clip pretrained config of ``tag`` once its weights file is in the local cache (fetched
    if needed and possible), as ``open_clip.create_model`` finds it; raises when it cannot be had."""
    from open_clip.pretrained import download_pretrained, get_pretrained_cfg

    config = get_pretrained_cfg(architecture, tag)
    if config:
        try:
            download_pretrained(config)
        except Exception as error:
            raise RuntimeError(f"Failed to download weights for tag '{tag}': {error}") from None
        return config
    if os.path.isfile(tag):
        return {}
    raise RuntimeError(f"Pretrained value '{tag}' is not a known tag or valid file path")


def _preprocess_config(architecture: str, tag_config: dict | None = None) -> dict:
    """The preprocessing config open_clip attaches to a built ``architecture`` model: its defaults, then
    the pretrained tag's entries, then the vision tower's input size."""
    import open_clip
    from open_clip.transform import PreprocessCfg, merge_preprocess_dict

    config = merge_preprocess_dict(asdict(PreprocessCfg()), tag_config or {})
    config["size"] = _input_size(open_clip.get_model_config(architecture)["vision_cfg"])
    return config


def _input_size(vision_cfg: dict):
    """``model.visual.image_size`` of a vision tower built from ``vision_cfg``: a (height, width) pair,
    except the modified ResNets (``layers`` given per stage), which keep the number as configured."""
    from open_clip.model import CLIPVisionCfg
    from open_clip.utils import to_2tuple

    size = vision_cfg.get("image_size", CLIPVisionCfg.image_size)
    if not vision_cfg.get("timm_model_name") and isinstance(vision_cfg.get("layers"), tuple | list):
        return size
    return to_2tuple(size)


def _build_model(architecture: str, source: WeightsSource):
    """(open_clip model, eval preprocess) of ``architecture`` with the weights of ``source``."""
    import open_clip

    if source.kind == "checkpoint":
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(
                architecture, pretrained=source.location, weights_only=True, pretrained_text=False
            )
        except Exception as error:
            raise ConfigError(
                f"cannot load image checkpoint {source.location} into {architecture}: {_first_line(error)}"
            ) from None
        return model, preprocess
    if source.kind == "tag":
        try:
            with held_back(OPEN_CLIP_DOWNLOAD_FAILED):
                model, _, preprocess = open_clip.create_model_and_transforms(
                    architecture, pretrained=source.location, weights_only=True
                )
        except Exception as error:
            raise ConfigError(
                f"cannot load open_clip weights {source.location!r} for {architecture}: {_first_line(error)}"
            ) from None
        return model, preprocess
    import torch

    with torch.random.fork_rng(devices=[]), held_back(OPEN_CLIP_RANDOM_INIT):
        torch.manual_seed(source.seed)
        model, _, preprocess = open_clip.create_model_and_transforms(
            architecture, pretrained=None, pretrained_image=False, pretrained_text=False
        )
    return model, preprocess


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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
