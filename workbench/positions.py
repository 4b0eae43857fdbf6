"""Fixed sinusoidal position embeddings (Vaswani et al. 2017), as the emergence paper's transformer
uses them."""

from __future__ import annotations

import torch
from torch import nn


def sinusoidal_positions(n_ctx: int, d_model: int) -> torch.Tensor:
    """``[n_ctx, d_model]`` float32: ``sin(pos / 10000^(2i/d))`` in column ``2i`` and
    ``cos(...)`` in column ``2i + 1`` (Vaswani et al. 2017)."""
    positions = torch.arange(n_ctx, dtype=torch.float64)[:, None]
    frequencies = 10000.0 ** (-torch.arange(0, d_model, 2, dtype=torch.float64) / d_model)
    table = torch.zeros(n_ctx, d_model, dtype=torch.float64)
    table[:, 0::2] = torch.sin(positions * frequencies)
    table[:, 1::2] = torch.cos(positions * frequencies)
    return table.float()


def fix_sinusoidal_positions(module: nn.Module, name: str) -> None:
    """Replace the learned position table ``module.<name>`` ``[n_ctx, d_model]`` by a sinusoidal
    buffer of the same name (saved, never trained)."""
    learned = getattr(module, name)
    table = sinusoidal_positions(*learned.shape).to(learned.device)
    delattr(module, name)
    module.register_buffer(name, table)
