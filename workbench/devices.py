"""The ``device`` setting of configs: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"`` or
``"cuda:<n>"``."""

from __future__ import annotations

from typing import Any

import torch


def check_device(value: Any, name: str = "device") -> None:
    """Raise ``ValueError`` naming ``name`` unless ``value`` is a device setting."""
    if value == "auto":
        return
    try:
        device = torch.device(value) if isinstance(value, str) else None
    except (RuntimeError, TypeError, ValueError):
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise ValueError(f"{name} must be 'auto', 'cpu', 'cuda' or 'cuda:<n>', got {value!r}")


def resolve_device(value: str, name: str = "device") -> torch.device:
    """The device of a setting; ``ValueError`` naming ``name`` when it asks for CUDA and there is
    none."""
    if value == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(value)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{name} is {value!r} but CUDA is not available here")
    return device
