"""The encoder registry: every encoder class by modality, the built-in ones (text, image, audio) included.

Encoders register themselves by subclassing :class:`features.base.ItemEncoder` with a ``modality``; this
module imports the built-in ones, so the base class never imports its implementations.
"""

from __future__ import annotations

from features import audio, image, text  # noqa: F401 - imported to register the built-in encoders
from features.base import _ENCODERS, ItemEncoder
from m6rec.errors import ConfigError


def create_encoder(modality: str, **params) -> ItemEncoder:
    """Instantiate the registered encoder of ``modality`` with ``params``."""
    if modality not in _ENCODERS:
        raise ConfigError(f"unknown encoder {modality!r}; known: {', '.join(sorted(_ENCODERS))}")
    return _ENCODERS[modality](**params)
