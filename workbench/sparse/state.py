"""Learned state of a sparse method (`SparseMethod.state_module`) and where `sparsify` keeps it.

A state is an ``nn.Module`` per layer: learned parameters (NSA's pooling and gates, a learned block
gate, a key scorer) or a per-head plan held in buffers (MoA's windows). `workbench.sparse.patch.
sparsify` attaches it to the layer's attention module as the submodule `STATE_NAME`, so it is part
of the model: in ``state_dict`` (checkpoints), ``parameters()`` (the optimiser) and ``.to()``.

`SparseState` adds ``losses``: auxiliary losses of the latest forward (e.g. a gate's distillation
loss), which training adds to the task loss and logs (`sparse_losses`).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

STATE_NAME = "sparse_state"
"""Name of the submodule holding a method's state on an attention module."""


class SparseState(nn.Module):
    """Base of a method's state: ``method`` names the method it belongs to; ``losses`` holds the
    auxiliary losses of the latest forward, by name (scalars, differentiable)."""

    def __init__(self, method: str) -> None:
        super().__init__()
        self.method = method
        self.losses: dict[str, torch.Tensor] = {}

    def extra_repr(self) -> str:
        return f"method={self.method!r}"


def common_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """The dtype a state computes in: float32 at least, float64 when an input or parameter is."""
    dtype = torch.float32
    for tensor in tensors:
        dtype = torch.promote_types(dtype, tensor.dtype)
    return dtype


def attached_states(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """``(qualified name, state)`` of every state attached to ``model``."""
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] == STATE_NAME:
            yield name, module


def sparse_losses(model: nn.Module) -> dict[str, torch.Tensor]:
    """The auxiliary losses of the latest forward, summed over the layers by name."""
    totals: dict[str, torch.Tensor] = {}
    for _, state in attached_states(model):
        for name, value in getattr(state, "losses", {}).items():
            totals[name] = totals[name] + value if name in totals else value
    return totals
