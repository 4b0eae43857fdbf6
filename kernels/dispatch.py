"""Which implementation runs: the ``impl`` argument of `kernels.api` and whether Triton can run.

Imported by `kernels.api` and by the Triton files (`kernels.triton.*`), so that they need not import
each other. Imports no triton: `interpret_mode` reads the environment, `triton_importable` looks the
package up without importing it.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
from typing import Literal

import torch

# The choice is reported under the public module's logger (the one `kernels.api` documents).
logger = logging.getLogger("kernels.api")

Impl = Literal["auto", "triton", "reference"]
IMPLS = ("auto", "triton", "reference")
Loads = Literal["auto", "pointers", "descriptors"]
LOADS = ("auto", "pointers", "descriptors")
Grid = Literal["auto", "tiles", "persistent"]
GRIDS = ("auto", "tiles", "persistent")


_TRUE = ("1", "true", "on", "yes", "y")
"""Values of ``TRITON_INTERPRET`` that Triton reads as true (case-insensitive; its ``getenv_bool``)."""


def interpret_mode() -> bool:
    """True when Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``). The one test
    of it for the whole backend: the Triton files import it from here."""
    return os.environ.get("TRITON_INTERPRET", "").lower() in _TRUE


@functools.cache
def triton_importable() -> bool:
    return importlib.util.find_spec("triton") is not None


def triton_unavailable_reason(tensors: tuple[torch.Tensor, ...]) -> str | None:
    """Why the Triton kernels cannot run on ``tensors`` (None when they can)."""
    if not triton_importable():
        return "triton is not installed (it is available on Linux x86_64)"
    devices = {tensor.device.type for tensor in tensors}
    if devices == {"cuda"} or (devices == {"cpu"} and interpret_mode()):
        return interpreter_dtype_reason(tensors)
    if len(devices) > 1:
        return f"the inputs are on several devices ({sorted(devices)})"
    return (
        f"the inputs are on {devices.pop()}; the Triton kernels need CUDA tensors "
        "(or CPU tensors with TRITON_INTERPRET=1 set before triton is imported)"
    )


def interpreter_dtype_reason(tensors: tuple[torch.Tensor, ...]) -> str | None:
    """Why Triton's interpreter cannot run the kernels on ``tensors`` (None when it can): it
    computes ``tl.dot`` of bfloat16 tiles wrongly (an upstream limitation; outputs are garbage)."""
    if interpret_mode() and any(tensor.dtype == torch.bfloat16 for tensor in tensors):
        return (
            "the inputs are torch.bfloat16, whose tl.dot the Triton interpreter "
            "(TRITON_INTERPRET=1) computes wrongly (an upstream limitation): use float16 or "
            "float32 inputs, impl='reference', or a CUDA device without the interpreter"
        )
    return None


def check_impl(impl: str) -> None:
    """``ValueError`` unless ``impl`` is one of `IMPLS`."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")


def resolve_impl(
    impl: str, function: str, *tensors: torch.Tensor
) -> Literal["triton", "reference"]:
    """Turn ``impl`` into the implementation that runs, raising when ``"triton"`` cannot."""
    check_impl(impl)
    if impl == "reference":
        return "reference"
    reason = triton_unavailable_reason(tensors)
    if impl == "triton":
        if reason is not None:
            raise RuntimeError(f"{function}(impl='triton') cannot run: {reason}")
        return "triton"
    chosen = "triton" if reason is None and tensors[0].is_cuda else "reference"
    logger.debug("%s(impl='auto') uses %s (%s)", function, chosen, reason or "CUDA tensors")
    return chosen


def check_variant(loads: str, grid: str) -> None:
    """``ValueError`` unless ``loads`` is one of `LOADS` and ``grid`` one of `GRIDS` (the attention
    kernels' variant, `kernels.triton.variants`)."""
    if loads not in LOADS:
        raise ValueError(f"loads must be one of {LOADS}, got {loads!r}")
    if grid not in GRIDS:
        raise ValueError(f"grid must be one of {GRIDS}, got {grid!r}")
