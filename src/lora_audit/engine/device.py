"""Which device the math runs on: torch is optional, CUDA is used when asked for or available.

Nothing here imports torch unless a GPU may be present or was asked for: ``--device auto``
on a machine without a GPU driver is the CPU without touching torch."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from lora_audit.choices import DeviceName, MethodName, device_name, method_name
from lora_audit.errors import UsageError

if TYPE_CHECKING:
    import torch

__all__ = ["DeviceName", "EngineOptions", "device_type", "require_torch", "resolve_device"]


@dataclass(frozen=True, kw_only=True)
class EngineOptions:
    """How the spectra are computed.

    Attributes
    ----------
    device
        ``"auto"`` uses CUDA when available, else the CPU.
    method
        Core factorisation; see :mod:`lora_audit.linalg.spectral`.
    chunk_bytes
        Working-memory budget per chunk; ``None`` sizes it from the device.

    Raises
    ------
    UsageError
        For a device or method that is not one of the choices (:mod:`lora_audit.choices`):
        an unknown name is refused, never read as the Gram path without its QR fallback.
    """

    device: DeviceName = "auto"
    method: MethodName = "auto"
    chunk_bytes: int | None = None

    def __post_init__(self) -> None:
        device_name(self.device)
        method_name(self.method)


#: What to install for ``--device cuda`` (torch is an optional dependency).
TORCH_HINT = (
    "install torch for your CUDA version (https://pytorch.org/get-started/locally/), "
    "or this project's extra: pip install 'lora-rank-audit[gpu]'"
)


def torch_available() -> bool:
    """Whether torch can be imported (without importing it when it is absent)."""
    import importlib.util

    if sys.modules.get("torch") is not None:
        return True
    try:
        return importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):  # a broken install, or sys.modules["torch"] = None
        return False


def require_torch(what: str) -> None:
    """Raise a usage error naming ``what`` (e.g. ``--base``) when torch is not installed."""
    if not torch_available():
        raise UsageError(f"{what} needs torch, which is not installed", hint=TORCH_HINT)


def resolve_device(name: DeviceName) -> torch.device:
    """The torch device for ``name``; ``cuda`` without a GPU (or without torch) is a usage error.

    Raises
    ------
    UsageError
        ``cuda`` with no CUDA device, or a device other than the CPU asked for without torch.
    """
    if not torch_available():
        raise UsageError(f"--device {name}: torch is not installed", hint=TORCH_HINT)
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError(
            "--device cuda: no CUDA device is available", hint="use --device auto or cpu"
        )
    return torch.device(name)


def device_type(name: DeviceName) -> Literal["cpu", "cuda"]:
    """``resolve_device(name).type``, without importing torch when no GPU can be present.

    ``auto`` is the CPU without asking torch when the platform shows no GPU driver (no
    ``/dev/nvidiactl``, ``/proc/driver/nvidia``, ``/dev/kfd`` or ``/dev/dxg`` on Linux;
    always on macOS); otherwise torch decides, as in :func:`resolve_device`.
    """
    if name == "cpu" or (name == "auto" and not (_gpu_possible() and torch_available())):
        return "cpu"
    return "cuda" if resolve_device(name).type == "cuda" else "cpu"


def _gpu_possible() -> bool:
    if sys.modules.get("torch") is not None:
        return True  # already paid for: let torch answer
    if sys.platform == "darwin":
        return False
    if sys.platform.startswith("linux"):
        markers = ("/dev/nvidiactl", "/proc/driver/nvidia", "/dev/kfd", "/dev/dxg")
        return any(os.path.exists(m) for m in markers)
    return True
