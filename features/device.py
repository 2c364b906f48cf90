"""Where encoders run: CUDA when present (with autocast), CPU otherwise; one switch forces the CPU.

Set ``M6REC_FORCE_CPU=1`` (or pass ``force_cpu=True``) to ignore any GPU.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Device:
    """A torch device name plus the autocast dtype to use there (``None`` = full precision)."""

    name: str
    autocast_dtype: str | None

    @property
    def is_cuda(self) -> bool:
        return self.name.startswith("cuda")

    def autocast(self):
        """Context manager: mixed precision on CUDA, a no-op on CPU."""
        import torch

        if not self.is_cuda or self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=getattr(torch, self.autocast_dtype))


def has_cuda() -> bool:
    """True when torch is importable and sees a CUDA device."""
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def resolve_device(force_cpu: bool = False) -> Device:
    """The device to encode on: CUDA (bf16 autocast where supported, else fp16) unless forced to CPU."""
    if force_cpu or os.environ.get("M6REC_FORCE_CPU", "").lower() in ("1", "true", "yes") or not has_cuda():
        return Device("cpu", None)
    import torch

    return Device("cuda", "bfloat16" if torch.cuda.is_bf16_supported() else "float16")


def runtime_identity(device: Device | None, libraries: tuple[str, ...]) -> dict:
    """What besides the model and its input changes an encoder's numbers: the device type, the precision
    (the autocast dtype, else float32) and the versions of the libraries that compute them. Part of every
    cached vector's identity, so vectors from a GPU, under autocast or from other library versions are
    never reused as if they were these."""
    from importlib.metadata import PackageNotFoundError, version

    def installed(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "absent"

    runtime = {name: installed(name) for name in libraries}
    if device is not None:
        runtime = {
            "device": device.name.split(":")[0],
            "precision": device.autocast_dtype or "float32",
            **runtime,
        }
    return runtime
